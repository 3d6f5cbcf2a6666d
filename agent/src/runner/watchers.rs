//! The machine's watchers around each step (or each `parallel:` group): machine checks
//! polled every second, the kernel log, PCIe AER, the BMC's event log and its sensors. What
//! they find during the step is its fault; the event log and the sensor repository are kept
//! from step to step ([`Machine`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::Plan;
use kiln_protocol::wire::{EventBody, Fault, LogLevel, Metric};

use super::EventSink;
use crate::os::kmsg::KmsgWatch;

/// What the watchers keep from step to step.
pub(super) struct Machine {
    /// The BMC's event log as last read.
    pub sel: Option<SelSnapshot>,
    /// The BMC's sensor repository and the suite's limits.
    pub sensors: BmcSensors,
}

impl Machine {
    /// Reads the BMC's event log and walks its sensor repository, saying what it found.
    /// The event log is read before the first step is announced, so nothing the BMC logs
    /// after the announcement can land in the first step's baseline.
    pub fn open(plan: &Plan, log: &dyn Fn(LogLevel, String)) -> Machine {
        Machine {
            sel: crate::hw::sel::read(std::path::Path::new(crate::hw::sel::DEVICE))
                .ok()
                .map(|events| SelSnapshot { events, step: 0 }),
            sensors: BmcSensors::open(plan, log),
        }
    }
}

/// The watchers of one step (or group), started before its check.
pub(super) struct Watchers {
    _poll: Option<crate::os::mce::FastPoll>,
    aer_before: crate::hw::aer::AerSnapshot,
    kmsg: Option<KmsgWatch>,
    watch: Option<crate::hw::sensors::Watch>,
}

/// What the watchers found: faults of the step, and the BMC's peaks as its metrics.
pub(super) struct Watched {
    pub faults: Vec<Fault>,
    pub metrics: Vec<Metric>,
}

impl Watchers {
    /// Starts every watcher for `step` (index), saying on `sink` which could not start.
    pub fn start(step: u32, machine: &mut Machine, sink: &Arc<dyn EventSink>) -> Watchers {
        let say = |line: String| {
            sink.emit(EventBody::Log {
                step: Some(step),
                level: LogLevel::Info,
                line,
            })
        };
        // Machine checks polled every second while the step runs (restored on drop).
        let poll = crate::os::mce::FastPoll::start(
            std::path::Path::new(crate::os::mce::MACHINECHECK),
            crate::os::mce::STEP_INTERVAL_SECS,
        )
        .unwrap_or_else(|err| {
            say(format!("machine-check poll interval not lowered ({err}): a corrected error may be logged up to 5 minutes late"));
            None
        });
        // AER counters and status registers before the step: what grows during it is its fault.
        let aer_before = crate::hw::aer::aer(std::path::Path::new("/sys"));
        // The BMC's event log too, where the node has one.
        if machine.sel.is_none() {
            machine.sel = crate::hw::sel::read(std::path::Path::new(crate::hw::sel::DEVICE))
                .ok()
                .map(|events| SelSnapshot { events, step });
        }
        let kmsg = KmsgWatch::start();
        if kmsg.is_none() {
            say("kernel log (/dev/kmsg) not readable: machine-check and I/O error lines are not watched".into());
        }
        Watchers {
            _poll: poll,
            aer_before,
            kmsg,
            watch: machine.sensors.watch(step, sink),
        }
    }

    /// Stops them and returns what they found during step `step`.
    pub fn finish(self, step: u32, machine: &mut Machine, sink: &Arc<dyn EventSink>) -> Watched {
        let bmc = machine.sensors.finish(self.watch);
        let mut faults = self.kmsg.map(KmsgWatch::finish).unwrap_or_default();
        faults.extend(bmc.faults);
        faults.extend(crate::hw::aer::step_errors(
            std::path::Path::new("/sys"),
            &self.aer_before,
        ));
        faults.extend(sel_after(step, &mut machine.sel, sink));
        Watched {
            faults,
            metrics: bmc.metrics,
        }
    }
}

/// The BMC's sensors for every step: the repository walked once, and the suite's limits.
pub(super) struct BmcSensors {
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
                        "BMC sensors: {} charted and {} state sensor(s) judged, read every {}",
                        r.sensors.len(),
                        r.states.len(),
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
        let repo = self
            .repo
            .as_ref()
            .ok()
            .filter(|r| !(r.sensors.is_empty() && r.states.is_empty()))?;
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
pub(super) struct SelSnapshot {
    events: Vec<crate::hw::sel::SelEvent>,
    step: u32,
}

/// The BMC's event log after the step: its new entries (against the log as last read) are
/// the step's faults, and the read becomes the next step's baseline. A failed read keeps the
/// old baseline, so nothing added meanwhile is lost.
fn sel_after(step: u32, sel: &mut Option<SelSnapshot>, sink: &Arc<dyn EventSink>) -> Vec<Fault> {
    let Some(before) = sel.as_ref() else {
        return Vec::new();
    };
    match crate::hw::sel::read(std::path::Path::new(crate::hw::sel::DEVICE)) {
        Ok(after) => {
            // Counted from an earlier step's read: said so, not "during the step".
            let since = if before.step == step {
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
                step: step + 1,
            });
            new
        }
        Err(err) => {
            sink.emit(EventBody::Log {
                step: Some(step),
                level: LogLevel::Warn,
                line: format!(
                    "the BMC event log could not be read after the step ({err}): entries added now are reported by the next step that reads it"
                ),
            });
            Vec::new()
        }
    }
}
