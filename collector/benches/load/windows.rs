//! The windows a paced round is cut into (managers loading pages in every other one), and
//! what the pages do to the ack tail, window against neighbouring window.

use std::time::Duration;

/// The schedule of a paced round with managers: its time cut into windows of [`Windows::LEN`],
/// managers loading pages in every other one (the odd ones or the even ones). Acks sent in a
/// window with pages count as "with pages", the others as "without" — both from the same
/// round, on the same database, under whatever else the machine is doing in those seconds (on
/// a shared host the same setup swings by 2x from one ten-second round to the next, far more
/// than the pages move it). The first [`Windows::WARM_UP`] windows (the agents connecting, and
/// the backlog that leaves) count as neither; nor does a window's first [`Windows::SETTLE`]
/// after one with pages, where a load started late in it may still be running.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Windows {
    /// Pages in the odd windows, else in the even ones (from the second window on).
    pub odd: bool,
    /// Windows in the round's schedule; acks asked for after it are resends.
    pub count: u128,
}

impl Windows {
    pub const LEN: Duration = Duration::from_secs(2);
    pub const SETTLE: Duration = Duration::from_millis(500);
    pub const WARM_UP: u128 = 2;

    pub fn index(at: Duration) -> u128 {
        at.as_millis() / Self::LEN.as_millis()
    }

    /// Whether managers load pages in window `i`.
    pub fn pages_in(self, i: u128) -> bool {
        i > 0 && (i % 2 == 1) == self.odd
    }

    /// Whether managers load pages at `at` into the round.
    pub fn pages_at(self, at: Duration) -> bool {
        self.pages_in(Self::index(at))
    }

    /// The acks (sent at, latency) of a round by window, each window's latencies sorted and
    /// marked with whether pages were loading; the warm-up and the resends after the schedule
    /// left out.
    pub fn split(self, acks: &[(Duration, Duration)]) -> Vec<(bool, Vec<Duration>)> {
        let mut windows: std::collections::BTreeMap<u128, Vec<Duration>> = Default::default();
        for &(at, latency) in acks {
            let i = Self::index(at);
            let after_pages = i > 0 && !self.pages_in(i) && self.pages_in(i - 1);
            let into = at.as_millis() % Self::LEN.as_millis();
            let counted = (Self::WARM_UP..self.count).contains(&i);
            if counted && !(after_pages && into < Self::SETTLE.as_millis()) {
                windows.entry(i).or_default().push(latency);
            }
        }
        windows
            .into_iter()
            .map(|(i, mut latencies)| {
                latencies.sort_unstable();
                (self.pages_in(i), latencies)
            })
            .collect()
    }
}

/// What the pages do to the ack tail, window against neighbouring window: each window with
/// pages paired with each window without next to it in the same round (2 s apart, so a swing of
/// the host over tens of seconds falls on both sides of a pair alike), the ratio of their p99s,
/// and the median of those ratios. The interval comes from resampling whole rounds (the pairs
/// of a round share windows), so it says how far another set of rounds could put the median.
pub struct Paired {
    pub pairs: usize,
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
}

impl Paired {
    /// From each round's windows in order: (pages loading, p99 in ms).
    pub fn of(rounds: &[Vec<(bool, f64)>]) -> Option<Paired> {
        let logs = |rounds: &[&Vec<(bool, f64)>]| -> Vec<f64> {
            rounds
                .iter()
                .flat_map(|w| w.windows(2))
                .filter(|pair| pair[0].0 != pair[1].0)
                .map(|pair| {
                    let (pages, none) = if pair[0].0 {
                        (pair[0].1, pair[1].1)
                    } else {
                        (pair[1].1, pair[0].1)
                    };
                    (pages.max(1e-3) / none.max(1e-3)).ln()
                })
                .collect()
        };
        let median = |mut v: Vec<f64>| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            v.sort_by(f64::total_cmp);
            let n = v.len();
            Some(if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            })
        };
        let all: Vec<&Vec<(bool, f64)>> = rounds.iter().collect();
        let every = logs(&all);
        let pairs = every.len();
        let ratio = median(every)?.exp();
        // A fixed seed: the same windows give the same interval.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut medians: Vec<f64> = (0..2000)
            .filter_map(|_| {
                let sample: Vec<&Vec<(bool, f64)>> = (0..all.len())
                    .map(|_| all[(next() % all.len() as u64) as usize])
                    .collect();
                median(logs(&sample))
            })
            .collect();
        medians.sort_by(f64::total_cmp);
        let at =
            |p: f64| medians[((medians.len() as f64 * p) as usize).min(medians.len() - 1)].exp();
        Some(Paired {
            pairs,
            ratio,
            low: at(0.05),
            high: at(0.95),
        })
    }
}
