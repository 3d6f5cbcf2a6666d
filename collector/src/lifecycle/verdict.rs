//! The collector's own verdict for a run's Linux stage, computed from what it stored: the
//! run's checked plan (the stored suite), each planned step's stored result, the `expect:`
//! outcome against the stored inventory, and the agent's own verdict — which is only
//! compared, and can only make things worse.

use std::collections::BTreeMap;

use kiln_protocol::verdict::{Verdict, run_verdict};
use kiln_protocol::wire::{Inventory, Outcome, StepReport};
use rusqlite::{Connection, OptionalExtension};

use super::{Ended, Stage, conclude, end_stage, exec, params, row};
use crate::store::StoreError;

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

/// Everything the computation reads, as stored.
#[derive(Debug, Clone, Default)]
pub struct Stored {
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
    pub peers: super::peers::Peers,
    /// When the collector received each step's first result, by step index.
    pub received_ms: BTreeMap<u32, i64>,
    /// When the run's session began by the collector's clock: the bootstrap exchange (or the
    /// registration of an ad-hoc run).
    pub session_ms: Option<i64>,
    /// When the Linux stage was handed out (network-booted runs only).
    pub served_ms: Option<i64>,
    /// When the collector received the agent's final event.
    pub final_ms: Option<i64>,
}

/// Reads what the computation needs for `run_id`.
pub fn read(tx: &Connection, run_id: i64) -> Result<Stored, StoreError> {
    let (suite_text, inventory, agent_expect): (String, Option<String>, Option<String>) = tx
        .query_row(
            "SELECT s.text, r.inventory, r.expect FROM runs r JOIN suites s ON s.sha256 = r.suite_sha256 WHERE r.id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
    let mut stored = Stored {
        suite_text,
        inventory: inventory
            .as_deref()
            .map(|t| decode("inventory", t))
            .transpose()?,
        agent_expect: agent_expect
            .as_deref()
            .map(|t| decode("outcome", t))
            .transpose()?,
        ..Stored::default()
    };
    (stored.session_ms, stored.served_ms, stored.final_ms) = tx.query_row(
        "SELECT COALESCE(bootstrap_used_ms, CASE WHEN bootstrap_hash IS NULL THEN started_ms END), linux_served_ms, final_ms FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut stmt =
        tx.prepare_cached("SELECT report, received_ms FROM steps WHERE run_id = ?1 ORDER BY step")?;
    for row in stmt.query_map([run_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
    })? {
        let (report, received) = row?;
        let report: StepReport = decode("step", &report)?;
        if let Some(at) = received {
            stored.received_ms.insert(report.step, at);
        }
        stored.steps.insert(report.step, report);
    }
    let mut stmt = tx.prepare_cached(
        "SELECT step FROM events WHERE run_id = ?1 AND kind = ?2 GROUP BY step HAVING count(*) > 1",
    )?;
    stored.repeated = stmt
        .query_map(rusqlite::params![run_id, "step_finished"], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let agent: Option<String> = tx
        .query_row(
            "SELECT body FROM events WHERE run_id = ?1 AND kind = ?2 ORDER BY seq LIMIT 1",
            rusqlite::params![run_id, "run_finished"],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(body) = agent {
        if let kiln_protocol::wire::EventBody::RunFinished { verdict } = decode("event", &body)? {
            stored.agent_verdict = Some(verdict);
        }
    }
    stored.peers = super::peers::read(tx, run_id, stored.inventory.as_ref())?;
    Ok(stored)
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt { what, source })
}

/// The verdict of the Linux stage from what was stored. Pure, so every rule is unit-tested.
pub fn compute(stored: &Stored) -> Computed {
    let mut findings = Vec::new();
    let plan = match kiln_protocol::load("suite", stored.suite_text.as_bytes()) {
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
            Some(report) => outcomes.push(report.outcome.clone()),
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
            Some(inventory) => {
                let faults = kiln_protocol::expect::evaluate(expect, inventory);
                if faults.is_empty() {
                    Outcome::Pass
                } else {
                    Outcome::Fail { faults }
                }
            }
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

/// The collector's own clock against the plan: each good result must arrive no sooner after
/// the session began than the steps up to it take, and the final event no sooner after the
/// kernel was handed out than a boot and every step take. A result that came faster was not
/// measured on this node (a forged run); failed results need no such check.
fn clock(plan: &kiln_protocol::Plan, stored: &Stored) -> Vec<String> {
    use kiln_protocol::attest::{LEAST_BOOT, implausible, least_elapsed};
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

/// Whether finishing a run may wait for its console's attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The console is read and has not shown it yet: leave the run open.
    ForTheConsole,
    /// Finish now, whatever the console showed.
    No,
}

/// Where a run stands with its console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The console is read and showed the run's attestation.
    Attested,
    /// The console is read and has not shown it (yet).
    Awaited,
    /// No console is read for this run (none configured, or an ad-hoc run).
    NoConsole,
}

/// Where `run_id` stands with its console.
pub fn state(tx: &Connection, run_id: i64) -> Result<State, StoreError> {
    let (watched, attested): (bool, Option<i64>) = row(
        tx,
        "SELECT console_watched, attested_ms FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(match (watched, attested) {
        (_, Some(_)) => State::Attested,
        (true, None) => State::Awaited,
        (false, None) => State::NoConsole,
    })
}

/// Computes the Linux stage's verdict from what is stored, records the findings, and
/// concludes the run.
pub(super) fn finish_linux(tx: &Connection, run_id: i64) -> Result<Ended, StoreError> {
    finish_linux_when(tx, run_id, Waiting::ForTheConsole)
}

/// [`finish_linux`], unless the node's console is read and has not shown the run's
/// attestation yet and `waiting` says to wait for it (the line and the final event travel
/// different paths); then nothing changes and the console follower or the monitor finishes it.
pub(super) fn finish_linux_when(
    tx: &Connection,
    run_id: i64,
    waiting: Waiting,
) -> Result<Ended, StoreError> {
    let stored = read(tx, run_id)?;
    let mut computed = compute(&stored);
    match state(tx, run_id)? {
        State::Attested => {}
        State::Awaited if waiting == Waiting::ForTheConsole => {
            return Ok(Ended::default());
        }
        State::Awaited => {
            computed.verdict = computed.verdict.worst(Verdict::Error);
            computed.findings.insert(
                0,
                "security: the node's console is read, but it never showed this run's attestation (the results may not come from the node in the rack)".into(),
            );
        }
        // A run that did not pass needs no voucher to be believed; one that did is only
        // `unattested` (and its faults can never all be waived: `run.unattested`).
        State::NoConsole if computed.verdict.is_good() => {
            computed.verdict = Verdict::Unattested;
            computed.findings.push(
                "unattested: no console capture is configured for this node, so no console vouches that it ran these steps".into(),
            );
        }
        State::NoConsole => {}
    }
    let findings =
        serde_json::to_string(&computed.findings).map_err(|source| StoreError::Corrupt {
            what: "findings",
            source,
        })?;
    let expect = computed
        .expect
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|source| StoreError::Corrupt {
            what: "outcome",
            source,
        })?;
    // A node degraded against its peers says why as the collector's reason for its verdict.
    let peer_reason = (!computed.peer_notes.is_empty()).then(|| computed.peer_notes.join("; "));
    exec(
        tx,
        "UPDATE runs SET findings = ?2, expect = COALESCE(?3, expect), verdict_reason = COALESCE(verdict_reason, ?4) WHERE id = ?1",
        params![run_id, findings, expect, peer_reason],
    )?;
    let mut ended = Ended::default();
    let detail = computed
        .findings
        .first()
        .map(String::as_str)
        .or(peer_reason.as_deref());
    if end_stage(tx, run_id, Stage::Linux, computed.verdict, detail)? {
        ended.add(run_id, Stage::Linux);
    }
    conclude(tx, run_id)?;
    Ok(ended)
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

    fn stored(steps: &[StepReport], agent: Option<Verdict>) -> Stored {
        Stored {
            suite_text: SUITE.into(),
            steps: steps.iter().map(|s| (s.step, s.clone())).collect(),
            agent_verdict: agent,
            ..Stored::default()
        }
    }

    #[test]
    fn a_pass_sooner_than_its_work_is_an_error_and_a_skip_at_once_is_not() {
        let suite = "suite: t\ndescription: d\nsteps:\n  - name: soak\n    watch: {duration: 30s}\n  - name: cool\n    watch: {duration: 30s}\n";
        let step = |i: u32, name: &str, outcome: Outcome| StepReport {
            kind: "watch".into(),
            ..report(i, name, outcome)
        };
        let run = |first: Outcome, first_at: i64, second_at: i64| Stored {
            suite_text: suite.into(),
            steps: [
                (0, step(0, "soak", first)),
                (1, step(1, "cool", Outcome::Pass)),
            ]
            .into(),
            received_ms: [(0, first_at), (1, second_at)].into(),
            session_ms: Some(0),
            agent_verdict: Some(Verdict::Pass),
            ..Stored::default()
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
        let mut s = Stored {
            suite_text: suite.into(),
            steps: [(0, report(0, "tool", Outcome::Pass))].into(),
            agent_verdict: Some(Verdict::Pass),
            agent_expect: Some(Outcome::Pass),
            ..Stored::default()
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
