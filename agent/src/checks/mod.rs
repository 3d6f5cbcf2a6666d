//! The check kinds: one module each, one [`CheckKind`] implementation each, listed once in
//! [`REGISTRY`]. Adding a kind touches three files: its module here, its line in the registry,
//! and its parameters with their line in the kinds list of `protocol/src/suite/checks.rs`
//! (the README's Architecture section walks through one).
//!
//! A check returns what it measured and found; hardware faults are data in [`CheckOutput`],
//! while `Err` means the harness itself could not do its work.

pub mod cpu;
pub mod disk;
pub mod exec;
pub mod memory;
pub mod nic;
pub mod pair;
pub mod watch;

use kiln_protocol::Check;
use kiln_protocol::wire::{Fault, LogLevel, Metric};

use crate::stop::Stop;

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckOutput {
    /// Hardware faults (any one fails the step).
    pub faults: Vec<Fault>,
    /// Measurements, named as the suite's thresholds name them.
    pub metrics: Vec<Metric>,
    /// Set when the check could not apply on this node (the step is a skip, not a pass).
    pub skip: Option<String>,
    /// Reasons to call the step degraded beyond the suite's thresholds (built-in targets).
    pub degraded: Vec<String>,
    /// Why the figures prove nothing against the node (a pair with no third node to retest
    /// against): missed thresholds degrade the step instead of failing it
    /// ([`kiln_protocol::verdict::pairs::excuse`]).
    pub inconclusive: Option<String>,
}

impl CheckOutput {
    /// Records a metric.
    pub fn metric(&mut self, name: &str, value: f64, unit: &str) {
        self.metrics.push(Metric {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }
}

/// Where a running check reports progress and log lines; safe to call from worker threads.
pub trait StepObserver: Sync {
    /// Fraction done in [0, 1] and the live metric to show (`7.9 GB/s`).
    fn progress(&self, fraction: f64, status: &str);
    /// A log line for the step.
    fn log(&self, level: LogLevel, line: &str);
}

/// Options the operator gave the run (not the suite).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The operator allowed destructive disk steps (`--allow-destructive` or the boot plan).
    pub allow_destructive: bool,
    /// Base URL of the collector, for `nic: {target: collector}`.
    pub collector: Option<String>,
    /// The run's session token, which the collector's bandwidth endpoints ask for. It goes
    /// to the collector only, never to a peer target.
    pub collector_token: Option<String>,
    /// The run, when a collector has one (for `nic: {target: peer}`, which it pairs).
    pub run_id: Option<i64>,
    /// The CPUs a memory or cpu check runs its workers on, when the runner gives it a share
    /// (a `parallel:` group's split); every CPU the process may use when `None`.
    pub cpus: Option<Vec<usize>>,
}

/// Everything a check may use while it runs.
pub struct StepContext<'a> {
    /// The step's index in the plan.
    pub step: usize,
    /// When to stop.
    pub stop: Stop,
    /// Progress and logs.
    pub observer: &'a dyn StepObserver,
    /// Operator options.
    pub options: &'a RunOptions,
}

/// One kind of check.
pub trait CheckKind: Sync {
    /// The suite key of this kind (`memory`).
    fn kind(&self) -> &'static str;

    /// Runs the check. Only harness failures are `Err`.
    fn run(&self, check: &Check, ctx: &StepContext<'_>) -> anyhow::Result<CheckOutput>;
}

/// Every check kind the agent can run.
pub static REGISTRY: &[&dyn CheckKind] = &[
    &memory::Memory,
    &cpu::Cpu,
    &disk::Disk,
    &nic::Nic,
    &exec::Exec,
    &watch::Watch,
];

/// The implementation of a kind.
pub fn lookup(kind: &str) -> Option<&'static dyn CheckKind> {
    REGISTRY.iter().copied().find(|k| k.kind() == kind)
}

/// The error when a check is handed a plan entry of another kind (a registry bug).
fn wrong_kind(expected: &str, check: &Check) -> anyhow::Error {
    anyhow::anyhow!("the {expected} check was handed a {} step", check.kind())
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_covers_every_suite_kind_once() {
        for kind in kiln_protocol::suite::CHECK_KINDS {
            let n = super::REGISTRY.iter().filter(|k| k.kind() == *kind).count();
            assert_eq!(n, 1, "{kind}");
        }
    }
}
