//! The agent's side of a run: its session token, its plan, its inventory, and its events
//! ingested in order — the last one closing the Linux stage with the collector's verdict.

use super::event_rows::EventColumns;
use super::verdict::finish_linux;
use super::{
    Connection, Ended, EventBatch, EventBody, Inventory, Progress, Sql, Stage, StageState,
    StoreError, Verdict, close_run, end_stage, exec, now_ms, params, row, stages, start_stage,
};
use crate::store::sql::OptionalExtension;

/// A run's `verdict` column: none while the run is open.
type VerdictColumn = Option<Sql<Verdict>>;

/// The owned parts of an ad-hoc run.
#[derive(Debug, Clone)]
pub struct NewRunOwned {
    /// Suite name.
    pub suite_name: String,
    /// Suite text.
    pub suite_text: String,
    /// Hash of the run's token.
    pub token_hash: String,
    /// Heartbeat the agent must keep.
    pub heartbeat_secs: u64,
    /// What the run may send.
    pub bounds: crate::config::RunBounds,
    /// The site's attestation rule.
    pub attestation: kiln_protocol::attest::Attestation,
}

/// Whether a run accepts posts from its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAccess {
    /// No such run, or another run's token: the same answer either way.
    Denied,
    /// The token is the run's and the run is open.
    Open,
    /// The token is the run's, but the run has its verdict: nothing more is accepted.
    Closed(Verdict),
}

/// Checks an agent's token against run `run_id`.
pub fn access(conn: &Connection, run_id: i64, token_hash: &str) -> Result<RunAccess, StoreError> {
    let row: Option<(String, Option<Sql<Verdict>>)> = conn
        .query_row(
            "SELECT token_hash, verdict FROM runs WHERE id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((stored, verdict)) if crate::tokens::equal(&stored, token_hash) => match verdict {
            Some(v) => RunAccess::Closed(v.0),
            None => RunAccess::Open,
        },
        _ => RunAccess::Denied,
    })
}

/// The open run whose session token has this hash, if any.
pub fn open_run_with_session(
    conn: &Connection,
    token_hash: &str,
) -> Result<Option<i64>, StoreError> {
    if token_hash.is_empty() {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT id FROM runs WHERE token_hash = ?1 AND verdict IS NULL",
            [token_hash],
            |r| r.get(0),
        )
        .optional()?)
}

/// An open run as its bandwidth streams see it.
#[derive(Debug, Clone)]
pub struct StreamingRun {
    /// The run.
    pub run_id: i64,
    /// Its node registered ad hoc (without the admin token).
    pub ad_hoc: bool,
    /// Its suite.
    pub suite_text: String,
}

/// The open run whose session token has this hash, with what its streams are allowed by.
pub fn streaming_run(
    conn: &Connection,
    token_hash: &str,
) -> Result<Option<StreamingRun>, StoreError> {
    if token_hash.is_empty() {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT r.id, n.ad_hoc, s.text FROM runs r JOIN nodes n ON n.id = r.node_id JOIN suites s ON s.sha256 = r.suite_sha256
             WHERE r.token_hash = ?1 AND r.verdict IS NULL",
            [token_hash],
            |r| {
                Ok(StreamingRun {
                    run_id: r.get(0)?,
                    ad_hoc: r.get(1)?,
                    suite_text: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// What a bootstrap exchange carries beside the tokens.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// The address the exchange came from: the session is good from there only.
    pub source: Option<String>,
    /// The attestation key the answer hands the agent (the collector keeps only the proof it
    /// expects on the node's console).
    pub attest_key: String,
}

/// A request's source address for a message: the address, or that it was not known.
pub(super) fn source_name(source: Option<&str>) -> &str {
    source.unwrap_or("an unknown address")
}

/// What a bootstrap exchange did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// The session token whose hash was given is now the run's.
    Issued,
    /// Not this run's bootstrap token (or no such run).
    Denied,
    /// The run is closed.
    Closed(Verdict),
    /// The bootstrap token was used before: someone else has it too. The run failed.
    Reused,
}

/// The agent exchanges the bootstrap token from its kernel command line for the run's session
/// token. Once: a second exchange means another process (or machine) holds the bootstrap
/// token, which fails the run as a security event — never a silent pass.
pub fn exchange(
    conn: &Connection,
    run_id: i64,
    bootstrap_hash: &str,
    session_hash: &str,
    request: &SessionRequest,
) -> Result<(Exchange, Ended), StoreError> {
    let tx = conn.savepoint()?;
    /// What the exchange reads of its run.
    struct Bootstrap {
        stored: Option<String>,
        used: Option<i64>,
        verdict: VerdictColumn,
        node_id: i64,
        first_source: Option<String>,
    }
    let row = tx
        .query_row(
            "SELECT bootstrap_hash, bootstrap_used_ms, verdict, node_id, session_source FROM runs WHERE id = ?1",
            [run_id],
            |r| {
                Ok(Bootstrap {
                    stored: r.get(0)?,
                    used: r.get(1)?,
                    verdict: r.get(2)?,
                    node_id: r.get(3)?,
                    first_source: r.get(4)?,
                })
            },
        )
        .optional()?;
    let Some(Bootstrap {
        stored: Some(stored),
        used,
        verdict,
        node_id,
        first_source,
    }) = row
    else {
        return Ok((Exchange::Denied, Ended::default()));
    };
    if !crate::tokens::equal(&stored, bootstrap_hash) {
        return Ok((Exchange::Denied, Ended::default()));
    }
    if let Some(v) = verdict {
        return Ok((Exchange::Closed(v.0), Ended::default()));
    }
    if used.is_some() {
        let ended = close_run(
            &tx,
            run_id,
            Verdict::Fail,
            &format!(
                "security: the bootstrap token was used twice (another process or machine has it): first from {}, again from {}",
                source_name(first_source.as_deref()),
                source_name(request.source.as_deref())
            ),
        )?;
        tx.commit()?;
        return Ok((Exchange::Reused, ended));
    }
    let proof = kiln_protocol::attest::proof(&request.attest_key, run_id, node_id);
    exec(
        &tx,
        "UPDATE runs SET token_hash = ?2, bootstrap_used_ms = ?3, last_seen_ms = ?3, session_source = ?4, attest_proof = ?5 WHERE id = ?1",
        params![run_id, session_hash, now_ms(), request.source, proof],
    )?;
    tx.commit()?;
    Ok((Exchange::Issued, Ended::default()))
}

/// The agent fetched its plan (or pinged): it is alive. `None` when the run is closed.
pub fn plan(
    conn: &Connection,
    run_id: i64,
) -> Result<Option<kiln_protocol::wire::RunPlan>, StoreError> {
    let tx = conn.savepoint()?;
    let plan = tx
        .query_row(
            "SELECT r.node_id, s.text, r.allow_destructive, r.heartbeat_secs FROM runs r JOIN suites s ON s.sha256 = r.suite_sha256 WHERE r.id = ?1 AND r.verdict IS NULL",
            [run_id],
            |r| {
                Ok(kiln_protocol::wire::RunPlan {
                    run_id,
                    node_id: r.get(0)?,
                    suite_text: r.get(1)?,
                    allow_destructive: r.get(2)?,
                    heartbeat_secs: r.get::<i64>(3)? as u64,
                    after: kiln_protocol::wire::After::Poweroff,
                    lldp_secs: None,
                    cycle: None,
                })
            },
        )
        .optional()?;
    let plan = match plan {
        Some(mut p) => {
            if crate::store::queries::has_cabling(&tx, p.node_id)? {
                p.lldp_secs = Some(kiln_protocol::wire::LLDP_LISTEN_SECS);
            }
            // Power cycles follow the steps: the node stays up for the collector to cycle it,
            // and powers off after the last.
            p.cycle = super::cycles::current_boot(&tx, run_id)?;
            if let Some(c) = p.cycle {
                p.lldp_secs = None;
                if c.cycle < c.count {
                    p.after = kiln_protocol::wire::After::Hold;
                }
            } else if super::cycles::pending(&tx, run_id)? {
                p.after = kiln_protocol::wire::After::Hold;
            }
            Some(p)
        }
        None => None,
    };
    if plan.is_some() {
        exec(
            &tx,
            "UPDATE runs SET last_seen_ms = ?2 WHERE id = ?1",
            params![run_id, now_ms()],
        )?;
    }
    tx.commit()?;
    Ok(plan)
}

/// Stores the inventory an agent posted; `false` when the run is closed (nothing changed).
pub fn put_inventory(
    conn: &Connection,
    run_id: i64,
    inventory: &Inventory,
) -> Result<bool, StoreError> {
    let json = serde_json::to_string(inventory).map_err(|source| StoreError::Corrupt {
        what: "inventory",
        source,
    })?;
    Ok(exec(
        conn,
        "UPDATE runs SET inventory = ?2, last_seen_ms = ?3 WHERE id = ?1 AND verdict IS NULL",
        params![run_id, json, now_ms()],
    )? > 0)
}

/// What ingesting a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Stored: the highest contiguous sequence number now stored, and how many of the batch's
    /// events were new.
    Acked {
        /// The acknowledgement.
        acked: u64,
        /// Events stored by this batch (resent ones are not).
        stored: u64,
    },
    /// The run is closed: nothing was stored.
    Closed(Verdict),
    /// Not the run's token (or no such run): nothing was stored.
    Denied,
    /// The batch would take the run past one of its bounds: nothing of it was stored, and the
    /// run ended as an error saying so.
    OverBound(Bound, String),
}

/// Which of a run's bounds a batch passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Events stored for the run.
    Events,
    /// Bytes of log lines stored for the run.
    LogBytes,
}

/// What a run has sent, and may.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    events: i64,
    log_bytes: i64,
    max_events: Option<i64>,
    max_log_bytes: Option<i64>,
}

impl Sent {
    /// The bound `events` more events and `log_bytes` more bytes of log lines would pass,
    /// and the reason the run ends with.
    pub(super) fn passed(&self, events: i64, log_bytes: i64) -> Option<(Bound, String)> {
        if let Some(max) = self.max_events.filter(|m| self.events + events > *m) {
            return Some((
                Bound::Events,
                format!("bounds: the run sent more than its {max} events; the rest was refused"),
            ));
        }
        let max = self
            .max_log_bytes
            .filter(|m| self.log_bytes + log_bytes > *m)?;
        Some((
            Bound::LogBytes,
            format!(
                "bounds: the run sent more than its {} of log lines; the rest was refused",
                kiln_protocol::readable::readable(max as f64, "B")
            ),
        ))
    }
}

/// Ends `run_id` as an error for passing a bound (the batch that passed it was not stored).
fn over_bound(
    conn: &Connection,
    run_id: i64,
    bound: Bound,
    reason: String,
) -> Result<(Ingested, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let ended = close_run(&tx, run_id, Verdict::Error, &reason)?;
    tx.commit()?;
    tracing::warn!(run_id, %reason, "a run passed its bounds");
    Ok((Ingested::OverBound(bound, reason), ended))
}

/// What storing a batch found.
struct Stored {
    /// The sequence numbers stored now (an event sent again is stored already).
    new: std::collections::HashSet<i64>,
    /// Every sequence number stored above the acknowledged one, in order, when the statement
    /// that stored the batch read them too (PostgreSQL); else the caller asks.
    above: Option<Vec<i64>>,
}

/// Stores a batch's events, each sequence number once. On PostgreSQL one statement for the
/// batch, which also reads what was stored above `acked` before it — a statement is a round
/// trip there, and a batch holds tens of events; on SQLite, in process, a statement per event
/// costs less than building the set.
fn store_events(
    tx: &Connection,
    run_id: i64,
    acked: i64,
    batch: &EventBatch,
) -> Result<Stored, StoreError> {
    let corrupt = |source| StoreError::Corrupt {
        what: "event",
        source,
    };
    let mut new = std::collections::HashSet::with_capacity(batch.events.len());
    match tx.kind() {
        crate::store::sql::EngineKind::Postgres => {
            let mut rows = EventColumns::with_capacity(batch.events.len());
            rows.push(run_id, &batch.events).map_err(corrupt)?;
            let seqs: Vec<(i64, bool)> = rows
                .store(tx, &[run_id], &[acked])?
                .into_iter()
                .map(|(_, seq, now)| (seq, now))
                .collect();
            new.extend(seqs.iter().filter(|s| s.1).map(|s| s.0));
            let mut above: Vec<i64> = seqs
                .into_iter()
                .map(|s| s.0)
                .filter(|&s| s > acked)
                .collect();
            above.sort_unstable();
            above.dedup();
            return Ok(Stored {
                new,
                above: Some(above),
            });
        }
        crate::store::sql::EngineKind::Sqlite => {
            for event in &batch.events {
                let body = serde_json::to_string(&event.body).map_err(corrupt)?;
                let inserted = exec(
                    tx,
                    "INSERT INTO events (run_id, seq, at_ms, kind, step, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                    params![
                        run_id,
                        event.seq as i64,
                        event.at_ms as i64,
                        event.body.kind(),
                        event.body.step(),
                        body
                    ],
                )?;
                if inserted > 0 {
                    new.insert(event.seq as i64);
                }
            }
        }
    }
    Ok(Stored { new, above: None })
}

/// Stores a batch, once per sequence number, applies what each new event means (agent start,
/// step results, live progress), and once the agent's final event and everything before it
/// are stored, computes the verdict. One transaction.
pub fn ingest(
    conn: &Connection,
    run_id: i64,
    token_hash: &str,
    source: Option<&str>,
    batch: &EventBatch,
) -> Result<(Ingested, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let now = now_ms();
    let mut ended = Ended::default();
    let Some(BatchRun {
        mut acked,
        progress,
        verdict,
        token_hash: stored_hash,
        mut final_seq,
        session_source,
        sent,
    }) = batch_run(&tx, run_id)?
    else {
        return Ok((Ingested::Denied, ended));
    };
    if stored_hash.is_empty() || !crate::tokens::equal(&stored_hash, token_hash) {
        return Ok((Ingested::Denied, ended));
    }
    if let Some(v) = verdict {
        return Ok((Ingested::Closed(v.0), ended));
    }
    if let Some(first) = session_source
        .as_deref()
        .filter(|first| Some(*first) != source)
    {
        // The session token is in two places: whoever holds it elsewhere may be the one
        // posting results. Failing is all either side can make of it.
        let reason = format!(
            "security: the run's session was opened from {first} and used again from {}",
            source_name(source)
        );
        ended.extend(close_run(&tx, run_id, Verdict::Fail, &reason)?);
        tx.commit()?;
        return Ok((Ingested::Closed(Verdict::Fail), ended));
    }
    let mut current: Option<Progress> = progress
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok());
    let mut progress_changed = false;
    let mut finished = false;
    let mut stored = 0u64;
    let mut log_bytes = 0i64;
    let Stored { mut new, above } = store_events(&tx, run_id, acked, batch)?;
    for event in &batch.events {
        // Each stored event's effects once: a resent event is stored already, its effects
        // applied already (and a sequence number twice in a batch is one event).
        if !new.remove(&(event.seq as i64)) {
            continue;
        }
        stored += 1;
        if let EventBody::Log { line, .. } = &event.body {
            log_bytes += line.len() as i64;
        }
        progress_changed |= apply(&tx, run_id, now, event, &mut current, &mut ended)?;
        finished |= matches!(event.body, EventBody::RunFinished { .. });
    }
    if let Some((bound, reason)) = sent.passed(stored as i64, log_bytes) {
        // Nothing of the batch is kept (the savepoint rolls back, and what it ended with it).
        drop(tx);
        return over_bound(conn, run_id, bound, reason);
    }
    // Advance the acknowledgement over every contiguous stored sequence number; the live
    // progress goes in the same statement when it moved (one statement a batch, not two: the
    // writer runs one of these for every batch of every agent). Only then is `progress` named:
    // an UPDATE that sets it moves the reports' progress clock (`schema::watch_reports`), even
    // to the same value, and kept reports would be rebuilt after every batch of log lines.
    acked = match above {
        Some(above) => contiguous_in(&above, acked),
        None => contiguous(&tx, run_id, acked)?,
    };
    let progress = progress_changed.then_some(current);
    acknowledge(
        &tx,
        run_id,
        now,
        acked,
        progress,
        (stored as i64, log_bytes),
    )?;
    // The verdict waits until the agent's final event and every event before it are stored.
    // Only a `run_finished` event applied here moves `final_seq` from what was read above.
    if finished {
        final_seq = row(
            &tx,
            "SELECT final_seq FROM runs WHERE id = ?1",
            [run_id],
            |r| r.get(0),
        )?;
    }
    if final_seq.is_some_and(|f| f <= acked) {
        ended.extend(finish_linux(&tx, run_id)?);
    }
    tx.commit()?;
    Ok((
        Ingested::Acked {
            acked: acked as u64,
            stored,
        },
        ended,
    ))
}

/// Records a batch: the acknowledgement, when the agent was last heard, what the run has
/// sent (`added`: events, log bytes), and its live progress when the batch moved it (`Some`).
fn acknowledge(
    tx: &Connection,
    run_id: i64,
    now: i64,
    acked: i64,
    progress: Option<Option<Progress>>,
    added: (i64, i64),
) -> Result<(), StoreError> {
    let (events, log_bytes) = added;
    match progress {
        Some(current) => {
            let json = current
                .map(|c| serde_json::to_string(&c))
                .transpose()
                .map_err(|source| StoreError::Corrupt {
                    what: "progress",
                    source,
                })?;
            exec(
                tx,
                "UPDATE runs SET acked_seq = ?2, last_seen_ms = ?3, progress = ?4, events_stored = events_stored + ?5, log_bytes = log_bytes + ?6 WHERE id = ?1",
                params![run_id, acked, now, json, events, log_bytes],
            )?;
        }
        None => {
            exec(
                tx,
                "UPDATE runs SET acked_seq = ?2, last_seen_ms = ?3, events_stored = events_stored + ?4, log_bytes = log_bytes + ?5 WHERE id = ?1",
                params![run_id, acked, now, events, log_bytes],
            )?;
        }
    }
    Ok(())
}

/// What a batch needs of its run, read in one statement.
pub(super) struct BatchRun {
    pub(super) acked: i64,
    pub(super) progress: Option<String>,
    pub(super) verdict: VerdictColumn,
    pub(super) token_hash: String,
    pub(super) final_seq: Option<i64>,
    pub(super) session_source: Option<String>,
    pub(super) sent: Sent,
}

impl BatchRun {
    /// The columns of `runs` [`BatchRun::read`] reads.
    pub(super) const COLUMNS: &str = "acked_seq, progress, verdict, token_hash, final_seq, session_source, events_stored, log_bytes, max_events, max_log_bytes";

    /// A run's row, its [`BatchRun::COLUMNS`] from column `at` on.
    pub(super) fn read(
        r: &crate::store::sql::Row,
        at: usize,
    ) -> Result<BatchRun, crate::store::sql::SqlError> {
        Ok(BatchRun {
            acked: r.get(at)?,
            progress: r.get(at + 1)?,
            verdict: r.get(at + 2)?,
            token_hash: r.get(at + 3)?,
            final_seq: r.get(at + 4)?,
            session_source: r.get(at + 5)?,
            sent: Sent {
                events: r.get(at + 6)?,
                log_bytes: r.get(at + 7)?,
                max_events: r.get(at + 8)?,
                max_log_bytes: r.get(at + 9)?,
            },
        })
    }
}

fn batch_run(tx: &Connection, run_id: i64) -> Result<Option<BatchRun>, StoreError> {
    Ok(row(
        tx,
        &format!(
            "SELECT {} FROM runs WHERE id = ?1{}",
            BatchRun::COLUMNS,
            tx.for_update()
        ),
        [run_id],
        |r| BatchRun::read(r, 0),
    )
    .optional()?)
}

/// Applies one newly stored event to its run (stages, expect, steps, the agent's verdict) and
/// to the live progress; returns whether the progress changed.
fn apply(
    tx: &Connection,
    run_id: i64,
    now: i64,
    event: &kiln_protocol::wire::Event,
    current: &mut Option<Progress>,
    ended: &mut Ended,
) -> Result<bool, StoreError> {
    let mut changed = false;
    match &event.body {
        EventBody::RunStarted { agent, .. } => {
            exec(
                tx,
                "UPDATE runs SET agent_version = COALESCE(agent_version, ?2) WHERE id = ?1",
                params![run_id, agent],
            )?;
            // A memtest stage not done by now never finished cleanly.
            for (stage, state) in stages(tx, run_id)? {
                if stage == Stage::Memtest && state != StageState::Done {
                    end_stage(
                        tx,
                        run_id,
                        stage,
                        Verdict::Incomplete,
                        Some("the agent started before memtest86+ had a verdict"),
                    )?;
                    ended.add(run_id, stage);
                }
            }
            start_stage(tx, run_id, Stage::Linux)?;
            exec(
                tx,
                "UPDATE runs SET agent_started_ms = COALESCE(agent_started_ms, ?2) WHERE id = ?1",
                params![run_id, now],
            )?;
            *current = None;
            changed = true;
        }
        EventBody::ExpectChecked { outcome } => {
            let json = serde_json::to_string(outcome).map_err(|source| StoreError::Corrupt {
                what: "outcome",
                source,
            })?;
            exec(
                tx,
                "UPDATE runs SET expect = ?2 WHERE id = ?1",
                params![run_id, json],
            )?;
        }
        EventBody::StepStarted { step, name, .. } => {
            *current = Some(Progress {
                step: *step,
                name: name.clone(),
                fraction: 0.0,
                status: None,
            });
            changed = true;
        }
        EventBody::Progress {
            step,
            fraction,
            status,
        } => {
            if let Some(current) = current.as_mut().filter(|c| c.step == *step) {
                current.fraction = *fraction;
                current.status = status.clone();
                changed = true;
            }
        }
        EventBody::StepFinished { report } => {
            let json = serde_json::to_string(report).map_err(|source| StoreError::Corrupt {
                what: "step",
                source,
            })?;
            // The first result of a step is the one kept; a repeat is itself a finding
            // when the verdict is computed.
            exec(
                tx,
                "INSERT INTO steps (run_id, step, name, kind, outcome, report, received_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                params![
                    run_id,
                    report.step,
                    report.name,
                    report.kind,
                    report.outcome.name(),
                    json,
                    now
                ],
            )?;
            if let Some(current) = current.as_mut().filter(|c| c.step == report.step) {
                current.fraction = 1.0;
                changed = true;
            }
        }
        EventBody::RunFinished { verdict } => {
            exec(
                tx,
                "UPDATE runs SET agent_verdict = ?2, final_seq = CASE WHEN final_seq < ?3 THEN final_seq ELSE ?3 END, final_ms = COALESCE(final_ms, ?4) WHERE id = ?1",
                params![run_id, Sql(*verdict), event.seq as i64, now],
            )?;
        }
        EventBody::Log { .. } | EventBody::LogsDropped { .. } | EventBody::Sensors { .. } => {}
    }
    Ok(changed)
}

/// The highest sequence number up to which every event of the run is stored, from `acked`,
/// given the sequence numbers stored above it, in order.
pub(super) fn contiguous_in(above: &[i64], mut acked: i64) -> i64 {
    for &seq in above {
        if seq != acked + 1 {
            break;
        }
        acked = seq;
    }
    acked
}

/// [`contiguous_in`], reading what is stored above `acked` up to the first gap.
fn contiguous(tx: &Connection, run_id: i64, mut acked: i64) -> Result<i64, StoreError> {
    let mut stmt =
        tx.prepare_cached("SELECT seq FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq")?;
    let mut rows = stmt.query(params![run_id, acked])?;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        if seq != acked + 1 {
            break;
        }
        acked = seq;
    }
    Ok(acked)
}
