//! The `kiln-agent` command line.
//!
//! Exit-code contract (the one place it is defined; `--help` prints it too):
//! - 0: every step passed (or was degraded or skipped);
//! - 1: a hardware fault: some step failed;
//! - 2: the harness failed, or bad usage or a refused suite.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use kiln_protocol::verdict::Verdict;

use crate::checks::RunOptions;
use crate::console::{Console, summary_table};
use crate::runner::RunReport;
use crate::stop::Interrupt;

/// Every step passed, was degraded or skipped.
pub const EXIT_PASS: u8 = 0;
/// A step failed: a hardware fault.
pub const EXIT_FAULT: u8 = 1;
/// The harness failed, bad usage, or a refused suite.
pub const EXIT_HARNESS: u8 = 2;

/// kiln-agent: runs kiln suites on this node.
#[derive(Debug, Parser)]
#[command(name = "kiln-agent", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 all steps pass (or degraded); 1 hardware fault (a step failed); \
2 harness error, bad usage or a refused suite."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a suite on this host: live progress, then a summary table; exit code per the
    /// contract below.
    Run(RunArgs),
    /// Check suite files with the same loader `run` uses; exits 0 when good, 2 when refused.
    Check {
        /// Suite files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { files } => check(&files),
        Command::Run(args) => run(&args),
    };
    ExitCode::from(code)
}

fn check(files: &[PathBuf]) -> u8 {
    let mut code = EXIT_PASS;
    for file in files {
        match crate::suites::load_file(file) {
            Ok(plan) => println!("{}: ok: {}", file.display(), plan.summary()),
            Err(err) => {
                eprintln!("{:#}", anyhow::Error::from(err));
                code = EXIT_HARNESS;
            }
        }
    }
    code
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The suite to run.
    suite: PathBuf,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE.xml")]
    junit: Option<PathBuf>,
    /// Allow steps that overwrite raw disks (they must also say `destructive: true`).
    #[arg(long)]
    allow_destructive: bool,
    /// Plain timestamped lines even on a terminal.
    #[arg(long)]
    plain: bool,
}

/// The exit code a verdict maps to.
pub fn exit_code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Pass | Verdict::Degraded => EXIT_PASS,
        Verdict::Fail => EXIT_FAULT,
        Verdict::Error | Verdict::Incomplete => EXIT_HARNESS,
    }
}

fn run(args: &RunArgs) -> u8 {
    let plan = match crate::suites::load_file(&args.suite) {
        Ok(plan) => plan,
        Err(err) => {
            eprintln!("{:#}", anyhow::Error::from(err));
            return EXIT_HARNESS;
        }
    };
    let interrupt = Interrupt::new();
    if let Err(err) = interrupt.install_handler() {
        eprintln!("{err:#}");
        return EXIT_HARNESS;
    }
    let options = RunOptions {
        allow_destructive: args.allow_destructive,
        collector: None,
    };
    let console = Arc::new(Console::new(args.plain));
    let report = crate::runner::run(&plan, &options, &interrupt, console);
    println!("\n{}", summary_table(&report));
    let mut code = exit_code(report.verdict);
    for (path, text) in [
        (&args.report, report_json(&report)),
        (&args.junit, crate::report::junit(&report)),
    ] {
        if let Some(path) = path {
            if let Err(err) = write_file(path, &text) {
                eprintln!("{err:#}");
                code = EXIT_HARNESS;
            }
        }
    }
    code
}

fn report_json(report: &RunReport) -> String {
    crate::report::json(report)
}

/// Writes a report through a temporary file and a rename, so a reader never sees half of it.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
