//! When work must stop: the step's deadline passed, or the operator pressed Ctrl-C. Workers
//! poll [`Stop::should_stop`] between units of work that take milliseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by the Ctrl-C handler; shared by every step of the run.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// A fresh, un-set flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs the process's SIGINT/SIGTERM handler to set this flag (once per process).
    pub fn install_handler(&self) -> anyhow::Result<()> {
        let flag = self.0.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .map_err(|err| anyhow::anyhow!("cannot install the Ctrl-C handler: {err}"))
    }

    /// Sets the flag.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it was set.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a step stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The step's timeout passed.
    Timeout,
    /// The operator interrupted the run.
    Interrupted,
}

/// A step's stop condition.
#[derive(Clone, Debug)]
pub struct Stop {
    deadline: Instant,
    interrupt: Interrupt,
}

impl Stop {
    /// Stops at `timeout` from now, or on `interrupt`.
    pub fn new(timeout: Duration, interrupt: Interrupt) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            interrupt,
        }
    }

    /// Whether work should stop now.
    pub fn should_stop(&self) -> bool {
        self.reason().is_some()
    }

    /// Why work should stop, if it should.
    pub fn reason(&self) -> Option<StopReason> {
        if self.interrupt.is_set() {
            Some(StopReason::Interrupted)
        } else if Instant::now() >= self.deadline {
            Some(StopReason::Timeout)
        } else {
            None
        }
    }

    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}
