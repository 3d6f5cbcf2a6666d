//! The memtest86+ stage's transitions: its verdict from the console capture (applied only
//! while the stage is still the running one), its live progress, notes on it.

use super::{
    Connection, Ended, Progress, RunStage, Sql, Stage, StageState, StoreError, Verdict, end_stage,
    exec, fail_stage, now_ms, params,
};
use crate::store::sql::OptionalExtension;

/// memtest86+'s finding for a run, from its console capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stored: the stage ended with it.
    Yes,
    /// The run or its memtest stage is no longer the running one: dropped.
    Stale,
}

/// Records memtest86+'s finding, if the run is open and its memtest stage still running: a
/// pass moves the run on to Linux; a fail ends the run.
pub fn memtest_finished(
    conn: &Connection,
    run_id: i64,
    finding: &crate::memtest::capture::Finding,
) -> Result<(Applied, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let running: Option<StageState> = tx
        .query_row(
            "SELECT s.state FROM stages s JOIN runs r ON r.id = s.run_id WHERE s.run_id = ?1 AND s.name = ?2 AND r.verdict IS NULL",
            params![run_id, Stage::Memtest],
            |r| r.get(0),
        )
        .optional()?;
    if running != Some(StageState::Running) {
        return Ok((Applied::Stale, Ended::default()));
    }
    let reading = finding
        .reading
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|source| StoreError::Corrupt {
            what: "reading",
            source,
        })?;
    exec(
        &tx,
        "INSERT INTO memtest_results (run_id, pass, detail, reading, screen, raw, secs, finished_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (run_id) DO UPDATE SET pass = excluded.pass, detail = excluded.detail, reading = excluded.reading,
           screen = excluded.screen, raw = excluded.raw, secs = excluded.secs, finished_ms = excluded.finished_ms",
        params![
            run_id,
            finding.pass,
            finding.detail,
            reading,
            finding.screen,
            finding.raw,
            finding.secs as i64,
            now_ms()
        ],
    )?;
    let ended = if finding.pass {
        end_stage(
            &tx,
            run_id,
            Stage::Memtest,
            Verdict::Pass,
            Some(&finding.detail),
        )?;
        // The node now reboots into Linux; until the image asks for its script, the run shows
        // the Linux stage as booting (no progress of its own yet).
        exec(
            &tx,
            "UPDATE runs SET stage = ?2, last_seen_ms = ?3 WHERE id = ?1",
            params![run_id, Sql(RunStage::Linux), now_ms()],
        )?;
        let mut ended = Ended::default();
        ended.add(run_id, Stage::Memtest);
        ended
    } else {
        fail_stage(&tx, run_id, Stage::Memtest, &finding.detail)?
    };
    tx.commit()?;
    Ok((Applied::Yes, ended))
}

/// The memtest stage cannot be watched (no console): it fails at once, since a result that
/// cannot be read is never a pass.
pub fn memtest_unwatchable(
    conn: &Connection,
    run_id: i64,
    reason: &str,
) -> Result<Ended, StoreError> {
    let tx = conn.savepoint()?;
    let ended = fail_stage(&tx, run_id, Stage::Memtest, reason)?;
    tx.commit()?;
    Ok(ended)
}

/// Shows a memtest reading as the run's live progress, while its memtest stage runs.
pub fn memtest_progress(
    conn: &Connection,
    run_id: i64,
    progress: &Progress,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(progress).map_err(|source| StoreError::Corrupt {
        what: "progress",
        source,
    })?;
    exec(
        conn,
        "UPDATE runs SET progress = ?2 WHERE id = ?1 AND stage = ?3 AND verdict IS NULL
           AND EXISTS (SELECT 1 FROM stages WHERE run_id = ?1 AND name = ?4 AND state = ?5)",
        params![
            run_id,
            json,
            Sql(RunStage::Memtest),
            Stage::Memtest,
            StageState::Running
        ],
    )?;
    Ok(())
}

/// Appends a note to a stage's detail (a power driver failure after the verdict).
pub fn note_stage(
    conn: &Connection,
    run_id: i64,
    stage: Stage,
    note: &str,
) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE stages SET detail = COALESCE(detail || '; ', '') || ?3 WHERE run_id = ?1 AND name = ?2",
        params![run_id, stage, note],
    )?;
    Ok(())
}
