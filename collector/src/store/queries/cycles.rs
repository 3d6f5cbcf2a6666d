//! A run's power cycles as stored, one row each, for the run page: where each stands, how
//! long its boot took and what proved it.

use super::{Connection, Serialize, StoreError};

/// One power cycle of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CycleRow {
    /// Its number, from 1.
    pub cycle: u32,
    /// `warm` or `cold`.
    pub kind: String,
    /// `due`, `powering`, `booting` or `reported`.
    pub state: String,
    /// The boot id its agent reported.
    pub boot_id: Option<String>,
    /// Seconds from the power action to the node asking for its boot script.
    pub secs_to_boot: Option<f64>,
    /// Seconds from the boot script to the agent's report.
    pub secs_to_report: Option<f64>,
    /// Whether the node's console showed this boot's attestation.
    pub attested: bool,
}

/// The run's power cycles, in order.
pub fn power_cycles(conn: &Connection, run_id: i64) -> Result<Vec<CycleRow>, StoreError> {
    let secs = |from: Option<i64>, to: Option<i64>| match (from, to) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1000.0),
        _ => None,
    };
    let mut stmt = conn.prepare_cached(
        "SELECT cycle, kind, state, boot_id, powered_ms, served_ms, reported_ms, attested_ms
           FROM power_cycles WHERE run_id = ?1 ORDER BY cycle",
    )?;
    let rows = stmt
        .query_map([run_id], |r| {
            let (powered, served, reported): (Option<i64>, Option<i64>, Option<i64>) =
                (r.get(4)?, r.get(5)?, r.get(6)?);
            Ok(CycleRow {
                cycle: r.get(0)?,
                kind: r.get(1)?,
                state: r.get(2)?,
                boot_id: r.get(3)?,
                secs_to_boot: secs(powered, served),
                secs_to_report: secs(served, reported),
                attested: r.get::<Option<i64>>(7)?.is_some(),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
