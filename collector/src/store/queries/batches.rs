//! What a manager asks of a batch (a purchase order, a delivery): how many of its nodes
//! passed, what failed most — by fault code and by component — which stage is slowest, and
//! which nodes failed with one line each. Computed from what is stored, like every verdict.

use std::collections::{BTreeSet, HashMap};

use kiln_protocol::api::{BatchSummary, FailedNode, ParetoBar, StageTime, Yield};

use super::{Connection, Filter, Serialize, StepReport, StoreError, Verdict, node_rows, runs};

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
            (Some(Verdict::Unattested), _) if row.attestation_optional => tally.unattested += 1,
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
        payload: kiln_protocol::payload::by_rack(
            rows.iter()
                .filter_map(|r| Some((r.rack.as_deref(), r.payload.as_ref()?))),
        ),
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
                runs: r.get::<i64>(1)? as usize,
                mean_s: r.get::<f64>(2)? / 1000.0,
                max_s: r.get::<f64>(3)? / 1000.0,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(times)
}

/// How one metric of one step (throughput, latency, temperature) spreads over a batch.
#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    /// The step.
    pub step: String,
    /// The metric.
    pub metric: String,
    /// Its unit.
    pub unit: String,
    /// Runs that measured it.
    pub runs: usize,
    /// Lowest and highest value, and the median, for reading.
    pub low: String,
    /// See `low`.
    pub high: String,
    /// See `low`.
    pub median: String,
    /// Equal-width bins from low to high: how many runs fell in each.
    pub bins: Vec<usize>,
    /// The fullest bin's count (the drawing's scale).
    pub most: usize,
}

/// Bins of a distribution.
const BINS: usize = 12;

/// Every throughput, latency, temperature, power and fan metric of the batch's latest runs,
/// binned: what the batch page draws as histograms.
pub fn batch_distributions(
    conn: &Connection,
    batch: &str,
) -> Result<Vec<Distribution>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.report FROM nodes n
         JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE node_id = n.id AND verdict IS NOT NULL)
         JOIN steps s ON s.run_id = r.id
         WHERE n.batch = ?1",
    )?;
    let mut values: std::collections::BTreeMap<(String, String, String), Vec<f64>> =
        std::collections::BTreeMap::new();
    for report in stmt.query_map([batch], |r| r.get::<String>(0))? {
        let Ok(report) = serde_json::from_str::<StepReport>(&report?) else {
            continue;
        };
        for m in report.metrics {
            // The BMC's peaks (°C, W, the slowest fan's RPM) too: peers under the same load.
            if ["GB/s", "MB/s", "Mb/s", "it/s", "ms", "°C", "W", "RPM"].contains(&m.unit.as_str())
                && m.value.is_finite()
            {
                values
                    .entry((report.name.clone(), m.name, m.unit))
                    .or_default()
                    .push(m.value);
            }
        }
    }
    Ok(values
        .into_iter()
        .map(|((step, metric, unit), mut v)| {
            v.sort_by(f64::total_cmp);
            let (low, high) = (v[0], v[v.len() - 1]);
            let width = (high - low) / BINS as f64;
            let mut bins = vec![0usize; BINS];
            for x in &v {
                let i = if width > 0.0 {
                    (((x - low) / width) as usize).min(BINS - 1)
                } else {
                    BINS / 2
                };
                bins[i] += 1;
            }
            let median = if v.len() % 2 == 0 {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            } else {
                v[v.len() / 2]
            };
            let read = |x| kiln_protocol::readable::readable(x, &unit);
            Distribution {
                low: read(low),
                high: read(high),
                median: read(median),
                most: bins.iter().copied().max().unwrap_or(1).max(1),
                runs: v.len(),
                bins,
                step,
                metric,
                unit,
            }
        })
        .collect())
}
