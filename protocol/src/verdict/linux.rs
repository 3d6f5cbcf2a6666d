//! The verdict of a run's Linux stage from what the collector stored: the run's checked plan
//! (its stored suite), each planned step's first result, `expect:` against the stored
//! inventory, the collector's own clock, the node's peers, the node's console — and the
//! agent's own verdict, which is only compared and can only make things worse. Pure: the
//! collector reads the facts and writes the result; every rule is here, with its tests.

use std::collections::BTreeMap;

use super::peers::Peers;
use super::{Verdict, run_verdict};
use crate::wire::{Inventory, Outcome, StepReport};

/// What the collector concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// The Linux stage's verdict.
    pub verdict: Verdict,
    /// The collector's own findings, one line each (missing results, disagreements).
    pub findings: Vec<String>,
    /// The `expect:` outcome the collector computed, when the suite has one.
    pub expect: Option<Outcome>,
    /// Why the node is degraded against its peers (empty when it is not).
    pub peer_notes: Vec<String>,
}

/// Everything the Linux stage's verdict is computed from, as the collector stored it.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The run's suite text.
    pub suite_text: String,
    /// Step results by step index (the first one stored for each).
    pub steps: BTreeMap<u32, StepReport>,
    /// Step indexes reported more than once.
    pub repeated: Vec<u32>,
    /// The inventory the agent posted.
    pub inventory: Option<Inventory>,
    /// The `expect:` outcome the agent reported.
    pub agent_expect: Option<Outcome>,
    /// The verdict the agent reported in `run_finished`.
    pub agent_verdict: Option<Verdict>,
    /// The node's peers' measurements (empty outside a batch).
    pub peers: Peers,
    /// When the collector received each step's first result, by step index.
    pub received_ms: BTreeMap<u32, i64>,
    /// When the run's session began by the collector's clock: the bootstrap exchange (or the
    /// registration of an ad-hoc run).
    pub session_ms: Option<i64>,
    /// When the Linux stage was handed out (network-booted runs only).
    pub served_ms: Option<i64>,
    /// When the collector received the agent's final event.
    pub final_ms: Option<i64>,
    /// The node's lines of the site's cabling map, when it has any.
    pub cabling: Option<super::cabling::Map>,
    /// What the collector judged of each `target: peer` step's pairs, by step index.
    pub pairs: BTreeMap<u32, super::pairs::Stored>,
    /// The extremes of the BMC sensor readings stored during each step, by step index.
    pub sensors: BTreeMap<u32, crate::sensors::Extremes>,
}

/// The verdict of the Linux stage from what was stored. Pure, so every rule is unit-tested.
pub fn compute(stored: &Facts) -> Computed {
    let mut findings = Vec::new();
    let plan = match crate::load("suite", stored.suite_text.as_bytes()) {
        Ok(plan) => plan,
        Err(e) => {
            return Computed {
                verdict: Verdict::Error,
                findings: vec![format!(
                    "the run's stored suite no longer loads: {}",
                    e.to_string().lines().next().unwrap_or("")
                )],
                expect: None,
                peer_notes: Vec::new(),
            };
        }
    };
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut broken = false;
    for planned in &plan.steps {
        let index = planned.index as u32;
        match stored.steps.get(&index) {
            None => findings.push(format!("step '{}' has no result", planned.name)),
            Some(report) if report.name != planned.name || report.kind != planned.check.kind() => {
                broken = true;
                findings.push(format!(
                    "step {index} was reported as '{}' ({}), but the plan has '{}' ({})",
                    report.name,
                    report.kind,
                    planned.name,
                    planned.check.kind()
                ));
            }
            Some(report) => {
                let unborne = borne_out(&plan, planned, &report.outcome, stored);
                broken |= !unborne.is_empty();
                findings.extend(unborne);
                outcomes.push(report.outcome.clone());
            }
        }
    }
    for index in stored.steps.keys() {
        if *index as usize >= plan.steps.len() {
            broken = true;
            findings.push(format!(
                "a result for step {index}, which is not in the plan"
            ));
        }
    }
    for index in &stored.repeated {
        broken = true;
        findings.push(format!(
            "step {index} was reported more than once; the first result is kept"
        ));
    }
    let mut planned = plan.steps.len();
    let expect = plan.expect().map(|expect| {
        planned += 1;
        match &stored.inventory {
            Some(inventory) => super::expect_outcome(expect, inventory),
            None => {
                findings.push("no inventory was posted, so expect: could not be checked".into());
                Outcome::Error {
                    message: "no inventory".into(),
                }
            }
        }
    });
    if let (Some(mine), Some(theirs)) = (&expect, &stored.agent_expect) {
        if mine.name() != theirs.name() {
            findings.push(format!(
                "the agent's expect: check says {}; the collector's, from the stored inventory, says {}",
                theirs.name(),
                mine.name()
            ));
        }
    }
    let mut verdict = run_verdict(planned, expect.iter().chain(outcomes.iter()), true);
    if broken {
        verdict = verdict.worst(Verdict::Error);
    }
    let implausible = clock(&plan, stored);
    if !implausible.is_empty() {
        verdict = verdict.worst(Verdict::Error);
        findings.extend(implausible);
    }
    match stored.agent_verdict {
        Some(agent) if agent != verdict => {
            let why = findings
                .first()
                .map_or_else(String::new, |f| format!("; {f}"));
            findings.insert(
                0,
                format!("agent reported {agent}, the collector computed {verdict}{why}"),
            );
            // The agent may know of a fault the collector cannot see; it can never excuse one.
            verdict = verdict.worst(agent);
        }
        Some(_) => {}
        None => {
            findings.push("the agent never reported the run finished".into());
            verdict = verdict.worst(Verdict::Incomplete);
        }
    }
    let silence = super::cabling::Silence::of(&plan);
    let (expect, mut verdict) = with_cabling(stored, expect, verdict, silence);
    // Against its peers, a passing node can only become degraded: never better, never worse
    // than that (a slow node is not a broken one).
    let peer_notes = super::peers::compare(&plan, &stored.steps, &stored.peers);
    if verdict == Verdict::Pass && !peer_notes.is_empty() {
        verdict = Verdict::Degraded;
    }
    Computed {
        verdict,
        findings,
        expect,
        peer_notes,
    }
}

/// Why a step's outcome is not borne out by the figures the collector stored: its pairs, its
/// BMC readings.
fn borne_out(
    plan: &crate::Plan,
    planned: &crate::PlannedStep,
    outcome: &Outcome,
    stored: &Facts,
) -> Vec<String> {
    let mut why: Vec<String> = paired(planned, outcome, stored).into_iter().collect();
    why.extend(sensed(plan, planned, outcome, stored));
    why
}

/// A good outcome against the BMC readings stored while the step ran: each reading past a
/// threshold (the BMC's, or the suite's) that the agent's pass left out. Readings the agent's
/// spool dropped are not there to judge: a missing reading proves nothing either way.
fn sensed(
    plan: &crate::Plan,
    planned: &crate::PlannedStep,
    outcome: &Outcome,
    stored: &Facts,
) -> Vec<String> {
    if !matches!(outcome, Outcome::Pass | Outcome::Degraded { .. }) {
        return Vec::new();
    }
    let Some(extremes) = stored.sensors.get(&(planned.index as u32)) else {
        return Vec::new();
    };
    let limits = plan.suite.sensors.unwrap_or_default();
    extremes
        .readings()
        .into_iter()
        .filter_map(|r| crate::sensors::crossing(r, &limits))
        .map(|line| {
            format!(
                "step '{}' reported {}, but a BMC reading stored during it says: {line}",
                planned.name,
                outcome.name()
            )
        })
        .collect()
}

/// A `target: peer` step's good outcome against the pairs the collector judged itself.
fn paired(planned: &crate::PlannedStep, outcome: &Outcome, stored: &Facts) -> Option<String> {
    let crate::Check::Nic(nic) = &planned.check else {
        return None;
    };
    if nic.target.as_deref() != Some("peer") {
        return None;
    }
    let none = super::pairs::Stored::default();
    let pairs = stored.pairs.get(&(planned.index as u32)).unwrap_or(&none);
    super::pairs::unsupported(&planned.name, outcome, pairs, nic.fallback.is_some())
}

/// The cabling map, checked by the collector alone (the agent never sees the map): its faults
/// fail the run beside `expect:`'s, after the agent's word was compared (its pass is no
/// disagreement).
fn with_cabling(
    stored: &Facts,
    expect: Option<Outcome>,
    verdict: Verdict,
    silence: super::cabling::Silence,
) -> (Option<Outcome>, Verdict) {
    let Some(map) = &stored.cabling else {
        return (expect, verdict);
    };
    let none = Inventory::default();
    let inventory = stored.inventory.as_ref().unwrap_or(&none);
    let cabling = super::cabling::outcome(&map.cables, inventory, silence, &map.others);
    let verdict = verdict.worst(run_verdict(1, [&cabling], true));
    (super::cabling::fold(expect, cabling), verdict)
}

/// The collector's own clock against the plan: each good result must arrive no sooner after
/// the session began than the steps up to it take, and the final event no sooner after the
/// kernel was handed out than a boot and every step take. A result that came faster was not
/// measured on this node (a forged run); failed results need no such check.
fn clock(plan: &crate::Plan, stored: &Facts) -> Vec<String> {
    use crate::attest::{LEAST_BOOT, implausible, least_elapsed};
    let since = |from: Option<i64>, to: i64| {
        std::time::Duration::from_millis(to.saturating_sub(from.unwrap_or(to)).max(0) as u64)
    };
    // Only a step that did its work took its time; a skip, a fault or an error may come at once
    // (and none of them passes work it did not do).
    let did_work = |i: usize| {
        stored
            .steps
            .get(&(i as u32))
            .is_some_and(|r| matches!(r.outcome, Outcome::Pass | Outcome::Degraded { .. }))
    };
    let mut found = Vec::new();
    for planned in plan.steps.iter().filter(|s| did_work(s.index)) {
        let Some(at) = stored.received_ms.get(&(planned.index as u32)) else {
            continue;
        };
        let least = least_elapsed(plan, planned.index, did_work);
        let what = format!("step '{}' (with the steps before it)", planned.name);
        found.extend(implausible(&what, least, since(stored.session_ms, *at)));
    }
    if let (Some(served), Some(end)) = (stored.served_ms, stored.final_ms) {
        let least = LEAST_BOOT + least_elapsed(plan, usize::MAX, did_work);
        found.extend(implausible(
            "the run (the image booted and every step)",
            least,
            since(Some(served), end),
        ));
    }
    found
}

/// Where a run stands with its node's console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// The console is read and showed the run's attestation.
    Attested,
    /// The console is read and has not shown it (yet).
    Awaited,
    /// No console is read for this run (none configured, or an ad-hoc run).
    NotRead,
}

/// What the node's console makes of `computed`: unchanged when it vouched; `None` (leave the
/// run open) while it is awaited and `wait` allows; an error when it never showed the line;
/// `unattested` for a good verdict no console vouches for (a failure needs no voucher to be
/// believed).
pub fn with_console(mut computed: Computed, console: Console, wait: bool) -> Option<Computed> {
    match console {
        Console::Attested => {}
        Console::Awaited if wait => return None,
        Console::Awaited => {
            computed.verdict = computed.verdict.worst(Verdict::Error);
            computed.findings.insert(
                0,
                "security: the node's console is read, but it never showed this run's attestation (the results may not come from the node in the rack)".into(),
            );
        }
        // Its faults can never all be waived either (`run.unattested`).
        Console::NotRead if computed.verdict.is_good() => {
            computed.verdict = Verdict::Unattested;
            computed.findings.push(
                "unattested: no console capture is configured for this node, so no console vouches that it ran these steps".into(),
            );
        }
        Console::NotRead => {}
    }
    Some(computed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE: &str = "suite: t\ndescription: d\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n  - name: disk\n    exec: {argv: [true]}\n";

    fn report(step: u32, name: &str, outcome: Outcome) -> StepReport {
        StepReport {
            step,
            name: name.into(),
            kind: "exec".into(),
            outcome,
            metrics: vec![],
            duration_ms: 1,
            attempts: vec![],
        }
    }

    fn stored(steps: &[StepReport], agent: Option<Verdict>) -> Facts {
        Facts {
            suite_text: SUITE.into(),
            steps: steps.iter().map(|s| (s.step, s.clone())).collect(),
            agent_verdict: agent,
            ..Facts::default()
        }
    }

    #[test]
    fn a_pass_sooner_than_its_work_is_an_error_and_a_skip_at_once_is_not() {
        let suite = "suite: t\ndescription: d\nsteps:\n  - name: soak\n    watch: {duration: 30s}\n  - name: cool\n    watch: {duration: 30s}\n";
        let step = |i: u32, name: &str, outcome: Outcome| StepReport {
            kind: "watch".into(),
            ..report(i, name, outcome)
        };
        let run = |first: Outcome, first_at: i64, second_at: i64| Facts {
            suite_text: suite.into(),
            steps: [
                (0, step(0, "soak", first)),
                (1, step(1, "cool", Outcome::Pass)),
            ]
            .into(),
            received_ms: [(0, first_at), (1, second_at)].into(),
            session_ms: Some(0),
            agent_verdict: Some(Verdict::Pass),
            ..Facts::default()
        };
        // Each step took its 30 s: a pass.
        assert_eq!(
            compute(&run(Outcome::Pass, 30_000, 60_000)).verdict,
            Verdict::Pass
        );
        // Both reported after 1 s: the first is implausible, and so is the second.
        let c = compute(&run(Outcome::Pass, 1_000, 1_000));
        assert_eq!(c.verdict, Verdict::Error);
        assert!(c.findings[0].contains("implausible: step 'soak'"), "{c:?}");
        // The first skipped (nothing to look at) at once: only the second's 30 s are owed.
        let skip = Outcome::Skip {
            reason: "no sensors".into(),
        };
        let c = compute(&run(skip.clone(), 100, 30_500));
        assert!(
            !c.findings.iter().any(|f| f.contains("implausible")),
            "{c:?}"
        );
        let c = compute(&run(skip, 100, 5_000));
        assert!(
            c.findings
                .iter()
                .any(|f| f.contains("implausible: step 'cool'")),
            "{c:?}"
        );
    }

    #[test]
    fn a_pass_the_stored_bmc_readings_contradict_is_an_error() {
        use crate::sensors::{Extremes, SensorClass, SensorReading};
        let fan = |value: f64| SensorReading {
            name: "FAN1".into(),
            class: SensorClass::Fan,
            value,
            low: Some(1000.0),
            high: None,
        };
        let run = |tool: Outcome, values: &[f64]| {
            let mut facts = stored(
                &[report(0, "tool", tool), report(1, "disk", Outcome::Pass)],
                None,
            );
            let mut e = Extremes::default();
            for v in values {
                e.add(fan(*v));
            }
            facts.sensors.insert(0, e);
            compute(&facts)
        };
        // Fans turning: nothing to say.
        let c = run(Outcome::Pass, &[4800.0, 4700.0]);
        assert!(c.findings.iter().all(|f| !f.contains("BMC")), "{c:?}");
        // The fan stopped during a step its agent passed: the stored readings say otherwise.
        let c = run(Outcome::Pass, &[4800.0, 0.0]);
        assert_eq!(c.verdict, Verdict::Error);
        assert!(
            c.findings.contains(&"step 'tool' reported pass, but a BMC reading stored during it says: BMC sensor FAN1: 0 RPM, at or below its lower critical threshold 1000 RPM".to_owned()),
            "{c:?}"
        );
        // Failed for it: consistent, a fail and no finding.
        let failed = Outcome::Fail {
            faults: vec![crate::wire::Fault::new("sensors.threshold", "FAN1")],
        };
        let c = run(failed, &[0.0]);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.findings.iter().all(|f| !f.contains("BMC")), "{c:?}");
    }

    #[test]
    fn every_planned_step_passing_is_a_pass() {
        let c = compute(&stored(
            &[
                report(0, "tool", Outcome::Pass),
                report(1, "disk", Outcome::Pass),
            ],
            Some(Verdict::Pass),
        ));
        assert_eq!(c.verdict, Verdict::Pass);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
    }

    #[test]
    fn a_planned_step_without_a_result_is_incomplete_and_the_disagreement_is_a_finding() {
        let c = compute(&stored(
            &[report(0, "tool", Outcome::Pass)],
            Some(Verdict::Pass),
        ));
        assert_eq!(c.verdict, Verdict::Incomplete);
        assert_eq!(
            c.findings,
            [
                "agent reported pass, the collector computed incomplete; step 'disk' has no result",
                "step 'disk' has no result"
            ]
        );
        let c = compute(&stored(&[], Some(Verdict::Pass)));
        assert_eq!(c.verdict, Verdict::Incomplete);
    }

    #[test]
    fn results_that_do_not_match_the_plan_are_errors() {
        let c = compute(&stored(
            &[
                report(0, "tool", Outcome::Pass),
                report(1, "other", Outcome::Pass),
            ],
            Some(Verdict::Pass),
        ));
        assert_eq!(c.verdict, Verdict::Error);
        let c = compute(&stored(
            &[
                report(0, "tool", Outcome::Pass),
                report(1, "disk", Outcome::Pass),
                report(7, "extra", Outcome::Pass),
            ],
            Some(Verdict::Pass),
        ));
        assert_eq!(c.verdict, Verdict::Error);
        assert!(c.findings.iter().any(|f| f.contains("step 7")));
    }

    #[test]
    fn the_agent_can_make_a_verdict_worse_never_better() {
        let fail = Outcome::Fail { faults: vec![] };
        let c = compute(&stored(
            &[report(0, "tool", fail), report(1, "disk", Outcome::Pass)],
            Some(Verdict::Pass),
        ));
        assert_eq!(c.verdict, Verdict::Fail);
        let c = compute(&stored(
            &[
                report(0, "tool", Outcome::Pass),
                report(1, "disk", Outcome::Pass),
            ],
            Some(Verdict::Fail),
        ));
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.findings[0].starts_with("agent reported fail, the collector computed pass"));
        let c = compute(&stored(
            &[
                report(0, "tool", Outcome::Pass),
                report(1, "disk", Outcome::Pass),
            ],
            None,
        ));
        assert_eq!(c.verdict, Verdict::Incomplete);
    }

    #[test]
    fn expect_is_checked_against_the_stored_inventory() {
        let suite = "suite: t\ndescription: d\nexpect:\n  cpu: {min_logical: 64}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n";
        let mut s = Facts {
            suite_text: suite.into(),
            steps: [(0, report(0, "tool", Outcome::Pass))].into(),
            agent_verdict: Some(Verdict::Pass),
            agent_expect: Some(Outcome::Pass),
            ..Facts::default()
        };
        // No inventory: expect: was not checked, so the run cannot pass.
        let c = compute(&s);
        assert!(!c.verdict.is_good(), "{c:?}");
        assert!(c.findings.iter().any(|f| f.contains("no inventory")));
        let mut inventory = Inventory::default();
        inventory.cpu.logical = 1;
        s.inventory = Some(inventory);
        let c = compute(&s);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            matches!(&c.expect, Some(Outcome::Fail { faults }) if faults[0].code == "expect.cpu.min_logical")
        );
        assert!(
            c.findings
                .iter()
                .any(|f| f.contains("the agent's expect: check says pass"))
        );
    }
}
