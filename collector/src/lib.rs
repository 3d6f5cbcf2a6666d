//! The kiln collector: the server nodes boot from and report to, and the operator CLI.

pub mod cli;
pub mod suites;
