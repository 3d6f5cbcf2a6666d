//! A run's BMC sensor readings over time, from the `sensors` events the agent sent: one line
//! per sensor across the run, its BMC thresholds, and where each step began — what the run
//! page draws.

use std::collections::BTreeMap;

use kiln_protocol::sensors::SensorReading;
use kiln_protocol::wire::EventBody;

use super::{Connection, Serialize, StoreError};

/// Most points one drawn line keeps (evenly thinned beyond that).
const MOST_POINTS: usize = 300;

/// Most sensors drawn for one run.
const MOST_SENSORS: usize = 64;

/// One sensor's readings over the run.
#[derive(Debug, Clone, Serialize)]
pub struct SensorSeries {
    /// The sensor's name.
    pub name: String,
    /// What it measures, in words.
    pub class: String,
    /// Its unit.
    pub unit: String,
    /// `x,y` points in a 300 × 100 box (the run's sensor time across, the reading up).
    pub points: String,
    /// The y of its upper and lower critical thresholds, when the BMC states them.
    pub high_y: Option<f64>,
    /// See `high_y`.
    pub low_y: Option<f64>,
    /// The reading's range and the thresholds, for reading.
    pub legend: String,
    /// Where each step's readings begin: x and the step's index.
    pub steps: Vec<(f64, u32)>,
}

/// One `sensors` event: when (node clock, ms), the step, the readings.
type Sweep = (i64, Option<u32>, Vec<SensorReading>);

/// Every sensor `run_id`'s agent read, in the order first read.
pub fn sensor_series(conn: &Connection, run_id: i64) -> Result<Vec<SensorSeries>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, body FROM events WHERE run_id = ?1 AND kind = 'sensors' ORDER BY seq",
    )?;
    let mut sweeps: Vec<Sweep> = Vec::new();
    for row in stmt.query_map([run_id], |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?)))? {
        let (at, body) = row?;
        if let Ok(EventBody::Sensors { step, readings }) = serde_json::from_str(&body) {
            sweeps.push((at, step, readings));
        }
    }
    Ok(draw(&sweeps))
}

/// The lines for `sweeps`, in time order.
fn draw(sweeps: &[Sweep]) -> Vec<SensorSeries> {
    let (Some(first), Some(last)) = (sweeps.first(), sweeps.last()) else {
        return Vec::new();
    };
    let (t0, t1) = (first.0, last.0);
    let x = |at: i64| 300.0 * (at - t0) as f64 / (t1 - t0).max(1) as f64;
    let mut steps = Vec::new();
    for (at, step, _) in sweeps {
        if let Some(s) = step.filter(|s| steps.last().is_none_or(|(_, l)| l != s)) {
            steps.push(((x(*at) * 10.0).round() / 10.0, s));
        }
    }
    let mut order: Vec<String> = Vec::new();
    let mut by_name: BTreeMap<String, Vec<(i64, &SensorReading)>> = BTreeMap::new();
    for (at, _, readings) in sweeps {
        for r in readings {
            if !by_name.contains_key(&r.name) {
                if order.len() == MOST_SENSORS {
                    continue;
                }
                order.push(r.name.clone());
            }
            by_name.entry(r.name.clone()).or_default().push((*at, r));
        }
    }
    order
        .iter()
        .filter_map(|name| {
            let points = by_name.get(name)?;
            let latest = points.last()?.1;
            let unit = latest.class.unit();
            let values = points.iter().map(|(_, r)| r.value);
            let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
            // The box spans the readings and the thresholds, with a margin.
            let bottom = latest.low.map_or(lo, |l| l.min(lo)).min(0.0);
            let top = latest.high.map_or(hi, |h| h.max(hi)) * 1.1;
            let y = |v: f64| 100.0 - 100.0 * (v - bottom) / (top - bottom).max(1e-9);
            let every = points.len().div_ceil(MOST_POINTS).max(1);
            let line = points
                .iter()
                .step_by(every)
                .map(|(at, r)| format!("{:.1},{:.1}", x(*at), y(r.value)))
                .collect::<Vec<_>>()
                .join(" ");
            let mut legend = format!("{lo} to {hi} {unit}");
            if let Some(h) = latest.high {
                legend += &format!("; critical above {h} {unit}");
            }
            if let Some(l) = latest.low {
                legend += &format!("; critical below {l} {unit}");
            }
            Some(SensorSeries {
                name: name.clone(),
                class: latest.class.name().to_owned(),
                unit: unit.to_owned(),
                points: line,
                high_y: latest.high.map(|h| (y(h) * 10.0).round() / 10.0),
                low_y: latest.low.map(|l| (y(l) * 10.0).round() / 10.0),
                legend,
                steps: steps.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::sensors::SensorClass;

    fn fan(value: f64) -> SensorReading {
        SensorReading {
            name: "FAN1".into(),
            class: SensorClass::Fan,
            value,
            low: Some(1000.0),
            high: None,
        }
    }

    #[test]
    fn each_sensor_is_one_line_across_the_run_with_its_steps_marked() {
        let inlet = SensorReading {
            name: "Inlet Temp".into(),
            class: SensorClass::Inlet,
            value: 24.0,
            low: None,
            high: Some(42.0),
        };
        let sweeps: Vec<Sweep> = vec![
            (1000, Some(0), vec![fan(4800.0), inlet.clone()]),
            (3000, Some(0), vec![fan(0.0), inlet.clone()]),
            (5000, Some(1), vec![fan(0.0)]),
        ];
        let lines = draw(&sweeps);
        assert_eq!(lines.len(), 2);
        let f = &lines[0];
        assert_eq!((f.name.as_str(), f.unit.as_str()), ("FAN1", "RPM"));
        assert_eq!(f.points, "0.0,9.1 150.0,100.0 300.0,100.0");
        assert_eq!(f.legend, "0 to 4800 RPM; critical below 1000 RPM");
        assert_eq!(f.steps, [(0.0, 0), (300.0, 1)]);
        let i = &lines[1];
        assert_eq!(i.high_y, Some(9.1));
        assert_eq!(i.points, "0.0,48.1 150.0,48.1");
        assert!(draw(&[]).is_empty());
    }

    #[test]
    fn a_flood_of_sensors_and_points_is_thinned() {
        let many: Vec<SensorReading> = (0..200)
            .map(|i| SensorReading {
                name: format!("T{i}"),
                ..fan(1.0)
            })
            .collect();
        let sweeps: Vec<Sweep> = (0..1000).map(|t| (t, Some(0), many.clone())).collect();
        let lines = draw(&sweeps);
        assert_eq!(lines.len(), MOST_SENSORS);
        assert!(lines[0].points.split(' ').count() <= MOST_POINTS);
    }
}
