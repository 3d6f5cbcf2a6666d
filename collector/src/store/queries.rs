//! Every statement the collector runs, as plain functions on a connection. They are called
//! inside [`super::Db::call`], on the database thread.

use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{EventBatch, EventBody, Inventory, NodeIdentity, Outcome, StepReport};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{StoreError, now_ms};

/// Finds the node that owns any of `identity`'s UUID, serial or MACs (so a NIC swap keeps the
/// history), or registers a new one; records MACs and identity fields it did not have.
pub fn find_or_register_node(
    conn: &mut Connection,
    identity: &NodeIdentity,
    hostname: Option<&str>,
) -> Result<i64, StoreError> {
    let tx = conn.transaction()?;
    let now = now_ms();
    let mut found: Option<i64> = None;
    if let Some(uuid) = &identity.uuid {
        found = tx
            .query_row("SELECT id FROM nodes WHERE uuid = ?1", [uuid], |r| r.get(0))
            .optional()?;
    }
    if found.is_none() {
        for mac in &identity.macs {
            found = tx
                .query_row("SELECT node_id FROM node_macs WHERE mac = ?1", [mac], |r| {
                    r.get(0)
                })
                .optional()?;
            if found.is_some() {
                break;
            }
        }
    }
    if found.is_none() {
        if let Some(serial) = &identity.serial {
            found = tx
                .query_row(
                    "SELECT id FROM nodes WHERE serial = ?1 AND serial <> ''",
                    [serial],
                    |r| r.get(0),
                )
                .optional()?;
        }
    }
    let id = match found {
        Some(id) => {
            tx.execute(
                "UPDATE nodes SET last_seen_ms = ?2, uuid = COALESCE(uuid, ?3), serial = COALESCE(serial, ?4), hostname = COALESCE(?5, hostname) WHERE id = ?1",
                params![id, now, identity.uuid, identity.serial, hostname],
            )?;
            id
        }
        None => {
            tx.execute(
                "INSERT INTO nodes (uuid, serial, hostname, created_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![identity.uuid, identity.serial, hostname, now],
            )?;
            tx.last_insert_rowid()
        }
    };
    for mac in &identity.macs {
        // A MAC seen on another node moves here: the card moved with it.
        tx.execute("INSERT INTO node_macs (mac, node_id) VALUES (?1, ?2) ON CONFLICT(mac) DO UPDATE SET node_id = ?2", params![mac, id])?;
    }
    tx.commit()?;
    Ok(id)
}

/// Stores a suite's text under its sha256 (once) and returns the digest.
pub fn put_suite(conn: &Connection, name: &str, text: &str) -> Result<String, StoreError> {
    let sha = sha256_hex(text.as_bytes());
    conn.execute(
        "INSERT OR IGNORE INTO suites (sha256, name, text, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![sha, name, text, now_ms()],
    )?;
    Ok(sha)
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a new run is.
pub struct NewRun<'a> {
    /// Node.
    pub node_id: i64,
    /// Suite name.
    pub suite_name: &'a str,
    /// Suite text.
    pub suite_text: &'a str,
    /// Hash of the run's token.
    pub token_hash: &'a str,
    /// Stages, in order (`memtest`, `linux`).
    pub stages: &'a [&'a str],
    /// Destructive disk steps allowed.
    pub allow_destructive: bool,
    /// Heartbeat the agent must keep.
    pub heartbeat_secs: u64,
    /// Digest of the RAM image the node boots, when network-booted.
    pub image_digest: Option<&'a str>,
}

/// Creates a run with its stages pending; returns its id.
pub fn create_run(conn: &mut Connection, run: &NewRun<'_>) -> Result<i64, StoreError> {
    let tx = conn.transaction()?;
    let sha = put_suite(&tx, run.suite_name, run.suite_text)?;
    let now = now_ms();
    let first = run.stages.first().copied().unwrap_or("linux");
    tx.execute(
        "INSERT INTO runs (node_id, suite_sha256, suite_name, image_digest, token_hash, stage, allow_destructive, heartbeat_secs, started_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![run.node_id, sha, run.suite_name, run.image_digest, run.token_hash, first, run.allow_destructive, run.heartbeat_secs as i64, now],
    )?;
    let id = tx.last_insert_rowid();
    for stage in run.stages {
        tx.execute(
            "INSERT INTO stages (run_id, name, state) VALUES (?1, ?2, 'pending')",
            params![id, stage],
        )?;
    }
    tx.commit()?;
    Ok(id)
}

/// The token hash of a run, if the run exists.
pub fn run_token_hash(conn: &Connection, run_id: i64) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT token_hash FROM runs WHERE id = ?1", [run_id], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Records that the run's agent was heard from now.
pub fn touch_run(conn: &Connection, run_id: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE runs SET last_seen_ms = ?2 WHERE id = ?1",
        params![run_id, now_ms()],
    )?;
    Ok(())
}

/// The plan an agent fetches.
pub fn plan(
    conn: &Connection,
    run_id: i64,
) -> Result<Option<kiln_protocol::wire::RunPlan>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT r.node_id, s.text, r.allow_destructive, r.heartbeat_secs FROM runs r JOIN suites s ON s.sha256 = r.suite_sha256 WHERE r.id = ?1",
            [run_id],
            |r| {
                Ok(kiln_protocol::wire::RunPlan {
                    run_id,
                    node_id: r.get(0)?,
                    suite_text: r.get(1)?,
                    allow_destructive: r.get(2)?,
                    heartbeat_secs: r.get::<_, i64>(3)? as u64,
                    after: "poweroff".into(),
                })
            },
        )
        .optional()?)
}

/// Stores the inventory an agent posted.
pub fn put_inventory(
    conn: &Connection,
    run_id: i64,
    inventory: &Inventory,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(inventory).map_err(|source| StoreError::Corrupt {
        what: "inventory",
        source,
    })?;
    conn.execute(
        "UPDATE runs SET inventory = ?2, last_seen_ms = ?3 WHERE id = ?1",
        params![run_id, json, now_ms()],
    )?;
    Ok(())
}

fn event_kind(body: &EventBody) -> &'static str {
    match body {
        EventBody::RunStarted { .. } => "run_started",
        EventBody::ExpectChecked { .. } => "expect_checked",
        EventBody::StepStarted { .. } => "step_started",
        EventBody::Progress { .. } => "progress",
        EventBody::Log { .. } => "log",
        EventBody::LogsDropped { .. } => "logs_dropped",
        EventBody::StepFinished { .. } => "step_finished",
        EventBody::RunFinished { .. } => "run_finished",
    }
}

fn event_step(body: &EventBody) -> Option<u32> {
    match body {
        EventBody::StepStarted { step, .. } | EventBody::Progress { step, .. } => Some(*step),
        EventBody::Log { step, .. } => *step,
        EventBody::StepFinished { report } => Some(report.step),
        _ => None,
    }
}

/// Live progress shown on the dashboard.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct Progress {
    /// Step index.
    pub step: u32,
    /// Step name.
    pub name: String,
    /// Done fraction.
    pub fraction: f64,
    /// Live metric.
    pub status: Option<String>,
}

/// Stores a batch, once per sequence number, applies what each new event means (stage
/// state, step results, verdict), and returns the highest contiguous sequence now stored.
pub fn ingest(conn: &mut Connection, run_id: i64, batch: &EventBatch) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let now = now_ms();
    let (mut acked, mut progress): (i64, Option<String>) = tx.query_row(
        "SELECT acked_seq, progress FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut current: Progress = progress
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    for event in &batch.events {
        let body = serde_json::to_string(&event.body).map_err(|source| StoreError::Corrupt {
            what: "event",
            source,
        })?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO events (run_id, seq, at_ms, kind, step, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![run_id, event.seq as i64, event.at_ms as i64, event_kind(&event.body), event_step(&event.body), body],
        )?;
        if inserted == 0 {
            continue; // a resent event: stored already, its effects applied already
        }
        match &event.body {
            EventBody::RunStarted { .. } => {
                tx.execute(
                    "UPDATE stages SET state = 'running', started_ms = ?2 WHERE run_id = ?1 AND name = 'linux' AND state = 'pending'",
                    params![run_id, now],
                )?;
                // An earlier stage (memtest) that is not done by now never finished cleanly.
                tx.execute("UPDATE runs SET stage = 'linux' WHERE id = ?1", [run_id])?;
            }
            EventBody::ExpectChecked { outcome } => {
                let json =
                    serde_json::to_string(outcome).map_err(|source| StoreError::Corrupt {
                        what: "outcome",
                        source,
                    })?;
                tx.execute(
                    "UPDATE runs SET expect = ?2 WHERE id = ?1",
                    params![run_id, json],
                )?;
            }
            EventBody::StepStarted { step, name, .. } => {
                current = Progress {
                    step: *step,
                    name: name.clone(),
                    fraction: 0.0,
                    status: None,
                };
                progress = Some(String::new());
            }
            EventBody::Progress {
                step,
                fraction,
                status,
            } => {
                if *step == current.step {
                    current.fraction = *fraction;
                    current.status = status.clone();
                    progress = Some(String::new());
                }
            }
            EventBody::StepFinished { report } => {
                let json = serde_json::to_string(report).map_err(|source| StoreError::Corrupt {
                    what: "step",
                    source,
                })?;
                tx.execute(
                    "INSERT OR REPLACE INTO steps (run_id, step, name, kind, outcome, report) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![run_id, report.step, report.name, report.kind, report.outcome.name(), json],
                )?;
                if report.step == current.step {
                    current.fraction = 1.0;
                    progress = Some(String::new());
                }
            }
            EventBody::RunFinished { verdict } => {
                tx.execute(
                    "UPDATE stages SET state = 'done', verdict = ?2, finished_ms = ?3 WHERE run_id = ?1 AND name = 'linux'",
                    params![run_id, verdict.name(), now],
                )?;
                conclude(&tx, run_id, now)?;
            }
            EventBody::Log { .. } | EventBody::LogsDropped { .. } => {}
        }
    }
    if progress.is_some() {
        let json = serde_json::to_string(&current).map_err(|source| StoreError::Corrupt {
            what: "progress",
            source,
        })?;
        tx.execute(
            "UPDATE runs SET progress = ?2 WHERE id = ?1",
            params![run_id, json],
        )?;
    }
    // Advance the acknowledgement over every contiguous stored sequence number.
    {
        let mut stmt = tx
            .prepare_cached("SELECT seq FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq")?;
        let mut rows = stmt.query(params![run_id, acked])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            if seq != acked + 1 {
                break;
            }
            acked = seq;
        }
    }
    tx.execute(
        "UPDATE runs SET acked_seq = ?2, last_seen_ms = ?3 WHERE id = ?1",
        params![run_id, acked, now],
    )?;
    tx.commit()?;
    Ok(acked as u64)
}

/// Sets a run's verdict once every stage is done: the worst stage verdict.
pub(crate) fn conclude(conn: &Connection, run_id: i64, now: i64) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached("SELECT state, verdict FROM stages WHERE run_id = ?1")?;
    let stages: Vec<(String, Option<String>)> = stmt
        .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if stages.iter().any(|(state, _)| state != "done") {
        return Ok(());
    }
    let verdict = stages
        .iter()
        .map(|(_, v)| parse_verdict(v.as_deref()))
        .fold(Verdict::Pass, Verdict::worst);
    conn.execute(
        "UPDATE runs SET verdict = ?2, finished_ms = ?3, stage = 'done' WHERE id = ?1 AND verdict IS NULL",
        params![run_id, verdict.name(), now],
    )?;
    Ok(())
}

/// Reads a stored verdict; anything unknown counts as incomplete, never as a pass.
pub fn parse_verdict(text: Option<&str>) -> Verdict {
    match text {
        Some("pass") => Verdict::Pass,
        Some("degraded") => Verdict::Degraded,
        Some("fail") => Verdict::Fail,
        Some("error") => Verdict::Error,
        _ => Verdict::Incomplete,
    }
}

/// Fails every open run whose agent has been silent longer than its heartbeat timeout;
/// returns their ids.
pub fn fail_lost_contact(conn: &mut Connection, now: i64) -> Result<Vec<i64>, StoreError> {
    let tx = conn.transaction()?;
    let lost: Vec<(i64, i64)> = {
        let mut stmt = tx.prepare(
            "SELECT id, heartbeat_secs FROM runs WHERE verdict IS NULL AND stage = 'linux' AND last_seen_ms < ?1 - heartbeat_secs * 1000",
        )?;
        stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (id, secs) in &lost {
        let reason = format!("lost contact: no word from the agent for over {secs}s");
        tx.execute(
            "UPDATE stages SET state = 'done', verdict = 'fail', detail = ?2, finished_ms = ?3 WHERE run_id = ?1 AND state <> 'done'",
            params![id, reason, now],
        )?;
        tx.execute(
            "UPDATE runs SET verdict = 'fail', verdict_reason = ?2, finished_ms = ?3, stage = 'done' WHERE id = ?1",
            params![id, reason, now],
        )?;
    }
    tx.commit()?;
    Ok(lost.into_iter().map(|(id, _)| id).collect())
}

/// After a collector restart, open runs get a fresh heartbeat window: the collector's own
/// downtime is not the agents' silence.
pub fn restart_heartbeats(conn: &Connection) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE runs SET last_seen_ms = ?1 WHERE verdict IS NULL",
        [now_ms()],
    )?)
}

/// A node with its latest run, as reports and the dashboard show it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    /// Node id.
    pub node_id: i64,
    /// Host name.
    pub hostname: Option<String>,
    /// Rack label.
    pub rack: Option<String>,
    /// Slot label.
    pub slot: Option<String>,
    /// Serial.
    pub serial: Option<String>,
    /// SMBIOS UUID.
    pub uuid: Option<String>,
    /// MACs, comma-separated.
    pub macs: String,
    /// Mode.
    pub mode: String,
    /// Latest run.
    pub run_id: Option<i64>,
    /// Its suite.
    pub suite: Option<String>,
    /// Its stage.
    pub stage: Option<String>,
    /// Its verdict (none while running).
    pub verdict: Option<String>,
    /// Why, for a verdict set by the collector (lost contact).
    pub verdict_reason: Option<String>,
    /// Live progress.
    pub progress: Option<Progress>,
    /// Faults of the run, one line each.
    pub faults: Vec<String>,
    /// Run start.
    pub started_ms: Option<i64>,
    /// Run end.
    pub finished_ms: Option<i64>,
}

/// Filters for reports.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Filter {
    /// Only this rack.
    pub rack: Option<String>,
    /// Only runs with this verdict (`running` for runs without one).
    pub verdict: Option<String>,
    /// Only runs started after this instant (ms since epoch).
    pub since_ms: Option<i64>,
}

/// Every node with its latest run, filtered.
pub fn node_rows(conn: &Connection, filter: &Filter) -> Result<Vec<NodeRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT n.id, n.hostname, n.rack, n.slot, n.serial, n.uuid, n.mode,
                (SELECT group_concat(mac, ',') FROM (SELECT mac FROM node_macs WHERE node_id = n.id ORDER BY mac)),
                r.id, r.suite_name, r.stage, r.verdict, r.verdict_reason, r.progress, r.started_ms, r.finished_ms, r.expect
         FROM nodes n LEFT JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE node_id = n.id)
         WHERE (?1 IS NULL OR n.rack = ?1)
           AND (?2 IS NULL OR (?2 = 'running' AND r.id IS NOT NULL AND r.verdict IS NULL) OR r.verdict = ?2)
           AND (?3 IS NULL OR r.started_ms >= ?3)
         ORDER BY n.rack, n.slot, n.id",
    )?;
    let rows = stmt.query_map(params![filter.rack, filter.verdict, filter.since_ms], |r| {
        let progress: Option<String> = r.get(13)?;
        let expect: Option<String> = r.get(16)?;
        Ok((
            NodeRow {
                node_id: r.get(0)?,
                hostname: r.get(1)?,
                rack: r.get(2)?,
                slot: r.get(3)?,
                serial: r.get(4)?,
                uuid: r.get(5)?,
                mode: r.get(6)?,
                macs: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                run_id: r.get(8)?,
                suite: r.get(9)?,
                stage: r.get(10)?,
                verdict: r.get(11)?,
                verdict_reason: r.get(12)?,
                progress: progress.and_then(|p| serde_json::from_str(&p).ok()),
                faults: Vec::new(),
                started_ms: r.get(14)?,
                finished_ms: r.get(15)?,
            },
            expect,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (mut row, expect) = row?;
        if let Some(run_id) = row.run_id {
            row.faults = run_faults(
                conn,
                run_id,
                expect.as_deref(),
                row.verdict_reason.as_deref(),
            )?;
        }
        out.push(row);
    }
    Ok(out)
}

/// One line per fault of a run: `expect:` differences, failed steps' faults, errors, and the
/// collector's own verdict reason.
fn run_faults(
    conn: &Connection,
    run_id: i64,
    expect: Option<&str>,
    reason: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut lines = Vec::new();
    if let Some(Outcome::Fail { faults }) =
        expect.and_then(|e| serde_json::from_str::<Outcome>(e).ok())
    {
        lines.extend(faults.into_iter().map(|f| format!("expect: {}", f.message)));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT report FROM steps WHERE run_id = ?1 AND outcome IN ('fail', 'error') ORDER BY step",
    )?;
    for report in stmt.query_map([run_id], |r| r.get::<_, String>(0))? {
        let report: StepReport =
            serde_json::from_str(&report?).map_err(|source| StoreError::Corrupt {
                what: "step",
                source,
            })?;
        match report.outcome {
            Outcome::Fail { faults } => lines.extend(
                faults
                    .into_iter()
                    .map(|f| format!("{}: {}", report.name, f.message)),
            ),
            Outcome::Error { message } => lines.push(format!("{}: error: {message}", report.name)),
            _ => {}
        }
    }
    let mut stmt = conn.prepare_cached("SELECT name, detail FROM stages WHERE run_id = ?1 AND verdict = 'fail' AND detail IS NOT NULL")?;
    for row in stmt.query_map([run_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })? {
        let (stage, detail) = row?;
        if Some(detail.as_str()) != reason {
            lines.push(format!("{stage}: {detail}"));
        }
    }
    if let Some(reason) = reason {
        lines.push(reason.to_owned());
    }
    Ok(lines)
}

/// Everything about one run, for its page and its JSON export.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// Run id.
    pub run_id: i64,
    /// Node id.
    pub node_id: i64,
    /// Suite name.
    pub suite: String,
    /// Suite sha256.
    pub suite_sha256: String,
    /// Image digest.
    pub image_digest: Option<String>,
    /// Stage.
    pub stage: String,
    /// Verdict.
    pub verdict: Option<String>,
    /// Collector's reason for the verdict.
    pub verdict_reason: Option<String>,
    /// Start.
    pub started_ms: i64,
    /// End.
    pub finished_ms: Option<i64>,
    /// Stages.
    pub stages: Vec<StageRow>,
    /// `expect:` outcome.
    pub expect: Option<Outcome>,
    /// Steps.
    pub steps: Vec<StepReport>,
    /// Inventory.
    pub inventory: Option<Inventory>,
    /// Faults, one line each.
    pub faults: Vec<String>,
    /// Number of log lines stored.
    pub log_lines: i64,
    /// What memtest86+ showed, when the run had that stage.
    pub memtest: Option<super::boot::MemtestResult>,
}

/// A stage of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    /// `memtest` or `linux`.
    pub name: String,
    /// `pending`, `running`, `done`.
    pub state: String,
    /// Verdict.
    pub verdict: Option<String>,
    /// Detail text.
    pub detail: Option<String>,
}

/// A run's detail, or `None`.
pub fn run_detail(conn: &Connection, run_id: i64) -> Result<Option<RunDetail>, StoreError> {
    let row = conn
        .query_row(
            "SELECT node_id, suite_name, suite_sha256, image_digest, stage, verdict, verdict_reason, started_ms, finished_ms, expect, inventory FROM runs WHERE id = ?1",
            [run_id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                ))
            },
        )
        .optional()?;
    let Some((
        node_id,
        suite,
        suite_sha256,
        image_digest,
        stage,
        verdict,
        verdict_reason,
        started_ms,
        finished_ms,
        expect,
        inventory,
    )) = row
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached("SELECT name, state, verdict, detail FROM stages WHERE run_id = ?1 ORDER BY CASE name WHEN 'memtest' THEN 0 ELSE 1 END")?;
    let stages = stmt
        .query_map([run_id], |r| {
            Ok(StageRow {
                name: r.get(0)?,
                state: r.get(1)?,
                verdict: r.get(2)?,
                detail: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut stmt =
        conn.prepare_cached("SELECT report FROM steps WHERE run_id = ?1 ORDER BY step")?;
    let steps = stmt
        .query_map([run_id], |r| r.get::<_, String>(0))?
        .map(|r| {
            r.map_err(StoreError::from).and_then(|t| {
                serde_json::from_str(&t).map_err(|source| StoreError::Corrupt {
                    what: "step",
                    source,
                })
            })
        })
        .collect::<Result<_, _>>()?;
    let log_lines = conn.query_row(
        "SELECT count(*) FROM events WHERE run_id = ?1 AND kind = 'log'",
        [run_id],
        |r| r.get(0),
    )?;
    let faults = run_faults(conn, run_id, expect.as_deref(), verdict_reason.as_deref())?;
    Ok(Some(RunDetail {
        run_id,
        node_id,
        suite,
        suite_sha256,
        image_digest,
        stage,
        verdict,
        verdict_reason,
        started_ms,
        finished_ms,
        stages,
        expect: expect.and_then(|e| serde_json::from_str(&e).ok()),
        steps,
        inventory: inventory.and_then(|i| serde_json::from_str(&i).ok()),
        faults,
        log_lines,
        memtest: super::boot::memtest_result(conn, run_id)?,
    }))
}

/// A stored log line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Sequence number.
    pub seq: i64,
    /// Node clock, ms.
    pub at_ms: i64,
    /// Step index.
    pub step: Option<i64>,
    /// The event body (level and line).
    pub body: serde_json::Value,
}

/// The last `limit` log lines of a run, oldest first.
pub fn run_logs(conn: &Connection, run_id: i64, limit: i64) -> Result<Vec<LogLine>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at_ms, step, body FROM (SELECT * FROM events WHERE run_id = ?1 AND kind IN ('log', 'logs_dropped') ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![run_id, limit], |r| {
        let body: String = r.get(3)?;
        Ok(LogLine {
            seq: r.get(0)?,
            at_ms: r.get(1)?,
            step: r.get(2)?,
            body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One line of a node's run history.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: i64,
    /// Suite name.
    pub suite: String,
    /// Verdict, none while running.
    pub verdict: Option<String>,
    /// Start.
    pub started_ms: i64,
    /// End.
    pub finished_ms: Option<i64>,
}

/// A node's runs, newest first.
pub fn node_runs(conn: &Connection, node_id: i64) -> Result<Vec<RunSummary>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id, suite_name, verdict, started_ms, finished_ms FROM runs WHERE node_id = ?1 ORDER BY id DESC LIMIT 100")?;
    let rows = stmt.query_map([node_id], |r| {
        Ok(RunSummary {
            run_id: r.get(0)?,
            suite: r.get(1)?,
            verdict: r.get(2)?,
            started_ms: r.get(3)?,
            finished_ms: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One row of a `kiln nodes import` CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// MAC that identifies the node.
    pub mac: String,
    /// Rack.
    pub rack: String,
    /// Slot.
    pub slot: String,
    /// Host name.
    pub hostname: String,
}

/// Labels nodes by MAC, registering the ones not seen yet; returns (updated, created).
pub fn import_labels(
    conn: &mut Connection,
    labels: &[Label],
) -> Result<(usize, usize), StoreError> {
    let tx = conn.transaction()?;
    let (mut updated, mut created) = (0, 0);
    let now = now_ms();
    for l in labels {
        let node: Option<i64> = tx
            .query_row(
                "SELECT node_id FROM node_macs WHERE mac = ?1",
                [&l.mac],
                |r| r.get(0),
            )
            .optional()?;
        match node {
            Some(id) => {
                tx.execute(
                    "UPDATE nodes SET rack = ?2, slot = ?3, hostname = ?4 WHERE id = ?1",
                    params![id, l.rack, l.slot, l.hostname],
                )?;
                updated += 1;
            }
            None => {
                tx.execute(
                    "INSERT INTO nodes (rack, slot, hostname, created_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![l.rack, l.slot, l.hostname, now],
                )?;
                let id = tx.last_insert_rowid();
                tx.execute(
                    "INSERT INTO node_macs (mac, node_id) VALUES (?1, ?2)",
                    params![l.mac, id],
                )?;
                created += 1;
            }
        }
    }
    tx.commit()?;
    Ok((updated, created))
}

/// Which nodes an operator command addresses.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Selector {
    /// Every node in a rack.
    Rack(String),
    /// The node with this MAC.
    Mac(String),
    /// One node by id.
    Node(i64),
    /// Every node.
    All(bool),
}

fn select_sql(selector: &Selector) -> (&'static str, rusqlite::types::Value) {
    use rusqlite::types::Value;
    match selector {
        Selector::Rack(r) => ("rack = ?2", Value::Text(r.clone())),
        Selector::Mac(m) => (
            "id IN (SELECT node_id FROM node_macs WHERE mac = ?2)",
            Value::Text(m.clone()),
        ),
        Selector::Node(id) => ("id = ?2", Value::Integer(*id)),
        Selector::All(_) => ("?2 IS NOT NULL", Value::Integer(1)),
    }
}

/// Sets the mode of the selected nodes; returns how many.
pub fn set_mode(conn: &Connection, selector: &Selector, mode: &str) -> Result<usize, StoreError> {
    let (clause, value) = select_sql(selector);
    // Setting verify (again) arms the nodes: their next boot starts a new run.
    Ok(conn.execute(
        &format!("UPDATE nodes SET mode = ?1, armed_ms = CASE WHEN ?1 = 'verify' THEN ?3 ELSE armed_ms END WHERE {clause}"),
        params![mode, value, now_ms()],
    )?)
}

/// Assigns a suite (by name) to the selected nodes; for a rack also records it as the rack's
/// suite for nodes that join it later. Returns how many nodes.
pub fn assign_suite(
    conn: &Connection,
    selector: &Selector,
    suite: &str,
) -> Result<usize, StoreError> {
    if let Selector::Rack(rack) = selector {
        conn.execute("INSERT INTO rack_suites (rack, suite) VALUES (?1, ?2) ON CONFLICT(rack) DO UPDATE SET suite = ?2", params![rack, suite])?;
    }
    let (clause, value) = select_sql(selector);
    Ok(conn.execute(
        &format!("UPDATE nodes SET suite = ?1 WHERE {clause}"),
        params![suite, value],
    )?)
}

/// Counts for `/metrics`.
pub fn counts(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut out = vec![
        (
            "kiln_nodes".to_owned(),
            conn.query_row("SELECT count(*) FROM nodes", [], |r| r.get(0))?,
        ),
        (
            "kiln_events_stored".to_owned(),
            conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?,
        ),
        (
            "kiln_runs_open".to_owned(),
            conn.query_row("SELECT count(*) FROM runs WHERE verdict IS NULL", [], |r| {
                r.get(0)
            })?,
        ),
    ];
    let mut stmt = conn.prepare_cached(
        "SELECT verdict, count(*) FROM runs WHERE verdict IS NOT NULL GROUP BY verdict",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (verdict, n) = row?;
        out.push((format!("kiln_runs{{verdict=\"{verdict}\"}}"), n));
    }
    Ok(out)
}
