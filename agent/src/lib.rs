//! kiln-agent: runs a kiln suite on a node, in the RAM image or on any Linux host.

pub mod cli;
pub mod suites;
