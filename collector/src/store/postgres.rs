//! The store on PostgreSQL, shared by several collectors: the same writer thread with its
//! group commits and the same reader threads as on SQLite, each on a connection of its own,
//! and besides them a few writers of the agents' batches alone.
//! A connection the server dropped (a restart, a failover) is opened again by the thread
//! that needs it, at most every [`RECONNECT_EVERY`]; until then its requests answer
//! [`StoreError::Unavailable`](super::StoreError::Unavailable), which the API turns into a
//! 503, and nothing is half-written: a group whose commit did not return is not acknowledged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::sql::Connection;
use super::{
    Db, Job, Lane, QUEUE, READERS, ReadJob, gather, pg_schema, priority, serve_reads, write_group,
};

/// Least time between two attempts to connect again, so that a database that is down costs
/// each request a quick 503 rather than a connection attempt.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// Writers of the agents' batches ([`Db::call_ingest`]), beside the main one. A group's commit
/// is a round trip and a flush of the WAL the server does for every connection at once: while
/// one writer waits for it, the others' statements run. Beyond a few, the server's CPU is
/// what bounds them (see docs/benchmarks.md).
const INGEST_WRITERS: usize = 4;

/// Groups of the agents' batches in flight on the database at once, over all the collectors
/// sharing it; each keeps its share ([`Db::ingest_share`]), all of them when alone.
pub(super) const SITE_IN_FLIGHT: usize = INGEST_WRITERS;

/// Groups one collector of `writers` writes at once when `sharers` collectors share the
/// database's [`SITE_IN_FLIGHT`]: its even share, at least one and no more than its writers.
pub(super) fn share(writers: usize, sharers: usize) -> usize {
    (SITE_IN_FLIGHT / sharers.max(1)).clamp(1, writers.max(1))
}

/// `url` with its password hidden, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(split) => split,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Refuses a server that does not flush its commits (`fsync` off): an event acknowledged
/// there could be lost in a crash, and kiln acknowledges only what is durable. (Each
/// connection asks for synchronous commit itself, see `Connection::postgres`.)
fn durable(conn: &Connection) -> anyhow::Result<()> {
    let (fsync, commit): (String, String) = conn.query_row(
        "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
        super::sql::params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    anyhow::ensure!(
        fsync == "on",
        "the server runs with fsync={fsync}: an acknowledged event could be lost in a crash; kiln needs fsync on"
    );
    anyhow::ensure!(
        commit == "on",
        "synchronous_commit is {commit} on kiln's connection, though it asked for on"
    );
    Ok(())
}

/// A connection opened again when the server dropped it.
struct Link {
    url: String,
    conn: Option<Connection<'static>>,
    tried: Option<Instant>,
}

impl Link {
    fn new(url: &str) -> Link {
        Link {
            url: url.to_owned(),
            conn: None,
            tried: None,
        }
    }

    /// The connection, opened again if it was lost and the last attempt is old enough.
    fn get(&mut self) -> Option<&Connection<'static>> {
        if self.conn.as_ref().is_some_and(Connection::is_closed) {
            tracing::warn!(url = %redact(&self.url), "lost the connection to PostgreSQL");
            self.conn = None;
        }
        if self.conn.is_none() && self.tried.is_none_or(|t| t.elapsed() >= RECONNECT_EVERY) {
            self.tried = Some(Instant::now());
            match Connection::postgres(&self.url) {
                Ok(conn) => {
                    tracing::info!(url = %redact(&self.url), "connected to PostgreSQL");
                    self.conn = Some(conn);
                }
                Err(e) => {
                    tracing::warn!(url = %redact(&self.url), error = %e, "PostgreSQL is unreachable")
                }
            }
        }
        self.conn.as_ref()
    }
}

/// Connects to `url`, brings its schema up to date (refusing a newer one) and starts the
/// writer and the readers.
pub(super) fn open(url: &str) -> anyhow::Result<Db> {
    // On a thread of its own: the blocking client may not run on an async runtime's thread,
    // and the collector opens its store from one.
    std::thread::scope(|s| {
        s.spawn(|| {
            let conn = Connection::postgres(url).map_err(|e| {
                anyhow::anyhow!("cannot connect to the database {}: {e}", redact(url))
            })?;
            durable(&conn).map_err(|e| anyhow::anyhow!("the database {}: {e:#}", redact(url)))?;
            pg_schema::migrate(&conn)
                .map_err(|e| anyhow::anyhow!("cannot migrate the database {}: {e:#}", redact(url)))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("migrating the database panicked"))?
    })?;
    let (reads, read_rx) = mpsc::channel::<ReadJob>(QUEUE);
    let read_rx = Arc::new(Mutex::new(read_rx));
    for (i, clock) in priority::clocks(READERS)?.into_iter().enumerate() {
        let jobs = read_rx.clone();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name(format!("pg-reader-{i}"))
            .spawn(move || {
                let mut link = Link::new(&url);
                serve_reads(&jobs, &clock, |job| job(link.get()));
            })?;
    }
    let tx = writers("pg-writer", url, 1)?;
    let ingest = writers("pg-ingest", url, INGEST_WRITERS)?;
    Ok(Db {
        tx,
        ingest: Some(Lane {
            tx: ingest,
            writers: INGEST_WRITERS,
            sharers: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
        }),
        reads,
        kind: super::sql::EngineKind::Postgres,
    })
}

/// Starts `count` writer threads named `name`, taking groups of jobs from one queue; each
/// opens its own connection (one is not `Send`: a connection may borrow).
fn writers(name: &str, url: &str, count: usize) -> anyhow::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..count {
        let (rx, url) = (rx.clone(), url.to_owned());
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                let mut link = Link::new(&url);
                loop {
                    // One idle writer waits on the queue at a time, and takes what is there.
                    let jobs = {
                        let mut rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                        match rx.blocking_recv() {
                            Some(first) => gather(first, &mut rx),
                            None => return,
                        }
                    };
                    match link.get() {
                        Some(conn) => write_group(conn, jobs),
                        None => fail_group(jobs),
                    }
                }
            })?;
    }
    Ok(tx)
}

/// Answers every job of a group that found no database: unavailable, nothing stored.
fn fail_group(jobs: Vec<Job>) {
    crate::metrics::METRICS.commit_failures.inc();
    for job in jobs {
        job(None)(super::Committed::Lost);
    }
}

#[cfg(test)]
mod tests {
    use super::super::StoreError;
    use super::*;
    use crate::lab::postgres::{Cluster, USER};

    /// Each collector keeps its even share of the groups the database runs well at once: all
    /// of them alone, half with another, one each with three or more (never none, whatever
    /// the count a heartbeat read), and never more than it has writers.
    #[test]
    fn the_groups_in_flight_are_shared_among_the_live_collectors() {
        let w = INGEST_WRITERS;
        let shares: Vec<usize> = [0, 1, 2, 3, 4, 5, 1000, usize::MAX]
            .iter()
            .map(|&n| share(w, n))
            .collect();
        assert_eq!(shares, [4, 4, 2, 1, 1, 1, 1, 1]);
        assert_eq!(share(2, 1), 2, "no more than its writers");
        assert_eq!(share(0, 1), 1, "at least one");
        let site: usize = [1, 2, 3, 4].iter().map(|&n| n * share(w, n)).max().unwrap();
        assert_eq!(
            site, SITE_IN_FLIGHT,
            "up to four collectors, no more in flight"
        );
    }

    fn suites(db: &Db) -> Result<Vec<String>, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(db.read(|c| {
            Ok(
                c.query_map("SELECT sha256 FROM suites ORDER BY sha256", [], |r| {
                    r.get(0)
                })?,
            )
        }))
    }

    fn put(db: &Db, sha: &'static str) -> Result<(), StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(db.call(move |c| {
            c.execute(
                "INSERT INTO suites (sha256, name, text, created_ms) VALUES (?1, 'n', 't', 0)",
                [sha],
            )?;
            Ok(())
        }))
    }

    /// kiln acknowledges only what is durable: its connections commit synchronously though
    /// the database and the role say otherwise (and run without JIT whatever they say), and
    /// a server that does not flush its commits (`fsync=off`) is refused before anything is
    /// written, naming the setting.
    #[test]
    fn a_collector_commits_synchronously_and_refuses_a_server_without_fsync() {
        let dir = std::env::temp_dir().join(format!("kiln-pg-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = Cluster::start(&dir).unwrap();
        let url = cluster.url(USER);
        let admin = Connection::postgres(&url).unwrap();
        admin
            .execute_batch(&format!(
                "ALTER DATABASE {USER} SET synchronous_commit = off;
                 ALTER ROLE {USER} SET synchronous_commit = off;
                 ALTER DATABASE {USER} SET jit = on;"
            ))
            .unwrap();
        // A plain session now commits without waiting for the flush; kiln's does not.
        let mut plain = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let setting = |c: &mut postgres::Client| -> String {
            c.query_one("SHOW synchronous_commit", &[]).unwrap().get(0)
        };
        assert_eq!(setting(&mut plain), "off");
        let kiln: (String, String) = Connection::postgres(&url)
            .unwrap()
            .query_row(
                "SELECT current_setting('synchronous_commit'), current_setting('jit')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(kiln, ("on".to_owned(), "off".to_owned()));
        drop((admin, plain));
        Db::open_postgres(&url).unwrap();
        cluster.stop().unwrap();
        let _ = std::fs::remove_dir_all(&dir);

        let mut unflushed = Cluster::start_without_fsync(&dir).unwrap();
        let url = unflushed.url(USER);
        let err = Db::open_postgres(&url).err().unwrap().to_string();
        assert!(err.contains("fsync=off") && err.contains("lost"), "{err}");
        // Refused before the schema: nothing was written.
        let tables: i64 = Connection::postgres(&url)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
        unflushed.stop().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One collector's store on a real PostgreSQL: writes in groups, a failing job alone
    /// undone (PostgreSQL would abort the whole group), the database lost (503-worthy
    /// errors, nothing stored) and back (resumed without a restart), a newer schema refused.
    #[test]
    fn the_store_on_postgres_survives_its_server_going_away_and_refuses_a_newer_schema() {
        let dir = std::env::temp_dir().join(format!("kiln-pg-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = Cluster::start(&dir).unwrap();
        let url = cluster.url(USER);
        let db = Db::open_postgres(&url).unwrap();
        put(&db, "a").unwrap();
        // A job whose statement fails is undone alone; the ones grouped with it stand.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let results: Vec<Result<(), StoreError>> = rt.block_on(async {
            let jobs = (0..20).map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.call(move |c| {
                        c.execute(
                            "INSERT INTO suites (sha256, name, text, created_ms) VALUES (?1, 'n', 't', 0)",
                            [format!("g{i:02}")],
                        )?;
                        if i % 5 == 0 {
                            c.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                        }
                        Ok(())
                    })
                    .await
                })
            });
            let mut out = Vec::new();
            for job in jobs.collect::<Vec<_>>() {
                out.push(job.await.unwrap());
            }
            out
        });
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 4);
        assert_eq!(suites(&db).unwrap().len(), 1 + 16);
        // The server dies: requests fail as unavailable, and nothing half-stored shows later.
        cluster.halt().unwrap();
        let lost = put(&db, "lost").unwrap_err();
        assert!(matches!(lost, StoreError::Unavailable(_)), "{lost:?}");
        let read = rt.block_on(db.read(|c| Ok(c.query("SELECT 1", [])?.len())));
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        let api: crate::api::error::ApiError = lost.into();
        let response = axum::response::IntoResponse::into_response(api);
        assert_eq!(response.status(), 503);
        // Back: the same handle works again, without a restart of the collector.
        cluster.resume().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = put(&db, "back") {
            assert!(
                Instant::now() < deadline,
                "the store never reconnected: {e:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Each reader reconnects by itself too, at its own next attempt.
        let after = loop {
            match suites(&db) {
                Ok(after) => break after,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "a reader never reconnected: {e:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(after.contains(&"back".to_owned()) && !after.contains(&"lost".to_owned()));
        // A database of a newer schema is refused, and says so.
        let admin = Connection::postgres(&url).unwrap();
        admin
            .execute("UPDATE schema_version SET version = version + 1", [])
            .unwrap();
        let err = Db::open_postgres(&url).err().unwrap().to_string();
        assert!(err.contains("newer than this kiln"), "{err}");
        drop(db);
        cluster.stop().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A job whose locks cross another writer's: PostgreSQL aborts it for the deadlock, its
    /// savepoint is rolled back (its locks with it, so the other goes on), and it runs again
    /// and is stored — a deadlock costs a moment, never the write.
    #[test]
    fn a_job_aborted_for_a_deadlock_runs_again_and_is_stored() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = std::env::temp_dir().join(format!("kiln-pg-deadlock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = Cluster::start(&dir).unwrap();
        let url = cluster.url(USER);
        let db = Db::open_postgres(&url).unwrap();
        put(&db, "a").unwrap();
        put(&db, "b").unwrap();
        // Another writer holds b, and is slow to see deadlocks: the job's side sees it first.
        let other = Connection::postgres(&url).unwrap();
        other
            .execute_batch(
                "SET deadlock_timeout = '30s'; BEGIN; SELECT 1 FROM suites WHERE sha256 = 'b' FOR UPDATE",
            )
            .unwrap();
        let tries = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = tries.clone();
        let job = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(db.call(move |c| {
                counted.fetch_add(1, Ordering::SeqCst);
                c.execute("UPDATE suites SET name = 'job' WHERE sha256 = 'a'", [])?;
                c.execute("UPDATE suites SET name = 'job' WHERE sha256 = 'b'", [])?;
                Ok(())
            }))
        });
        // The job holds a and waits for b; the other writer now asks for a.
        let waiting = |n: i64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen: i64 = other
                    .query_row(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                if seen >= n {
                    break;
                }
                assert!(Instant::now() < deadline, "nobody waits for a lock");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        waiting(1);
        other
            .execute("UPDATE suites SET name = 'other' WHERE sha256 = 'a'", [])
            .unwrap();
        other.execute_batch("COMMIT").unwrap();
        job.join()
            .unwrap()
            .expect("the job after its deadlock was stored");
        // At least once more (a retry can race the other side back into the cycle).
        assert!(tries.load(Ordering::SeqCst) >= 2, "the job ran again");
        let names: Vec<String> = other
            .query_map("SELECT name FROM suites ORDER BY sha256", [], |r| r.get(0))
            .unwrap();
        assert_eq!(names, ["job", "job"], "the job's write is the last");
        cluster.stop().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn passwords_are_hidden_and_the_rest_is_kept() {
        assert_eq!(
            redact("postgresql://kiln:s3cret@db.example:5432/kiln"),
            "postgresql://kiln:***@db.example:5432/kiln"
        );
        assert_eq!(
            redact("postgresql://kiln@%2Ftmp%2Fx:5432/kiln"),
            "postgresql://kiln@%2Ftmp%2Fx:5432/kiln"
        );
        // A password with an @ in it is hidden whole.
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("host=/tmp user=kiln"), "host=/tmp user=kiln");
    }
}
