//! What an agent and the collector say to pair nodes for `nic: {target: peer}`: the agent
//! asks with the step it is at and the port its bandwidth server listens on, and is told to
//! wait, to measure against a partner, that it may go on, or that no partner came.

use serde::{Deserialize, Serialize};

/// Body of `POST /api/v1/runs/{id}/pair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    /// The step (by index) whose NIC check asks.
    pub step: u32,
    /// The port this node's bandwidth server listens on.
    pub port: u16,
}

/// The collector's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum PairAnswer {
    /// Ask again shortly.
    Wait,
    /// Measure against the partner now, both ways; say when done.
    Pair {
        /// The pair.
        pair: u64,
        /// The partner, by node id.
        node: i64,
        /// Its name (host name, else `node N`).
        name: String,
        /// Where its bandwidth server listens (`IP:PORT`).
        addr: String,
        /// Whether this node was measured already and pairs as a helper for one that was not.
        helper: bool,
    },
    /// Measured, and no one needs this node any more: go on.
    Released,
    /// No partner came within the step's `pair_timeout`.
    TimedOut {
        /// How long it waited, in seconds.
        waited_s: u64,
    },
}

/// Body of `POST /api/v1/runs/{id}/pair/done`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairDone {
    /// The pair that finished measuring.
    pub pair: u64,
}
