//! Each end's figures of each pair of a `target: peer` step, as the collector judged them:
//! what the verdict checks a passing step against and what reports name the partners from.

use crate::store::sql::{Connection, params};
use serde::Serialize;

use super::StoreError;

/// One end's result of one pair (or, without a partner, of a wait no partner ended).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairResult {
    /// The step, by index.
    pub step: u32,
    /// The pair (0 for a timed-out wait).
    pub pair: u64,
    /// The partner, by node id; none when no partner came.
    pub partner_node: Option<i64>,
    /// Its name (host name, else `node N`).
    pub partner_name: Option<String>,
    /// From the partner to this node, Mb/s.
    pub download_mbps: Option<f64>,
    /// From this node to the partner, Mb/s.
    pub upload_mbps: Option<f64>,
    /// The slower direction.
    pub mbps: Option<f64>,
    /// Whether the figures met the step's thresholds.
    pub met: bool,
    /// When the collector judged it.
    pub at_ms: i64,
}

/// Stores `result` for run `run_id`; the first word on a pair stands.
pub fn record_pair(conn: &Connection, run_id: i64, r: &PairResult) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO pair_results (run_id, step, pair, partner_node, partner_name,
         download_mbps, upload_mbps, mbps, met, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
        params![
            run_id,
            r.step,
            r.pair as i64,
            r.partner_node,
            r.partner_name,
            r.download_mbps,
            r.upload_mbps,
            r.mbps,
            r.met,
            r.at_ms
        ],
    )?;
    Ok(())
}

/// Run `run_id`'s pair results, by step and then in the order they were judged.
pub fn pair_results(conn: &Connection, run_id: i64) -> Result<Vec<PairResult>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT step, pair, partner_node, partner_name, download_mbps, upload_mbps, mbps, met, at_ms
         FROM pair_results WHERE run_id = ?1 ORDER BY step, at_ms, pair",
    )?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok(PairResult {
                step: r.get(0)?,
                pair: r.get::<i64>(1)? as u64,
                partner_node: r.get(2)?,
                partner_name: r.get(3)?,
                download_mbps: r.get(4)?,
                upload_mbps: r.get(5)?,
                mbps: r.get(6)?,
                met: r.get(7)?,
                at_ms: r.get(8)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
