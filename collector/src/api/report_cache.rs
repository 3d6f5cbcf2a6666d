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
//! A running step's live progress, which every batch of a busy agent changes, moves a clock of
//! its own, across which a kept body holds for [`PROGRESS_LAG`], as long as the dashboard
//! takes to refresh itself anyway. After that, the JSON report, kept with its rows apart from
//! their progress ([`ReportRows`]), has the progress of its rows read again, in the same
//! snapshot, and put in — the bytes a build gives, without converting or encoding any row
//! again; a dashboard page is built anew. The CSV report shows no progress and holds across
//! it. Nothing else lags: a step's result, a stage, a verdict, a fault, a waiver move the main
//! clock and the next load is built anew.
//! What a body may be built from is checked by a test: every column the report's and the
//! dashboard's statements read, read through SQLite's authorizer, must be one the clock
//! watches.

use std::sync::{Arc, Mutex};

use crate::store::sql::Connection;
use bytes::Bytes;

use super::report_rows::ReportRows;
use crate::store::StoreError;
use crate::store::queries::{self, Filter, ReportClock};
use kiln_protocol::api::ReportFormat;

/// How long a kept dashboard page may show live progress older than the database's (ms): its
/// refresh. At 10,000 nodes all mid-step the progress clock moves thousands of
/// times a second, and without the lag every load would be a build.
pub const PROGRESS_LAG: i64 = 5_000;

/// How many bodies are kept (filters and formats managers pull), and their total size: a
/// site ten times the benchmark's would still keep a few.
const ENTRIES: usize = 8;
const BYTES: usize = 64 << 20;

/// Which body it is: the report as JSON or CSV, or a dashboard page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Report(ReportFormat),
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
    pub fn report(filter: &Filter, format: ReportFormat) -> Option<Key> {
        let kept = filter.since_ms.is_none()
            && filter.node_id.is_none()
            && filter.limit.is_none()
            && filter.offset == 0;
        kept.then(|| Key {
            kind: Kind::Report(format),
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

    /// The filter of a report's key (a dashboard's has no use for one).
    fn filter(&self) -> Filter {
        Filter {
            rack: self.rack.clone(),
            batch: self.batch.clone(),
            verdict: self.verdict.clone(),
            ..Filter::default()
        }
    }
}

/// What a build gives: the body, and a JSON report's rows to put new progress in.
pub struct Built {
    pub body: Bytes,
    pub rows: Option<Arc<ReportRows>>,
}

impl From<Bytes> for Built {
    fn from(body: Bytes) -> Built {
        Built { body, rows: None }
    }
}

/// What is kept for a key at a clock and time.
enum Found {
    /// A body that holds.
    Body(Bytes),
    /// A report whose rows hold, all but their live progress.
    Rows(Arc<ReportRows>),
    Nothing,
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
    /// When the live progress it shows was read (built, or put in anew).
    progress_ms: i64,
    body: Bytes,
    rows: Option<Arc<ReportRows>>,
}

impl Entry {
    fn found(&self, clock: ReportClock, now_ms: i64) -> Found {
        let holds = self.clock.rev == clock.rev
            // A clock set back could bring a waiver that had run out back to life.
            && now_ms >= self.built_ms
            && self.until_ms.is_none_or(|u| now_ms < u);
        if !holds {
            return Found::Nothing;
        }
        if self.clock.progress == clock.progress
            || self.key.kind == Kind::Report(ReportFormat::Csv)
            || now_ms - self.progress_ms < PROGRESS_LAG
        {
            return Found::Body(self.body.clone());
        }
        match &self.rows {
            Some(rows) => Found::Rows(rows.clone()),
            None => Found::Nothing,
        }
    }

    /// What it takes of the kept bytes.
    fn size(&self) -> usize {
        self.body.len() + self.rows.as_ref().map_or(0, |r| r.size())
    }
}

/// The kept bodies, most recently used first.
#[derive(Default)]
pub struct ReportCache {
    entries: Mutex<Vec<Entry>>,
    /// The keys being built, each with the lock its builder holds. A wall of dashboards
    /// reloading together after the clock moved would otherwise build the same page once per
    /// reader, side by side, on the CPUs the agents' acks need: a load that misses while its
    /// key is being built waits for that build and looks again.
    building: Mutex<Vec<(Key, Arc<Mutex<()>>)>>,
}

impl ReportCache {
    /// The body for `key`: the one kept if it still holds, else `build`'s, kept. The clock
    /// and everything `build` reads come from one snapshot (a read transaction around both),
    /// so a body is kept with the clock of exactly the rows it was built from.
    /// A report kept with its rows whose progress alone moved has it read again and put in.
    pub fn through<E: From<StoreError>>(
        &self,
        conn: &Connection,
        key: Key,
        build: impl FnOnce(&Connection) -> Result<Built, E>,
    ) -> Result<Bytes, E> {
        let snapshot = conn.snapshot().map_err(StoreError::from)?;
        let clock = queries::report_clock(&snapshot)?;
        let now = crate::store::now_ms();
        match self.lookup(&key, clock, now) {
            Found::Body(body) => return Ok(body),
            Found::Rows(rows) => {
                let progress = queries::node_progress(&snapshot, &key.filter())?;
                // Other runs than the rows' would mean the clock missed a change: built anew.
                if let Some(body) = rows.body(&progress) {
                    let body = Bytes::from(body?);
                    self.progressed(&key, clock, now, body.clone());
                    return Ok(body);
                }
            }
            Found::Nothing => {}
        }
        let gate = self.gate(&key);
        let result = {
            let _building = gate.lock().unwrap_or_else(|e| e.into_inner());
            // Built while this load waited, from the rows of this snapshot's clock: taken.
            match self.get(&key, clock, now) {
                Some(body) => Ok(body),
                None => queries::next_waiver_expiry(&snapshot, now)
                    .map_err(E::from)
                    .and_then(|until| {
                        let built = build(&snapshot)?;
                        let body = built.body.clone();
                        self.put(key.clone(), clock, now, until, built);
                        Ok(body)
                    }),
            }
        };
        drop(gate);
        // The lock goes with the last load that waited on it: keys come from requests.
        self.building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, g)| k != &key || Arc::strong_count(g) > 1);
        result
    }

    /// The lock of `key`'s build, shared by every load of it that misses meanwhile.
    fn gate(&self, key: &Key) -> Arc<Mutex<()>> {
        let mut building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        match building.iter().find(|(k, _)| k == key) {
            Some((_, gate)) => gate.clone(),
            None => {
                let gate = Arc::new(Mutex::new(()));
                building.push((key.clone(), gate.clone()));
                gate
            }
        }
    }

    /// The body kept for `key` if it holds at `clock` and time `now_ms`.
    pub fn get(&self, key: &Key, clock: ReportClock, now_ms: i64) -> Option<Bytes> {
        match self.lookup(key, clock, now_ms) {
            Found::Body(body) => Some(body),
            Found::Rows(_) | Found::Nothing => None,
        }
    }

    /// What is kept for `key` at `clock` and `now_ms`, moved to the front; an entry that no
    /// longer holds is dropped.
    fn lookup(&self, key: &Key, clock: ReportClock, now_ms: i64) -> Found {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = entries.iter().position(|e| &e.key == key) else {
            return Found::Nothing;
        };
        let entry = entries.remove(i);
        let found = entry.found(clock, now_ms);
        if !matches!(found, Found::Nothing) {
            entries.insert(0, entry);
        }
        found
    }

    /// The report kept for `key`, its progress put in anew at `clock`.
    fn progressed(&self, key: &Key, clock: ReportClock, now_ms: i64, body: Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.iter_mut().find(|e| &e.key == key) {
            entry.clock = clock;
            entry.progress_ms = now_ms;
            entry.body = body;
        }
        bound(&mut entries);
    }

    /// Keeps `body`, built at `clock` at `built_ms`, until the clock moves or `until_ms`.
    pub fn put(
        &self,
        key: Key,
        clock: ReportClock,
        built_ms: i64,
        until_ms: Option<i64>,
        built: impl Into<Built>,
    ) {
        let Built { body, rows } = built.into();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.key != key);
        entries.insert(
            0,
            Entry {
                key,
                clock,
                built_ms,
                until_ms,
                progress_ms: built_ms,
                body,
                rows,
            },
        );
        bound(&mut entries);
    }
}

/// At most [`ENTRIES`] entries and [`BYTES`], the most recently used kept.
fn bound(entries: &mut Vec<Entry>) {
    entries.truncate(ENTRIES);
    let mut total = 0;
    entries.retain(|e| {
        total += e.size();
        total <= BYTES
    });
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
            ReportFormat::Json,
        )
        .unwrap()
    }

    fn at(rev: i64) -> ReportClock {
        ReportClock { rev, progress: 0 }
    }

    /// Loads of one body that miss together build it once, the others waiting and taking
    /// it; loads of different bodies build side by side; and nothing of a build's lock stays
    /// behind (the keys come from requests).
    #[test]
    fn loads_that_miss_together_build_a_body_once_and_different_bodies_side_by_side() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cache = ReportCache::default();
        let builds = AtomicUsize::new(0);
        let start = std::sync::Barrier::new(8);
        let bodies: Vec<Bytes> = std::thread::scope(|s| {
            let loads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let conn = crate::store::test_connection();
                        start.wait();
                        cache
                            .through(&conn, key("R1"), |_| {
                                builds.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(300));
                                Ok::<_, StoreError>(Built::from(Bytes::from_static(b"[1]")))
                            })
                            .unwrap()
                    })
                })
                .collect();
            loads.into_iter().map(|l| l.join().unwrap()).collect()
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert!(bodies.iter().all(|b| b.as_ref() == b"[1]"));
        assert!(cache.building.lock().unwrap().is_empty());
        // Two keys: each build waits (up to 10 s) to see the other running.
        let inside = AtomicUsize::new(0);
        let met: Vec<bool> = std::thread::scope(|s| {
            let loads: Vec<_> = ["R2", "R3"]
                .into_iter()
                .map(|rack| {
                    let (cache, inside) = (&cache, &inside);
                    s.spawn(move || {
                        let conn = crate::store::test_connection();
                        let mut met = false;
                        cache
                            .through(&conn, key(rack), |_| {
                                inside.fetch_add(1, Ordering::SeqCst);
                                let until =
                                    std::time::Instant::now() + std::time::Duration::from_secs(10);
                                while !met && std::time::Instant::now() < until {
                                    met = inside.load(Ordering::SeqCst) == 2;
                                    std::thread::sleep(std::time::Duration::from_millis(5));
                                }
                                Ok::<_, StoreError>(Built::from(Bytes::from_static(b"[]")))
                            })
                            .unwrap();
                        met
                    })
                })
                .collect();
            loads.into_iter().map(|l| l.join().unwrap()).collect()
        });
        assert_eq!(met, vec![true, true]);
        assert!(cache.building.lock().unwrap().is_empty());
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
        assert!(Key::report(&by_age, ReportFormat::Json).is_none());
        let page = Filter {
            limit: Some(10),
            ..Filter::default()
        };
        assert!(Key::report(&page, ReportFormat::Csv).is_none());
        assert!(Key::report(&Filter::default(), ReportFormat::Csv).is_some());
        assert_ne!(
            Key::report(&Filter::default(), ReportFormat::Csv),
            Key::report(&Filter::default(), ReportFormat::Json)
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
