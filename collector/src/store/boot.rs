//! What a booting node's iPXE request means for its state: which node it is, which run and
//! stage it is in, and the stage changes a boot implies (including the unexpected ones).

use kiln_protocol::wire::NodeIdentity;
use rusqlite::{Connection, OptionalExtension, params};

use super::queries::{NewRun, conclude, create_run, find_or_register_node};
use super::{StoreError, now_ms};

/// A node as the boot logic needs it.
#[derive(Debug, Clone)]
pub struct BootNode {
    /// Id.
    pub id: i64,
    /// Mode.
    pub mode: String,
    /// Suite assigned to the node.
    pub suite: Option<String>,
    /// Suite assigned to its rack.
    pub rack_suite: Option<String>,
    /// Armed for a new run since this instant.
    pub armed_ms: Option<i64>,
    /// Serial, for display.
    pub serial: Option<String>,
}

/// The node's open run, if any, and the state of its stages.
#[derive(Debug, Clone)]
pub struct OpenRun {
    /// Run id.
    pub id: i64,
    /// (stage name, state) in order.
    pub stages: Vec<(String, String)>,
    /// The run's suite text.
    pub suite_text: String,
}

/// The node's most recent finished run.
#[derive(Debug, Clone)]
pub struct LastRun {
    /// Run id.
    pub id: i64,
    /// Verdict.
    pub verdict: String,
    /// Start.
    pub started_ms: i64,
}

/// Everything the boot decision reads.
#[derive(Debug, Clone)]
pub struct BootView {
    /// The node.
    pub node: BootNode,
    /// Its open run.
    pub open: Option<OpenRun>,
    /// Its latest finished run.
    pub last: Option<LastRun>,
}

/// Finds or registers the node (new nodes get `unknown_mode`, armed when it is verify) and
/// reads its runs.
pub fn view(
    conn: &mut Connection,
    identity: &NodeIdentity,
    unknown_mode: &str,
) -> Result<BootView, StoreError> {
    let known = node_by_identity(conn, identity)?;
    let id = find_or_register_node(conn, identity, None)?;
    if known.is_none() {
        conn.execute(
            "UPDATE nodes SET mode = ?2, armed_ms = CASE WHEN ?2 = 'verify' THEN ?3 ELSE NULL END WHERE id = ?1",
            params![id, unknown_mode, now_ms()],
        )?;
    }
    let node = conn.query_row(
        "SELECT n.id, n.mode, n.suite, rs.suite, n.armed_ms, n.serial FROM nodes n LEFT JOIN rack_suites rs ON rs.rack = n.rack WHERE n.id = ?1",
        [id],
        |r| Ok(BootNode { id: r.get(0)?, mode: r.get(1)?, suite: r.get(2)?, rack_suite: r.get(3)?, armed_ms: r.get(4)?, serial: r.get(5)? }),
    )?;
    let open = conn
        .query_row(
            "SELECT r.id, s.text FROM runs r JOIN suites s ON s.sha256 = r.suite_sha256 WHERE r.node_id = ?1 AND r.verdict IS NULL ORDER BY r.id DESC LIMIT 1",
            [id],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?;
    let open = match open {
        None => None,
        Some((run_id, suite_text)) => {
            let mut stmt = conn.prepare_cached("SELECT name, state FROM stages WHERE run_id = ?1 ORDER BY CASE name WHEN 'memtest' THEN 0 ELSE 1 END")?;
            let stages = stmt
                .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Some(OpenRun {
                id: run_id,
                stages,
                suite_text,
            })
        }
    };
    let last = conn
        .query_row(
            "SELECT id, verdict, started_ms FROM runs WHERE node_id = ?1 AND verdict IS NOT NULL ORDER BY id DESC LIMIT 1",
            [id],
            |r| Ok(LastRun { id: r.get(0)?, verdict: r.get(1)?, started_ms: r.get(2)? }),
        )
        .optional()?;
    Ok(BootView { node, open, last })
}

fn node_by_identity(conn: &Connection, identity: &NodeIdentity) -> Result<Option<i64>, StoreError> {
    for mac in &identity.macs {
        if let Some(id) = conn
            .query_row("SELECT node_id FROM node_macs WHERE mac = ?1", [mac], |r| {
                r.get(0)
            })
            .optional()?
        {
            return Ok(Some(id));
        }
    }
    if let Some(uuid) = &identity.uuid {
        if let Some(id) = conn
            .query_row("SELECT id FROM nodes WHERE uuid = ?1", [uuid], |r| r.get(0))
            .optional()?
        {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Starts a run for a booting node.
pub fn start_run(conn: &mut Connection, run: &NewRun<'_>) -> Result<i64, StoreError> {
    create_run(conn, run)
}

/// Marks a stage running (it was just handed to the node).
pub fn stage_running(conn: &Connection, run_id: i64, stage: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE stages SET state = 'running', started_ms = ?3 WHERE run_id = ?1 AND name = ?2",
        params![run_id, stage, now_ms()],
    )?;
    conn.execute(
        "UPDATE runs SET stage = ?2, last_seen_ms = ?3 WHERE id = ?1",
        params![run_id, stage, now_ms()],
    )?;
    Ok(())
}

/// Replaces a run's token hash (a fresh token per boot).
pub fn set_token(conn: &Connection, run_id: i64, token_hash: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE runs SET token_hash = ?2, last_seen_ms = ?3 WHERE id = ?1",
        params![run_id, token_hash, now_ms()],
    )?;
    Ok(())
}

/// Fails a stage (`detail` says why), marks later stages as not run, and concludes the run.
pub fn fail_stage(
    conn: &mut Connection,
    run_id: i64,
    stage: &str,
    detail: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let now = now_ms();
    tx.execute(
        "UPDATE stages SET state = 'done', verdict = 'fail', detail = ?3, finished_ms = ?4 WHERE run_id = ?1 AND name = ?2",
        params![run_id, stage, detail, now],
    )?;
    tx.execute(
        "UPDATE stages SET state = 'done', verdict = 'incomplete', detail = 'not run: an earlier stage failed', finished_ms = ?2 WHERE run_id = ?1 AND state <> 'done'",
        params![run_id, now],
    )?;
    conclude(&tx, run_id, now)?;
    tx.commit()?;
    Ok(())
}

/// Records memtest86+'s finding and closes the stage: a pass moves the run on to Linux; a fail
/// ends the run.
pub fn finish_memtest(
    conn: &mut Connection,
    run_id: i64,
    finding: &crate::memtest::capture::Finding,
) -> Result<(), StoreError> {
    let reading = finding
        .reading
        .as_ref()
        .map(|r| serde_json::to_string(r).unwrap_or_default());
    conn.execute(
        "INSERT OR REPLACE INTO memtest_results (run_id, pass, detail, reading, screen, raw, secs, finished_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![run_id, finding.pass, finding.detail, reading, finding.screen, finding.raw, finding.secs as i64, now_ms()],
    )?;
    if finding.pass {
        conn.execute(
            "UPDATE stages SET state = 'done', verdict = 'pass', detail = ?2, finished_ms = ?3 WHERE run_id = ?1 AND name = 'memtest' AND state = 'running'",
            params![run_id, finding.detail, now_ms()],
        )?;
        conn.execute(
            "UPDATE runs SET stage = 'linux', last_seen_ms = ?2 WHERE id = ?1",
            params![run_id, now_ms()],
        )?;
        Ok(())
    } else {
        let running: Option<String> = conn
            .query_row(
                "SELECT state FROM stages WHERE run_id = ?1 AND name = 'memtest'",
                [run_id],
                |r| r.get(0),
            )
            .optional()?;
        if running.as_deref() == Some("running") {
            fail_stage(conn, run_id, "memtest", &finding.detail)?;
        }
        Ok(())
    }
}

/// What memtest86+ showed for a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemtestResult {
    /// Passed?
    pub pass: bool,
    /// Why.
    pub detail: String,
    /// Reading (JSON).
    pub reading: Option<serde_json::Value>,
    /// Final screen.
    pub screen: String,
    /// Raw bytes kept.
    pub raw_bytes: i64,
    /// Seconds to the verdict.
    pub secs: i64,
}

/// The memtest result of a run, if any.
pub fn memtest_result(conn: &Connection, run_id: i64) -> Result<Option<MemtestResult>, StoreError> {
    Ok(conn
        .query_row("SELECT pass, detail, reading, screen, length(raw), secs FROM memtest_results WHERE run_id = ?1", [run_id], |r| {
            let reading: Option<String> = r.get(2)?;
            Ok(MemtestResult {
                pass: r.get(0)?,
                detail: r.get(1)?,
                reading: reading.and_then(|t| serde_json::from_str(&t).ok()),
                screen: r.get(3)?,
                raw_bytes: r.get(4)?,
                secs: r.get(5)?,
            })
        })
        .optional()?)
}

/// MACs and rack of a node (to find its console and power).
pub fn node_access_keys(
    conn: &Connection,
    node_id: i64,
) -> Result<(Vec<String>, Option<String>), StoreError> {
    let mut stmt = conn.prepare_cached("SELECT mac FROM node_macs WHERE node_id = ?1")?;
    let macs = stmt
        .query_map([node_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let rack = conn.query_row("SELECT rack FROM nodes WHERE id = ?1", [node_id], |r| {
        r.get(0)
    })?;
    Ok((macs, rack))
}

/// Appends a note to a stage's detail (e.g. a power driver failure after the verdict).
pub fn note_stage(
    conn: &Connection,
    run_id: i64,
    stage: &str,
    note: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE stages SET detail = COALESCE(detail || '; ', '') || ?3 WHERE run_id = ?1 AND name = ?2",
        params![run_id, stage, note],
    )?;
    Ok(())
}

/// Shows a memtest reading as the run's live progress (while the run is in that stage).
pub fn memtest_progress(
    conn: &Connection,
    run_id: i64,
    progress: &super::queries::Progress,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(progress).map_err(|source| StoreError::Corrupt {
        what: "progress",
        source,
    })?;
    conn.execute(
        "UPDATE runs SET progress = ?2 WHERE id = ?1 AND stage = 'memtest' AND verdict IS NULL",
        params![run_id, json],
    )?;
    Ok(())
}
