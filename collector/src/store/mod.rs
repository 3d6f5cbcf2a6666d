//! The collector's SQLite database: one connection, owned by one thread, fed closures through
//! a bounded queue. Async handlers `call` it and await the answer, so none of them ever blocks
//! a tokio worker on the database, and every write is serialized without lock contention.

pub mod queries;
mod schema;

use std::path::Path;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

/// Work queued for the database thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Queue depth before callers wait (back-pressure instead of unbounded memory).
const QUEUE: usize = 4096;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The database thread is gone (the collector is shutting down).
    #[error("the database thread has stopped")]
    Closed,
    /// Stored data that does not decode (a bug or a hand-edited file).
    #[error("stored {what} does not decode")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// The handle every part of the collector shares.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Job>,
}

impl Db {
    /// Opens (creating if needed) `path`, applies migrations and starts the database thread.
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        let mut conn = Connection::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", path.display()))?;
        schema::configure(&conn)?;
        schema::migrate(&mut conn)
            .map_err(|e| anyhow::anyhow!("cannot migrate database {}: {e:#}", path.display()))?;
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
            })?;
        Ok(Db { tx })
    }

    /// Runs `f` on the database thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// A migrated in-memory database, for unit tests of what runs on the database thread.
#[cfg(test)]
pub(crate) fn test_connection() -> Connection {
    let mut conn = Connection::open_in_memory().expect("in-memory sqlite");
    schema::configure(&conn).expect("configure");
    schema::migrate(&mut conn).expect("migrate");
    conn
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
