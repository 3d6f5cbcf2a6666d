//! Every statement the collector runs, as plain functions on a connection. They are called
//! inside [`super::Db::call`], on the database thread.

use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{Inventory, Outcome, StepReport};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{StoreError, now_ms};
use crate::lifecycle::{Mode, RunStage, SqlVerdict, Stage, StageState};

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
    pub mode: Mode,
    /// Registered without the admin token: a node of its own, never one of the known ones.
    pub ad_hoc: bool,
    /// The operator allowed destructive disk steps on it.
    pub allow_destructive: bool,
    /// Latest run.
    pub run_id: Option<i64>,
    /// Its suite.
    pub suite: Option<String>,
    /// Its stage.
    pub stage: Option<RunStage>,
    /// Its verdict (none while running).
    pub verdict: Option<Verdict>,
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
    /// Only this node.
    #[serde(skip)]
    pub node_id: Option<i64>,
    /// At most this many rows (a page of the dashboard), from `offset`.
    #[serde(skip)]
    pub limit: Option<usize>,
    /// See `limit`.
    #[serde(skip)]
    pub offset: usize,
}

/// Every node with its latest run (the dashboard, reports, the node page). The nodes are read
/// once; everything per node is an index search (a test checks the query plan).
const NODE_ROWS_SQL: &str = "SELECT n.id, n.hostname, n.rack, n.slot, n.serial, n.uuid, n.mode,
                (SELECT group_concat(mac, ',') FROM (SELECT mac FROM node_macs WHERE node_id = n.id ORDER BY mac)),
                r.id, r.suite_name, r.stage, r.verdict, r.verdict_reason, r.progress, r.started_ms, r.finished_ms, r.expect,
                n.ad_hoc, n.claimed, r.findings, n.allow_destructive
         FROM nodes n LEFT JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE node_id = n.id)
         WHERE (?1 IS NULL OR n.rack = ?1)
           AND (?5 IS NULL OR n.id = ?5)
           AND (?2 IS NULL OR r.verdict = ?2)
           AND (?4 = 0 OR (r.id IS NOT NULL AND r.verdict IS NULL))
           AND (?3 IS NULL OR r.started_ms >= ?3)
         ORDER BY n.rack, n.slot, n.id
         LIMIT ?6 OFFSET ?7";

/// Each node's latest run, for the counts.
const TALLY_SQL: &str = "SELECT r.id, r.verdict FROM nodes n LEFT JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE node_id = n.id)";

/// Nodes by the state of their latest run, for the dashboard's cards.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// Every node.
    pub total: usize,
    /// Latest run passed (or degraded).
    pub pass: usize,
    /// Latest run failed, errored or was incomplete.
    pub fail: usize,
    /// Latest run still open.
    pub running: usize,
    /// Never ran.
    pub never: usize,
}

/// The dashboard's counts in one pass over the nodes, without building their rows.
pub fn tally(conn: &Connection) -> Result<Tally, StoreError> {
    let mut stmt = conn.prepare_cached(TALLY_SQL)?;
    let mut tally = Tally::default();
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, Option<i64>>(0)?,
            r.get::<_, Option<SqlVerdict>>(1)?,
        ))
    })? {
        tally.total += 1;
        match row? {
            (None, _) => tally.never += 1,
            (Some(_), None) => tally.running += 1,
            (Some(_), Some(v)) if v.0.is_good() => tally.pass += 1,
            (Some(_), Some(_)) => tally.fail += 1,
        }
    }
    Ok(tally)
}

/// Every node with its latest run, filtered.
pub fn node_rows(conn: &Connection, filter: &Filter) -> Result<Vec<NodeRow>, StoreError> {
    let mut stmt = conn.prepare_cached(NODE_ROWS_SQL)?;
    // `running` is no verdict: it selects runs that have none yet.
    let running = filter.verdict.as_deref() == Some("running");
    let verdict = filter.verdict.as_deref().filter(|_| !running);
    let rows = stmt.query_map(
        params![
            filter.rack,
            verdict,
            filter.since_ms,
            running,
            filter.node_id,
            filter.limit.map_or(-1, |l| l as i64),
            filter.offset as i64
        ],
        |r| {
            let progress: Option<String> = r.get(13)?;
            let expect: Option<String> = r.get(16)?;
            let findings: Option<String> = r.get(19)?;
            // An ad-hoc node shows the MACs it claimed, which it does not own.
            let claimed: Option<String> = r.get(18)?;
            let claimed_macs = claimed
                .and_then(|c| serde_json::from_str::<kiln_protocol::wire::NodeIdentity>(&c).ok())
                .map(|i| i.macs.join(","));
            Ok((
                NodeRow {
                    node_id: r.get(0)?,
                    hostname: r.get(1)?,
                    rack: r.get(2)?,
                    slot: r.get(3)?,
                    serial: r.get(4)?,
                    uuid: r.get(5)?,
                    mode: r.get(6)?,
                    macs: r
                        .get::<_, Option<String>>(7)?
                        .or(claimed_macs)
                        .unwrap_or_default(),
                    ad_hoc: r.get(17)?,
                    allow_destructive: r.get(20)?,
                    run_id: r.get(8)?,
                    suite: r.get(9)?,
                    stage: r.get(10)?,
                    verdict: r.get::<_, Option<SqlVerdict>>(11)?.map(|v| v.0),
                    verdict_reason: r.get(12)?,
                    progress: progress.and_then(|p| serde_json::from_str(&p).ok()),
                    faults: Vec::new(),
                    started_ms: r.get(14)?,
                    finished_ms: r.get(15)?,
                },
                expect,
                findings,
            ))
        },
    )?;
    let rows = rows.collect::<Result<Vec<_>, _>>()?;
    // The failed steps and stages of every listed run in two statements, not two per node.
    let run_ids: Vec<i64> = rows.iter().filter_map(|(r, _, _)| r.run_id).collect();
    let mut failures = Failures::of(conn, &run_ids)?;
    let mut out = Vec::with_capacity(rows.len());
    for (mut row, expect, findings) in rows {
        if let Some(run_id) = row.run_id {
            row.faults = fault_lines(
                failures.take(run_id),
                expect.as_deref(),
                findings.as_deref(),
                row.verdict_reason.as_deref(),
            )?;
        }
        out.push(row);
    }
    Ok(out)
}

/// Failed and errored steps of the runs in the JSON array ?1, by run and step.
const FAILED_STEPS_SQL: &str = "SELECT run_id, report FROM steps
     WHERE run_id IN (SELECT value FROM json_each(?1)) AND outcome IN (?2, ?3)
     ORDER BY run_id, step";

/// Failed stages, with what failed them, of the runs in the JSON array ?1.
const FAILED_STAGES_SQL: &str = "SELECT run_id, name, detail FROM stages
     WHERE run_id IN (SELECT value FROM json_each(?1)) AND verdict = ?2 AND detail IS NOT NULL
     ORDER BY run_id";

/// The failed or errored steps and the failed stages of some runs, by run.
#[derive(Default)]
struct Failures {
    by_run: std::collections::HashMap<i64, RunFailures>,
}

/// One run's part of [`Failures`].
#[derive(Default)]
struct RunFailures {
    steps: Vec<StepReport>,
    stages: Vec<(Stage, String)>,
}

impl Failures {
    /// Reads them for `run_ids` in two statements, whatever their number.
    fn of(conn: &Connection, run_ids: &[i64]) -> Result<Failures, StoreError> {
        let mut out = Failures::default();
        if run_ids.is_empty() {
            return Ok(out);
        }
        let ids = serde_json::Value::from(run_ids).to_string();
        let mut stmt = conn.prepare_cached(FAILED_STEPS_SQL)?;
        let failed = (
            Outcome::Fail { faults: vec![] }.name(),
            Outcome::Error {
                message: String::new(),
            }
            .name(),
        );
        for row in stmt.query_map(params![ids, failed.0, failed.1], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })? {
            let (run_id, report) = row?;
            let report: StepReport =
                serde_json::from_str(&report).map_err(|source| StoreError::Corrupt {
                    what: "step",
                    source,
                })?;
            out.by_run.entry(run_id).or_default().steps.push(report);
        }
        let mut stmt = conn.prepare_cached(FAILED_STAGES_SQL)?;
        for row in stmt.query_map(params![ids, SqlVerdict(Verdict::Fail)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Stage>(1)?,
                r.get::<_, String>(2)?,
            ))
        })? {
            let (run_id, stage, detail) = row?;
            out.by_run
                .entry(run_id)
                .or_default()
                .stages
                .push((stage, detail));
        }
        Ok(out)
    }

    fn take(&mut self, run_id: i64) -> RunFailures {
        self.by_run.remove(&run_id).unwrap_or_default()
    }
}

/// One line per fault of a run: the collector's own findings (missing results, the agent
/// disagreeing), `expect:` differences, failed steps' faults, errors, failed stages, and the
/// collector's verdict reason.
fn run_faults(
    conn: &Connection,
    run_id: i64,
    expect: Option<&str>,
    findings: Option<&str>,
    reason: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let failures = Failures::of(conn, &[run_id])?.take(run_id);
    fault_lines(failures, expect, findings, reason)
}

/// The lines of [`run_faults`] from what was read.
fn fault_lines(
    failures: RunFailures,
    expect: Option<&str>,
    findings: Option<&str>,
    reason: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut lines: Vec<String> = match findings {
        Some(f) => serde_json::from_str(f).map_err(|source| StoreError::Corrupt {
            what: "findings",
            source,
        })?,
        None => Vec::new(),
    };
    if let Some(Outcome::Fail { faults }) =
        expect.and_then(|e| serde_json::from_str::<Outcome>(e).ok())
    {
        lines.extend(faults.into_iter().map(|f| format!("expect: {}", f.message)));
    }
    for report in failures.steps {
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
    for (stage, detail) in failures.stages {
        if Some(detail.as_str()) != reason && !lines.contains(&detail) {
            lines.push(format!("{stage}: {detail}"));
        }
    }
    if let Some(reason) = reason {
        if !lines.iter().any(|l| l == reason) {
            lines.push(reason.to_owned());
        }
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
    pub stage: RunStage,
    /// Verdict: the collector's, from what it stored.
    pub verdict: Option<Verdict>,
    /// The verdict the agent reported, when it did (compared, never trusted).
    pub agent_verdict: Option<Verdict>,
    /// Collector's reason for the verdict.
    pub verdict_reason: Option<String>,
    /// Start.
    pub started_ms: i64,
    /// When the agent reported it started.
    pub agent_started_ms: Option<i64>,
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
    /// The collector's own findings (also among the faults): missing results, disagreements.
    pub findings: Vec<String>,
    /// Number of log lines stored.
    pub log_lines: i64,
    /// What memtest86+ showed, when the run had that stage.
    pub memtest: Option<MemtestResult>,
    /// The last lines of the node's serial console through the Linux stage, when it has one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<String>,
}

/// A stage of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    /// Which stage.
    pub name: Stage,
    /// Where it is.
    pub state: StageState,
    /// Verdict.
    pub verdict: Option<Verdict>,
    /// Detail text.
    pub detail: Option<String>,
    /// When it was handed to the node.
    pub started_ms: Option<i64>,
    /// When it got its verdict.
    pub finished_ms: Option<i64>,
}

/// A run's detail, or `None`.
pub fn run_detail(conn: &Connection, run_id: i64) -> Result<Option<RunDetail>, StoreError> {
    let row = conn
        .query_row(
            "SELECT node_id, suite_name, suite_sha256, image_digest, stage, verdict, verdict_reason, started_ms, finished_ms, expect, inventory, findings, agent_verdict, agent_started_ms, console_tail FROM runs WHERE id = ?1",
            [run_id],
            |r| {
                Ok((
                    RunDetail {
                        run_id,
                        node_id: r.get(0)?,
                        suite: r.get(1)?,
                        suite_sha256: r.get(2)?,
                        image_digest: r.get(3)?,
                        stage: r.get(4)?,
                        verdict: r.get::<_, Option<SqlVerdict>>(5)?.map(|v| v.0),
                        agent_verdict: r.get::<_, Option<SqlVerdict>>(12)?.map(|v| v.0),
                        verdict_reason: r.get(6)?,
                        started_ms: r.get(7)?,
                        agent_started_ms: r.get(13)?,
                        finished_ms: r.get(8)?,
                        stages: Vec::new(),
                        expect: None,
                        steps: Vec::new(),
                        inventory: None,
                        faults: Vec::new(),
                        findings: Vec::new(),
                        log_lines: 0,
                        memtest: None,
                        console: r
                            .get::<_, Option<Vec<u8>>>(14)?
                            .map(|raw| {
                                let lines = crate::console::lines(&raw);
                                let from = lines.len().saturating_sub(crate::console::SHOWN_LINES);
                                lines[from..].to_vec()
                            })
                            .unwrap_or_default(),
                    },
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                    r.get::<_, Option<String>>(11)?,
                ))
            },
        )
        .optional()?;
    let Some((mut detail, expect, inventory, findings)) = row else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT name, state, verdict, detail, started_ms, finished_ms FROM stages WHERE run_id = ?1",
    )?;
    let mut stages: Vec<StageRow> = stmt
        .query_map([run_id], |r| {
            Ok(StageRow {
                name: r.get(0)?,
                state: r.get(1)?,
                verdict: r.get::<_, Option<SqlVerdict>>(2)?.map(|v| v.0),
                detail: r.get(3)?,
                started_ms: r.get(4)?,
                finished_ms: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    stages.sort_by_key(|s| Stage::ALL.iter().position(|x| *x == s.name));
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
    detail.log_lines = conn.query_row(
        "SELECT count(*) FROM events WHERE run_id = ?1 AND kind = ?2",
        params![run_id, "log"],
        |r| r.get(0),
    )?;
    detail.faults = run_faults(
        conn,
        run_id,
        expect.as_deref(),
        findings.as_deref(),
        detail.verdict_reason.as_deref(),
    )?;
    if let Some(f) = &findings {
        detail.findings = serde_json::from_str(f).map_err(|source| StoreError::Corrupt {
            what: "findings",
            source,
        })?;
    }
    detail.stages = stages;
    detail.steps = steps;
    detail.expect = expect.and_then(|e| serde_json::from_str(&e).ok());
    detail.inventory = inventory.and_then(|i| serde_json::from_str(&i).ok());
    detail.memtest = memtest_result(conn, run_id)?;
    Ok(Some(detail))
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
        "SELECT seq, at_ms, step, body FROM (SELECT * FROM events WHERE run_id = ?1 AND kind IN (?3, ?4) ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![run_id, limit, "log", "logs_dropped"], |r| {
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
    pub verdict: Option<Verdict>,
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
            verdict: r.get::<_, Option<SqlVerdict>>(2)?.map(|v| v.0),
            started_ms: r.get(3)?,
            finished_ms: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One entry of a node's history (operator consents).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// When.
    pub at_ms: i64,
    /// What changed.
    pub what: String,
    /// Who changed it.
    pub who: String,
}

/// A node's history, newest first.
pub fn node_history(conn: &Connection, node_id: i64) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, what, who FROM node_history WHERE node_id = ?1 ORDER BY at_ms DESC, rowid DESC LIMIT 100",
    )?;
    let rows = stmt.query_map([node_id], |r| {
        Ok(HistoryEntry {
            at_ms: r.get(0)?,
            what: r.get(1)?,
            who: r.get(2)?,
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
    let tx = conn.savepoint()?;
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

/// The `WHERE` clause (`?1` bound to the value) that selects what `selector` names.
pub(crate) fn select_sql(selector: &Selector) -> (&'static str, rusqlite::types::Value) {
    use rusqlite::types::Value;
    match selector {
        Selector::Rack(r) => ("rack = ?1", Value::Text(r.clone())),
        Selector::Mac(m) => (
            "id IN (SELECT node_id FROM node_macs WHERE mac = ?1)",
            Value::Text(m.clone()),
        ),
        Selector::Node(id) => ("id = ?1", Value::Integer(*id)),
        // `{"all": false}` selects nothing: only an explicit true means every node.
        Selector::All(all) => ("?1 = 1", Value::Integer(i64::from(*all))),
    }
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
        &format!("UPDATE nodes SET suite = ?2 WHERE {clause}"),
        params![value, suite],
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan's lines for `sql`.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn pages_scan_the_nodes_once_and_search_everything_else_by_index() {
        let conn = crate::store::test_connection();
        for sql in [NODE_ROWS_SQL, TALLY_SQL] {
            let lines = plan(&conn, sql);
            let scans: Vec<&String> = lines.iter().filter(|l| l.starts_with("SCAN")).collect();
            // The node list itself, and the few MACs one node's subquery produced.
            assert!(
                scans
                    .iter()
                    .all(|l| l.starts_with("SCAN n") || l.starts_with("SCAN (subquery")),
                "a full scan besides the node list: {lines:#?}"
            );
        }
        // The node list comes in rack/slot order from its index, and each node's MACs in order
        // from theirs: a page of the dashboard reads its rows, not every node, and sorts nothing.
        let lines = plan(&conn, NODE_ROWS_SQL);
        assert!(
            lines.iter().all(|l| !l.contains("TEMP B-TREE")),
            "{lines:#?}"
        );
        // The failures of every listed run: one search per run id, no scan of a table.
        for sql in [FAILED_STEPS_SQL, FAILED_STAGES_SQL] {
            let lines = plan(&conn, sql);
            assert!(
                lines
                    .iter()
                    .all(|l| !l.starts_with("SCAN") || l.starts_with("SCAN json_each")),
                "{sql}: {lines:#?}"
            );
        }
        for sql in [
            "SELECT node_id FROM node_macs WHERE mac = ?1",
            "SELECT mac FROM node_macs WHERE node_id = ?1",
            "SELECT id FROM runs WHERE token_hash = ?1 AND verdict IS NULL",
            "SELECT report FROM steps WHERE run_id = ?1 ORDER BY step",
            "SELECT seq FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
            "SELECT id FROM nodes WHERE serial = ?1 AND ad_hoc = 0 ORDER BY id LIMIT 1",
        ] {
            let lines = plan(&conn, sql);
            assert!(
                lines.iter().all(|l| !l.starts_with("SCAN")),
                "{sql}: {lines:#?}"
            );
        }
    }
}
