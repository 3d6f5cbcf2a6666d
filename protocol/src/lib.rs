//! kiln's shared language: the YAML suite model and its checked plan, the agent ↔ collector
//! wire types, and the rules that turn step outcomes into verdicts.
//!
//! This crate does no I/O of its own (no files, sockets or clocks) so both the agent in the
//! RAM image and the collector can use it, and every rule in it is tested without a host.

pub mod api;
pub mod attest;
pub mod bounds;
pub mod cmdline;
pub mod expect;
pub mod identity;
pub mod junit;
pub mod lldp;
pub mod load;
pub mod locate;
pub mod mce;
pub mod newc;
pub mod pair;
pub mod payload;
pub mod plan;
pub mod readable;
pub mod routes;
pub mod schema;
pub mod sensors;
pub mod suite;
pub mod text;
pub mod units;
pub mod verdict;
pub mod wire;

pub use load::{Diagnostic, MAX_SUITE_BYTES, SuiteError, load, load_reader};
pub use plan::{Check, Plan, PlannedStep};
