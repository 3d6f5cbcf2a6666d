//! Many agents' batches ingested at once, on PostgreSQL: there every statement is a round
//! trip, and [`ingest`] spends four on a batch of twenty log lines. The batches waiting at one
//! moment that only add log lines to a run in its plain state go in three statements for all
//! of them — their runs read, their events stored (with what each run had stored above its
//! acknowledgement), their acknowledgements written — and give exactly what [`ingest`] would.
//! Every other batch (a step's start or result, progress, the final event, a stranger's token,
//! a closed run, a bound in reach, a second batch of one run) goes through [`ingest`] itself,
//! after them, in the same transaction.

use std::collections::{HashMap, HashSet};

use super::agent::{BatchRun, contiguous_in};
use super::event_rows::EventColumns;
use super::{Connection, Ended, EventBatch, EventBody, Ingested, StoreError, ingest, now_ms};
use crate::store::sql::params;

/// One agent's batch, as the events route received it.
#[derive(Debug, Clone)]
pub struct BatchIn {
    /// The run.
    pub run_id: i64,
    /// The hash of the token it came with.
    pub token_hash: String,
    /// Where it came from.
    pub source: Option<String>,
    /// The events.
    pub batch: EventBatch,
}

/// What one batch came to: [`ingest`]'s answer.
pub type BatchOut = Result<(Ingested, Ended), StoreError>;

/// Ingests `batches`, in one transaction with the caller's; answers each in order.
pub fn ingest_many(conn: &Connection, batches: &[BatchIn]) -> Result<Vec<BatchOut>, StoreError> {
    let mut out: Vec<Option<BatchOut>> = (0..batches.len()).map(|_| None).collect();
    let runs = read_runs(conn, batches)?;
    // The plain ones: log lines only, one batch per run, its run open and its token right.
    let mut seen = HashSet::new();
    let plain: Vec<usize> = (0..batches.len())
        .filter(|&i| {
            let b = &batches[i];
            seen.insert(b.run_id) && runs.get(&b.run_id).is_some_and(|run| plain(b, run))
        })
        .collect();
    if !plain.is_empty() {
        for (i, answer) in store_plain(conn, batches, &plain, &runs)? {
            out[i] = Some(Ok((answer, Ended::default())));
        }
    }
    for (i, b) in batches.iter().enumerate() {
        if out[i].is_none() {
            out[i] = Some(ingest(
                conn,
                b.run_id,
                &b.token_hash,
                b.source.as_deref(),
                &b.batch,
            ));
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Whether [`ingest`] would do no more with `b` than store its events and acknowledge them:
/// the token is the run's, the run open and unfinished, the session's source the same, every
/// event a log line (nothing to apply, no progress), and no bound in reach even if every one
/// is new.
fn plain(b: &BatchIn, run: &BatchRun) -> bool {
    let logs = b
        .batch
        .events
        .iter()
        .try_fold(0i64, |bytes, e| match &e.body {
            EventBody::Log { line, .. } => Some(bytes + line.len() as i64),
            _ => None,
        });
    !run.token_hash.is_empty()
        && crate::tokens::equal(&run.token_hash, &b.token_hash)
        && run.verdict.is_none()
        && run.final_seq.is_none()
        && run
            .session_source
            .as_deref()
            .is_none_or(|first| Some(first) == b.source.as_deref())
        && logs.is_some_and(|bytes| {
            run.sent
                .passed(b.batch.events.len() as i64, bytes)
                .is_none()
        })
}

/// The runs of `batches`, read in one statement (locked in the order of their ids, as every
/// group locks them: two groups never deadlock over them).
fn read_runs(conn: &Connection, batches: &[BatchIn]) -> Result<HashMap<i64, BatchRun>, StoreError> {
    let ids: Vec<i64> = batches.iter().map(|b| b.run_id).collect();
    // `= ANY` of an array: the primary key's index, not a scan of every run.
    let rows = conn.query(
        &format!(
            "SELECT id, {} FROM runs WHERE id = ANY(CAST(?1 AS BIGINT[]))
              ORDER BY id{}",
            BatchRun::COLUMNS,
            conn.for_update()
        ),
        params![ids],
    )?;
    let mut runs = HashMap::with_capacity(rows.len());
    for r in &rows {
        runs.insert(r.get::<i64>(0)?, BatchRun::read(r, 1)?);
    }
    Ok(runs)
}

/// Stores the plain batches `which` of `batches` and acknowledges them: two statements.
fn store_plain(
    conn: &Connection,
    batches: &[BatchIn],
    which: &[usize],
    runs: &HashMap<i64, BatchRun>,
) -> Result<Vec<(usize, Ingested)>, StoreError> {
    let corrupt = |source| StoreError::Corrupt {
        what: "event",
        source,
    };
    let events = which.iter().map(|&i| batches[i].batch.events.len()).sum();
    let mut rows = EventColumns::with_capacity(events);
    let (mut ran, mut acked) = (
        Vec::with_capacity(which.len()),
        Vec::with_capacity(which.len()),
    );
    for &i in which {
        let b = &batches[i];
        ran.push(b.run_id);
        acked.push(runs[&b.run_id].acked);
        rows.push(b.run_id, &b.batch.events).map_err(corrupt)?;
    }
    let seqs = rows.store(conn, &ran, &acked)?;
    let mut new: HashMap<i64, HashSet<i64>> = HashMap::new();
    let mut above: HashMap<i64, Vec<i64>> = HashMap::new();
    for (run_id, seq, now) in seqs {
        if now {
            new.entry(run_id).or_default().insert(seq);
        }
        above.entry(run_id).or_default().push(seq);
    }
    let now = now_ms();
    let mut answers = Vec::with_capacity(which.len());
    let mut updates = RunUpdates::default();
    for &i in which {
        let b = &batches[i];
        let mut fresh = new.remove(&b.run_id).unwrap_or_default();
        let (mut stored, mut log_bytes) = (0i64, 0i64);
        for e in &b.batch.events {
            // A sequence number twice in a batch is one event.
            if let (true, EventBody::Log { line, .. }) = (fresh.remove(&(e.seq as i64)), &e.body) {
                stored += 1;
                log_bytes += line.len() as i64;
            }
        }
        let before = runs[&b.run_id].acked;
        let mut seqs = above.remove(&b.run_id).unwrap_or_default();
        seqs.sort_unstable();
        seqs.dedup();
        let acked = contiguous_in(&seqs, before);
        updates.ids.push(b.run_id);
        updates.acked.push(acked);
        updates.events.push(stored);
        updates.log_bytes.push(log_bytes);
        answers.push((
            i,
            Ingested::Acked {
                acked: acked as u64,
                stored: stored as u64,
            },
        ));
    }
    conn.execute(
        "UPDATE runs SET acked_seq = x.acked, last_seen_ms = ?5,
                events_stored = runs.events_stored + x.events,
                log_bytes = runs.log_bytes + x.log_bytes
           FROM unnest(CAST(?1 AS BIGINT[]), CAST(?2 AS BIGINT[]), CAST(?3 AS BIGINT[]),
                       CAST(?4 AS BIGINT[])) AS x(id, acked, events, log_bytes)
          WHERE runs.id = x.id AND runs.id = ANY(CAST(?1 AS BIGINT[]))",
        params![
            updates.ids,
            updates.acked,
            updates.events,
            updates.log_bytes,
            now
        ],
    )?;
    Ok(answers)
}

/// What the plain batches change in their runs, a column each.
#[derive(Debug, Default)]
struct RunUpdates {
    ids: Vec<i64>,
    acked: Vec<i64>,
    events: Vec<i64>,
    log_bytes: Vec<i64>,
}

#[cfg(test)]
mod tests;
