//! Nodes compared with their peers: the other nodes of the batch with the same product and
//! CPU model, as their latest finished runs measured them. A node more than the suite's
//! `max_below_median_pct` worse than the peers' median is degraded, the reason saying by how
//! much and of how many peers: below it in throughput (GB/s, MB/s, Mb/s, it/s: more is
//! better), above it in latency and temperature (ms, °C: less is better). Too few peers and
//! there is nothing to compare against yet.

use std::collections::BTreeMap;

use kiln_protocol::Plan;
use kiln_protocol::wire::{Inventory, StepReport};
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;

/// Units a peer comparison applies to where more is better: throughput.
const THROUGHPUT: [&str; 4] = ["GB/s", "MB/s", "Mb/s", "it/s"];
/// Units a peer comparison applies to where less is better: latency, temperature.
const LESS_IS_BETTER: [&str; 2] = ["ms", "°C"];

/// Whether peers are compared in `unit`.
fn compared(unit: &str) -> bool {
    THROUGHPUT.contains(&unit) || LESS_IS_BETTER.contains(&unit)
}

/// The peers' measurements, by step name and metric name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peers {
    /// Values of each (step, metric), one per peer run.
    pub values: BTreeMap<(String, String), Vec<f64>>,
}

/// The peers of run `run_id`: latest finished runs of the other nodes of its node's batch,
/// whose inventory names the same product and CPU model as this run's `inventory`.
pub fn read(
    tx: &Connection,
    run_id: i64,
    inventory: Option<&Inventory>,
) -> Result<Peers, StoreError> {
    let mut peers = Peers::default();
    let Some(inventory) = inventory else {
        return Ok(peers);
    };
    let node: Option<(i64, Option<String>)> = tx
        .query_row(
            "SELECT n.id, n.batch FROM runs r JOIN nodes n ON n.id = r.node_id WHERE r.id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((node, Some(batch))) = node else {
        return Ok(peers);
    };
    let mut stmt = tx.prepare_cached(
        "SELECT r.id, r.inventory, s.report FROM nodes n
         JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE node_id = n.id AND verdict IS NOT NULL)
         JOIN steps s ON s.run_id = r.id
         WHERE n.batch = ?1 AND n.id != ?2",
    )?;
    let rows = stmt.query_map(params![batch, node], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let same = |other: &Inventory| {
        other.system.product == inventory.system.product && other.cpu.brand == inventory.cpu.brand
    };
    let mut kind: BTreeMap<i64, bool> = BTreeMap::new();
    for row in rows {
        let (run, inv, report) = row?;
        let is_peer = *kind.entry(run).or_insert_with(|| {
            inv.and_then(|i| serde_json::from_str::<Inventory>(&i).ok())
                .is_some_and(|i| same(&i))
        });
        if !is_peer {
            continue;
        }
        let Ok(report) = serde_json::from_str::<StepReport>(&report) else {
            continue;
        };
        for m in report.metrics {
            if compared(&m.unit) && m.value.is_finite() {
                peers
                    .values
                    .entry((report.name.clone(), m.name))
                    .or_default()
                    .push(m.value);
            }
        }
    }
    Ok(peers)
}

/// Why the node is degraded against its peers, one line per metric; empty when it is not (or
/// no step asks).
pub fn compare(plan: &Plan, steps: &BTreeMap<u32, StepReport>, peers: &Peers) -> Vec<String> {
    let mut reasons = Vec::new();
    for planned in &plan.steps {
        let (Some(rule), Some(report)) =
            (planned.compare_peers, steps.get(&(planned.index as u32)))
        else {
            continue;
        };
        for m in &report.metrics {
            if !compared(&m.unit) {
                continue;
            }
            let Some(values) = peers.values.get(&(planned.name.clone(), m.name.clone())) else {
                continue;
            };
            if values.len() < rule.min_peers as usize {
                continue;
            }
            let median = median(values);
            if median <= 0.0 {
                continue;
            }
            let (worse, side) = if LESS_IS_BETTER.contains(&m.unit.as_str()) {
                (100.0 * (m.value - median) / median, "above")
            } else {
                (100.0 * (median - m.value) / median, "below")
            };
            if worse > rule.max_below_median_pct {
                reasons.push(format!(
                    "{}: {} {}, {worse:.0} % {side} the median {} of {} peers (at most {} % allowed)",
                    planned.name,
                    m.name,
                    kiln_protocol::readable::readable(m.value, &m.unit),
                    kiln_protocol::readable::readable(median, &m.unit),
                    values.len(),
                    rule.max_below_median_pct
                ));
            }
        }
    }
    reasons
}

/// The median (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::wire::{Metric, Outcome};

    fn report(name: &str, gbps: f64) -> StepReport {
        StepReport {
            step: 0,
            name: name.into(),
            kind: "memory".into(),
            outcome: Outcome::Pass,
            metrics: vec![
                Metric {
                    name: "gbps".into(),
                    value: gbps,
                    unit: "GB/s".into(),
                },
                Metric {
                    name: "temp_c".into(),
                    value: 99.0,
                    unit: "°C".into(),
                },
            ],
            duration_ms: 1,
            attempts: vec![],
        }
    }

    #[test]
    fn a_node_far_below_its_peers_median_is_named_with_the_median_and_the_count() {
        let plan = kiln_protocol::load(
            "s.yaml",
            b"suite: s\ndescription: d\ncompare_peers: {min_peers: 5, max_below_median_pct: 15}\nsteps:\n  - name: mem\n    memory: {size: 16MiB}\n",
        )
        .unwrap();
        let mut peers = Peers::default();
        peers.values.insert(
            ("mem".into(), "gbps".into()),
            vec![16.0, 16.4, 15.8, 16.2, 17.0, 16.6],
        );
        let mine = |gbps| BTreeMap::from([(0u32, report("mem", gbps))]);
        // Median of six: (16.2 + 16.4) / 2 = 16.3; 11.2 is 31 % below it.
        assert_eq!(
            compare(&plan, &mine(11.2), &peers),
            [
                "mem: gbps 11.2 GB/s, 31 % below the median 16.3 GB/s of 6 peers (at most 15 % allowed)"
            ]
        );
        // 14.0 is 14 % below: within.
        assert!(compare(&plan, &mine(14.0), &peers).is_empty());
        // Less is better for temperature: 99 °C against a median of 70 °C is 41 % above it.
        peers
            .values
            .insert(("mem".into(), "temp_c".into()), vec![70.0; 6]);
        assert_eq!(
            compare(&plan, &mine(16.3), &peers),
            ["mem: temp_c 99 °C, 41 % above the median 70 °C of 6 peers (at most 15 % allowed)"]
        );
        peers.values.remove(&("mem".into(), "temp_c".into()));
        // Too few peers: nothing to compare against.
        peers
            .values
            .insert(("mem".into(), "gbps".into()), vec![16.0, 16.4]);
        assert!(compare(&plan, &mine(1.0), &peers).is_empty());
    }
}
