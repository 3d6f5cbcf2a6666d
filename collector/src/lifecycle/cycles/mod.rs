//! The cycles stage: after the Linux stage's steps passed, the collector powers the node
//! through its driver `count` times; each boot is handed a fresh bootstrap token, its agent
//! reports the inventory, the node's console vouches for the boot where it is read, and the
//! stage's verdict is [`kiln_protocol::verdict::cycles::judge`] of what was stored.
//!
//! ```text
//! cycle k: due ─power action─▶ powering ─/ipxe─▶ booting ─inventory─▶ reported
//!          ─(console vouched)─▶ judged: next cycle due | stage pass | stage fail
//! ```
//!
//! A boot that comes before its power action, a second boot request in one cycle, a node
//! that does not come back by the deadline and a power driver that fails each fail the stage,
//! naming the cycle. Nothing here is ever a pass without every cycle stored.

use crate::store::sql::OptionalExtension;
use kiln_protocol::suite::CycleKind;
use kiln_protocol::verdict::cycles::{Boot, Judged, judge};
use kiln_protocol::verdict::linux::Console;
use kiln_protocol::wire::{CycleBoot, Inventory};

use super::{
    Connection, Ended, Stage, StageState, StoreError, Verdict, conclude, end_stage, exec,
    fail_stage, now_ms, params, row, stages, start_stage, with_console,
};
use crate::store::queries::Progress;
use crate::store::states::CycleState;

/// A power action the collector owes a node now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The run.
    pub run_id: i64,
    /// Its node.
    pub node_id: i64,
    /// The cycle, from 1.
    pub cycle: u32,
    /// Warm or cold.
    pub kind: CycleKind,
}

/// The run's cycles settings, from its stored suite (`None`: it asks for none).
fn settings(
    tx: &Connection,
    run_id: i64,
) -> Result<Option<kiln_protocol::suite::Cycles>, StoreError> {
    Ok(super::stored_plan(tx, run_id)?.and_then(|plan| plan.suite.cycles))
}

/// Whether the run has a cycles stage still to come or under way.
pub(super) fn pending(tx: &Connection, run_id: i64) -> Result<bool, StoreError> {
    Ok(stages(tx, run_id)?
        .iter()
        .any(|(stage, state)| *stage == Stage::Cycles && *state == StageState::Pending))
}

/// The Linux stage ended with `verdict`: a passing one starts the power cycles (the first is
/// due now); any other leaves them not run. Returns the stages that ended.
pub(super) fn after_linux(
    tx: &Connection,
    run_id: i64,
    verdict: Verdict,
) -> Result<Ended, StoreError> {
    let mut ended = Ended::default();
    let passed = matches!(
        verdict,
        Verdict::Pass | Verdict::Degraded | Verdict::Unattested
    );
    let cycles = settings(tx, run_id)?;
    match (passed, cycles) {
        (true, Some(c)) => {
            start_stage(tx, run_id, Stage::Cycles)?;
            exec(
                tx,
                "INSERT INTO power_cycles (run_id, cycle, count, kind, state) VALUES (?1, 1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![run_id, c.count, c.kind.name(), CycleState::Due],
            )?;
            progress(
                tx,
                run_id,
                1,
                c.count,
                &format!("{} power cycle due", c.kind.name()),
            )?;
        }
        (passed, _) => {
            let why = if passed {
                "not run: the run's stored suite no longer loads"
            } else {
                "not run: the linux stage did not pass"
            };
            if end_stage(tx, run_id, Stage::Cycles, Verdict::Incomplete, Some(why))? {
                ended.add(run_id, Stage::Cycles);
            }
            // The Linux stage's console tail ends with the run.
            ended.add(run_id, Stage::Linux);
        }
    }
    Ok(ended)
}

/// Writes the run's live progress: which cycle, and where it stands.
fn progress(
    tx: &Connection,
    run_id: i64,
    cycle: u32,
    count: u32,
    status: &str,
) -> Result<(), StoreError> {
    let p = Progress {
        step: 0,
        name: format!("power cycle {cycle} of {count}"),
        fraction: f64::from(cycle.saturating_sub(1)) / f64::from(count.max(1)),
        status: Some(status.to_owned()),
    };
    let json = serde_json::to_string(&p).map_err(|source| StoreError::Corrupt {
        what: "progress",
        source,
    })?;
    exec(
        tx,
        "UPDATE runs SET progress = ?2 WHERE id = ?1 AND verdict IS NULL",
        params![run_id, json],
    )?;
    Ok(())
}

/// Takes every cycle whose power action is owed and marks it as powering, with the deadline
/// by which its boot must have reported. One transaction; the caller then acts.
pub fn take_due(conn: &Connection, now: i64) -> Result<Vec<Due>, StoreError> {
    let tx = conn.savepoint()?;
    let due: Vec<(i64, i64, u32, u32, String)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT c.run_id, r.node_id, c.cycle, c.count, c.kind FROM power_cycles c JOIN runs r ON r.id = c.run_id
              WHERE c.state = ?1 AND r.verdict IS NULL",
        )?;
        stmt.query_map([CycleState::Due], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for (run_id, node_id, cycle, count, kind) in due {
        let kind = if kind == "cold" {
            CycleKind::Cold
        } else {
            CycleKind::Warm
        };
        let timeout = settings(&tx, run_id)?
            .map_or(15 * 60 * 1000, |c| c.boot_timeout.get().as_millis() as i64);
        // Claimed only while still due: collectors sharing a database each look for what is
        // owed, and the one whose update lands sends the action; the others skip it.
        let claimed = exec(
            &tx,
            "UPDATE power_cycles SET state = ?3, powered_ms = ?4, deadline_ms = ?5 WHERE run_id = ?1 AND cycle = ?2 AND state = ?6",
            params![
                run_id,
                cycle,
                CycleState::Powering,
                now,
                now + timeout,
                CycleState::Due
            ],
        )?;
        if claimed == 0 {
            continue;
        }
        progress(
            &tx,
            run_id,
            cycle,
            count,
            &format!(
                "{} power cycle sent; waiting for the node to boot",
                kind.name()
            ),
        )?;
        out.push(Due {
            run_id,
            node_id,
            cycle,
            kind,
        });
    }
    tx.commit()?;
    Ok(out)
}

/// A cycle's power action could not be carried out (`why`): the stage fails, naming it.
pub fn power_failed(
    conn: &Connection,
    run_id: i64,
    cycle: u32,
    why: &str,
) -> Result<Ended, StoreError> {
    let tx = conn.savepoint()?;
    let open: bool = row(
        &tx,
        "SELECT verdict IS NULL FROM runs WHERE id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    let ended = if open {
        fail_stage(
            &tx,
            run_id,
            Stage::Cycles,
            &format!("cycle {cycle}: the node could not be power-cycled: {why}"),
        )?
    } else {
        Ended::default()
    };
    tx.commit()?;
    Ok(ended)
}

/// The run's latest cycle: its number, count and state.
fn latest(tx: &Connection, run_id: i64) -> Result<Option<(u32, u32, CycleState)>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT cycle, count, state FROM power_cycles WHERE run_id = ?1 ORDER BY cycle DESC LIMIT 1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

/// What a boot request during the cycles stage gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Asked {
    /// The RAM image, with the bootstrap token whose hash was given.
    Linux,
    /// The boot was handed out already: the caller decides (iPXE retrying, or a second party).
    Again,
    /// The stage failed: a boot kiln did not cause.
    Failed,
}

/// The node asked for its boot script (a bootstrap token's hash and its address) while the
/// run's cycles stage runs: the boot its power action caused is handed the RAM image with a
/// fresh bootstrap token; any other boot is one kiln did not cause, and fails the stage.
pub(super) fn asked(
    tx: &Connection,
    run_id: i64,
    bootstrap_hash: &str,
    source: Option<&str>,
    ended: &mut Ended,
) -> Result<Asked, StoreError> {
    let Some((cycle, count, state)) = latest(tx, run_id)? else {
        let detail = "the cycles stage runs without a cycle stored";
        ended.extend(fail_stage(tx, run_id, Stage::Cycles, detail)?);
        return Ok(Asked::Failed);
    };
    match state {
        CycleState::Powering => {
            // As for the Linux stage: only this token's hash is kept, and the proof the
            // console must show comes with its exchange.
            exec(
                tx,
                "UPDATE runs SET bootstrap_hash = ?2, bootstrap_used_ms = NULL, token_hash = '', linux_served_ms = ?3, linux_source = ?4, attest_proof = NULL WHERE id = ?1",
                params![run_id, bootstrap_hash, now_ms(), source],
            )?;
            exec(
                tx,
                "UPDATE power_cycles SET state = ?3, served_ms = ?4 WHERE run_id = ?1 AND cycle = ?2",
                params![run_id, cycle, CycleState::Booting, now_ms()],
            )?;
            progress(tx, run_id, cycle, count, "booting the RAM image")?;
            Ok(Asked::Linux)
        }
        CycleState::Booting => Ok(Asked::Again),
        CycleState::Due | CycleState::Reported => {
            let detail = with_console(
                tx,
                run_id,
                format!(
                    "cycle {cycle}: unexpected reboot: the node asked for its boot script before kiln power-cycled it"
                ),
            )?;
            ended.extend(fail_stage(tx, run_id, Stage::Cycles, &detail)?);
            Ok(Asked::Failed)
        }
    }
}

/// Which cycle the agent of the run's current boot is in, for its plan; `None` outside the
/// cycles stage.
pub(super) fn current_boot(tx: &Connection, run_id: i64) -> Result<Option<CycleBoot>, StoreError> {
    Ok(match latest(tx, run_id)? {
        Some((cycle, count, CycleState::Booting)) => Some(CycleBoot { cycle, count }),
        _ => None,
    })
}

/// What a cycle's report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// Stored (and judged, when the console had vouched already).
    Stored,
    /// Not what the run expects now (why): nothing changed.
    Refused(String),
    /// The run is closed.
    Closed,
}

/// The agent of cycle `cycle`'s boot reports the node's inventory. Accepted once, for the
/// cycle whose boot is under way; then the cycles are judged. One transaction.
pub fn report(
    conn: &Connection,
    run_id: i64,
    cycle: u32,
    inventory: &Inventory,
) -> Result<(Reported, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let open: Option<bool> = row(
        &tx,
        "SELECT verdict IS NULL FROM runs WHERE id = ?1",
        [run_id],
        |r| r.get(0),
    )
    .optional()?;
    if open != Some(true) {
        return Ok((Reported::Closed, Ended::default()));
    }
    match latest(&tx, run_id)? {
        Some((latest, _, CycleState::Booting)) if latest == cycle => {}
        Some((latest, _, CycleState::Reported)) if latest == cycle => {
            // The agent's retry of a report whose answer it lost: the same boot again.
            let stored: Option<String> = row(
                &tx,
                "SELECT boot_id FROM power_cycles WHERE run_id = ?1 AND cycle = ?2",
                params![run_id, cycle],
                |r| r.get(0),
            )?;
            if stored.is_some() && stored == inventory.boot_id {
                return Ok((Reported::Stored, Ended::default()));
            }
            return Ok((
                Reported::Refused(format!(
                    "run {run_id}: cycle {cycle} was reported already, by another boot"
                )),
                Ended::default(),
            ));
        }
        Some((latest, count, state)) => {
            return Ok((
                Reported::Refused(format!(
                    "run {run_id} is at cycle {latest} of {count} ({}); cycle {cycle}'s inventory is not expected now",
                    state.name()
                )),
                Ended::default(),
            ));
        }
        None => {
            return Ok((
                Reported::Refused(format!("run {run_id} has no power cycle under way")),
                Ended::default(),
            ));
        }
    }
    let json = serde_json::to_string(inventory).map_err(|source| StoreError::Corrupt {
        what: "inventory",
        source,
    })?;
    exec(
        &tx,
        "UPDATE power_cycles SET state = ?3, reported_ms = ?4, boot_id = ?5, inventory = ?6 WHERE run_id = ?1 AND cycle = ?2",
        params![
            run_id,
            cycle,
            CycleState::Reported,
            now_ms(),
            inventory.boot_id,
            json
        ],
    )?;
    exec(
        &tx,
        "UPDATE runs SET last_seen_ms = ?2 WHERE id = ?1",
        params![run_id, now_ms()],
    )?;
    let ended = advance(&tx, run_id)?;
    tx.commit()?;
    Ok((Reported::Stored, ended))
}

/// The node's console showed the attestation of the current cycle's boot.
pub(super) fn attested(tx: &Connection, run_id: i64) -> Result<Ended, StoreError> {
    exec(
        tx,
        "UPDATE power_cycles SET attested_ms = ?2 WHERE run_id = ?1 AND attested_ms IS NULL AND state IN (?3, ?4)
            AND cycle = (SELECT max(cycle) FROM power_cycles WHERE run_id = ?1)",
        params![
            run_id,
            now_ms(),
            CycleState::Booting,
            CycleState::Reported
        ],
    )?;
    advance(tx, run_id)
}

/// A stored cycle as [`advance`] reads it: number, count, kind, inventory, attested at.
type CycleRow = (u32, u32, String, Option<String>, Option<i64>);

/// Judges the run's stored cycles and acts on the judgment: the next cycle is owed, the stage
/// passes or fails, or nothing is decided yet.
fn advance(tx: &Connection, run_id: i64) -> Result<Ended, StoreError> {
    let mut ended = Ended::default();
    let (first, watched): (Option<String>, bool) = row(
        tx,
        "SELECT inventory, console_watched FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let first: Option<Inventory> = first.and_then(|t| serde_json::from_str(&t).ok());
    let mut stmt = tx.prepare_cached(
        "SELECT cycle, count, kind, inventory, attested_ms FROM power_cycles WHERE run_id = ?1 ORDER BY cycle",
    )?;
    let rows: Vec<CycleRow> = stmt
        .query_map([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let Some((_, count, kind, _, _)) = rows.first().cloned() else {
        return Ok(ended);
    };
    let boots: Vec<Boot> = rows
        .into_iter()
        .map(|(cycle, _, _, inventory, attested)| Boot {
            cycle,
            inventory: inventory.and_then(|t| serde_json::from_str(&t).ok()),
            console: match (watched, attested) {
                (_, Some(_)) => Console::Attested,
                (true, None) => Console::Awaited,
                (false, None) => Console::NotRead,
            },
        })
        .collect();
    match judge(count, first.as_ref(), &boots) {
        Judged::Waiting => {}
        Judged::Next(cycle) => {
            exec(
                tx,
                "INSERT INTO power_cycles (run_id, cycle, count, kind, state) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![run_id, cycle, count, kind, CycleState::Due],
            )?;
            progress(tx, run_id, cycle, count, &format!("{kind} power cycle due"))?;
        }
        Judged::Pass => {
            let detail = format!(
                "{count} {kind} power cycle(s), each a new boot that found the first boot's hardware"
            );
            if end_stage(tx, run_id, Stage::Cycles, Verdict::Pass, Some(&detail))? {
                ended.add(run_id, Stage::Cycles);
            }
            conclude(tx, run_id)?;
        }
        Judged::Fail(lines) => {
            ended.extend(fail_stage(tx, run_id, Stage::Cycles, &lines.join("; "))?);
        }
    }
    Ok(ended)
}

/// Fails the cycles stages whose node did not come back, or whose boot the read console
/// never vouched for, in time.
pub(super) fn overdue(tx: &Connection, now: i64) -> Result<Ended, StoreError> {
    let late: Vec<(i64, u32, String, CycleState, Option<i64>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT c.run_id, c.cycle, c.kind, c.state, c.powered_ms FROM power_cycles c JOIN runs r ON r.id = c.run_id
              WHERE r.verdict IS NULL AND c.state IN (?1, ?2, ?3) AND c.deadline_ms < ?4",
        )?;
        stmt.query_map(
            params![
                CycleState::Powering,
                CycleState::Booting,
                CycleState::Reported,
                now
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?
        .collect::<Result<_, _>>()?
    };
    let mut ended = Ended::default();
    for (run_id, cycle, kind, state, powered) in late {
        let secs = powered.map_or(0, |p| (now - p) / 1000);
        let what = match state {
            CycleState::Powering => "the node never asked for its boot script",
            CycleState::Booting => "the node booted but its agent never reported its inventory",
            _ => "the node's console never showed this boot's attestation",
        };
        let detail = with_console(
            tx,
            run_id,
            format!("cycle {cycle}: {what} within {secs}s of its {kind} power cycle"),
        )?;
        ended.extend(fail_stage(tx, run_id, Stage::Cycles, &detail)?);
    }
    Ok(ended)
}

#[cfg(test)]
mod tests;

/// A cycle's state as SQL stores it, for tests.
#[cfg(test)]
pub(super) fn state_of(tx: &Connection, run_id: i64, cycle: u32) -> Option<CycleState> {
    row(
        tx,
        "SELECT state FROM power_cycles WHERE run_id = ?1 AND cycle = ?2",
        params![run_id, cycle],
        |r| r.get(0),
    )
    .ok()
}
