//! A `parallel:` group: its members' checks run at the same time, each on its own thread,
//! for the group's duration — memory, cpu and watch stretched to it, disk, nic and exec run
//! again back to back until it has passed — under one set of watchers, whose faults and BMC
//! peaks the first member reports. Each member keeps its own thresholds and outcome.
//!
//! The CPUs: with `cpus: split` (the default) a memory and a cpu member each get half of the
//! CPUs, swapped at half time. Both are CPU-bound: on the same CPUs the scheduler would slice
//! each core between a memory worker and a CPU worker, and each would run at half its rate
//! while looking busy. Split, neither preempts the other, each check sees a steady core, and
//! over the group every CPU runs both loads. Disk and NIC work is the kernel's (interrupts,
//! TCP, block I/O) and stays unpinned; from four CPUs on, an eighth of them (at least one)
//! is kept free of memory and CPU workers when the group has such a member, or a 100 Gb/s
//! NIC would have no core left for its traffic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::PlannedStep;
use kiln_protocol::suite::CpuShare;
use kiln_protocol::wire::{EventBody, LogLevel, StepReport};

use super::watchers::{Machine, Watched, Watchers};
use super::{EventSink, Observer};
use crate::checks::{CheckOutput, RunOptions};
use crate::stop::{Interrupt, Stop, StopReason};

/// A member's CPUs in the group's first and second half; `None`: every allowed CPU.
type Share = [Option<Vec<usize>>; 2];

/// Runs the group whose members are `members` and returns their reports, in order.
pub(super) fn run(
    members: &[PlannedStep],
    options: &RunOptions,
    interrupt: &Interrupt,
    sink: &Arc<dyn EventSink>,
    machine: &mut Machine,
) -> Vec<StepReport> {
    let Some(group) = members.first().and_then(|m| m.group.clone()) else {
        return Vec::new();
    };
    let first = members[0].index as u32;
    for m in members {
        sink.emit(EventBody::StepStarted {
            step: m.index as u32,
            name: m.name.clone(),
            kind: m.check.kind().to_owned(),
        });
    }
    let shares = shares(group.cpus, members, &crate::os::affinity::allowed_cpus());
    sink.emit(EventBody::Log {
        step: Some(first),
        level: LogLevel::Info,
        line: format!(
            "{}: {} together for {}{}",
            group.name,
            members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            kiln_protocol::units::HumanDuration(group.duration),
            describe(members, &shares)
        ),
    });
    let started = Instant::now();
    let until = started + group.duration;
    let watchers = Watchers::start(first, machine, sink);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .zip(&shares)
            .map(|(m, share)| s.spawn(move || member(m, options, interrupt, sink, until, share)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (Err(anyhow::anyhow!("the member's thread panicked")), None)
                })
            })
            .collect()
    });
    let mut watched = Some(watchers.finish(first, machine, sink));
    members
        .iter()
        .zip(results)
        .map(|(m, (result, stopped))| {
            let w = watched.take().unwrap_or(Watched {
                faults: Vec::new(),
                metrics: Vec::new(),
            });
            let report = super::report(m, started, result, stopped, w, sink);
            sink.emit(EventBody::StepFinished {
                report: report.clone(),
            });
            report
        })
        .collect()
}

/// Each member's CPUs: with `split`, and both a memory and a cpu member on two CPUs or more,
/// memory on the first half and cpu on the rest, swapped at half time — less the CPUs kept
/// for the kernel's I/O when the group does I/O.
fn shares(mode: CpuShare, members: &[PlannedStep], cpus: &[usize]) -> Vec<Share> {
    let has = |kind: &str| members.iter().any(|m| m.check.kind() == kind);
    let split = mode == CpuShare::Split && has("memory") && has("cpu") && cpus.len() >= 2;
    let io = members.iter().any(|m| !m.check.stretches());
    let kept = if io && cpus.len() >= 4 {
        (cpus.len() / 8).max(1)
    } else {
        0
    };
    let workers = &cpus[..cpus.len() - kept];
    let (a, b) = workers.split_at(workers.len().div_ceil(2));
    members
        .iter()
        .map(|m| match (split, m.check.kind()) {
            (true, "memory") => [Some(a.to_vec()), Some(b.to_vec())],
            (true, "cpu") => [Some(b.to_vec()), Some(a.to_vec())],
            _ => [None, None],
        })
        .collect()
}

/// How the CPUs are shared, for the group's log line.
fn describe(members: &[PlannedStep], shares: &[Share]) -> String {
    let split: Vec<String> = members
        .iter()
        .zip(shares)
        .filter_map(|(m, [a, b])| {
            let list =
                |c: &Vec<usize>| c.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
            Some(format!(
                "{} on CPUs {}, then {}",
                m.name,
                list(a.as_ref()?),
                list(b.as_ref()?)
            ))
        })
        .collect();
    if split.is_empty() {
        String::new()
    } else {
        format!(" ({})", split.join("; "))
    }
}

/// Runs one member until the group's end: its check stretched to the group's duration (in
/// two halves when its CPUs are swapped), or run again until `until`.
fn member(
    step: &PlannedStep,
    options: &RunOptions,
    interrupt: &Interrupt,
    sink: &Arc<dyn EventSink>,
    until: Instant,
    share: &Share,
) -> (anyhow::Result<CheckOutput>, Option<StopReason>) {
    let stop = Stop::new(step.timeout, interrupt.clone());
    let run = |check: kiln_protocol::Check, cpus: &Option<Vec<usize>>| {
        let planned = PlannedStep {
            check,
            ..step.clone()
        };
        let options = RunOptions {
            cpus: cpus.clone(),
            ..options.clone()
        };
        let observer = Observer {
            sink: sink.clone(),
            step: step.index as u32,
        };
        super::run_check(&planned, &options, &stop, observer)
    };
    let left = || until.saturating_duration_since(Instant::now());
    let mut output: Option<CheckOutput> = None;
    loop {
        let result = if step.check.stretches() && share[0] != share[1] {
            // First half on one share, the rest on the other.
            let half = left() / 2;
            run(
                step.check.clone().lasting(half.max(Duration::from_secs(1))),
                &share[0],
            )
            .and_then(|a| {
                let b = run(
                    step.check
                        .clone()
                        .lasting(left().max(Duration::from_secs(1))),
                    &share[1],
                )?;
                Ok(merge(a, b))
            })
        } else {
            run(step.check.clone(), &share[0])
        };
        let result = match (output.take(), result) {
            (_, Err(e)) => return (Err(e), stop.reason()),
            (None, Ok(o)) => o,
            (Some(before), Ok(o)) => merge(before, o),
        };
        output = Some(result);
        if step.check.stretches() || left().is_zero() || stop.reason().is_some() {
            break;
        }
    }
    (
        output.ok_or_else(|| anyhow::anyhow!("the member never ran")),
        stop.reason(),
    )
}

/// Two runs of one check as one: every fault (once), the worst of each metric — the lowest
/// throughput, the highest of anything else (latency, temperature, error counts) — bytes
/// added up, a skip only if both skipped.
fn merge(a: CheckOutput, b: CheckOutput) -> CheckOutput {
    let mut out = a;
    for f in b.faults {
        if !out.faults.contains(&f) {
            out.faults.push(f);
        }
    }
    for m in b.metrics {
        match out.metrics.iter_mut().find(|o| o.name == m.name) {
            Some(o) => {
                let throughput = ["GB/s", "MB/s", "Mb/s", "it/s"].contains(&m.unit.as_str());
                o.value = if throughput {
                    o.value.min(m.value)
                } else if m.unit == "B" {
                    o.value + m.value
                } else {
                    o.value.max(m.value)
                };
            }
            None => out.metrics.push(m),
        }
    }
    out.skip = out.skip.and(b.skip);
    for d in b.degraded {
        if !out.degraded.contains(&d) {
            out.degraded.push(d);
        }
    }
    out.inconclusive = out.inconclusive.or(b.inconclusive);
    out
}

#[cfg(test)]
mod tests;
