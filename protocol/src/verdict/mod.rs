//! How a verdict is reached, in one place: measurements against thresholds become a step's
//! outcome ([`evaluate`], [`retested`]), a node's inventory against `expect:` an outcome too,
//! outcomes a run's verdict ([`run_verdict`]), and, for the collector's stored verdict, the
//! Linux stage from every fact it stored ([`linux`], with the node's [`peers`]) and a run from
//! its stages. The agent calls these for its console and exit code, the collector for the
//! verdict it stores; neither decides anything of its own.
//!
//! The one rule everything here keeps: an incomplete or broken run is never a pass.

pub mod cabling;
pub mod cycles;
pub mod linux;
pub mod pairs;
pub mod peers;

use crate::suite::{Intermittent, Limit, Retest};
use crate::wire::{Attempt, Fault, Metric, Outcome, StepReport};

pub use crate::wire::{UnknownVerdict, Verdict};

/// One step report from every attempt of a retested step (the first failed): the last
/// attempt's measurements, every attempt recorded, and an outcome that says how often the
/// fault showed — `retest.hard` when every attempt failed, `retest.intermittent` when some
/// passed, which fails the step unless the suite says `intermittent: degraded`. A harness
/// error in any attempt is the step's outcome: never a pass.
pub fn retested(attempts: Vec<StepReport>, rule: Retest) -> StepReport {
    let Some(last) = attempts.last().cloned() else {
        unreachable!("a retested step has at least its first attempt")
    };
    let total = attempts.len();
    let failed: Vec<&StepReport> = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Fail { .. }))
        .collect();
    let first_fault = failed.first().and_then(|a| match &a.outcome {
        Outcome::Fail { faults } => faults.first().cloned(),
        _ => None,
    });
    let error = attempts
        .iter()
        .find(|a| matches!(a.outcome, Outcome::Error { .. }))
        .map(|a| a.outcome.clone());
    let outcome = match (error, failed.len()) {
        (Some(error), _) => error,
        (None, 0) => last.outcome.clone(),
        (None, n) => {
            let what = first_fault
                .as_ref()
                .map(|f| format!(": {}", f.message))
                .unwrap_or_default();
            let (code, kind) = if n == total {
                ("retest.hard", "hard")
            } else {
                ("retest.intermittent", "intermittent")
            };
            let summary = format!("failed {n} of {total} attempts ({kind}){what}");
            if n < total && rule.intermittent == Intermittent::Degraded {
                Outcome::Degraded {
                    reasons: vec![summary],
                }
            } else {
                let mut faults = vec![Fault::new(code, summary)];
                if let Some(Outcome::Fail { faults: first }) = failed.first().map(|a| &a.outcome) {
                    faults.extend(first.iter().cloned());
                }
                Outcome::Fail { faults }
            }
        }
    };
    StepReport {
        outcome,
        duration_ms: attempts.iter().map(|a| a.duration_ms).sum(),
        attempts: attempts
            .iter()
            .map(|a| Attempt {
                outcome: a.outcome.clone(),
                duration_ms: a.duration_ms,
            })
            .collect(),
        ..last
    }
}

/// The verdict of a run of `planned` steps, from the outcomes of the steps that finished.
/// `finished` says whether the run reported its end. A fault outranks a harness error, which
/// outranks missing steps; only a complete run can pass.
pub fn run_verdict<'a>(
    planned: usize,
    outcomes: impl IntoIterator<Item = &'a Outcome>,
    finished: bool,
) -> Verdict {
    let mut count = 0;
    let mut verdict = Verdict::Pass;
    for outcome in outcomes {
        count += 1;
        let this = match outcome {
            Outcome::Pass | Outcome::Skip { .. } => Verdict::Pass,
            Outcome::Degraded { .. } => Verdict::Degraded,
            Outcome::Fail { .. } => Verdict::Fail,
            Outcome::Error { .. } => Verdict::Error,
        };
        verdict = verdict.worst(this);
    }
    if count < planned || !finished {
        verdict = verdict.worst(Verdict::Incomplete);
    }
    verdict
}

/// The outcome of `expect:` against a node's inventory: a fault for each mismatch, else a pass.
pub fn expect_outcome(
    expect: &crate::suite::Expect,
    inventory: &crate::wire::Inventory,
) -> Outcome {
    let faults = crate::expect::evaluate(expect, inventory);
    if faults.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail { faults }
    }
}

/// A step's outcome, with what its log should say about how it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// The outcome.
    pub outcome: Outcome,
    /// Lines for the step's log: a skip that could not stand, optional thresholds not checked.
    pub notes: Vec<String>,
}

/// What a check found as `step`'s outcome: `faults` (its own and the kernel's during it),
/// `metrics` against the step's thresholds ([`evaluate`]), the check's own `degraded`
/// reasons, and its `skip` — which stands only when nothing failed and the step set no
/// threshold it needed (otherwise the thresholds it could not measure fail it).
pub fn step_outcome(
    step: &crate::PlannedStep,
    faults: Vec<Fault>,
    metrics: &[Metric],
    skip: Option<String>,
    degraded: Vec<String>,
) -> StepOutcome {
    let mut notes = Vec::new();
    if let Some(reason) = skip {
        let needed = step
            .check
            .pass_limits()
            .into_iter()
            .chain(step.check.degraded_limits())
            .any(|(field, _)| !step.optional.contains(&field));
        if faults.is_empty() && !needed {
            return StepOutcome {
                outcome: Outcome::Skip { reason },
                notes,
            };
        }
        notes.push(format!("nothing measured: {reason}"));
    }
    let (mut outcome, unmeasured) = evaluate(
        faults,
        metrics,
        &step.check.pass_limits(),
        &step.check.degraded_limits(),
        &step.optional,
    );
    notes.extend(unmeasured.into_iter().map(|field| {
        format!(
            "threshold {field} not checked: its metric was not measured on this node (optional)"
        )
    }));
    if !degraded.is_empty() {
        outcome = match outcome {
            Outcome::Pass => Outcome::Degraded { reasons: degraded },
            Outcome::Degraded { mut reasons } => {
                reasons.extend(degraded);
                Outcome::Degraded { reasons }
            }
            other => other,
        };
    }
    StepOutcome { outcome, notes }
}

/// What memtest86+'s screen says so far, as the collector reads it off the serial console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemtestScreen {
    /// The error counter.
    pub errors: u64,
    /// The screen says the test failed.
    pub failed: bool,
    /// Passes completed.
    pub passes: u32,
    /// The screen says the passes so far passed.
    pub passed: bool,
}

/// The memtest stage's verdict from its screen once it is certain: a fail at the first error
/// (or a failed status), a pass once `passes` passes completed with the status saying pass,
/// `None` while neither. (Timeouts, stalls and a lost console end the stage as a fail too:
/// a result that could not be read is never a pass.)
pub fn memtest(screen: MemtestScreen, passes: u32) -> Option<Verdict> {
    if screen.errors > 0 || screen.failed {
        Some(Verdict::Fail)
    } else if screen.passes >= passes && screen.passed {
        Some(Verdict::Pass)
    } else {
        None
    }
}

/// A run's verdict from its stages' (`None` for a stage without one): the worst of them, and
/// never a pass without a stage.
pub fn of_stages(stages: impl IntoIterator<Item = Option<Verdict>>) -> Verdict {
    let mut any = false;
    let verdict = stages.into_iter().fold(Verdict::Pass, |worst, stage| {
        any = true;
        worst.worst(stage.unwrap_or(Verdict::Incomplete))
    });
    if any { verdict } else { Verdict::Incomplete }
}

/// The outcome of a check from its faults and metrics against its thresholds: any fault or
/// missed pass threshold fails; a missed degraded target degrades. A threshold whose metric
/// was not measured fails the check too (a degraded-tier one degrades it) — nothing a suite
/// asks for is skipped silently — unless it is listed in `optional`: those are returned in
/// the second value so the caller can say they were not checked.
pub fn evaluate(
    faults: Vec<Fault>,
    metrics: &[Metric],
    pass: &[(String, Limit)],
    degraded: &[(String, Limit)],
    optional: &[String],
) -> (Outcome, Vec<String>) {
    let mut faults = faults;
    let mut reasons = Vec::new();
    let mut unmeasured = Vec::new();
    let measured = |name: &str| metrics.iter().find(|m| m.name == name);
    for (tier_is_pass, limits) in [(true, pass), (false, degraded)] {
        for (field, limit) in limits {
            let Some(metric) = measured(&limit.metric) else {
                let text = format!(
                    "{field} is set, but this node did not measure {} (list it under the step's `optional:` if the node may lack it)",
                    limit.metric
                );
                if optional.contains(field) {
                    if !unmeasured.contains(field) {
                        unmeasured.push(field.clone());
                    }
                } else if tier_is_pass {
                    faults.push(
                        Fault::new(format!("threshold.{field}.unmeasured"), text)
                            .with("metric", &limit.metric),
                    );
                } else {
                    reasons.push(format!("degraded target {text}"));
                }
                continue;
            };
            if limit.holds(metric.value) {
                continue;
            }
            let relation = match limit.bound {
                crate::suite::Bound::Min => "below the minimum",
                crate::suite::Bound::Max => "above the maximum",
            };
            let unit = if metric.unit.is_empty() {
                String::new()
            } else {
                format!(" {}", metric.unit)
            };
            let text = format!(
                "{} {}{unit} is {relation} {} ({field})",
                metric.name,
                trim_number(metric.value),
                trim_number(limit.value)
            );
            if tier_is_pass {
                faults.push(
                    Fault::new(format!("threshold.{field}"), text)
                        .with("metric", &metric.name)
                        .with("measured", metric.value)
                        .with("limit", limit.value),
                );
            } else {
                reasons.push(format!("{text}, degraded target"));
            }
        }
    }
    let outcome = if !faults.is_empty() {
        Outcome::Fail { faults }
    } else if !reasons.is_empty() {
        Outcome::Degraded { reasons }
    } else {
        Outcome::Pass
    };
    (outcome, unmeasured)
}

fn trim_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.2}")
    }
}

/// Whether a node may ship on its run's `verdict`: one that ships under the site's
/// attestation `rule` ([`crate::attest::shippable`]), or a failure whose faults an operator
/// waived every one of (`waived_all`; which codes may be waived is [`waivable`]).
pub fn ships(verdict: Verdict, rule: crate::attest::Attestation, waived_all: bool) -> bool {
    crate::attest::shippable(verdict, rule) || (verdict == Verdict::Fail && waived_all)
}

/// Whether `code` may be waived at all: only a code that names a component and what it found
/// (`fan.speed`, `expect.memory.dimms`), compared exactly — never a pattern, a stage's
/// catch-all (`linux.fail`, `memtest.fail`), a harness error (`cpu.error`), a threshold that
/// could not be measured, a security event, the collector's own findings (a disagreement,
/// lost contact, `unattested`): each of those means the suite was not carried out, and no
/// operator's word makes that shippable. `Err` says why, for the operator.
pub fn waivable(code: &str) -> Result<(), String> {
    let segments: Vec<&str> = code.split('.').collect();
    let shaped = (3..=80).contains(&code.len())
        && segments.len() >= 2
        && segments.iter().all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if !shaped {
        return Err(format!(
            "{code:?} is not a fault code: expected a component and what it found, as reports show it (fan.speed), compared exactly"
        ));
    }
    let first = segments[0];
    let last = segments[segments.len() - 1];
    let why = match (first, last) {
        ("run" | "collector", _) => {
            "is the collector's own finding about the run (lost contact, a disagreement, unattested)"
        }
        ("security", _) | (_, "security") => "is a security event",
        ("unattested", _) | (_, "unattested") => "says no console vouched for the run",
        ("threshold", _) | (_, "unmeasured") => "says a threshold could not be measured",
        (_, "fail") => {
            "is a stage's catch-all, standing for whatever ended it (a reboot, lost contact, a used token)"
        }
        (_, "error") => "is a harness error: the step measured less than its suite asked",
        (_, "verdict" | "inventory") => "is the collector's own finding about the run",
        _ => return Ok(()),
    };
    Err(format!("{code} {why}, and cannot be waived"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtest_passes_only_with_its_passes_done_and_fails_at_the_first_error() {
        let screen = |errors, failed, passes, passed| MemtestScreen {
            errors,
            failed,
            passes,
            passed,
        };
        assert_eq!(memtest(screen(0, false, 1, true), 1), Some(Verdict::Pass));
        assert_eq!(memtest(screen(0, false, 1, true), 2), None);
        assert_eq!(memtest(screen(0, false, 2, false), 2), None);
        assert_eq!(memtest(screen(1, false, 5, true), 1), Some(Verdict::Fail));
        assert_eq!(memtest(screen(0, true, 0, false), 1), Some(Verdict::Fail));
        assert_eq!(memtest(screen(0, false, 0, false), 1), None);
    }

    #[test]
    fn a_run_is_the_worst_of_its_stages_and_none_is_never_a_pass() {
        assert_eq!(of_stages([]), Verdict::Incomplete);
        assert_eq!(of_stages([Some(Verdict::Pass)]), Verdict::Pass);
        assert_eq!(of_stages([Some(Verdict::Pass), None]), Verdict::Incomplete);
        assert_eq!(
            of_stages([Some(Verdict::Fail), Some(Verdict::Degraded)]),
            Verdict::Fail
        );
    }

    #[test]
    fn only_a_component_s_own_fault_code_can_be_waived() {
        for ok in [
            "fan.speed",
            "expect.memory.dimms",
            "memory.mismatch",
            "kernel.machine_check",
            "nvme.critical_warning",
        ] {
            assert_eq!(waivable(ok), Ok(()), "{ok}");
        }
        for (code, why) in [
            ("linux.fail", "catch-all"),
            ("memtest.fail", "catch-all"),
            ("*", "not a fault code"),
            ("*.fail", "not a fault code"),
            ("fan.*", "not a fault code"),
            ("Fan.Speed", "not a fault code"),
            ("fan", "not a fault code"),
            ("fan..speed", "not a fault code"),
            (" fan.speed", "not a fault code"),
            ("RUN.lost_contact", "not a fault code"),
            ("run.lost_contact", "collector's own"),
            ("run.unattested", "collector's own"),
            ("collector.finding", "collector's own"),
            ("security.reused_token", "security event"),
            ("cpu.error", "harness error"),
            ("threshold.gbps.unmeasured", "could not be measured"),
            ("agent.verdict", "collector's own"),
        ] {
            let err = waivable(code).expect_err(code);
            assert!(err.contains(why), "{code}: {err}");
        }
    }

    use crate::suite::Bound;

    fn limit(field: &str, value: f64) -> (String, Limit) {
        (field.to_owned(), Limit::from_field(field, value).unwrap())
    }

    fn metric(name: &str, value: f64) -> Metric {
        Metric {
            name: name.to_owned(),
            value,
            unit: "MB/s".to_owned(),
        }
    }

    #[test]
    fn incomplete_runs_never_pass() {
        let pass = Outcome::Pass;
        assert_eq!(run_verdict(3, [&pass, &pass], true), Verdict::Incomplete);
        assert_eq!(run_verdict(2, [&pass, &pass], false), Verdict::Incomplete);
        assert_eq!(run_verdict(2, [&pass, &pass], true), Verdict::Pass);
        assert_eq!(run_verdict(1, [], true), Verdict::Incomplete);
    }

    #[test]
    fn faults_outrank_errors_which_outrank_missing_steps() {
        let fail = Outcome::Fail { faults: vec![] };
        let err = Outcome::Error {
            message: "timeout".into(),
        };
        let degraded = Outcome::Degraded { reasons: vec![] };
        let skip = Outcome::Skip {
            reason: "no smartctl".into(),
        };
        assert_eq!(run_verdict(5, [&err, &fail], false), Verdict::Fail);
        assert_eq!(run_verdict(5, [&err], false), Verdict::Error);
        assert_eq!(run_verdict(2, [&degraded, &skip], true), Verdict::Degraded);
        assert_eq!(run_verdict(1, [&skip], true), Verdict::Pass);
    }

    #[test]
    fn verdict_names_round_trip_and_unknown_names_are_refused() {
        for v in Verdict::ALL {
            assert_eq!(v.to_string().parse::<Verdict>(), Ok(v));
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{v}\""));
        }
        assert!("PASS".parse::<Verdict>().is_err());
        assert!("".parse::<Verdict>().is_err());
    }

    #[test]
    fn stage_verdicts_combine_to_the_worst() {
        assert_eq!(Verdict::Pass.worst(Verdict::Fail), Verdict::Fail);
        assert_eq!(Verdict::Degraded.worst(Verdict::Pass), Verdict::Degraded);
        assert_eq!(
            Verdict::Incomplete.worst(Verdict::Degraded),
            Verdict::Incomplete
        );
        assert!(!Verdict::Incomplete.is_good());
    }

    #[test]
    fn thresholds_fail_degrade_or_pass() {
        let pass = [
            limit("min_read_mbps", 100.0),
            limit("max_latency_p99_ms", 50.0),
        ];
        let degraded = [limit("min_read_mbps", 400.0)];
        let latency = metric("latency_p99_ms", 3.0);
        let (o, _) = evaluate(
            vec![],
            &[metric("read_mbps", 500.0), latency.clone()],
            &pass,
            &degraded,
            &[],
        );
        assert_eq!(o, Outcome::Pass);
        let (o, _) = evaluate(
            vec![],
            &[metric("read_mbps", 200.0), latency.clone()],
            &pass,
            &degraded,
            &[],
        );
        assert!(
            matches!(o, Outcome::Degraded { ref reasons } if reasons[0].contains("read_mbps 200"))
        );
        let (o, unmeasured) = evaluate(
            vec![],
            &[metric("read_mbps", 50.0)],
            &pass,
            &degraded,
            &["max_latency_p99_ms".to_owned()],
        );
        let Outcome::Fail { faults } = o else {
            panic!("expected fail")
        };
        assert_eq!(faults[0].code, "threshold.min_read_mbps");
        assert_eq!(
            faults[0].message,
            "read_mbps 50 MB/s is below the minimum 100 (min_read_mbps)"
        );
        assert_eq!(faults.len(), 1, "the optional threshold is no fault");
        assert_eq!(unmeasured, vec!["max_latency_p99_ms".to_owned()]);
    }

    #[test]
    fn a_threshold_the_node_cannot_measure_fails_unless_optional() {
        let pass = [limit("max_temp_c", 90.0)];
        let (o, unmeasured) = evaluate(vec![], &[], &pass, &[], &[]);
        let Outcome::Fail { faults } = o else {
            panic!("an unmeasured threshold passed: {o:?}")
        };
        assert_eq!(faults[0].code, "threshold.max_temp_c.unmeasured");
        assert!(
            faults[0]
                .message
                .starts_with("max_temp_c is set, but this node did not measure temp_c"),
            "{}",
            faults[0].message
        );
        assert!(unmeasured.is_empty());
        // A degraded-tier target that cannot be measured degrades.
        let (o, _) = evaluate(vec![], &[], &[], &pass, &[]);
        assert!(matches!(o, Outcome::Degraded { .. }), "{o:?}");
        // Marked optional: passes, and is returned to be logged as not checked.
        let (o, unmeasured) = evaluate(vec![], &[], &pass, &pass, &["max_temp_c".to_owned()]);
        assert_eq!(o, Outcome::Pass);
        assert_eq!(unmeasured, vec!["max_temp_c".to_owned()]);
    }

    #[test]
    fn a_fault_fails_even_when_metrics_are_fine() {
        let (o, _) = evaluate(
            vec![Fault::new("memory.mismatch", "bit 3")],
            &[],
            &[],
            &[],
            &[],
        );
        assert!(matches!(o, Outcome::Fail { .. }));
        assert_eq!(
            Limit::from_field("max_temp_c", 1.0).unwrap().bound,
            Bound::Max
        );
    }

    fn attempt(outcome: Outcome) -> StepReport {
        StepReport {
            step: 2,
            name: "memory".into(),
            kind: "memory".into(),
            outcome,
            metrics: vec![metric("gbps", 20.0)],
            duration_ms: 1000,
            attempts: vec![],
        }
    }

    #[test]
    fn a_retested_fault_is_called_intermittent_or_hard_and_never_passes_by_default() {
        let fail = || {
            attempt(Outcome::Fail {
                faults: vec![Fault::new("memory.mismatch", "0x1000: expected 0, read 1")],
            })
        };
        let rule = |intermittent| Retest {
            attempts: 3,
            intermittent,
        };
        // 1 of 3: intermittent, a fail by default, naming the fault.
        let r = retested(
            vec![fail(), attempt(Outcome::Pass), attempt(Outcome::Pass)],
            rule(Intermittent::Fail),
        );
        let Outcome::Fail { faults } = &r.outcome else {
            panic!("{:?}", r.outcome)
        };
        assert_eq!(faults[0].code, "retest.intermittent");
        assert_eq!(
            faults[0].message,
            "failed 1 of 3 attempts (intermittent): 0x1000: expected 0, read 1"
        );
        assert_eq!(faults[1].code, "memory.mismatch");
        assert_eq!(r.attempts.len(), 3);
        assert_eq!(r.duration_ms, 3000);
        // The same, degraded when the suite says so.
        let r = retested(
            vec![fail(), attempt(Outcome::Pass), attempt(Outcome::Pass)],
            rule(Intermittent::Degraded),
        );
        assert!(
            matches!(&r.outcome, Outcome::Degraded { reasons } if reasons[0].starts_with("failed 1 of 3 attempts (intermittent)")),
            "{:?}",
            r.outcome
        );
        // 3 of 3: hard, a fail even with intermittent: degraded.
        let r = retested(vec![fail(), fail(), fail()], rule(Intermittent::Degraded));
        assert!(
            matches!(&r.outcome, Outcome::Fail { faults } if faults[0].code == "retest.hard" && faults[0].message.starts_with("failed 3 of 3 attempts (hard)")),
            "{:?}",
            r.outcome
        );
        // A harness error in a retest is the outcome: never a pass.
        let r = retested(
            vec![
                fail(),
                attempt(Outcome::Error {
                    message: "timed out".into(),
                }),
                attempt(Outcome::Pass),
            ],
            rule(Intermittent::Degraded),
        );
        assert!(
            matches!(r.outcome, Outcome::Error { .. }),
            "{:?}",
            r.outcome
        );
    }
}
