//! The kiln collector: the server nodes boot from and report to (API, SQLite store, reports)
//! and the operator CLI.

pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub mod image;
pub mod lab;
pub mod lifecycle;
pub mod memtest;
pub mod metrics;
pub mod pairing;
pub mod server;
pub mod store;
pub mod suites;
pub mod tls;
pub mod tokens;
pub mod tracker;
