//! Report bodies and dashboard pages kept while what they show stays the same. A report reads
//! every node; at 10,000 nodes that is 15 ms of a core per load (a dashboard page, 3 ms),
//! taken from the agents' acks on a busy collector, while between two loads usually nothing
//! they show has changed: event batches carry log lines and metrics, which neither shows.
//!
//! Whether anything changed is the database's to say, not a guess: every insert, delete and
//! update of a column a report reads moves `report_clock` on, in the transaction that makes
//! it (triggers, [`crate::store::schema::watch_reports`]). A body built inside one read
//! transaction is kept with the clock read in that same transaction, and handed out again
//! only from a snapshot that reads the same clock — the same rows, so the same bytes. The only
//! other input of a report is the time, through waivers running out: a body is kept no later
//! than the first expiry after it was built. Reports filtered by age (`since`) are never kept.
//!
//! One part may show late: a running step's live progress, which every batch of a busy agent
//! changes, moves a clock of its own, and a body holds across it for [`PROGRESS_LAG`] — as
//! long as the dashboard takes to refresh itself anyway. Nothing else lags: a step's result,
//! a stage, a verdict, a fault, a waiver move the main clock and the next load is built anew.
//! What a body may be built from is checked by a test: every column the report's and the
//! dashboard's statements read, read through SQLite's authorizer, must be one the clock
//! watches.

use std::sync::Mutex;

use bytes::Bytes;
use rusqlite::Connection;

use crate::store::StoreError;
use crate::store::queries::{self, Filter, ReportClock};

/// How long a kept body may show live progress older than the database's (ms): the
/// dashboard's refresh. At 10,000 nodes all mid-step the progress clock moves thousands of
/// times a second, and without the lag every load would be a build.
pub const PROGRESS_LAG: i64 = 5_000;

/// How many bodies are kept (filters and formats managers pull), and their total size: a
/// site ten times the benchmark's would still keep a few.
const ENTRIES: usize = 8;
const BYTES: usize = 64 << 20;

/// Which body it is: the report as JSON or CSV, or a dashboard page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Csv,
    Dashboard { page: usize },
}

/// Which body, with its filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    kind: Kind,
    rack: Option<String>,
    batch: Option<String>,
    verdict: Option<String>,
}

impl Key {
    /// The key of a report with `filter` in CSV or JSON, or `None` for one that is never kept:
    /// filtered by time or down to one node or page.
    pub fn report(filter: &Filter, csv: bool) -> Option<Key> {
        let kept = filter.since_ms.is_none()
            && filter.node_id.is_none()
            && filter.limit.is_none()
            && filter.offset == 0;
        kept.then(|| Key {
            kind: if csv { Kind::Csv } else { Kind::Json },
            rack: filter.rack.clone(),
            batch: filter.batch.clone(),
            verdict: filter.verdict.clone(),
        })
    }

    /// The key of dashboard page `page` filtered by `rack` and `verdict`.
    pub fn dashboard(rack: Option<String>, verdict: Option<String>, page: usize) -> Key {
        Key {
            kind: Kind::Dashboard { page },
            rack,
            batch: None,
            verdict,
        }
    }
}

/// One kept body and when it holds.
struct Entry {
    key: Key,
    /// The reports' clock in the snapshot it was built in.
    clock: ReportClock,
    /// When it was built (ms since the epoch).
    built_ms: i64,
    /// The first waiver expiry after `built_ms`, if any.
    until_ms: Option<i64>,
    body: Bytes,
}

impl Entry {
    fn holds(&self, clock: ReportClock, now_ms: i64) -> bool {
        self.clock.rev == clock.rev
            // A clock set back could bring a waiver that had run out back to life.
            && now_ms >= self.built_ms
            && self.until_ms.is_none_or(|u| now_ms < u)
            && (self.clock.progress == clock.progress || now_ms - self.built_ms < PROGRESS_LAG)
    }
}

/// The kept bodies, most recently used first.
#[derive(Default)]
pub struct ReportCache {
    entries: Mutex<Vec<Entry>>,
}

impl ReportCache {
    /// The body for `key`: the one kept if it still holds, else `build`'s, kept. The clock
    /// and everything `build` reads come from one snapshot (a read transaction around both),
    /// so a body is kept with the clock of exactly the rows it was built from.
    pub fn through<E: From<StoreError>>(
        &self,
        conn: &Connection,
        key: Key,
        build: impl FnOnce(&Connection) -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        let snapshot = conn.unchecked_transaction().map_err(StoreError::from)?;
        let clock = queries::report_clock(&snapshot)?;
        let now = crate::store::now_ms();
        if let Some(body) = self.get(&key, clock, now) {
            return Ok(body);
        }
        let until = queries::next_waiver_expiry(&snapshot, now)?;
        let body = build(&snapshot)?;
        self.put(key, clock, now, until, body.clone());
        Ok(body)
    }

    /// The body kept for `key` if it holds at `clock` and time `now_ms`.
    pub fn get(&self, key: &Key, clock: ReportClock, now_ms: i64) -> Option<Bytes> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries.iter().position(|e| &e.key == key)?;
        if !entries[i].holds(clock, now_ms) {
            entries.remove(i);
            return None;
        }
        let entry = entries.remove(i);
        let body = entry.body.clone();
        entries.insert(0, entry);
        Some(body)
    }

    /// Keeps `body`, built at `clock` at `built_ms`, until the clock moves or `until_ms`.
    pub fn put(
        &self,
        key: Key,
        clock: ReportClock,
        built_ms: i64,
        until_ms: Option<i64>,
        body: Bytes,
    ) {
        if body.len() > BYTES {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.key != key);
        entries.insert(
            0,
            Entry {
                key,
                clock,
                built_ms,
                until_ms,
                body,
            },
        );
        entries.truncate(ENTRIES);
        let mut total = 0;
        entries.retain(|e| {
            total += e.body.len();
            total <= BYTES
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rack: &str) -> Key {
        Key::report(
            &Filter {
                rack: Some(rack.into()),
                ..Filter::default()
            },
            false,
        )
        .unwrap()
    }

    fn at(rev: i64) -> ReportClock {
        ReportClock { rev, progress: 0 }
    }

    #[test]
    fn a_body_holds_at_its_clock_until_the_first_waiver_runs_out() {
        let cache = ReportCache::default();
        let body = || Bytes::from_static(b"[1]");
        cache.put(key("R1"), at(7), 1_000, Some(5_000), body());
        assert_eq!(cache.get(&key("R1"), at(7), 4_999), Some(body()));
        assert_eq!(cache.get(&key("R2"), at(7), 4_999), None);
        // The clock moved: gone, even when it would come back to 7.
        assert_eq!(cache.get(&key("R1"), at(8), 2_000), None);
        assert_eq!(cache.get(&key("R1"), at(7), 2_000), None);
        cache.put(key("R1"), at(7), 1_000, Some(5_000), body());
        assert_eq!(cache.get(&key("R1"), at(7), 5_000), None);
        cache.put(key("R1"), at(7), 1_000, None, body());
        assert_eq!(
            cache.get(&key("R1"), at(7), 999),
            None,
            "the clock was set back"
        );
    }

    #[test]
    fn live_progress_alone_lets_a_body_hold_for_the_lag_and_no_longer() {
        let cache = ReportCache::default();
        let body = || Bytes::from_static(b"[1]");
        let progressed = ReportClock {
            rev: 7,
            progress: 40,
        };
        cache.put(key("R1"), at(7), 1_000, None, body());
        assert!(
            cache
                .get(&key("R1"), progressed, 1_000 + PROGRESS_LAG - 1)
                .is_some()
        );
        assert!(
            cache
                .get(&key("R1"), progressed, 1_000 + PROGRESS_LAG)
                .is_none()
        );
        // Progress and anything else: built anew at once.
        cache.put(key("R1"), at(7), 1_000, None, body());
        let both = ReportClock {
            rev: 8,
            progress: 40,
        };
        assert!(cache.get(&key("R1"), both, 1_001).is_none());
    }

    #[test]
    fn reports_by_age_one_node_or_a_page_are_never_kept() {
        let by_age = Filter {
            since_ms: Some(1),
            ..Filter::default()
        };
        assert!(Key::report(&by_age, false).is_none());
        let page = Filter {
            limit: Some(10),
            ..Filter::default()
        };
        assert!(Key::report(&page, true).is_none());
        assert!(Key::report(&Filter::default(), true).is_some());
        assert_ne!(
            Key::report(&Filter::default(), true),
            Key::report(&Filter::default(), false)
        );
        assert_ne!(Key::dashboard(None, None, 1), Key::dashboard(None, None, 2));
    }

    #[test]
    fn at_most_a_few_bodies_are_kept_the_least_used_going_first() {
        let cache = ReportCache::default();
        for i in 0..=ENTRIES {
            cache.put(
                key(&format!("R{i}")),
                at(1),
                0,
                None,
                Bytes::from(vec![b'x'; 10]),
            );
            // R0 stays in use.
            assert!(cache.get(&key("R0"), at(1), 0).is_some());
        }
        assert!(cache.get(&key("R1"), at(1), 0).is_none());
        assert!(cache.get(&key(&format!("R{ENTRIES}")), at(1), 0).is_some());
        cache.put(
            key("big"),
            at(1),
            0,
            None,
            Bytes::from(vec![b'x'; BYTES - 5]),
        );
        assert!(cache.get(&key("big"), at(1), 0).is_some());
        assert!(
            cache.get(&key("R0"), at(1), 0).is_none(),
            "over the total size, the least used go"
        );
    }
}
