//! What pages and reports read about nodes: the dashboard's rows (filtered, paged, from the
//! `nodes(rack, slot)` index) and the tally, each node's runs and history, its access keys.

use super::{
    Connection, Failures, Mode, Progress, RunStage, Selector, Serialize, Sql, StoreError, Verdict,
    fault_lines, now_ms, params, select_sql, waivers,
};
use crate::store::sql::SqlError;

/// A node with its latest run, as reports and the dashboard show it (typed in `protocol`,
/// which `kiln report` reads it back with).
pub use kiln_protocol::api::ReportRow as NodeRow;

/// Filters for reports.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Filter {
    /// Only this rack.
    pub rack: Option<String>,
    /// Only this batch.
    pub batch: Option<String>,
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

/// Which nodes a report or page shows and in what order, after its columns: one text for
/// [`NODE_ROWS_SQL`] and [`NODE_PROGRESS_SQL`], so the rows and their live progress can
/// never be selected or ordered differently. Bound by [`filter_params`].
macro_rules! node_rows_from {
    () => {
        " FROM nodes n LEFT JOIN runs r ON r.id = n.latest_run
         WHERE (CAST(?1 AS TEXT) IS NULL OR n.rack = ?1)
           AND (CAST(?8 AS TEXT) IS NULL OR n.batch = ?8)
           AND (CAST(?5 AS BIGINT) IS NULL OR n.id = ?5)
           AND (CAST(?2 AS TEXT) IS NULL OR r.verdict = ?2)
           AND (?4 = 0 OR (r.id IS NOT NULL AND r.verdict IS NULL))
           AND (CAST(?3 AS BIGINT) IS NULL OR r.started_ms >= ?3)
         ORDER BY n.rack, n.slot, n.id
         LIMIT ?6 OFFSET ?7"
    };
}

/// Every node with its latest run (the dashboard, reports, the node page). The nodes are read
/// once; everything per node is an index search (a test checks the query plan).
pub(super) const NODE_ROWS_SQL: &str = concat!(
    "SELECT n.id AS node_id, n.hostname AS hostname, n.rack AS rack, n.slot AS slot,
                n.serial AS serial, n.uuid AS uuid, n.mode AS mode, n.batch AS batch,
                n.ad_hoc AS ad_hoc, n.allow_destructive AS allow_destructive, n.claimed AS claimed,
                (SELECT string_agg(mac, ',') FROM (SELECT mac FROM node_macs WHERE node_id = n.id ORDER BY mac) AS m) AS macs,
                r.id AS run_id, r.suite_name AS suite, r.stage AS stage, r.verdict AS verdict,
                r.verdict_reason AS verdict_reason, r.progress AS progress,
                r.started_ms AS started_ms, r.finished_ms AS finished_ms, r.expect AS expect,
                r.findings AS findings, r.attestation_optional AS attestation_optional,
                r.payload AS payload",
    node_rows_from!()
);

/// The live progress of the rows [`NODE_ROWS_SQL`] selects, in its order, with each row's
/// run: what a kept report needs to show progress anew without being built again.
pub(super) const NODE_PROGRESS_SQL: &str = concat!("SELECT r.id, r.progress", node_rows_from!());

/// The parameters of [`node_rows_from`] for `filter`.
fn filter_params(filter: &Filter) -> [crate::store::sql::Value; 8] {
    use crate::store::sql::Value;
    // `running` is no verdict: it selects runs that have none yet.
    let running = filter.verdict.as_deref() == Some("running");
    let verdict = filter.verdict.clone().filter(|_| !running);
    [
        Value::from(filter.rack.clone()),
        Value::from(verdict),
        Value::from(filter.since_ms),
        Value::from(running),
        Value::from(filter.node_id),
        // No limit is the largest: SQLite reads -1 as none, PostgreSQL refuses it.
        Value::from(filter.limit.map_or(i64::MAX, |l| l as i64)),
        Value::from(filter.offset as i64),
        Value::from(filter.batch.clone()),
    ]
}

/// A row's live progress as reports show it: none where the stored text does not read as
/// progress (as [`each_node_row`] reads it).
fn read_progress(text: Option<&str>) -> Option<Progress> {
    text.and_then(|p| serde_json::from_str(p).ok())
}

/// A row's run (none for a node that never ran) and that run's live progress.
pub type RowProgress = (Option<i64>, Option<Progress>);

/// The live progress of every row `filter` selects, in report order, each with its run.
pub fn node_progress(conn: &Connection, filter: &Filter) -> Result<Vec<RowProgress>, StoreError> {
    let mut stmt = conn.prepare_cached(NODE_PROGRESS_SQL)?;
    let rows = stmt.query_map(filter_params(filter), |r| {
        Ok((r.get(0)?, read_progress(r.text(1)?)))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Each node's latest run, for the counts.
pub(super) const TALLY_SQL: &str =
    "SELECT r.id, r.verdict FROM nodes n LEFT JOIN runs r ON r.id = n.latest_run";

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
        Ok((r.get::<Option<i64>>(0)?, r.get::<Option<Sql<Verdict>>>(1)?))
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

/// A statement's columns by name, looked up once per statement rather than once per cell:
/// rows are read by what a column is called, never by where it sits in the `SELECT`.
struct Named(std::collections::HashMap<String, usize>);

impl Named {
    fn of(stmt: &crate::store::sql::Statement<'_, '_>) -> Result<Named, SqlError> {
        Ok(Named(
            stmt.column_names()?
                .into_iter()
                .enumerate()
                .map(|(i, name)| (name, i))
                .collect(),
        ))
    }

    fn at(&self, name: &str) -> Result<usize, SqlError> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| SqlError::NoColumn(name.to_owned()))
    }
}

/// The MACs of an ad-hoc node's claim (`wire::NodeIdentity`), the rest of it skipped.
#[derive(serde::Deserialize)]
struct ClaimedMacs {
    macs: Vec<String>,
}

/// Every node with its latest run, filtered.
pub fn node_rows(conn: &Connection, filter: &Filter) -> Result<Vec<NodeRow>, StoreError> {
    let mut out = Vec::new();
    each_node_row(conn, filter, |row| {
        out.push(row);
        Ok(())
    })?;
    Ok(out)
}

/// How many rows [`each_node_row`] completes at a time: their failures and waivers are read
/// for all of them at once, in a few statements, and a report over 10,000 nodes never holds
/// more than these in memory.
pub(super) const ROWS_AT_ONCE: usize = 512;

/// Every node with its latest run, filtered, handed to `each` in order as it is completed —
/// a report writes each row out while the next ones are read, instead of first building
/// them all.
pub fn each_node_row(
    conn: &Connection,
    filter: &Filter,
    mut each: impl FnMut(NodeRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(NODE_ROWS_SQL)?;
    let named = Named::of(&stmt)?;
    let rows = stmt.query_map(filter_params(filter), |r| {
        let at = |name: &str| named.at(name);
        // An ad-hoc node shows the MACs it claimed, which it does not own (read only for a
        // node without MACs of its own, and only the MACs of the claim).
        let macs = match r.get::<Option<String>>(at("macs")?)? {
            Some(own) => own,
            None => r
                .text(at("claimed")?)?
                .and_then(|c| serde_json::from_str::<ClaimedMacs>(c).ok())
                .map(|c| c.macs.join(","))
                .unwrap_or_default(),
        };
        Ok((
            NodeRow {
                node_id: r.get(at("node_id")?)?,
                hostname: r.get(at("hostname")?)?,
                rack: r.get(at("rack")?)?,
                slot: r.get(at("slot")?)?,
                serial: r.get(at("serial")?)?,
                uuid: r.get(at("uuid")?)?,
                mode: r.get::<Sql<Mode>>(at("mode")?)?.0,
                macs,
                ad_hoc: r.get(at("ad_hoc")?)?,
                allow_destructive: r.get(at("allow_destructive")?)?,
                batch: r.get(at("batch")?)?,
                run_id: r.get(at("run_id")?)?,
                suite: r.get(at("suite")?)?,
                stage: r.get::<Option<Sql<RunStage>>>(at("stage")?)?.map(|s| s.0),
                verdict: r.get::<Option<Sql<Verdict>>>(at("verdict")?)?.map(|v| v.0),
                verdict_reason: r.get(at("verdict_reason")?)?,
                progress: read_progress(r.text(at("progress")?)?),
                faults: Vec::new(),
                started_ms: r.get(at("started_ms")?)?,
                finished_ms: r.get(at("finished_ms")?)?,
                waiver: None,
                attestation_optional: r
                    .get::<Option<bool>>(at("attestation_optional")?)?
                    .unwrap_or(false),
                payload: r
                    .text(at("payload")?)?
                    .and_then(|p| serde_json::from_str(p).ok()),
            },
            r.get::<Option<String>>(at("expect")?)?,
            r.get::<Option<String>>(at("findings")?)?,
        ))
    })?;
    let mut chunk = Vec::with_capacity(ROWS_AT_ONCE);
    for row in rows {
        chunk.push(row?);
        if chunk.len() == ROWS_AT_ONCE {
            complete(conn, &mut chunk, &mut each)?;
        }
    }
    complete(conn, &mut chunk, &mut each)
}

/// What a chunk of [`each_node_row`]'s rows still needs before it goes out: the node's latest
/// run's fault lines and what waivers cover of them.
type PartRow = (NodeRow, Option<String>, Option<String>);

/// Completes the rows of `chunk` (emptying it) and hands them to `each`.
fn complete(
    conn: &Connection,
    chunk: &mut Vec<PartRow>,
    each: &mut impl FnMut(NodeRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if chunk.is_empty() {
        return Ok(());
    }
    // The failed steps and stages of every run of the chunk in two statements, not two per
    // node.
    let run_ids: Vec<i64> = chunk.iter().filter_map(|(r, _, _)| r.run_id).collect();
    let mut failures = Failures::of(conn, &run_ids)?;
    // What waivers cover of the failed runs, in two statements.
    let failed: Vec<(i64, i64)> = chunk
        .iter()
        // Only hardware faults can be waived: a run that errored or is incomplete measured
        // less than the suite asked, and no waiver makes that shippable.
        .filter(|(r, _, _)| r.verdict == Some(Verdict::Fail))
        .filter_map(|(r, _, _)| Some((r.node_id, r.run_id?)))
        .collect();
    let mut waived = waivers::waived(conn, now_ms(), &failed)?;
    for (mut row, expect, findings) in chunk.drain(..) {
        row.waiver = waived.remove(&row.node_id);
        if let Some(run_id) = row.run_id {
            row.faults = fault_lines(
                failures.take(run_id),
                expect.as_deref(),
                findings.as_deref(),
                row.verdict_reason.as_deref(),
            )?;
        }
        each(row)?;
    }
    Ok(())
}

/// The nodes `selector` names, each with its MACs (to find its power driver), in rack and
/// slot order.
pub fn selected_nodes(
    conn: &Connection,
    selector: &Selector,
) -> Result<Vec<(NodeRow, Vec<String>)>, StoreError> {
    let (clause, value) = select_sql(selector);
    let ids: Vec<i64> = {
        let mut stmt = conn.prepare(&format!("SELECT id FROM nodes WHERE {clause}"))?;
        stmt.query_map(params![value], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for id in ids {
        let rows = node_rows(
            conn,
            &Filter {
                node_id: Some(id),
                ..Filter::default()
            },
        )?;
        if let Some(row) = rows.into_iter().next() {
            let (macs, _) = node_access_keys(conn, id)?;
            out.push((row, macs));
        }
    }
    out.sort_by(|(a, _), (b, _)| (&a.rack, &a.slot, a.node_id).cmp(&(&b.rack, &b.slot, b.node_id)));
    Ok(out)
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
            verdict: r.get::<Option<Sql<Verdict>>>(2)?.map(|v| v.0),
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
        "SELECT at_ms, what, who FROM node_history WHERE node_id = ?1 ORDER BY at_ms DESC, seq DESC LIMIT 100",
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

/// The reports' clock (`report_clock`), moved on in the same transaction by every change to
/// what a report shows: `rev` by all but live progress, `progress` by that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportClock {
    /// Moved by every change but live progress.
    pub rev: i64,
    /// Moved by live progress.
    pub progress: i64,
}

/// The reports' clock now.
pub fn report_clock(conn: &Connection) -> Result<ReportClock, StoreError> {
    Ok(conn.query_row(
        "SELECT rev, progress_rev FROM report_clock WHERE id = 1",
        [],
        |r| {
            Ok(ReportClock {
                rev: r.get(0)?,
                progress: r.get(1)?,
            })
        },
    )?)
}

/// When the next waiver not revoked runs out after `now_ms`: until then, the time alone
/// changes nothing a report shows (waivers are its only part that the clock changes).
pub fn next_waiver_expiry(conn: &Connection, now_ms: i64) -> Result<Option<i64>, StoreError> {
    Ok(conn.query_row(
        "SELECT min(expires_ms) FROM waivers WHERE revoked_ms IS NULL AND expires_ms > ?1",
        [now_ms],
        |r| r.get(0),
    )?)
}
