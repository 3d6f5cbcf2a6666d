//! `kiln memtest parse`: read a captured memtest86+ serial transcript offline.

use std::path::PathBuf;

use clap::Subcommand;

use crate::memtest::screen::{Status, parse_transcript};

#[derive(Debug, Subcommand)]
pub(super) enum MemtestCommand {
    /// Rebuild the screen from a serial transcript and print what it says; exits 1 when the
    /// screen shows errors.
    Parse {
        /// The raw serial capture.
        file: PathBuf,
        /// Print the reading as JSON (with the screen text).
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cmd: MemtestCommand) -> anyhow::Result<u8> {
    let MemtestCommand::Parse { file, json } = cmd;
    let bytes = std::fs::read(&file)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
    let (reading, screen) = parse_transcript(&bytes);
    anyhow::ensure!(
        reading.started,
        "{}: no memtest86+ screen in this transcript",
        file.display()
    );
    if json {
        let mut value = serde_json::to_value(&reading)?;
        value["screen"] = serde_json::Value::String(screen);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{screen}");
        let status = match reading.status {
            Some(Status::Testing) => "testing",
            Some(Status::Pass) => "pass",
            Some(Status::Failed) => "failed",
            None => "unknown",
        };
        println!(
            "status {status}, passes {}, errors {}, test #{} {}",
            reading.passes.map_or("?".into(), |p| p.to_string()),
            reading.errors.map_or("?".into(), |e| e.to_string()),
            reading.test_number.map_or("?".into(), |t| t.to_string()),
            reading.test_name.unwrap_or_default()
        );
        for row in &reading.error_rows {
            println!(
                "error: CPU {} pass {} test {} address 0x{} ({}) expected {} found {}",
                row.cpu,
                row.pass,
                row.test,
                row.address,
                row.address_human,
                row.expected,
                row.found
            );
        }
    }
    Ok(if reading.errors.unwrap_or(0) > 0 {
        super::EXIT_FAILURE_FOUND
    } else {
        super::EXIT_OK
    })
}
