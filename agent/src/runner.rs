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
use crate::os::kmsg::KmsgWatch;
use crate::stop::{Interrupt, Stop, StopReason};

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
    // The BMC's event log as last read: each step's new entries are counted against it, so
    // an entry added while a read failed is still reported by the next step that reads it.
    // Read once before the first step is announced, so nothing the BMC logs after the
    // announcement can land in the first step's baseline.
    let mut sel: Option<SelSnapshot> =
        crate::hw::sel::read(std::path::Path::new(crate::hw::sel::DEVICE))
            .ok()
            .map(|events| SelSnapshot { events, step: 0 });
    let sensors = BmcSensors::open(plan, &log);
    for step in &plan.steps {
        if interrupt.is_set() {
            break;
        }
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
        let report = run_retested(step, options, interrupt, &sink, &mut sel, &sensors);
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
    sel: &mut Option<SelSnapshot>,
    sensors: &BmcSensors,
) -> StepReport {
    let report = run_step(step, options, interrupt, sink.clone(), sel, sensors);
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
        attempts.push(run_step(
            step,
            options,
            interrupt,
            sink.clone(),
            sel,
            sensors,
        ));
    }
    kiln_protocol::verdict::retested(attempts, rule)
}

/// The BMC's sensors for every step: the repository walked once, and the suite's limits.
struct BmcSensors {
    repo: Result<Arc<crate::hw::sensors::Repository>, String>,
    limits: kiln_protocol::suite::Sensors,
}

impl BmcSensors {
    /// Walks the repository of the BMC behind `/dev/ipmi0`, saying what it found.
    fn open(plan: &Plan, log: &dyn Fn(LogLevel, String)) -> BmcSensors {
        use crate::hw::sensors;
        let device = std::path::Path::new(crate::hw::sel::DEVICE);
        let limits = plan.suite.sensors.unwrap_or_default();
        let repo = sensors::open(device).and_then(|mut bmc| {
            sensors::repository(&mut bmc, Instant::now() + Duration::from_secs(120))
        });
        match &repo {
            Ok(r) => {
                log(
                    LogLevel::Info,
                    format!(
                        "BMC sensors: {} charted, read every {}",
                        r.sensors.len(),
                        limits.interval
                    ),
                );
                for p in &r.problems {
                    log(LogLevel::Warn, format!("BMC sensors: {p}"));
                }
            }
            Err(e) => log(LogLevel::Info, format!("BMC sensors not read: {e}")),
        }
        BmcSensors {
            repo: repo.map(Arc::new),
            limits,
        }
    }

    /// Starts step `step`'s watch, when the BMC lists sensors.
    fn watch(&self, step: u32, sink: &Arc<dyn EventSink>) -> Option<crate::hw::sensors::Watch> {
        let repo = self.repo.as_ref().ok().filter(|r| !r.sensors.is_empty())?;
        let bmc = crate::hw::sensors::open(std::path::Path::new(crate::hw::sel::DEVICE)).ok()?;
        Some(crate::hw::sensors::Watch::start(
            Box::new(bmc),
            repo.clone(),
            self.limits,
            step,
            {
                let sink = sink.clone();
                Arc::new(move |e| sink.emit(e))
            },
        ))
    }

    /// What step's watch found, or — with no watch — the suite's limits it could not hold.
    fn finish(&self, watch: Option<crate::hw::sensors::Watch>) -> crate::hw::sensors::Found {
        watch.map_or_else(
            || crate::hw::sensors::Found {
                faults: kiln_protocol::sensors::unmeasured(&self.limits, &[])
                    .into_iter()
                    .map(|line| Fault::new("sensors.unmeasured", line))
                    .collect(),
                metrics: Vec::new(),
            },
            crate::hw::sensors::Watch::finish,
        )
    }
}

/// The BMC's event log as read before step `step`.
struct SelSnapshot {
    events: Vec<crate::hw::sel::SelEvent>,
    step: u32,
}

fn run_step(
    step: &kiln_protocol::PlannedStep,
    options: &RunOptions,
    interrupt: &Interrupt,
    sink: Arc<dyn EventSink>,
    sel: &mut Option<SelSnapshot>,
    sensors: &BmcSensors,
) -> StepReport {
    let started = Instant::now();
    let stop = Stop::new(step.timeout, interrupt.clone());
    let observer = Observer {
        sink: sink.clone(),
        step: step.index as u32,
    };
    // Machine checks polled every second while the step runs (restored when `_poll` drops).
    let _poll = match crate::os::mce::FastPoll::start(
        std::path::Path::new(crate::os::mce::MACHINECHECK),
        crate::os::mce::STEP_INTERVAL_SECS,
    ) {
        Ok(poll) => poll,
        Err(err) => {
            observer.log(
                LogLevel::Info,
                &format!("machine-check poll interval not lowered ({err}): a corrected error may be logged up to 5 minutes late"),
            );
            None
        }
    };
    // AER counters and status registers before the step: what grows during it is its fault.
    let sys = std::path::Path::new("/sys");
    let aer_before = crate::hw::aer::aer(sys);
    // The BMC's event log too, where the node has one.
    if sel.is_none() {
        *sel = crate::hw::sel::read(std::path::Path::new(crate::hw::sel::DEVICE))
            .ok()
            .map(|events| SelSnapshot {
                events,
                step: step.index as u32,
            });
    }
    let kmsg = KmsgWatch::start();
    if kmsg.is_none() {
        observer.log(LogLevel::Info, "kernel log (/dev/kmsg) not readable: machine-check and I/O error lines are not watched");
    }
    let watch = sensors.watch(step.index as u32, &sink);
    let result = run_check(step, options, &stop, observer);
    let bmc = sensors.finish(watch);
    let mut kernel_faults = kmsg.map(KmsgWatch::finish).unwrap_or_default();
    kernel_faults.extend(bmc.faults);
    kernel_faults.extend(crate::hw::aer::step_errors(sys, &aer_before));
    kernel_faults.extend(sel_after(step, sel, &sink));
    let (outcome, metrics) = match (result, stop.reason()) {
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
            output.metrics.extend(bmc.metrics);
            finish(step, output, kernel_faults, &sink)
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

/// The BMC's event log after the step: its new entries (against the log as last read) are
/// the step's faults, and the read becomes the next step's baseline. A failed read keeps the
/// old baseline, so nothing added meanwhile is lost.
fn sel_after(
    step: &kiln_protocol::PlannedStep,
    sel: &mut Option<SelSnapshot>,
    sink: &Arc<dyn EventSink>,
) -> Vec<Fault> {
    let Some(before) = sel.as_ref() else {
        return Vec::new();
    };
    match crate::hw::sel::read(std::path::Path::new(crate::hw::sel::DEVICE)) {
        Ok(after) => {
            // Counted from an earlier step's read: said so, not "during the step".
            let since = if before.step == step.index as u32 {
                "during the step".to_owned()
            } else {
                format!(
                    "since the log was last read (before step {})",
                    before.step + 1
                )
            };
            let new = crate::hw::sel::new_entries(&before.events, &after, &since);
            *sel = Some(SelSnapshot {
                events: after,
                step: step.index as u32 + 1,
            });
            new
        }
        Err(err) => {
            sink.emit(EventBody::Log {
                step: Some(step.index as u32),
                level: LogLevel::Warn,
                line: format!(
                    "the BMC event log could not be read after the step ({err}): entries added now are reported by the next step that reads it"
                ),
            });
            Vec::new()
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
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<EventBody>>);

    impl EventSink for Recorder {
        fn emit(&self, body: EventBody) {
            self.0.lock().unwrap().push(body);
        }
    }

    fn plan(steps: &str) -> Plan {
        let text = format!("suite: t\ndescription: runner test\nsteps:\n{steps}");
        kiln_protocol::load("t.yaml", text.as_bytes()).unwrap()
    }

    fn exec(name: &str, argv: &str, extra: &str) -> String {
        format!("  - name: {name}\n{extra}    exec: {{argv: {argv}}}\n")
    }

    #[test]
    fn a_skipped_check_with_a_threshold_it_needed_fails_unless_optional() {
        let skipped = || CheckOutput {
            skip: Some("no physical network interfaces on this node".into()),
            ..CheckOutput::default()
        };
        let sink: Arc<dyn EventSink> = Arc::new(Recorder::default());
        let nic = |extra: &str| {
            plan(&format!("  - name: nic\n    nic: {{link: true{extra}}}\n"))
                .steps
                .remove(0)
        };
        // No threshold: a skip, said as such.
        let (o, _) = finish(&nic(""), skipped(), vec![], &sink);
        assert!(matches!(o, Outcome::Skip { .. }), "{o:?}");
        // `max_errors` asked for and nothing measured: never a pass.
        let (o, _) = finish(&nic(", max_errors: 0"), skipped(), vec![], &sink);
        let Outcome::Fail { faults } = o else {
            panic!("an unmeasured threshold passed as a skip: {o:?}")
        };
        assert_eq!(faults[0].code, "threshold.max_errors.unmeasured");
        // Marked optional: a skip again.
        let mut step = nic(", max_errors: 0");
        step.optional = vec!["max_errors".into()];
        let (o, _) = finish(&step, skipped(), vec![], &sink);
        assert!(matches!(o, Outcome::Skip { .. }), "{o:?}");
    }

    #[test]
    fn outcomes_combine_into_the_verdict_and_every_event_is_emitted() {
        let plan = plan(&(exec("ok", "[true]", "") + &exec("bad", "[false]", "")));
        let sink = Arc::new(Recorder::default());
        let report = run(
            &plan,
            &RunOptions::default(),
            &Interrupt::new(),
            sink.clone(),
        );
        assert_eq!(report.steps[0].outcome, Outcome::Pass);
        let Outcome::Fail { faults } = &report.steps[1].outcome else {
            panic!("{:?}", report.steps[1])
        };
        assert_eq!(faults[0].code, "exec.exit_code");
        assert_eq!(report.verdict, Verdict::Fail);
        let events = sink.0.lock().unwrap();
        assert!(matches!(
            events.first(),
            Some(EventBody::RunStarted { steps: 2, .. })
        ));
        assert!(matches!(
            events.last(),
            Some(EventBody::RunFinished {
                verdict: Verdict::Fail
            })
        ));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, EventBody::StepFinished { .. }))
                .count(),
            2
        );
    }

    #[test]
    fn a_step_past_its_timeout_is_killed_and_reported_as_an_error() {
        let plan = plan(&exec("slow", "[sleep, '30']", "    timeout: 1s\n"));
        let started = Instant::now();
        let report = run(
            &plan,
            &RunOptions::default(),
            &Interrupt::new(),
            Arc::new(Recorder::default()),
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sleep was not killed"
        );
        assert_eq!(
            report.steps[0].outcome,
            Outcome::Error {
                message: "timed out after 1s".into()
            }
        );
        assert_eq!(report.verdict, Verdict::Error);
    }

    #[test]
    fn an_interrupt_stops_the_run_and_still_yields_a_report() {
        let plan = plan(&(exec("first", "[sleep, '30']", "") + &exec("second", "[true]", "")));
        let interrupt = Interrupt::new();
        let trigger = interrupt.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            trigger.trigger();
        });
        let report = run(
            &plan,
            &RunOptions::default(),
            &interrupt,
            Arc::new(Recorder::default()),
        );
        assert!(report.interrupted);
        assert_eq!(report.steps.len(), 1, "the second step must not start");
        assert_eq!(
            report.steps[0].outcome,
            Outcome::Error {
                message: "interrupted by the operator".into()
            }
        );
        assert_eq!(report.verdict, Verdict::Error);
    }

    #[test]
    fn expect_mismatch_fails_the_run_with_that_fault() {
        let text = "suite: t\ndescription: d\nexpect:\n  cpu: {min_logical: 4096}\nsteps:\n  - name: ok\n    exec: {argv: [true]}\n";
        let plan = kiln_protocol::load("t.yaml", text.as_bytes()).unwrap();
        let report = run(
            &plan,
            &RunOptions::default(),
            &Interrupt::new(),
            Arc::new(Recorder::default()),
        );
        let Some(Outcome::Fail { faults }) = &report.expect else {
            panic!("{:?}", report.expect)
        };
        assert_eq!(faults[0].code, "expect.cpu.min_logical");
        assert_eq!(report.verdict, Verdict::Fail);
    }

    #[test]
    fn exec_metrics_meet_their_thresholds() {
        let steps = r#"  - name: tool
    exec:
      argv:
        - sh
        - -c
        - "echo '{\"score\": 42}' > \"$KILN_METRICS\""
      metrics: {score: {min: 50}}
"#;
        let report = run(
            &plan(steps),
            &RunOptions::default(),
            &Interrupt::new(),
            Arc::new(Recorder::default()),
        );
        let Outcome::Fail { faults } = &report.steps[0].outcome else {
            panic!("{:?}", report.steps[0])
        };
        assert_eq!(
            faults[0].message,
            "score 42 is below the minimum 50 (score.min)"
        );
    }
}
