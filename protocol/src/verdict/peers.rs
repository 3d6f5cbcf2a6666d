//! Nodes compared with their peers: the other nodes of the batch with the same product and
//! CPU model, as their latest finished runs measured them. A node more than the suite's
//! `max_below_median_pct` worse than the peers' median is degraded, the reason saying by how
//! much and of how many peers: below it in throughput (GB/s, MB/s, Mb/s, it/s: more is
//! better), above it in latency, temperature and power drawn (ms, °C, W: less is better;
//! the BMC's peaks under the same step's load are compared this way). Too few peers and
//! there is nothing to compare against yet. (Which runs are peers is the collector's to read.)

use std::collections::BTreeMap;

use crate::Plan;
use crate::wire::StepReport;

/// Units a peer comparison applies to where more is better: throughput.
const THROUGHPUT: [&str; 4] = ["GB/s", "MB/s", "Mb/s", "it/s"];
/// Units a peer comparison applies to where less is better: latency, temperature, power.
const LESS_IS_BETTER: [&str; 3] = ["ms", "°C", "W"];

/// Whether peers are compared in `unit`.
pub fn compared(unit: &str) -> bool {
    THROUGHPUT.contains(&unit) || LESS_IS_BETTER.contains(&unit)
}

/// The peers' measurements, by step name and metric name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peers {
    /// Values of each (step, metric), one per peer run.
    pub values: BTreeMap<(String, String), Vec<f64>>,
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
                    crate::readable::readable(m.value, &m.unit),
                    crate::readable::readable(median, &m.unit),
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
    use crate::wire::{Metric, Outcome};

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
        let plan = crate::load(
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
