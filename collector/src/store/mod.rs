//! The collector's SQLite database. Writes go to one connection owned by one thread, fed
//! closures through a bounded queue; the thread commits whatever is queued together in one
//! transaction (group commit, `synchronous=FULL`) and answers each caller only after that
//! commit, so an acknowledged event survives `kill -9` and power loss. Reads go to a small
//! pool of read-only connections (WAL lets them run beside the writer), so a page load never
//! waits behind an agent's batch, nor an agent's acknowledgement behind a page. The readers
//! are threads of their own at a lower scheduling priority: an agent's acknowledgement goes
//! before a manager's page, which is also built on them, and a long page still finishes in
//! time ([`priority`]). A checkpointer thread copies the WAL into the database file in the
//! background, so the writer's own checkpoints are short.

pub mod leases;
pub mod pg_schema;
mod postgres;
mod priority;
pub mod queries;
pub(crate) mod schema;
pub mod sql;
pub mod states;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::OpenFlags;
use tokio::sync::{mpsc, oneshot};

pub use sql::Connection;

/// How a group of writes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    /// Durable.
    Yes,
    /// Refused (disk full, I/O error): nothing of it was stored.
    No,
    /// The database went away (PostgreSQL's server): nothing of it was stored.
    Lost,
}

/// What a write job hands back: its answer, sent once the group it ran in has ended.
type Reply = Box<dyn FnOnce(Committed) + Send>;

/// Work queued for the writer thread: run on the group's transaction, or given none when the
/// transaction could not begin (then it answers that it failed, and runs nothing).
type Job = Box<dyn FnOnce(Option<&Connection<'_>>) -> Reply + Send>;

/// Queue depth before callers wait (back-pressure instead of unbounded memory).
const QUEUE: usize = 4096;

/// Most jobs one transaction commits together.
const GROUP: usize = 512;

/// Read-only connections, each on a thread of its own. Measured on 2 CPUs with the load
/// bench (five rounds each way, pooled): with four, the agents' ack p99 under managers' page
/// loads was 1.16–1.43x of it without, pages' p99 83–133 ms; with one (pages queued behind
/// each other), 0.98–1.48x and up to 273 ms. Four it is; the ack tail under page load comes
/// in some rounds and not others, and is not the readers' CPU alone.
const READERS: usize = 4;

/// How often the checkpointer folds the WAL into the database file. Under a steady ingest the
/// WAL never stands still long enough for a background checkpoint to finish it and let it
/// start over, so every 8,192 frames (`wal_autocheckpoint`, a few tenths of a second at
/// 100,000 events/s) the writer checkpoints on its own, between two commits, while acks wait:
/// it copies what the checkpointer has not yet and syncs the file. Passes every 25 ms leave it
/// little: measured with a WAL hook on 2 CPUs, paced 100,000 events/s, the writer's own
/// checkpoints took 262–371 ms per 14 s round with passes every 100 ms and 111–139 ms with
/// passes every 25 ms (alternating runs), and the agents' ack p99 without pages fell from
/// 12–20 ms to 3–9 ms in calm windows.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

/// Work queued for a reader thread: given its connection, or none while the database is
/// unreachable (it answers so, and runs nothing).
type ReadJob = Box<dyn FnOnce(Option<&Connection<'_>>) + Send>;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A statement through the engine-neutral interface failed.
    #[error("database error: {0}")]
    Sql(#[from] sql::SqlError),
    /// The database cannot be reached (PostgreSQL down or unreachable); the collector goes on
    /// and reconnects by itself.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database thread is gone (the collector is shutting down).
    #[error("the database thread has stopped")]
    Closed,
    /// The group of writes this one ran in could not be committed (disk full, I/O error):
    /// nothing of it was stored.
    #[error("the database could not commit")]
    Commit,
    /// An answer built from stored data that does not encode (a bug).
    #[error("{what} does not encode")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
    /// Stored data that does not decode (a bug or a hand-edited file).
    #[error("stored {what} does not decode")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// Something the code relies on did not hold (a bug), said in words.
    #[error("internal error: {0}")]
    Invariant(&'static str),
    /// A job panicked (a bug): its request fails, its thread goes on with the next job.
    #[error("a database job panicked: {0}")]
    Panicked(String),
    /// The job this request was written in with others failed (said in words): nothing of
    /// it was stored.
    #[error("the writes grouped with this one failed: {0}")]
    Together(String),
}

/// Runs `f`, turning a panic into [`StoreError::Panicked`] with its message: one bad job must
/// not end the thread every later request needs (a reader, or the only writer).
fn unpanicked<R>(f: impl FnOnce() -> Result<R, StoreError>) -> Result<R, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        Err(StoreError::Panicked(message))
    })
}

/// The handle every part of the collector shares.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Job>,
    /// The agents' batches' own writers, on PostgreSQL ([`Db::call_ingest`]).
    ingest: Option<Lane>,
    reads: mpsc::Sender<ReadJob>,
    kind: sql::EngineKind,
}

/// Writers beside the main one, each on a connection of its own, taking jobs from one queue.
#[derive(Clone)]
struct Lane {
    tx: mpsc::Sender<Job>,
    writers: usize,
    /// The collectors sharing the database, this one included, as its last heartbeat saw
    /// them ([`Db::set_sharers`]): one until then.
    sharers: Arc<std::sync::atomic::AtomicUsize>,
}

impl Db {
    /// Opens (creating if needed) `path`, applies migrations and starts the writer thread and
    /// the read-only connections.
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        let mut conn = rusqlite::Connection::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", path.display()))?;
        schema::configure(&conn)?;
        conn.set_prepared_statement_cache_capacity(128);
        schema::migrate(&mut conn)
            .map_err(|e| anyhow::anyhow!("cannot migrate database {}: {e:#}", path.display()))?;
        let (reads, read_rx) = mpsc::channel::<ReadJob>(QUEUE);
        let read_rx = Arc::new(Mutex::new(read_rx));
        // The checkpointer's wake-ups: each reader sends one as a read ends (the frames its
        // snapshot held back can be copied now); the writer holds the last sender, and the
        // checkpointer ends when every one is gone.
        let (wake, wakes) = std::sync::mpsc::channel::<()>();
        for (i, clock) in priority::clocks(READERS)?.into_iter().enumerate() {
            let reader = rusqlite::Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| anyhow::anyhow!("cannot open database {} to read: {e}", path.display()))?;
            reader.busy_timeout(std::time::Duration::from_secs(5))?;
            reader.set_prepared_statement_cache_capacity(64);
            reader.pragma_update(None, "cache_size", -16384)?;
            reader.pragma_update(None, "mmap_size", 268_435_456)?;
            let jobs = read_rx.clone();
            let wake = wake.clone();
            std::thread::Builder::new()
                .name(format!("sqlite-reader-{i}"))
                .spawn(move || {
                    let reader = Connection::sqlite(reader);
                    serve_reads(&jobs, &clock, |job| {
                        job(Some(&reader));
                        let _ = wake.send(());
                    });
                })?;
        }
        let checkpoints = rusqlite::Connection::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", path.display()))?;
        schema::configure(&checkpoints)?;
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpointer(&checkpoints, &wakes))?;
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                // Dropped when the writer ends: the checkpointer ends once the readers have too.
                let _alive = wake;
                let conn = Connection::sqlite(conn);
                while let Some(first) = rx.blocking_recv() {
                    write_group(&conn, gather(first, &mut rx));
                }
            })?;
        Ok(Db {
            tx,
            ingest: None,
            reads,
            kind: sql::EngineKind::Sqlite,
        })
    }

    /// Connects to the PostgreSQL database at `url` (`postgresql://…`), which other
    /// collectors may share, migrates it and starts the writer and the readers.
    pub fn open_postgres(url: &str) -> anyhow::Result<Db> {
        postgres::open(url)
    }

    /// Runs the write `f` on the writer thread and returns its result once it is committed.
    /// `f` runs inside the group's transaction: a job with several statements that must stand
    /// or fall together uses a savepoint (`conn.savepoint()`), which a failing job rolls back
    /// without touching the rest of the group. On PostgreSQL `f` runs again when a deadlock
    /// with another writer aborted it, so what it does besides the database must bear that.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&Connection<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (job, answer) = job(f);
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs the write `f` as [`Db::call`] does, but on PostgreSQL on one of the agents'
    /// batches' own writers: each a connection of its own, so that one group's commit waits
    /// for its flush while the next group's statements run, as the writers of several
    /// collectors do. What `f` reads to change, it locks (`FOR UPDATE`), since another writer
    /// may be at the same rows. On SQLite, one writer serves everything.
    pub async fn call_ingest<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&Connection<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let Some(lane) = &self.ingest else {
            return self.call(f).await;
        };
        let (job, answer) = job(f);
        lane.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// How many writers [`Db::call_ingest`] spreads its jobs over.
    pub fn ingest_writers(&self) -> usize {
        self.ingest.as_ref().map_or(1, |lane| lane.writers)
    }

    /// Records how many collectors share the database, this one included (its heartbeat
    /// counts them): each keeps its share of the groups in flight ([`Db::ingest_share`]).
    /// On SQLite, nothing.
    pub fn set_sharers(&self, collectors: usize) {
        if let Some(lane) = &self.ingest {
            let collectors = collectors.max(1);
            let was = lane
                .sharers
                .swap(collectors, std::sync::atomic::Ordering::Relaxed);
            if was != collectors {
                tracing::info!(
                    collectors,
                    groups = self.ingest_share(),
                    "collectors sharing the database changed: agents' batches written at once"
                );
            }
        }
    }

    /// Groups of the agents' batches this collector writes at once: on PostgreSQL its share
    /// of the [`postgres::SITE_IN_FLIGHT`] the database runs well at once, split among the
    /// collectors sharing it — more only queue for the server's CPUs, and every ack waits
    /// longer (docs/benchmarks.md); on SQLite one, its writer.
    pub fn ingest_share(&self) -> usize {
        self.ingest.as_ref().map_or(1, |lane| {
            postgres::share(
                lane.writers,
                lane.sharers.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// The engine underneath.
    pub fn kind(&self) -> sql::EngineKind {
        self.kind
    }

    /// Write jobs waiting for the writer thread.
    pub fn queued(&self) -> usize {
        QUEUE - self.tx.capacity()
    }

    /// Runs the read `f` on a read-only connection, on a reader thread. Work that only
    /// serves a page (rendering, serializing) belongs in `f` too, at the readers' priority.
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = reply.send(match conn {
                Some(conn) => unpanicked(|| f(conn)),
                None => Err(unavailable()),
            });
        });
        self.reads.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Copies what the WAL holds into the database file, in the background and often, so that
/// the writer's own checkpoint (SQLite's, when the WAL reaches `wal_autocheckpoint`; only a
/// checkpoint between two of its commits lets the WAL start over) finds little left to copy
/// and a group's commit does not wait for megabytes of it. Passive: it never blocks the writer
/// or a reader. Besides every [`CHECKPOINT_EVERY`], it runs as soon as a read ends: while a
/// page's read holds its snapshot no checkpoint can copy the frames written after it, and a
/// writer's checkpoint coming first would copy them all, acks waiting. Measured with a WAL
/// hook on the writer, pages loaded back to back at 100,000 events/s (alternating runs): the
/// writer's own checkpoints took 218–278 ms per 14 s round without these passes and 121–147
/// ms with them, those over 5 ms 15–16 and 7–8, the longest 15–18 ms and 8–9.
fn checkpointer(conn: &rusqlite::Connection, wakes: &std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        match wakes.recv_timeout(CHECKPOINT_EVERY) {
            // Reads that ended together need one pass.
            Ok(()) => while wakes.try_recv().is_ok() {},
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "a background checkpoint did not run");
        }
    }
}

/// A reader thread's loop, on either engine, until the store is dropped: one idle reader
/// waits on the queue at a time (the lock is released before the job runs), and each job
/// runs at the readers' priority.
fn serve_reads(
    jobs: &Mutex<mpsc::Receiver<ReadJob>>,
    clock: &priority::Clock,
    mut run: impl FnMut(ReadJob),
) {
    clock.enter();
    loop {
        let job = jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocking_recv();
        match job {
            Some(job) => clock.job(|| run(job)),
            None => break,
        }
    }
}

/// Times a job PostgreSQL aborts for a deadlock (or a serialization failure) is run again.
const CONFLICT_TRIES: usize = 4;

/// Runs `f` so that its failure undoes only its own statements. SQLite leaves the group's
/// transaction as it was after a failed statement, and a job that must stand or fall whole
/// opens its own savepoint; PostgreSQL aborts the whole transaction at the first error, so
/// there every job runs in a savepoint of its own. Several writers share PostgreSQL (this
/// collector's and the others'), and one job's locks can cross another's: PostgreSQL then
/// aborts one of them, whose savepoint is rolled back (its locks with it) and which runs
/// again, so that a deadlock costs a moment and never the write.
fn alone<R>(
    conn: &Connection<'_>,
    mut f: impl FnMut(&Connection<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    match conn.kind() {
        sql::EngineKind::Sqlite => f(conn),
        sql::EngineKind::Postgres => {
            let mut tries = 1;
            loop {
                let job = conn.savepoint()?;
                match f(&job) {
                    Ok(result) => {
                        job.commit()?;
                        return Ok(result);
                    }
                    Err(StoreError::Sql(e)) if e.is_conflict() && tries < CONFLICT_TRIES => {
                        crate::metrics::METRICS.write_conflicts.inc();
                        tracing::warn!(error = %e, tries, "a write met another's locks and was aborted; it runs again");
                        // A moment for the other side to take what this one let go, lest
                        // the retry take it first and meet the same cycle.
                        std::thread::sleep(std::time::Duration::from_millis(20 * tries as u64));
                        tries += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// A write job running `f` in a savepoint of its own, and where its answer comes once its
/// group has ended.
fn job<R, F>(f: F) -> (Job, oneshot::Receiver<Result<R, StoreError>>)
where
    R: Send + 'static,
    F: FnMut(&Connection<'_>) -> Result<R, StoreError> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    let job: Job = Box::new(move |conn| {
        // A savepoint the job held is rolled back as the panic unwinds through it.
        let result = match conn {
            Some(conn) => unpanicked(|| alone(conn, f)),
            None => Err(unavailable()),
        };
        Box::new(move |committed| {
            let _ = reply.send(match (result, committed) {
                (Ok(_), Committed::No) => Err(StoreError::Commit),
                // Whatever the job met, the database was gone: its error says that first
                // (on PostgreSQL the group's BEGIN goes with its first statement).
                (_, Committed::Lost) => Err(unavailable()),
                (other, _) => other,
            });
        })
    });
    (job, answer)
}

/// The error of a request the database could not take.
fn unavailable() -> StoreError {
    StoreError::Unavailable("the collector cannot reach its database now; retry shortly".into())
}

/// Takes the jobs queued behind `first`, up to a group's worth.
fn gather(first: Job, rx: &mut mpsc::Receiver<Job>) -> Vec<Job> {
    let mut jobs = vec![first];
    while jobs.len() < GROUP {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    jobs
}

/// Runs a group of write jobs in one transaction and answers each after the commit.
fn write_group(conn: &Connection<'_>, jobs: Vec<Job>) {
    let metrics = &crate::metrics::METRICS;
    let started = std::time::Instant::now();
    metrics.commit_jobs.observe(jobs.len() as f64);
    let (replies, committed) = match conn.group() {
        Ok(group) => {
            let replies: Vec<Reply> = jobs.into_iter().map(|job| job(Some(&group))).collect();
            match group.commit() {
                Ok(()) => (replies, Committed::Yes),
                Err(e) => {
                    tracing::error!(error = %e, "a group's commit failed");
                    (replies, Committed::No)
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "a group's transaction could not begin");
            (
                jobs.into_iter().map(|job| job(None)).collect(),
                Committed::No,
            )
        }
    };
    let committed = match committed {
        Committed::No if conn.is_closed() => Committed::Lost,
        other => other,
    };
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    if committed != Committed::Yes {
        metrics.commit_failures.inc();
        tracing::error!(
            jobs = replies.len(),
            "a group of database writes could not be committed"
        );
    }
    for reply in replies {
        reply(committed);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A migrated in-memory database, for unit tests of what runs on the database thread.
#[cfg(test)]
pub(crate) fn test_connection() -> Connection<'static> {
    let mut conn = rusqlite::Connection::open_in_memory().expect("in-memory sqlite");
    schema::configure(&conn).expect("configure");
    schema::migrate(&mut conn).expect("migrate");
    Connection::sqlite(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file in a directory of its own, removed with everything in it on drop.
    struct TempFile {
        path: std::path::PathBuf,
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn temp_db(name: &str) -> (Db, TempFile) {
        let dir = std::env::temp_dir().join(format!("kiln-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kiln.sqlite");
        (Db::open(&path).unwrap(), TempFile { path })
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_job_that_panics_fails_alone_and_every_thread_lives_on() {
        let (db, _file) = temp_db("panic");
        // More panics than there are readers: each would have ended a thread for good.
        for _ in 0..READERS * 2 {
            let err = db
                .read(|_| -> Result<(), StoreError> { panic!("a reader's bug") })
                .await
                .unwrap_err();
            assert!(
                matches!(&err, StoreError::Panicked(m) if m == "a reader's bug"),
                "{err:?}"
            );
        }
        let err = db
            .call(|c| -> Result<(), StoreError> {
                let sp = c.savepoint()?;
                sp.execute(
                    "INSERT INTO suites (sha256, name, text, created_ms) VALUES ('p', 'n', 't', 0)",
                    [],
                )?;
                panic!("the writer's bug {}", 7)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Panicked(m) if m == "the writer's bug 7"),
            "{err:?}"
        );
        // The writer and the readers still answer, and the panicking job left nothing.
        db.call(|c| {
            c.execute(
                "INSERT INTO suites (sha256, name, text, created_ms) VALUES ('q', 'n', 't', 0)",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
        let names: Vec<String> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT sha256 FROM suites ORDER BY sha256")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(names, ["q"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn grouped_writes_commit_together_and_a_failing_one_leaves_the_rest() {
        let (db, file) = temp_db("group");
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.call(move |c| {
                    let sp = c.savepoint()?;
                    sp.execute(
                        "INSERT INTO suites (sha256, name, text, created_ms) VALUES (?1, 'n', 't', 0)",
                        [format!("s{i}")],
                    )?;
                    if i % 10 == 0 {
                        // Fails after a statement: its savepoint takes the insert back.
                        sp.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                    }
                    sp.commit()?;
                    Ok(i)
                })
                .await
            }));
        }
        let mut failed = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 20);
        // A separate connection sees exactly the 180 that succeeded: committed, durable.
        let conn = rusqlite::Connection::open(&file.path).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM suites", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 180);
        let sync: i64 = db
            .call(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reads_start_idle_a_long_one_is_raised_and_the_wal_is_checkpointed_in_the_background() {
        let (db, file) = temp_db("threads");
        fn nice() -> i32 {
            // SAFETY: no pointers; reads this thread's nice value.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        }
        fn policy() -> i32 {
            // SAFETY: no pointers; reads this thread's scheduling policy.
            unsafe { libc::sched_getscheduler(0) }
        }
        if priority::can_leave_idle() {
            // With CAP_SYS_NICE (root, as in CI): short reads run idle, a long one is raised
            // while it runs.
            assert_eq!(
                db.read(|_| Ok(policy())).await.unwrap(),
                libc::SCHED_IDLE,
                "a read starts at idle priority"
            );
            let long = db
                .read(|_| {
                    std::thread::sleep(priority::PROMOTE_AFTER * 2);
                    Ok((policy(), nice()))
                })
                .await
                .unwrap();
            assert_eq!(
                long,
                (libc::SCHED_OTHER, priority::READER_NICE),
                "a long read is raised"
            );
            assert_eq!(
                db.read(|_| Ok(policy())).await.unwrap(),
                libc::SCHED_IDLE,
                "the next read starts idle again"
            );
        } else {
            // Without CAP_SYS_NICE a thread cannot come back from idle: readers stay at nice 10.
            assert_eq!(
                db.read(|_| Ok((policy(), nice()))).await.unwrap(),
                (libc::SCHED_OTHER, priority::READER_NICE)
            );
        }
        assert_eq!(
            db.call(|_| Ok(nice())).await.unwrap(),
            0,
            "the writer keeps its priority"
        );
        // A few small writes: far below SQLite's own checkpoint threshold, so only the
        // checkpointer thread moves them from the WAL into the file, where a connection that
        // ignores the WAL (`immutable`) sees them.
        for i in 0..3 {
            db.call(move |c| {
                c.execute(
                    "INSERT INTO suites (sha256, name, text, created_ms) VALUES (?1, 'n', 't', 0)",
                    [format!("c{i}")],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            // Opened afresh each time: an immutable connection assumes the file never changes.
            let file_only = rusqlite::Connection::open_with_flags(
                format!("file:{}?immutable=1", file.path.display()),
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
            )
            .unwrap();
            // Before the first checkpoint even the schema is only in the WAL.
            let n: i64 = file_only
                .query_row("SELECT count(*) FROM suites", [], |r| r.get(0))
                .unwrap_or(0);
            if n == 3 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the writes never left the WAL ({n} of 3 in the file)"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_read_never_waits_behind_a_write() {
        let (db, _file) = temp_db("reads");
        // A write that holds the writer until the read below has finished: if reads queued
        // behind writes, the two would wait for each other and the read would time out.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
        let mut entered_tx = Some(entered_tx);
        let writer = db.clone();
        let slow = tokio::spawn(async move {
            writer
                .call(move |c| {
                    c.execute(
                        "INSERT INTO suites (sha256, name, text, created_ms) VALUES ('x', 'n', 't', 0)",
                        [],
                    )?;
                    if let Some(tx) = entered_tx.take() {
                        let _ = tx.send(());
                    }
                    let _ = held.recv_timeout(std::time::Duration::from_secs(30));
                    Ok(())
                })
                .await
        });
        entered.await.unwrap();
        let read =
            db.read(|c| Ok(c.query_row("SELECT count(*) FROM suites", [], |r| r.get::<i64>(0))?));
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), read)
            .await
            .expect("the read waited behind the write")
            .unwrap();
        // It sees the last committed state, not the write in progress.
        assert_eq!(n, 0);
        release.send(()).unwrap();
        slow.await.unwrap().unwrap();
        let n: i64 = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM suites", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 1);
        // Reads cannot write.
        let refused = db.read(|c| Ok(c.execute("DELETE FROM suites", [])?)).await;
        assert!(refused.is_err());
    }
}
