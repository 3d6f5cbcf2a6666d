//! The `kiln-agent` command line.
//!
//! Exit-code contract (the one place it is defined; `--help` prints it too):
//! - 0: every step passed (or was degraded or skipped);
//! - 1: a hardware fault: some step failed;
//! - 2: the harness failed, or bad usage or a refused suite.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
