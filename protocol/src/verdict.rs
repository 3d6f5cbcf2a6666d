//! How measurements become outcomes and outcomes become verdicts.
//!
//! The one rule everything here keeps: an incomplete or broken run is never a pass.

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

#[cfg(test)]
mod tests {
    use super::*;
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
