//! Every statement the collector runs, as plain functions on a connection. They are called
//! inside [`super::Db::call`], on the database thread.

use crate::store::sql::{Connection, OptionalExtension, params};
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{Inventory, Outcome, StepReport};
use serde::Serialize;

use super::states::{Mode, RunStage, Sql, Stage, StageState};
use super::{StoreError, now_ms};

mod batches;
mod cabling;
mod cycles;
mod nodes;
mod pairs;
mod provenance;
mod runs;
mod sensors;
mod series;
mod waivers;

pub use batches::{Distribution, batch_distributions, batch_summary, batches};
pub use cabling::{MapLine, cables_of, cabling_map, elsewhere, has_cabling, import_cabling};
pub use cycles::{CycleRow, power_cycles};
pub use nodes::{
    Filter, HistoryEntry, NodeRow, ReportClock, RowProgress, RunSummary, Tally, each_node_row,
    next_waiver_expiry, node_access_keys, node_history, node_progress, node_rows, node_runs,
    report_clock, selected_nodes, tally,
};
pub use pairs::{
    Asked, PairAsk, PairResult, ask_pair, finish_pair, pair_of, pair_results, record_pair,
};
pub use provenance::{Provenance, provenance};
use runs::{Failures, fault_lines};
pub use runs::{
    LogLine, MemtestResult, PayloadSource, RunDetail, StageRow, memtest_result, payload_complete,
    payload_fault, payload_piece, run_detail, run_logs, run_logs_before, verdict_why,
};
pub use sensors::{SensorSeries, sensor_series};
pub use series::{StepSeries, step_series};
pub use waivers::{NotWaived, add_waiver, read_waivers, revoke_waiver};

/// Stores a suite's text under its sha256 (once) and returns the digest.
pub fn put_suite(conn: &Connection, name: &str, text: &str) -> Result<String, StoreError> {
    let sha = sha256_hex(text.as_bytes());
    conn.execute(
        "INSERT INTO suites (sha256, name, text, created_ms) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        params![sha, name, text, now_ms()],
    )?;
    Ok(sha)
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    // Every agent's request hashes its token: two digits a byte from a table, into one
    // string, rather than a `format!` (and a string) per byte — that was 1.5 % of the
    // collector's samples in the load bench's saturated round, the digest itself 0.2 %.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for b in sha2::Sha256::digest(bytes) {
        hex.push(DIGITS[usize::from(b >> 4)] as char);
        hex.push(DIGITS[usize::from(b & 15)] as char);
    }
    hex
}

/// Live progress shown on the dashboard.
pub use kiln_protocol::api::Progress;

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
    /// Batch, when the file has the column (an empty cell leaves the node's batch as it is).
    pub batch: Option<String>,
}

/// Labels nodes by MAC, registering the ones not seen yet; returns (updated, created).
pub fn import_labels(conn: &Connection, labels: &[Label]) -> Result<(usize, usize), StoreError> {
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
                    "UPDATE nodes SET rack = ?2, slot = ?3, hostname = ?4, batch = coalesce(?5, batch) WHERE id = ?1",
                    params![id, l.rack, l.slot, l.hostname, l.batch],
                )?;
                updated += 1;
            }
            None => {
                let id: i64 = tx.query_row(
                    "INSERT INTO nodes (rack, slot, hostname, batch, created_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?5, ?4, ?4) RETURNING id",
                    params![l.rack, l.slot, l.hostname, now, l.batch],
                    |r| r.get(0),
                )?;
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

/// Which nodes an operator command addresses (its wire shape is the protocol's).
pub use kiln_protocol::api::Selector;

/// The `WHERE` clause (`?1` bound to the value) that selects what `selector` names.
pub(crate) fn select_sql(selector: &Selector) -> (&'static str, crate::store::sql::Value) {
    use crate::store::sql::Value;
    match selector {
        Selector::Rack(r) => ("rack = ?1", Value::Text(r.clone())),
        Selector::Mac(m) => (
            "id IN (SELECT node_id FROM node_macs WHERE mac = ?1)",
            Value::Text(m.clone()),
        ),
        Selector::Node(id) => ("id = ?1", Value::Int(*id)),
        Selector::Batch(b) => ("batch = ?1", Value::Text(b.clone())),
        // `{"all": false}` selects nothing: only an explicit true means every node.
        Selector::All(all) => ("?1 = 1", Value::Int(i64::from(*all))),
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

/// Puts the selected nodes in `batch` (or takes them out of theirs); returns how many.
pub fn set_batch(
    conn: &Connection,
    selector: &Selector,
    batch: Option<&str>,
) -> Result<usize, StoreError> {
    let (clause, value) = select_sql(selector);
    Ok(conn.execute(
        &format!("UPDATE nodes SET batch = ?2 WHERE {clause}"),
        params![value, batch],
    )?)
}

/// Runs by stage and verdict (`running` while none), with their number.
pub type RunCounts = Vec<(String, String, i64)>;

/// For `/metrics`: nodes, and runs by stage and verdict.
pub fn counts(conn: &Connection) -> Result<(i64, RunCounts), StoreError> {
    let nodes = conn.query_row("SELECT count(*) FROM nodes", [], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(
        "SELECT stage, coalesce(verdict, 'running'), count(*) FROM runs GROUP BY 1, 2",
    )?;
    let runs = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((nodes, runs))
}

#[cfg(test)]
mod tests;
