//! Cross-crate integration tests: one binary, one module per area.

// Test helpers outside #[test] functions unwrap too: a panic is the failure report here.
#![allow(clippy::unwrap_used)]

mod boot;
mod lab;
mod lab_collectors;
mod memtest;
mod structure;
mod suites;
