//! The `kiln` command line: argument types and dispatch. Each subcommand group has its own
//! module; `main.rs` only calls [`main`].
//!
//! Exit codes, for every subcommand:
//! - 0: success;
//! - 1: the command ran and found a failure (reserved for reports and the lab);
//! - 2: bad input or usage (a refused suite, a wrong flag) or kiln itself failed.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cabling;
mod client;
mod collectors;
mod image;
mod lab;
mod memtest;
mod nodes;
mod report;
mod serve;
mod suite;
mod verify;
mod waive;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code when the command found a failure (a failed node in a report).
pub const EXIT_FAILURE_FOUND: u8 = 1;
/// Exit code for bad input, usage errors and internal failures.
pub const EXIT_BAD_INPUT: u8 = 2;

/// kiln: hardware validation for racks of servers.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
#[command(after_help = "Exit codes: 0 success; 1 a failure was found; 2 bad input or usage.")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check suites and print the suite language's JSON Schema.
    #[command(subcommand)]
    Suite(suite::SuiteCommand),
    /// Run the collector server.
    Serve(serve::ServeArgs),
    /// Report nodes and their latest verdicts from a running collector; exits 1 when any failed.
    Report(report::ReportArgs),
    /// Label nodes, set their mode, assign suites and batches.
    #[command(subcommand)]
    Nodes(nodes::NodesCommand),
    /// The site's cabling map (each node's interface and its switch port), checked against
    /// what every run hears over LLDP.
    #[command(subcommand)]
    Cabling(cabling::CablingCommand),
    /// Let a node ship with a fault code (admin): kept with why, who and until when; reports
    /// then show `pass (1 waived)`, never plain pass. `--revoke ID` takes one back.
    Waive(waive::WaiveArgs),
    /// The waiver log: every waiver given, revoked or expired.
    Waivers(waive::WaiversArgs),
    /// The collectors sharing the database: live or gone, last heartbeat, leases held; exits
    /// 1 when one is gone.
    Collectors(collectors::CollectorsArgs),
    /// Verify a rack (or batch, or node): arm, power-cycle each node through its driver, show
    /// them live until every verdict; exits 0 only if all passed. Ctrl-C leaves them running.
    Verify(verify::VerifyArgs),
    /// Watch nodes already verifying until every verdict (after Ctrl-C in `kiln verify`).
    Watch(verify::WatchArgs),
    /// Build the RAM image nodes boot.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Read memtest86+ serial transcripts.
    #[command(subcommand)]
    Memtest(memtest::MemtestCommand),
    /// A virtual rack of QEMU nodes through the real boot chain.
    #[command(subcommand)]
    Lab(lab::LabCommand),
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Suite(cmd) => Ok(suite::run(cmd)),
        Command::Serve(args) => serve::run(args).map(|()| EXIT_OK),
        Command::Report(args) => report::run(args),
        Command::Nodes(cmd) => nodes::run(cmd),
        Command::Cabling(cmd) => cabling::run(cmd),
        Command::Waive(args) => waive::waive(args),
        Command::Waivers(args) => waive::list(args),
        Command::Collectors(args) => collectors::list(args),
        Command::Verify(args) => verify::verify(args),
        Command::Watch(args) => verify::watch(args),
        Command::Image(cmd) => image::run(cmd),
        Command::Memtest(cmd) => memtest::run(cmd),
        Command::Lab(cmd) => lab::run(cmd),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("kiln: {err:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}
