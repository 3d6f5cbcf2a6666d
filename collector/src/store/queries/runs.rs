//! What a run page reads: the run's detail (stages, steps, memtest86+ result, faults), its
//! logs, and each listed run's failures gathered in two statements.

use std::collections::{BTreeSet, HashMap};

use super::{
    Connection, Inventory, Outcome, Provenance, RunStage, Serialize, Sql, Stage, StageState,
    StepReport, StoreError, Verdict, params, provenance,
};
use crate::store::sql::OptionalExtension;

/// Failed and errored steps of the runs in the JSON array ?1 (distinct ids), by run and step.
/// The outcomes are written out, not bound, so that the partial index `steps_failed` serves
/// the query (a test checks they are the names the writer stores); a join, not `IN`, so that
/// SQLite searches the index for each id as it reads the array instead of first building a
/// temporary index of all of them (that was a tenth of a report's time at 10,000 nodes).
pub(super) const FAILED_STEPS_SQL: &str = "SELECT s.run_id, s.report
     FROM json_each(?1) AS ids JOIN steps AS s ON s.run_id = ids.value
     WHERE s.outcome IN ('fail', 'error')
     ORDER BY s.run_id, s.step";

/// Failed stages, with what failed them, of the runs in the JSON array ?1 (distinct ids),
/// through the partial index `stages_failed`, like [`FAILED_STEPS_SQL`].
pub(super) const FAILED_STAGES_SQL: &str = "SELECT s.run_id, s.name, s.detail
     FROM json_each(?1) AS ids JOIN stages AS s ON s.run_id = ids.value
     WHERE s.verdict = 'fail' AND s.detail IS NOT NULL
     ORDER BY s.run_id";

/// The failed or errored steps and the failed stages of some runs, by run.
#[derive(Default)]
pub(super) struct Failures {
    by_run: std::collections::HashMap<i64, RunFailures>,
}

/// One run's part of [`Failures`].
#[derive(Default)]
pub(super) struct RunFailures {
    pub(super) steps: Vec<StepReport>,
    pub(super) stages: Vec<(Stage, String)>,
}

impl Failures {
    /// Reads them for `run_ids` in two statements, whatever their number.
    pub(super) fn of(conn: &Connection, run_ids: &[i64]) -> Result<Failures, StoreError> {
        let mut out = Failures::default();
        if run_ids.is_empty() {
            return Ok(out);
        }
        // Each id once: the statements join on the list.
        let mut run_ids = run_ids.to_vec();
        run_ids.sort_unstable();
        run_ids.dedup();
        let ids = serde_json::Value::from(run_ids).to_string();
        let mut stmt = conn.prepare_cached(FAILED_STEPS_SQL)?;
        for row in stmt.query_map(params![ids], |r| {
            Ok((r.get::<i64>(0)?, r.get::<String>(1)?))
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
        for row in stmt.query_map(params![ids], |r| {
            Ok((r.get::<i64>(0)?, r.get::<Stage>(1)?, r.get::<String>(2)?))
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

    pub(super) fn take(&mut self, run_id: i64) -> RunFailures {
        self.by_run.remove(&run_id).unwrap_or_default()
    }
}

/// One line per fault of a run: the collector's own findings (missing results, the agent
/// disagreeing), `expect:` differences, failed steps' faults, errors, failed stages, and the
/// collector's verdict reason.
pub(super) fn run_faults(
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
pub(super) fn fault_lines(
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
        // The cabling map's faults travel with expect:'s, and say which they are.
        lines.extend(faults.into_iter().map(|f| {
            let from = if f.code.starts_with("cabling.") {
                "cabling"
            } else {
                "expect"
            };
            format!("{from}: {}", f.message)
        }));
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
    /// What the verdict was reached with.
    pub provenance: Provenance,
    /// Where its payload came from, when it fetched one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<PayloadSource>,
    /// Each pair of its `target: peer` steps: the partner, both directions, met or missed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<super::PairResult>,
    /// The run this one repeats: kiln re-armed the node once because that run's memtest
    /// stage lost its reader (the collector died).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats: Option<i64>,
}

/// Part of a run's payload, by where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayloadSource {
    /// The peer that served it; none for the collector.
    pub node: Option<i64>,
    /// Bytes.
    pub bytes: i64,
    /// Pieces.
    pub pieces: i64,
    /// When the first of them arrived.
    pub first_ms: i64,
    /// When the last did.
    pub last_ms: i64,
    /// Its pieces that failed their hash.
    pub corrupt: i64,
    /// Its fetches that broke off or stalled.
    pub broken: i64,
}

/// Records that run `run_id` got a verified piece of `bytes` from `source` (a peer's node, or
/// none for the collector).
pub fn payload_piece(
    conn: &Connection,
    run_id: i64,
    source: Option<i64>,
    bytes: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO payload_sources (run_id, source_node, bytes, pieces, first_ms, last_ms)
         VALUES (?1, ?2, ?3, 1, ?4, ?4)
         ON CONFLICT (run_id, source_node) DO UPDATE SET
           bytes = payload_sources.bytes + excluded.bytes, pieces = payload_sources.pieces + 1,
           last_ms = excluded.last_ms",
    )?
    .execute(params![
        run_id,
        source.unwrap_or(0),
        bytes,
        crate::store::now_ms()
    ])?;
    Ok(())
}

/// Records that a fetch of run `run_id` from peer `source` failed: its piece failed the hash
/// (`corrupt`) or the fetch broke off or stalled.
pub fn payload_fault(
    conn: &Connection,
    run_id: i64,
    source: i64,
    corrupt: bool,
) -> Result<(), StoreError> {
    let now = crate::store::now_ms();
    conn.prepare_cached(
        "INSERT INTO payload_sources (run_id, source_node, bytes, pieces, first_ms, last_ms, corrupt, broken)
         VALUES (?1, ?2, 0, 0, ?3, ?3, ?4, ?5)
         ON CONFLICT (run_id, source_node) DO UPDATE SET
           corrupt = payload_sources.corrupt + excluded.corrupt,
           broken = payload_sources.broken + excluded.broken",
    )?
    .execute(params![
        run_id,
        source,
        now,
        i64::from(corrupt),
        i64::from(!corrupt)
    ])?;
    Ok(())
}

/// Stores run `run_id`'s payload tally, from its sources, once it holds every piece.
pub fn payload_complete(conn: &Connection, run_id: i64) -> Result<(), StoreError> {
    let tally = conn.query_row(
        "SELECT coalesce(sum(CASE WHEN source_node = 0 THEN bytes END), 0),
                coalesce(sum(CASE WHEN source_node != 0 THEN bytes END), 0),
                count(CASE WHEN source_node != 0 AND bytes > 0 THEN 1 END),
                coalesce(sum(corrupt), 0),
                coalesce(max(last_ms) - min(CASE WHEN pieces > 0 THEN first_ms END), 0)
         FROM payload_sources WHERE run_id = ?1",
        [run_id],
        |r| {
            Ok(kiln_protocol::payload::Tally {
                collector_bytes: r.get::<i64>(0)?.max(0) as u64,
                peer_bytes: r.get::<i64>(1)?.max(0) as u64,
                peers: r.get::<i64>(2)?.max(0) as u32,
                corrupt: r.get::<i64>(3)?.max(0) as u32,
                ms: r.get::<i64>(4)?.max(0) as u64,
            })
        },
    )?;
    let text = serde_json::to_string(&tally)
        .map_err(|_| StoreError::Invariant("a payload tally serializes"))?;
    conn.execute(
        "UPDATE runs SET payload = ?2 WHERE id = ?1",
        params![run_id, text],
    )?;
    Ok(())
}

/// Where run `run_id`'s payload came from, by source.
fn payload_sources(conn: &Connection, run_id: i64) -> Result<Vec<PayloadSource>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT source_node, bytes, pieces, first_ms, last_ms, corrupt, broken FROM payload_sources WHERE run_id = ?1 ORDER BY source_node",
    )?;
    let sources = stmt
        .query_map([run_id], |r| {
            Ok(PayloadSource {
                node: Some(r.get::<i64>(0)?).filter(|n| *n != 0),
                bytes: r.get(1)?,
                pieces: r.get(2)?,
                first_ms: r.get(3)?,
                last_ms: r.get(4)?,
                corrupt: r.get(5)?,
                broken: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(sources)
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
            "SELECT node_id, suite_name, suite_sha256, image_digest, stage, verdict, verdict_reason, started_ms, finished_ms, expect, inventory, findings, agent_verdict, agent_started_ms, console_tail, rearm_of FROM runs WHERE id = ?1",
            [run_id],
            |r| {
                Ok((
                    RunDetail {
                        run_id,
                        node_id: r.get(0)?,
                        suite: r.get(1)?,
                        suite_sha256: r.get(2)?,
                        image_digest: r.get(3)?,
                        stage: r.get::<Sql<RunStage>>(4)?.0,
                        verdict: r.get::<Option<Sql<Verdict>>>(5)?.map(|v| v.0),
                        agent_verdict: r.get::<Option<Sql<Verdict>>>(12)?.map(|v| v.0),
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
                            .get::<Option<Vec<u8>>>(14)?
                            .map(|raw| {
                                let lines = crate::console::lines(&raw);
                                let from = lines.len().saturating_sub(crate::console::SHOWN_LINES);
                                lines[from..].to_vec()
                            })
                            .unwrap_or_default(),
                        provenance: Provenance::default(),
                        payload: Vec::new(),
                        pairs: Vec::new(),
                        repeats: r.get(15)?,
                    },
                    r.get::<Option<String>>(9)?,
                    r.get::<Option<String>>(10)?,
                    r.get::<Option<String>>(11)?,
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
                verdict: r.get::<Option<Sql<Verdict>>>(2)?.map(|v| v.0),
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
        .query_map([run_id], |r| r.get::<String>(0))?
        .map(|r| {
            r.map_err(StoreError::from).and_then(|t| {
                serde_json::from_str(&t).map_err(|source| StoreError::Corrupt {
                    what: "step",
                    source,
                })
            })
        })
        .collect::<Result<_, _>>()?;
    detail.payload = payload_sources(conn, run_id)?;
    detail.pairs = super::pair_results(conn, run_id)?;
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
    let kernel = detail.inventory.as_ref().and_then(|i| i.kernel.clone());
    detail.provenance = provenance(conn, run_id, kernel)?;
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
/// Why a finished run is not a pass, in one line: the collector's reason for its verdict, or
/// the first detail of a stage that did not pass. `None` for a pass or an open run.
pub fn verdict_why(conn: &Connection, run_id: i64) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT COALESCE(r.verdict_reason,
                 (SELECT s.detail FROM stages s WHERE s.run_id = r.id AND s.detail IS NOT NULL AND s.verdict <> 'pass' LIMIT 1))
             FROM runs r WHERE r.id = ?1 AND r.verdict IS NOT NULL AND r.verdict <> 'pass'",
            [run_id],
            |r| r.get(0),
        )
        .optional()?
        .flatten())
}

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
    run_logs_before(conn, run_id, limit, i64::MAX)
}

/// The last `limit` log lines of a run before sequence number `before`, oldest first: a page
/// of the log, read backwards from its end.
pub fn run_logs_before(
    conn: &Connection,
    run_id: i64,
    limit: i64,
    before: i64,
) -> Result<Vec<LogLine>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at_ms, step, body FROM (SELECT * FROM events WHERE run_id = ?1 AND kind IN (?3, ?4) AND seq < ?5 ORDER BY seq DESC LIMIT ?2) AS latest ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![run_id, limit, "log", "logs_dropped", before], |r| {
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

/// The fault codes of each run: failed steps' faults (an errored step counts as
/// `<kind>.error`), `expect:` differences, failed stages (`memtest.fail`), and for a run with
/// none of these, what the collector decided (`run.lost_contact`, `run.incomplete`).
pub(super) fn fault_codes(
    conn: &Connection,
    run_ids: &[i64],
) -> Result<HashMap<i64, BTreeSet<String>>, StoreError> {
    let mut out: HashMap<i64, BTreeSet<String>> = HashMap::new();
    let mut failures = Failures::of(conn, run_ids)?;
    for run in run_ids {
        let found = failures.take(*run);
        let codes = out.entry(*run).or_default();
        for step in &found.steps {
            match &step.outcome {
                Outcome::Fail { faults } => codes.extend(faults.iter().map(|f| f.code.clone())),
                Outcome::Error { .. } => {
                    codes.insert(format!("{}.error", step.kind));
                }
                _ => {}
            }
        }
        for (stage, _) in &found.stages {
            codes.insert(format!("{stage}.fail"));
        }
    }
    if run_ids.is_empty() {
        return Ok(out);
    }
    let ids = serde_json::Value::from(run_ids).to_string();
    let mut stmt = conn.prepare_cached(
        "SELECT id, expect, verdict, verdict_reason FROM runs WHERE id IN (SELECT value FROM json_each(?1))",
    )?;
    let rows = stmt.query_map([ids], |r| {
        Ok((
            r.get::<i64>(0)?,
            r.get::<Option<String>>(1)?,
            r.get::<Option<Sql<Verdict>>>(2)?.map(|v| v.0),
            r.get::<Option<String>>(3)?,
        ))
    })?;
    for row in rows {
        let (run, expect, verdict, reason) = row?;
        let codes = out.entry(run).or_default();
        if let Some(Ok(Outcome::Fail { faults })) =
            expect.map(|e| serde_json::from_str::<Outcome>(&e))
        {
            codes.extend(faults.into_iter().map(|f| f.code));
        }
        if codes.is_empty() {
            codes.insert(match (reason, verdict) {
                (Some(r), _) if r.starts_with("lost contact") => "run.lost_contact".to_owned(),
                (_, Some(v)) => format!("run.{v}"),
                (_, None) => "run.unknown".to_owned(),
            });
        }
    }
    Ok(out)
}
