//! Runs a checked plan on this node: inventory and `expect:` first, then each step on its own
//! thread under its timeout, with the kernel log watched; every event goes to a sink (the
//! console, and the collector's reporter), and the run ends in a [`RunReport`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::Plan;
use kiln_protocol::verdict::{Verdict, run_verdict, step_outcome};
use kiln_protocol::wire::{EventBody, Fault, Inventory, LogLevel, Outcome, StepReport};
use serde::{Deserialize, Serialize};

use crate::checks::{self, CheckOutput, RunOptions, StepContext, StepObserver};
use crate::stop::{Interrupt, Stop, StopReason};

mod group;
mod watchers;

use watchers::{Machine, Watchers};

/// How long a check may take to wind down after its timeout before the runner gives up on it
/// and moves on (its thread is abandoned; the process exit reaps it).
const GRACE: Duration = Duration::from_secs(15);

/// Receives every event of a run, from any thread.
pub trait EventSink: Send + Sync {
    /// One event.
    fn emit(&self, body: EventBody);
}

/// Everything a run found: what the JSON report holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Suite name.
    pub suite: String,
    /// Suite version.
    pub suite_version: Option<String>,
    /// Host name.
    pub host: Option<String>,
    /// kiln-agent version.
    pub agent: String,
    /// Start, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Run time in milliseconds.
    pub duration_ms: u64,
    /// The node's inventory.
    pub inventory: Inventory,
    /// The `expect:` result, when the suite has one.
    pub expect: Option<Outcome>,
    /// Steps that ran, in order.
    pub steps: Vec<StepReport>,
    /// Steps planned.
    pub planned_steps: usize,
    /// The run's verdict.
    pub verdict: Verdict,
    /// Whether the operator interrupted the run.
    pub interrupted: bool,
}

struct Observer {
    sink: Arc<dyn EventSink>,
    step: u32,
}

impl StepObserver for Observer {
    fn progress(&self, fraction: f64, status: &str) {
        let status = (!status.is_empty()).then(|| status.to_owned());
        self.sink.emit(EventBody::Progress {
            step: self.step,
            fraction: fraction.clamp(0.0, 1.0),
            status,
        });
    }

    fn log(&self, level: LogLevel, line: &str) {
        self.sink.emit(EventBody::Log {
            step: Some(self.step),
            level,
            line: line.to_owned(),
        });
    }
}

/// Runs `plan` and returns its report. Never panics on hardware faults: they are outcomes.
pub fn run(
    plan: &Plan,
    options: &RunOptions,
    interrupt: &Interrupt,
    sink: Arc<dyn EventSink>,
) -> RunReport {
    run_on(plan, options, interrupt, sink, crate::inventory::collect())
}

/// Runs `plan` on a node whose inventory was already collected (to register it first).
pub fn run_on(
    plan: &Plan,
    options: &RunOptions,
    interrupt: &Interrupt,
    sink: Arc<dyn EventSink>,
    inventory: Inventory,
) -> RunReport {
    let started = Instant::now();
    let started_ms = crate::os::now_ms();
    sink.emit(EventBody::RunStarted {
        suite: plan.name().to_owned(),
        steps: plan.steps.len() as u32,
        agent: env!("CARGO_PKG_VERSION").to_owned(),
    });
    let log = |level, line: String| {
        sink.emit(EventBody::Log {
            step: None,
            level,
            line,
        })
    };
    log(
        LogLevel::Info,
        format!(
            "node: {} {} serial {}; {} × {}; {:.1} GiB memory; {} disk(s); {} NIC(s)",
            inventory.system.vendor.as_deref().unwrap_or("?"),
            inventory.system.product.as_deref().unwrap_or("?"),
            inventory.system.serial.as_deref().unwrap_or("?"),
            inventory.cpu.logical,
            inventory.cpu.brand,
            inventory.memory.total_bytes as f64 / f64::from(1u32 << 30),
            inventory.disks.len(),
            inventory.nics.len()
        ),
    );
    let expect = plan.expect().map(|expect| {
        let outcome = kiln_protocol::verdict::expect_outcome(expect, &inventory);
        sink.emit(EventBody::ExpectChecked {
            outcome: outcome.clone(),
        });
        outcome
    });

    let mut steps = Vec::new();
    // The BMC's event log as last read (each step's new entries are counted against it, so
    // an entry added while a read failed is still reported by the next step that reads it),
    // and its sensor repository.
    let mut machine = Machine::open(plan, &log);
    let mut next = 0;
    while let Some(step) = plan.steps.get(next) {
        if interrupt.is_set() {
            break;
        }
        if let Some(g) = &step.group {
            let members = &plan.steps[g.first..g.first + g.members];
            for report in group::run(members, options, interrupt, &sink, &mut machine) {
                steps.push(report);
            }
            next = g.first + g.members;
            continue;
        }
        next += 1;
        sink.emit(EventBody::StepStarted {
            step: step.index as u32,
            name: step.name.clone(),
            kind: step.check.kind().to_owned(),
        });
        tracing::info!(
            step = step.index,
            name = %step.name,
            kind = step.check.kind(),
            timeout_s = step.timeout.as_secs(),
            "step started"
        );
        let report = run_retested(step, options, interrupt, &sink, &mut machine);
        tracing::info!(
            step = step.index,
            outcome = report.outcome.name(),
            ms = report.duration_ms,
            "step finished"
        );
        sink.emit(EventBody::StepFinished {
            report: report.clone(),
        });
        steps.push(report);
    }
    let interrupted = interrupt.is_set();
    let planned = plan.steps.len() + usize::from(expect.is_some());
    let outcomes = expect.iter().chain(steps.iter().map(|s| &s.outcome));
    let verdict = run_verdict(planned, outcomes, !interrupted);
    sink.emit(EventBody::RunFinished { verdict });
    RunReport {
        suite: plan.name().to_owned(),
        suite_version: plan.suite.version.clone(),
        host: crate::os::read_trimmed("/proc/sys/kernel/hostname"),
        agent: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms,
        duration_ms: started.elapsed().as_millis() as u64,
        inventory,
        expect,
        steps,
        planned_steps: plan.steps.len(),
        verdict,
        interrupted,
    }
}

/// Runs a step, and again per its `retest` when it fails: every attempt runs, so the count
/// says how often the fault shows; the report then covers them all.
fn run_retested(
    step: &kiln_protocol::PlannedStep,
    options: &RunOptions,
    interrupt: &Interrupt,
    sink: &Arc<dyn EventSink>,
    machine: &mut Machine,
) -> StepReport {
    let report = run_step(step, options, interrupt, sink.clone(), machine);
    let (Some(rule), Outcome::Fail { .. }) = (step.retest, &report.outcome) else {
        return report;
    };
    let mut attempts = vec![report];
    while attempts.len() < rule.attempts as usize && !interrupt.is_set() {
        sink.emit(EventBody::Log {
            step: Some(step.index as u32),
            level: LogLevel::Warn,
            line: format!(
                "retest {} of {}: the step failed, running it again",
                attempts.len() + 1,
                rule.attempts
            ),
        });
        attempts.push(run_step(step, options, interrupt, sink.clone(), machine));
    }
    kiln_protocol::verdict::retested(attempts, rule)
}

fn run_step(
    step: &kiln_protocol::PlannedStep,
    options: &RunOptions,
    interrupt: &Interrupt,
    sink: Arc<dyn EventSink>,
    machine: &mut Machine,
) -> StepReport {
    let started = Instant::now();
    let stop = Stop::new(step.timeout, interrupt.clone());
    let observer = Observer {
        sink: sink.clone(),
        step: step.index as u32,
    };
    let watchers = Watchers::start(step.index as u32, machine, &sink);
    let result = run_check(step, options, &stop, observer);
    let watched = watchers.finish(step.index as u32, machine, &sink);
    report(step, started, result, stop.reason(), watched, &sink)
}

/// A step's report from its check's result, why it was stopped, and what the watchers saw.
fn report(
    step: &kiln_protocol::PlannedStep,
    started: Instant,
    result: anyhow::Result<CheckOutput>,
    stopped: Option<StopReason>,
    watched: watchers::Watched,
    sink: &Arc<dyn EventSink>,
) -> StepReport {
    let (outcome, metrics) = match (result, stopped) {
        (_, Some(StopReason::Interrupted)) => (
            Outcome::Error {
                message: "interrupted by the operator".into(),
            },
            vec![],
        ),
        (_, Some(StopReason::Timeout)) => (
            Outcome::Error {
                message: format!(
                    "timed out after {}",
                    kiln_protocol::units::HumanDuration(step.timeout)
                ),
            },
            vec![],
        ),
        (Err(err), None) => (
            Outcome::Error {
                message: format!("{err:#}"),
            },
            vec![],
        ),
        (Ok(mut output), None) => {
            output.metrics.extend(watched.metrics);
            finish(step, output, watched.faults, sink)
        }
    };
    StepReport {
        step: step.index as u32,
        name: step.name.clone(),
        kind: step.check.kind().to_owned(),
        outcome,
        metrics,
        duration_ms: started.elapsed().as_millis() as u64,
        attempts: vec![],
    }
}

/// Runs the step's check on its own thread and waits for it, up to the stop deadline plus a
/// grace period: a check that does not stop by then is abandoned as an error.
fn run_check(
    step: &kiln_protocol::PlannedStep,
    options: &RunOptions,
    stop: &Stop,
    observer: Observer,
) -> anyhow::Result<CheckOutput> {
    match checks::lookup(step.check.kind()) {
        None => Err(anyhow::anyhow!(
            "this agent has no {} check",
            step.check.kind()
        )),
        Some(kind) => {
            let check = step.check.clone();
            let step_index = step.index;
            let options = options.clone();
            let thread_stop = stop.clone();
            // Made here, inside the run's span, and entered on the step's thread: what the
            // check logs carries the run and the step.
            let span = tracing::info_span!(
                "step",
                index = step.index,
                name = %step.name,
                kind = step.check.kind()
            );
            let handle = std::thread::Builder::new()
                .name(format!("step-{}", step.index))
                .spawn(move || {
                    let _step = span.enter();
                    let ctx = StepContext {
                        step: step_index,
                        stop: thread_stop,
                        observer: &observer,
                        options: &options,
                    };
                    kind.run(&check, &ctx)
                });
            match handle {
                Err(err) => Err(anyhow::anyhow!("cannot start the step's thread: {err}")),
                Ok(handle) => {
                    let give_up = stop.deadline() + GRACE;
                    while !handle.is_finished() && Instant::now() < give_up {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if handle.is_finished() {
                        handle.join().unwrap_or_else(|_| {
                            Err(anyhow::anyhow!("the {} check panicked", step.check.kind()))
                        })
                    } else {
                        Err(anyhow::anyhow!(
                            "did not stop within {}s of its timeout; abandoned",
                            GRACE.as_secs()
                        ))
                    }
                }
            }
        }
    }
}

/// Turns what a check found into its outcome against the step's thresholds.
fn finish(
    step: &kiln_protocol::PlannedStep,
    output: CheckOutput,
    kernel: Vec<Fault>,
    sink: &Arc<dyn EventSink>,
) -> (Outcome, Vec<kiln_protocol::wire::Metric>) {
    let CheckOutput {
        mut faults,
        metrics,
        skip,
        degraded,
        inconclusive,
    } = output;
    faults.extend(kernel);
    let mut decided = step_outcome(step, faults, &metrics, skip, degraded);
    if let Some(note) = inconclusive {
        decided.outcome = kiln_protocol::verdict::pairs::excuse(decided.outcome, &note);
    }
    for line in decided.notes {
        sink.emit(EventBody::Log {
            step: Some(step.index as u32),
            level: LogLevel::Warn,
            line,
        });
    }
    (decided.outcome, metrics)
}

/// Sends every event to several sinks (the console and the reporter).
pub struct Tee(pub Vec<Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, body: EventBody) {
        for sink in &self.0 {
            sink.emit(body.clone());
        }
    }
}

#[cfg(test)]
mod tests;
