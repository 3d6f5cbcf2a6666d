//! Runs that end without their agent's word: lost contact (the heartbeat monitor), a kernel
//! panic seen on the console, the collector restarting; and the console tail kept for them.

use super::{
    Connection, Ended, RunStage, Sql, Stage, StageState, StoreError, Verdict, close_run, exec,
    fail_stage, now_ms, params, row, with_console,
};
use rusqlite::OptionalExtension;

/// Fails every open Linux stage whose agent has been silent longer than its heartbeat
/// timeout; returns the runs with the stages it ended.
pub fn lost_contact(conn: &mut Connection, now: i64) -> Result<(Vec<i64>, Ended), StoreError> {
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
pub fn kernel_panicked(
    conn: &mut Connection,
    run_id: i64,
    tail: &[u8],
) -> Result<Ended, StoreError> {
    let tx = conn.savepoint()?;
    let open: Option<RunStage> = row(
        &tx,
        "SELECT stage FROM runs WHERE id = ?1 AND verdict IS NULL",
        [run_id],
        |r| Ok(r.get::<_, Sql<RunStage>>(0)?.0),
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
pub fn console_tail(conn: &mut Connection, run_id: i64, tail: &[u8]) -> Result<(), StoreError> {
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
/// was itself such a repeat is not repeated again.
pub fn collector_started(conn: &mut Connection) -> Result<Restarted, StoreError> {
    let tx = conn.savepoint()?;
    let reopened = exec(
        &tx,
        "UPDATE runs SET last_seen_ms = ?1 WHERE verdict IS NULL",
        [now_ms()],
    )?;
    let running: Vec<i64> = {
        let mut stmt = tx.prepare(
            "SELECT s.run_id FROM stages s JOIN runs r ON r.id = s.run_id WHERE r.verdict IS NULL AND s.name = ?1 AND s.state = ?2",
        )?;
        stmt.query_map(params![Stage::Memtest, StageState::Running], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut rearmed = Vec::new();
    for run_id in &running {
        let (node_id, repeat): (i64, Option<i64>) = row(
            &tx,
            "SELECT node_id, rearm_of FROM runs WHERE id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let again = match repeat {
            None => {
                exec(
                    &tx,
                    "UPDATE nodes SET armed_ms = ?2, rearm_of = ?3 WHERE id = ?1 AND mode = ?4",
                    params![node_id, now_ms(), run_id, Sql(super::Mode::Verify)],
                )? > 0
            }
            Some(_) => false,
        };
        let detail = match (again, repeat) {
            (true, _) => "the collector restarted while memtest86+ ran: its console was not read throughout; the node is re-armed once and runs again".to_owned(),
            (false, Some(first)) => format!("the collector restarted while memtest86+ ran: its console was not read throughout; this run already repeated run {first}, so it is not repeated again"),
            (false, None) => "the collector restarted while memtest86+ ran: its console was not read throughout".to_owned(),
        };
        let _ = fail_stage(&tx, *run_id, Stage::Memtest, &detail)?;
        if again {
            rearmed.push(node_id);
        }
    }
    tx.commit()?;
    Ok(Restarted {
        reopened,
        memtests: running,
        rearmed,
    })
}
