//! The collector's side of a run's Linux stage verdict: it reads the facts it stored (the
//! suite, the steps' results, inventory, times, peers, the console's word) and writes the
//! verdict [`kiln_protocol::verdict::linux`] computes from them. No rule is decided here.

use crate::store::sql::{Connection, OptionalExtension};
use kiln_protocol::verdict::linux::{self, Console, Facts, compute};
use kiln_protocol::wire::StepReport;

use super::{Ended, Stage, conclude, end_stage, exec, params, row};
use crate::store::StoreError;

/// Reads what the computation needs for `run_id`.
pub fn read(tx: &Connection, run_id: i64) -> Result<Facts, StoreError> {
    let (suite_text, inventory, agent_expect): (String, Option<String>, Option<String>) = tx
        .query_row(
            "SELECT s.text, r.inventory, r.expect FROM runs r JOIN suites s ON s.sha256 = r.suite_sha256 WHERE r.id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
    let mut stored = Facts {
        suite_text,
        inventory: inventory
            .as_deref()
            .map(|t| decode("inventory", t))
            .transpose()?,
        agent_expect: agent_expect
            .as_deref()
            .map(|t| decode("outcome", t))
            .transpose()?,
        ..Facts::default()
    };
    (stored.session_ms, stored.served_ms, stored.final_ms) = tx.query_row(
        "SELECT COALESCE(bootstrap_used_ms, CASE WHEN bootstrap_hash IS NULL THEN started_ms END), linux_served_ms, final_ms FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut stmt =
        tx.prepare_cached("SELECT report, received_ms FROM steps WHERE run_id = ?1 ORDER BY step")?;
    for row in stmt.query_map([run_id], |r| {
        Ok((r.get::<String>(0)?, r.get::<Option<i64>>(1)?))
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
        .query_map(crate::store::sql::params![run_id, "step_finished"], |r| {
            r.get(0)
        })?
        .collect::<Result<_, _>>()?;
    let agent: Option<String> = tx
        .query_row(
            "SELECT body FROM events WHERE run_id = ?1 AND kind = ?2 ORDER BY seq LIMIT 1",
            crate::store::sql::params![run_id, "run_finished"],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(body) = agent {
        if let kiln_protocol::wire::EventBody::RunFinished { verdict } = decode("event", &body)? {
            stored.agent_verdict = Some(verdict);
        }
    }
    stored.peers = super::peers::read(tx, run_id, stored.inventory.as_ref())?;
    stored.cabling = cabling(tx, run_id, stored.inventory.as_ref())?;
    stored.sensors = sensor_extremes(tx, run_id)?;
    for r in crate::store::queries::pair_results(tx, run_id)? {
        let step = stored.pairs.entry(r.step).or_default();
        match (r.partner_node, r.partner_name) {
            (Some(node), name) => step.measured.push(kiln_protocol::verdict::pairs::Measured {
                partner: name.unwrap_or_else(|| format!("node {node}")),
                met: r.met,
            }),
            (None, _) => step.timed_out = true,
        }
    }
    Ok(stored)
}

/// The BMC's readings during each step of the run, folded to each sensor's extremes as they
/// are read (a long burn-in stores tens of thousands of sweeps).
fn sensor_extremes(
    tx: &Connection,
    run_id: i64,
) -> Result<std::collections::BTreeMap<u32, kiln_protocol::sensors::Extremes>, StoreError> {
    let mut out: std::collections::BTreeMap<u32, kiln_protocol::sensors::Extremes> =
        Default::default();
    let mut stmt = tx.prepare_cached(
        "SELECT step, body FROM events WHERE run_id = ?1 AND kind = 'sensors' AND step IS NOT NULL",
    )?;
    let mut rows = stmt.query(crate::store::sql::params![run_id])?;
    while let Some(row) = rows.next()? {
        let step: u32 = row.get(0)?;
        let body: String = row.get(1)?;
        if let kiln_protocol::wire::EventBody::Sensors { readings, .. } = decode("event", &body)? {
            let extremes = out.entry(step).or_default();
            for r in readings {
                extremes.add(r);
            }
        }
    }
    Ok(out)
}

/// The run's node's lines of the cabling map, with the other nodes' lines for the ports its
/// cables landed on; none when the map has nothing for it.
fn cabling(
    tx: &Connection,
    run_id: i64,
    inventory: Option<&kiln_protocol::wire::Inventory>,
) -> Result<Option<kiln_protocol::verdict::cabling::Map>, StoreError> {
    use crate::store::queries::{cables_of, elsewhere};
    let node: i64 = tx.query_row("SELECT node_id FROM runs WHERE id = ?1", [run_id], |r| {
        r.get(0)
    })?;
    let cables = cables_of(tx, node)?;
    if cables.is_empty() {
        return Ok(None);
    }
    let heard: Vec<(String, String)> = inventory
        .map(|inv| {
            inv.nics
                .iter()
                .filter_map(|n| n.lldp.as_ref())
                .map(|l| (l.switch().to_owned(), l.port_id.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(kiln_protocol::verdict::cabling::Map {
        cables,
        others: elsewhere(tx, node, &heard)?,
    }))
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt { what, source })
}

/// Whether finishing a run may wait for its console's attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The console is read and has not shown it yet: leave the run open.
    ForTheConsole,
    /// Finish now, whatever the console showed.
    No,
}

/// Where `run_id` stands with its console.
pub fn state(tx: &Connection, run_id: i64) -> Result<Console, StoreError> {
    let (watched, attested): (bool, Option<i64>) = row(
        tx,
        "SELECT console_watched, attested_ms FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(match (watched, attested) {
        (_, Some(_)) => Console::Attested,
        (true, None) => Console::Awaited,
        (false, None) => Console::NotRead,
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
    let computed = compute(&read(tx, run_id)?);
    let wait = waiting == Waiting::ForTheConsole;
    let Some(computed) = linux::with_console(computed, state(tx, run_id)?, wait) else {
        return Ok(Ended::default());
    };
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
    let cycles_follow = super::cycles::pending(tx, run_id)?;
    if end_stage(tx, run_id, Stage::Linux, computed.verdict, detail)? {
        if cycles_follow {
            // The console tail goes on through the power cycles.
            ended.extend(super::cycles::after_linux(tx, run_id, computed.verdict)?);
        } else {
            ended.add(run_id, Stage::Linux);
        }
    }
    conclude(tx, run_id)?;
    Ok(ended)
}
