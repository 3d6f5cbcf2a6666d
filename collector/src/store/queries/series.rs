//! A run's steps over time, from the live progress events the agent sent: the figure each
//! step showed (`7.9 GB/s`, `1474 it/s`) and how far along it was, as points the run page
//! draws.

use std::collections::BTreeMap;

use kiln_protocol::wire::EventBody;

use super::{Connection, Serialize, StoreError};

/// Most points one drawn line keeps (evenly thinned beyond that).
const MOST_POINTS: usize = 300;

/// One progress event: when (node clock, ms), how far along, and the figure it showed.
type Sample = (i64, f64, Option<(f64, String)>);

/// One step's figure over time.
#[derive(Debug, Clone, Serialize)]
pub struct StepSeries {
    /// Step index.
    pub step: u32,
    /// The figure's unit, as the agent showed it (`GB/s`).
    pub unit: String,
    /// `x,y` points in a 300 × 100 box (time across, the figure up), for an SVG polyline.
    pub points: String,
    /// `x,y` points of the step's progress (0 to 100 %), same box.
    pub progress: String,
    /// The highest figure, for reading.
    pub high: String,
    /// How long the step's progress ran, for reading.
    pub span: String,
}

/// Every step of `run_id` that sent progress with a figure.
pub fn step_series(conn: &Connection, run_id: i64) -> Result<Vec<StepSeries>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, body FROM events WHERE run_id = ?1 AND kind = 'progress' ORDER BY seq",
    )?;
    let mut by_step: BTreeMap<u32, Vec<Sample>> = BTreeMap::new();
    for row in stmt.query_map([run_id], |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?)))? {
        let (at, body) = row?;
        if let Ok(EventBody::Progress {
            step,
            fraction,
            status,
        }) = serde_json::from_str::<EventBody>(&body)
        {
            by_step.entry(step).or_default().push((
                at,
                fraction,
                status.as_deref().and_then(figure),
            ));
        }
    }
    let mut out = Vec::new();
    for (step, points) in by_step {
        let Some(unit) = points
            .iter()
            .find_map(|(_, _, f)| f.as_ref().map(|(_, u)| u.clone()))
        else {
            continue;
        };
        let (t0, t1) = (points[0].0, points[points.len() - 1].0);
        let span = (t1 - t0).max(1) as f64;
        let high = points
            .iter()
            .filter_map(|(_, _, f)| f.as_ref().filter(|(_, u)| *u == unit).map(|(v, _)| *v))
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let every = points.len().div_ceil(MOST_POINTS).max(1);
        let x = |at: i64| 300.0 * (at - t0) as f64 / span;
        let line = |pick: &dyn Fn(&Sample) -> Option<f64>| {
            points
                .iter()
                .step_by(every)
                .filter_map(|p| pick(p).map(|y| format!("{:.1},{:.1}", x(p.0), 100.0 - 100.0 * y)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push(StepSeries {
            step,
            points: line(&|p| {
                p.2.as_ref()
                    .filter(|(_, u)| *u == unit)
                    .map(|(v, _)| v / high)
            }),
            progress: line(&|p| Some(p.1.clamp(0.0, 1.0))),
            high: kiln_protocol::readable::readable(high, &unit),
            span: kiln_protocol::readable::readable((t1 - t0) as f64 / 1000.0, "s"),
            unit,
        });
    }
    Ok(out)
}

/// The first figure in a progress status: a number and the unit after it (`7.9 GB/s`,
/// `write 1093 MB/s, p99 1.1 ms` → 1093 MB/s).
fn figure(status: &str) -> Option<(f64, String)> {
    let words: Vec<&str> = status.split_whitespace().collect();
    words.windows(2).find_map(|w| {
        let value: f64 = w[0].trim_end_matches(',').parse().ok()?;
        let unit = w[1].trim_end_matches(',');
        (unit.contains('/') || unit == "°C").then(|| (value, unit.to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::figure;

    #[test]
    fn the_first_figure_of_a_status_is_read_with_its_unit() {
        assert_eq!(figure("7.9 GB/s"), Some((7.9, "GB/s".into())));
        assert_eq!(
            figure("write 1093 MB/s, p99 1.1 ms"),
            Some((1093.0, "MB/s".into()))
        );
        assert_eq!(figure("1474 it/s, 61 °C"), Some((1474.0, "it/s".into())));
        assert_eq!(figure("watching"), None);
        assert_eq!(figure("pass 1 test #9"), None);
    }
}
