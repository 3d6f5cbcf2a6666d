//! kiln-agent: runs a kiln suite on a node, in the RAM image or on any Linux host.
//!
//! The [`runner`] drives a checked plan through the [`checks`] registry; heavy work runs on
//! plain threads pinned per CPU, and every event flows to sinks (the [`console`], reports).

pub mod bandwidth;
pub mod boot;
pub mod checks;
pub mod cli;
pub mod collector;
pub mod console;
pub mod hw;
pub mod inventory;
pub mod os;
pub mod payload;
pub mod report;
pub mod reporter;
pub mod rng;
pub mod runner;
pub mod stop;
pub mod suites;
