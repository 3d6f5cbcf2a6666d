//! `kiln suite …`: check suite files with the loader the agent uses, print the JSON Schema.

use std::path::PathBuf;

use clap::Subcommand;

use super::{EXIT_BAD_INPUT, EXIT_OK};

#[derive(Debug, Subcommand)]
pub(super) enum SuiteCommand {
    /// Check suite files; prints one summary line per good file and every problem of a bad
    /// one. Exits 0 when all are good, 2 when any is refused.
    Check {
        /// Suite files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the suite language (as committed in suites/schema.json).
    Schema,
}

pub(super) fn run(cmd: SuiteCommand) -> u8 {
    match cmd {
        SuiteCommand::Check { files } => {
            let mut code = EXIT_OK;
            for file in files {
                match crate::suites::load_file(&file) {
                    Ok(plan) => println!("{}: ok: {}", file.display(), plan.summary()),
                    Err(err) => {
                        eprintln!("{:#}", anyhow::Error::from(err));
                        code = EXIT_BAD_INPUT;
                    }
                }
            }
            code
        }
        SuiteCommand::Schema => {
            print!("{}", kiln_protocol::schema::suite_schema_json());
            EXIT_OK
        }
    }
}
