//! What a manager asks of a batch (a purchase order, a delivery): how many of its nodes
//! passed, what failed most — by fault code and by component — which stage is slowest, and
//! which nodes failed with one line each. Computed from what is stored, like every verdict.

use std::collections::{BTreeSet, HashMap};

use kiln_protocol::api::{BatchSummary, FailedNode, ParetoBar, StageTime, Yield};

use super::*;

/// Every batch with its number of nodes, by name.
pub fn batches(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT batch, count(*) FROM nodes WHERE batch IS NOT NULL GROUP BY batch ORDER BY batch",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The batch's summary, or `None` when no node is in it.
pub fn batch_summary(conn: &Connection, batch: &str) -> Result<Option<BatchSummary>, StoreError> {
    let rows = node_rows(
        conn,
        &Filter {
            batch: Some(batch.to_owned()),
            ..Filter::default()
        },
    )?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut tally = Yield {
        nodes: rows.len(),
        ..Yield::default()
    };
    let mut failed = Vec::new();
    for row in &rows {
        match (row.verdict, row.run_id) {
            (Some(Verdict::Pass), _) => tally.pass += 1,
            (Some(Verdict::Degraded), _) => tally.degraded += 1,
            (Some(_), Some(_)) if row.waiver.as_ref().is_some_and(|w| w.all) => tally.waived += 1,
            (Some(verdict), Some(run_id)) => {
                tally.fail += 1;
                failed.push(FailedNode {
                    node_id: row.node_id,
                    hostname: row.hostname.clone(),
                    rack: row.rack.clone(),
                    slot: row.slot.clone(),
                    serial: row.serial.clone(),
                    run_id,
                    verdict,
                    reason: row
                        .faults
                        .first()
                        .cloned()
                        .unwrap_or_else(|| format!("{verdict} with no fault recorded")),
                });
            }
            (Some(_), None) => tally.fail += 1,
            (None, Some(_)) => tally.running += 1,
            (None, None) => tally.not_started += 1,
        }
    }
    let failed_runs: Vec<i64> = failed.iter().map(|f| f.run_id).collect();
    let codes = runs::fault_codes(conn, &failed_runs)?;
    let pareto = |key: &dyn Fn(&str) -> String| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for run in &failed_runs {
            let keys: BTreeSet<String> = codes
                .get(run)
                .map(|c| c.iter().map(|code| key(code)).collect())
                .unwrap_or_default();
            for k in keys {
                *counts.entry(k).or_default() += 1;
            }
        }
        let mut bars: Vec<ParetoBar> = counts
            .into_iter()
            .map(|(key, nodes)| ParetoBar { key, nodes })
            .collect();
        bars.sort_by(|a, b| b.nodes.cmp(&a.nodes).then_with(|| a.key.cmp(&b.key)));
        bars
    };
    let pareto_codes = pareto(&|code| code.to_owned());
    let pareto_components = pareto(&|code| code.split('.').next().unwrap_or(code).to_owned());
    let latest: Vec<i64> = rows.iter().filter_map(|r| r.run_id).collect();
    Ok(Some(BatchSummary {
        batch: batch.to_owned(),
        yield_: tally,
        pareto_codes,
        pareto_components,
        stages: stage_times(conn, &latest)?,
        failed,
    }))
}

/// Mean and longest duration of each stage over the runs that finished it, slowest mean
/// first.
fn stage_times(conn: &Connection, run_ids: &[i64]) -> Result<Vec<StageTime>, StoreError> {
    let ids = serde_json::Value::from(run_ids).to_string();
    let mut stmt = conn.prepare_cached(
        "SELECT name, count(*), avg(finished_ms - started_ms), max(finished_ms - started_ms)
         FROM stages
         WHERE run_id IN (SELECT value FROM json_each(?1))
           AND started_ms IS NOT NULL AND finished_ms IS NOT NULL
         GROUP BY name ORDER BY avg(finished_ms - started_ms) DESC",
    )?;
    let times = stmt
        .query_map([ids], |r| {
            Ok(StageTime {
                stage: r.get(0)?,
                runs: r.get::<_, i64>(1)? as usize,
                mean_s: r.get::<_, f64>(2)? / 1000.0,
                max_s: r.get::<_, f64>(3)? / 1000.0,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(times)
}
