//! The run lifecycle: every change of a node's mode, a run's stage and a stage's state, each
//! one SQLite transaction, and nowhere else.
//!
//! ```text
//! node (mode verify, armed) ──boot──▶ run: [memtest] ─▶ linux ─▶ done (verdict)
//!   memtest: pending ─boot─▶ running ─capture verdict─▶ done(pass|fail)
//!   linux:   pending ─boot (or agent start)─▶ running ─agent's final event, contiguous─▶ done
//!   cycles:  pending ─linux passed─▶ running ─N power cycles, each boot reported─▶ done
//!   any running stage ─unexpected reboot | lost contact | operator─▶ done(fail|incomplete)
//! ```
//!
//! The collector computes each verdict from what it stored ([`verdict`]); the agent's verdict
//! is only compared. A finished run is closed: nothing more is accepted for it. Transitions
//! return the stages they ended ([`Ended`]) so their console captures stop
//! ([`captures::Captures`]); a capture's finding is applied only while its run and stage are
//! still the running ones.

mod agent;
pub mod attest;
mod batches;
pub mod captures;
pub mod cycles;
mod ends;
mod event_rows;
pub mod lookup;
mod memtest;
mod operator;
pub mod peers;
mod start;
pub mod verdict;

pub use agent::{
    Bound, Exchange, Ingested, NewRunOwned, RunAccess, SessionRequest, StreamingRun, access,
    exchange, ingest, open_run_with_session, plan, put_inventory, streaming_run,
};
pub use batches::{BatchIn, BatchOut, ingest_many};
pub use ends::{
    Restarted, collector_started, console_tail, kernel_panicked, lost_contact, reader_lost,
};
pub use memtest::{Applied, memtest_finished, memtest_progress, memtest_unwatchable, note_stage};
pub use operator::{set_destructive, set_mode};
pub use start::{
    BootDecision, BootRequest, Caps, NewRun, Registered, Script, SuiteFile, boot, register,
    room_for_ad_hoc, room_for_unknown, too_many_runs,
};

use crate::store::sql::{Connection, OptionalExtension, Params, Row, SqlError, params};
use kiln_protocol::suite::Memtest;
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{EventBatch, EventBody, Inventory, NodeIdentity};

pub use crate::store::states::{Mode, RunStage, Sql, Stage, StageState};

use crate::store::queries::{Progress, Selector, put_suite, select_sql};
use crate::store::{StoreError, now_ms};

/// Runs a statement (each engine caches its prepared statements by text: transitions run
/// thousands of times a second under load, and parsing their SQL each time is most of the cost).
fn exec<P: Params>(conn: &Connection, sql: &str, params: P) -> Result<usize, SqlError> {
    conn.execute(sql, params)
}

/// One row of a statement.
fn row<T, P, F>(conn: &Connection, sql: &str, params: P, f: F) -> Result<T, SqlError>
where
    P: Params,
    F: FnOnce(&Row) -> Result<T, SqlError>,
{
    conn.query_row(sql, params, f)
}

/// `reason`, with what the run's console tail shows when it shows a cause (a panic, a fatal
/// machine check, a hung task, the OOM killer).
fn with_console(tx: &Connection, run_id: i64, reason: String) -> Result<String, StoreError> {
    let tail: Option<Vec<u8>> = row(
        tx,
        "SELECT console_tail FROM runs WHERE id = ?1",
        [run_id],
        |r| r.get(0),
    )
    .optional()?
    .flatten();
    Ok(match tail.as_deref().and_then(crate::console::explain) {
        Some(shown) => format!("{reason}; {shown}"),
        None => reason,
    })
}

/// The plan of the suite a run was started with, as stored; `None` when it no longer loads.
fn stored_plan(tx: &Connection, run_id: i64) -> Result<Option<kiln_protocol::Plan>, StoreError> {
    let text: String = row(
        tx,
        "SELECT s.text FROM runs r JOIN suites s ON s.sha256 = r.suite_sha256 WHERE r.id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    Ok(kiln_protocol::load("suite", text.as_bytes()).ok())
}

/// Stages a transition ended, so their console captures can be stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[must_use = "ended stages must stop their captures (Captures::stop)"]
pub struct Ended(pub Vec<(i64, Stage)>);

impl Ended {
    fn add(&mut self, run_id: i64, stage: Stage) {
        self.0.push((run_id, stage));
    }

    fn extend(&mut self, other: Ended) {
        self.0.extend(other.0);
    }
}

/// The stages of a run, in order, with their states.
fn stages(tx: &Connection, run_id: i64) -> Result<Vec<(Stage, StageState)>, StoreError> {
    let mut stmt = tx.prepare_cached("SELECT name, state FROM stages WHERE run_id = ?1")?;
    let mut stages: Vec<(Stage, StageState)> = stmt
        .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    stages.sort_by_key(|(stage, _)| Stage::ALL.iter().position(|s| s == stage));
    Ok(stages)
}

/// Marks a pending stage running and makes it the run's stage; the previous stage's live
/// progress is cleared, so the new stage shows its own.
fn start_stage(tx: &Connection, run_id: i64, stage: Stage) -> Result<(), StoreError> {
    let now = now_ms();
    exec(
        tx,
        "UPDATE stages SET state = ?3, started_ms = ?4 WHERE run_id = ?1 AND name = ?2 AND state = ?5",
        params![run_id, stage, StageState::Running, now, StageState::Pending],
    )?;
    exec(
        tx,
        "UPDATE runs SET stage = ?2, progress = NULL, last_seen_ms = ?3 WHERE id = ?1",
        params![run_id, Sql(RunStage::from(stage)), now],
    )?;
    Ok(())
}

/// Ends a stage with a verdict and detail (only if it was not done) and clears the run's live
/// progress, which belonged to that stage.
fn end_stage(
    tx: &Connection,
    run_id: i64,
    stage: Stage,
    verdict: Verdict,
    detail: Option<&str>,
) -> Result<bool, StoreError> {
    let changed = exec(
        tx,
        "UPDATE stages SET state = ?3, verdict = ?4, detail = ?5, finished_ms = ?6 WHERE run_id = ?1 AND name = ?2 AND state <> ?3",
        params![
            run_id,
            stage,
            StageState::Done,
            Sql(verdict),
            detail,
            now_ms()
        ],
    )?;
    exec(
        tx,
        "UPDATE runs SET progress = NULL WHERE id = ?1",
        [run_id],
    )?;
    Ok(changed > 0)
}

/// Fails a stage (`detail` says why), marks later stages as not run, and concludes the run.
fn fail_stage(
    tx: &Connection,
    run_id: i64,
    stage: Stage,
    detail: &str,
) -> Result<Ended, StoreError> {
    let mut ended = Ended::default();
    if end_stage(tx, run_id, stage, Verdict::Fail, Some(detail))? {
        ended.add(run_id, stage);
    }
    for (other, state) in stages(tx, run_id)? {
        if state != StageState::Done {
            end_stage(
                tx,
                run_id,
                other,
                Verdict::Incomplete,
                Some("not run: an earlier stage failed"),
            )?;
            ended.add(run_id, other);
        }
    }
    conclude(tx, run_id)?;
    Ok(ended)
}

/// Ends every open stage of a run with `verdict` and closes the run with `reason`.
fn close_run(
    tx: &Connection,
    run_id: i64,
    verdict: Verdict,
    reason: &str,
) -> Result<Ended, StoreError> {
    let mut ended = Ended::default();
    for (stage, state) in stages(tx, run_id)? {
        if state != StageState::Done {
            end_stage(tx, run_id, stage, verdict, Some(reason))?;
            ended.add(run_id, stage);
        }
    }
    exec(
        tx,
        "UPDATE runs SET verdict_reason = COALESCE(verdict_reason, ?2) WHERE id = ?1",
        params![run_id, reason],
    )?;
    conclude(tx, run_id)?;
    Ok(ended)
}

/// Sets a run's verdict once every stage is done: the worst stage verdict. A stage without a
/// verdict counts as incomplete, never as a pass.
fn conclude(tx: &Connection, run_id: i64) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached("SELECT state, verdict FROM stages WHERE run_id = ?1")?;
    let stages: Vec<(StageState, Option<Sql<Verdict>>)> = stmt
        .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if stages.iter().any(|(state, _)| *state != StageState::Done) {
        return Ok(());
    }
    let verdict = kiln_protocol::verdict::of_stages(stages.iter().map(|(_, v)| v.map(|v| v.0)));
    exec(
        tx,
        "UPDATE runs SET verdict = ?2, finished_ms = ?3, stage = ?4, progress = NULL WHERE id = ?1 AND verdict IS NULL",
        params![run_id, Sql(verdict), now_ms(), Sql(RunStage::Done)],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
