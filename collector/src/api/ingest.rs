//! The events route's way to the database. On SQLite each batch is a job of the writer's, as
//! every write is; on PostgreSQL, where each statement is a round trip, the batches waiting at
//! one moment go as one job ([`lifecycle::ingest_many`]): a few statements for all of them
//! rather than a few each. Nothing waits to fill a group: a lone batch goes alone at once, and
//! the next group gathers while one is written.

use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

use crate::lifecycle::{self, BatchIn, BatchOut};
use crate::store::sql::EngineKind;
use crate::store::{Db, StoreError};

/// Most batches one job carries.
const MOST: usize = 256;

/// A batch waiting for its group, and where its answer goes.
struct Waiting {
    batch: BatchIn,
    reply: oneshot::Sender<BatchOut>,
}

/// Gathers the events route's batches into groups (on PostgreSQL); started with the first.
#[derive(Default)]
pub struct IngestQueue {
    sender: OnceLock<mpsc::Sender<Waiting>>,
}

impl IngestQueue {
    /// Ingests `batch` into `db`; answers once what holds it is committed.
    pub async fn ingest(&self, db: &Db, batch: BatchIn) -> BatchOut {
        if db.kind() == EngineKind::Sqlite {
            return db
                .call(move |c| {
                    lifecycle::ingest(
                        c,
                        batch.run_id,
                        &batch.token_hash,
                        batch.source.as_deref(),
                        &batch.batch,
                    )
                })
                .await;
        }
        let sender = self.sender.get_or_init(|| gather(db.clone()));
        let (reply, answer) = oneshot::channel();
        sender
            .send(Waiting { batch, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The task that groups what waits and hands each group to the writers.
///
/// Groups handed over and not yet answered are bounded by the collector's share
/// ([`Db::ingest_share`]): while they are written, what arrives waits here and goes as the
/// next group — without a bound every batch would leave alone at once and wait at a writer
/// instead. The share changes as collectors join and leave, so each group takes
/// `writers / share` of the writers' slots rather than one.
fn gather(db: Db) -> mpsc::Sender<Waiting> {
    let (tx, mut rx) = mpsc::channel::<Waiting>(4 * MOST);
    let writers = db.ingest_writers();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(writers));
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let weight = (writers / db.ingest_share()).max(1);
            let Ok(slot) = slots.clone().acquire_many_owned(weight as u32).await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < MOST {
                match rx.try_recv() {
                    Ok(w) => group.push(w),
                    Err(_) => break,
                }
            }
            let db = db.clone();
            tokio::spawn(async move {
                write(db, group).await;
                drop(slot);
            });
        }
    });
    tx
}

/// Writes one group and answers each of its batches.
async fn write(db: Db, group: Vec<Waiting>) {
    let (batches, replies): (Vec<BatchIn>, Vec<oneshot::Sender<BatchOut>>) =
        group.into_iter().map(|w| (w.batch, w.reply)).unzip();
    match db
        .call_ingest(move |c| lifecycle::ingest_many(c, &batches))
        .await
    {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(err) => {
            // Nothing of the group is stored: each batch gets the reason, as it would alone.
            for reply in replies {
                let _ = reply.send(Err(match &err {
                    StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
                    StoreError::Closed => StoreError::Closed,
                    StoreError::Commit => StoreError::Commit,
                    other => StoreError::Together(other.to_string()),
                }));
            }
        }
    }
}
