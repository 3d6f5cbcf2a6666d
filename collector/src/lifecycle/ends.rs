//! Runs that end without their agent's word: lost contact (the heartbeat monitor), a kernel
//! panic seen on the console, the collector restarting; and the console tail kept for them.

use super::{
    Connection, Ended, RunStage, Sql, Stage, StageState, StoreError, Verdict, close_run, exec,
    fail_stage, now_ms, params, row, with_console,
};
use crate::store::leases::UNLEASED_GRACE_MS;
use crate::store::sql::OptionalExtension;

/// Fails every open Linux stage whose agent has been silent longer than its heartbeat
/// timeout; returns the runs with the stages it ended.
pub fn lost_contact(conn: &Connection, now: i64) -> Result<(Vec<i64>, Ended), StoreError> {
    let tx = conn.savepoint()?;
    // A run whose agent has said its last word is silent by design; only its console's
    // attestation is still awaited, for a while.
    let mut ended = super::attest::give_up_waiting(&tx, now)?;
    ended.extend(super::cycles::overdue(&tx, now)?);
    let lost: Vec<(i64, i64)> = {
        let mut stmt = tx.prepare(
            "SELECT id, heartbeat_secs FROM runs WHERE verdict IS NULL AND stage = ?2 AND last_seen_ms < ?1 - heartbeat_secs * 1000
               AND NOT (final_seq IS NOT NULL AND final_seq <= acked_seq)",
        )?;
        stmt.query_map(params![now, Sql(RunStage::Linux)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?
    };
    for (id, secs) in &lost {
        let reason = with_console(
            &tx,
            *id,
            format!("lost contact: no word from the agent for over {secs}s"),
        )?;
        ended.extend(close_run(&tx, *id, Verdict::Fail, &reason)?);
    }
    tx.commit()?;
    Ok((lost.into_iter().map(|(id, _)| id).collect(), ended))
}

/// The node's kernel panicked (its console says so): the run, if still open in its Linux
/// stage, fails now with what the console shows — the panic and what led to it. The tail is
/// stored with it.
pub fn kernel_panicked(conn: &Connection, run_id: i64, tail: &[u8]) -> Result<Ended, StoreError> {
    let tx = conn.savepoint()?;
    let open: Option<RunStage> = row(
        &tx,
        "SELECT stage FROM runs WHERE id = ?1 AND verdict IS NULL",
        [run_id],
        |r| Ok(r.get::<Sql<RunStage>>(0)?.0),
    )
    .optional()?;
    if open != Some(RunStage::Linux) {
        return Ok(Ended::default());
    }
    exec(
        &tx,
        "UPDATE runs SET console_tail = ?2 WHERE id = ?1",
        params![run_id, tail],
    )?;
    let shown = crate::console::explain(tail).unwrap_or_else(|| "nothing more".to_owned());
    let ended = close_run(
        &tx,
        run_id,
        Verdict::Fail,
        &format!("the node's kernel panicked; {shown}"),
    )?;
    tx.commit()?;
    Ok(ended)
}

/// Stores the last of `run_id`'s console (bounded by the caller), while the run is open.
pub fn console_tail(conn: &Connection, run_id: i64, tail: &[u8]) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE runs SET console_tail = ?2 WHERE id = ?1 AND verdict IS NULL",
        params![run_id, tail],
    )?;
    Ok(())
}

/// What a (re)start found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarted {
    /// Open runs given a fresh heartbeat window.
    pub reopened: usize,
    /// Runs whose memtest stage failed: its reader died with the collector.
    pub memtests: Vec<i64>,
    /// Nodes re-armed for a new run because of that (once per run, never for a repeat):
    /// the caller resets them through their power drivers.
    pub rearmed: Vec<i64>,
}

/// The collector (re)started: open runs get a fresh heartbeat window (the collector's own
/// downtime is not the agents' silence), and memtest stages that were running fail — their
/// consoles were not captured throughout, so their result cannot be trusted. Each such node
/// is re-armed once, so the death costs the stage a restart and never a verdict: a run that
/// was itself such a repeat is not repeated again. A stage whose console another live
/// collector reads under its lease is that collector's, and left alone; so is one younger
/// than [`UNLEASED_GRACE_MS`] that nobody leases yet (another collector may have just handed
/// it to its node: the lease rounds judge it once the grace is over) unless this collector
/// held its lease. The leases this collector (`me`, by its id) held before it restarted are
/// ended.
pub fn collector_started(conn: &Connection, me: &str) -> Result<Restarted, StoreError> {
    let tx = conn.savepoint()?;
    let now = crate::store::leases::clock(&tx)?;
    let reopened = exec(
        &tx,
        "UPDATE runs SET last_seen_ms = ?1 WHERE verdict IS NULL",
        [now_ms()],
    )?;
    let running: Vec<i64> = tx.query_map(
        "SELECT s.run_id FROM stages s JOIN runs r ON r.id = s.run_id
          WHERE r.verdict IS NULL AND s.name = ?1 AND s.state = ?2
            AND NOT EXISTS (SELECT 1 FROM leases l
                             WHERE l.resource = 'console:' || CAST(r.node_id AS TEXT)
                               AND l.owner <> ?3 AND l.expires_ms >= ?4)
            AND (s.started_ms < ?5
                 OR EXISTS (SELECT 1 FROM leases l
                             WHERE l.resource = 'console:' || CAST(r.node_id AS TEXT)
                               AND l.owner = ?3 AND l.expires_ms >= ?4))",
        params![
            Stage::Memtest,
            StageState::Running,
            me,
            now,
            now - UNLEASED_GRACE_MS
        ],
        |r| r.get(0),
    )?;
    let mut rearmed = Vec::new();
    for run_id in &running {
        if let Some(node_id) = reader_lost(&tx, *run_id, "the collector restarted")? {
            rearmed.push(node_id);
        }
    }
    for (resource, epoch) in tx.query_map(
        "SELECT resource, epoch FROM leases WHERE owner = ?1",
        [me],
        |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
    )? {
        crate::store::leases::release(&tx, &resource, me, epoch, now)?;
    }
    tx.commit()?;
    Ok(Restarted {
        reopened,
        memtests: running,
        rearmed,
    })
}

/// Fails `run_id`'s running memtest stage because its console was not read throughout
/// (`cause` says why, e.g. "the collector restarted"), and re-arms its node once: gives the
/// node when it was re-armed (then its power driver must reset it). A stage that is no longer
/// running (its reader's verdict came in before the lease changed hands) is left alone: its
/// run may be in Linux by now, and ending that would fail a good run for a race.
pub fn reader_lost(tx: &Connection, run_id: i64, cause: &str) -> Result<Option<i64>, StoreError> {
    let state: Option<StageState> = row(
        tx,
        &format!(
            "SELECT state FROM stages WHERE run_id = ?1 AND name = ?2{}",
            tx.for_update()
        ),
        params![run_id, Stage::Memtest],
        |r| r.get(0),
    )
    .optional()?;
    if state != Some(StageState::Running) {
        return Ok(None);
    }
    let (node_id, repeat): (i64, Option<i64>) = row(
        tx,
        "SELECT node_id, rearm_of FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let again = match repeat {
        None => {
            exec(
                tx,
                "UPDATE nodes SET armed_ms = ?2, rearm_of = ?3 WHERE id = ?1 AND mode = ?4",
                params![node_id, now_ms(), run_id, Sql(super::Mode::Verify)],
            )? > 0
        }
        Some(_) => false,
    };
    let detail = match (again, repeat) {
        (true, _) => format!(
            "{cause} while memtest86+ ran: its console was not read throughout; the node is re-armed once and runs again"
        ),
        (false, Some(first)) => format!(
            "{cause} while memtest86+ ran: its console was not read throughout; this run already repeated run {first}, so it is not repeated again"
        ),
        (false, None) => {
            format!("{cause} while memtest86+ ran: its console was not read throughout")
        }
    };
    let _ = fail_stage(tx, run_id, Stage::Memtest, &detail)?;
    Ok(again.then_some(node_id))
}
