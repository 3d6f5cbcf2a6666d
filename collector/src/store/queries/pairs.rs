//! Each end's figures of each pair of a `target: peer` step, as the collector judged them:
//! what the verdict checks a passing step against and what reports name the partners from.
//! And the pairing itself, shared by every collector: each step's [`Scheduler`] is a row of
//! `pair_steps`, read, asked and written back in one transaction under its row's lock, and
//! each node's bandwidth server's address a row of `pair_addrs` — so two nodes that ask two
//! collectors are paired all the same, and a collector's death loses no pair.

use crate::pairing::{Answer, NodeId, Role, Scheduler, Settings};
use crate::store::sql::{Connection, params};
use serde::Serialize;

use super::{OptionalExtension, StoreError};

/// One end's result of one pair (or, without a partner, of a wait no partner ended).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairResult {
    /// The step, by index.
    pub step: u32,
    /// The pair (0 for a timed-out wait).
    pub pair: u64,
    /// The partner, by node id; none when no partner came.
    pub partner_node: Option<i64>,
    /// Its name (host name, else `node N`).
    pub partner_name: Option<String>,
    /// From the partner to this node, Mb/s.
    pub download_mbps: Option<f64>,
    /// From this node to the partner, Mb/s.
    pub upload_mbps: Option<f64>,
    /// The slower direction.
    pub mbps: Option<f64>,
    /// Whether the figures met the step's thresholds.
    pub met: bool,
    /// When the collector judged it.
    pub at_ms: i64,
}

/// Stores `result` for run `run_id`; the first word on a pair stands.
pub fn record_pair(conn: &Connection, run_id: i64, r: &PairResult) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO pair_results (run_id, step, pair, partner_node, partner_name,
         download_mbps, upload_mbps, mbps, met, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
        params![
            run_id,
            r.step,
            r.pair as i64,
            r.partner_node,
            r.partner_name,
            r.download_mbps,
            r.upload_mbps,
            r.mbps,
            r.met,
            r.at_ms
        ],
    )?;
    Ok(())
}

/// Run `run_id`'s pair results, by step and then in the order they were judged.
pub fn pair_results(conn: &Connection, run_id: i64) -> Result<Vec<PairResult>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT step, pair, partner_node, partner_name, download_mbps, upload_mbps, mbps, met, at_ms
         FROM pair_results WHERE run_id = ?1 ORDER BY step, at_ms, pair",
    )?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok(PairResult {
                step: r.get(0)?,
                pair: r.get::<i64>(1)? as u64,
                partner_node: r.get(2)?,
                partner_name: r.get(3)?,
                download_mbps: r.get(4)?,
                upload_mbps: r.get(5)?,
                mbps: r.get(6)?,
                met: r.get(7)?,
                at_ms: r.get(8)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// What a node's request to pair came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    /// What it does now.
    pub answer: Answer,
    /// Its partner's bandwidth server (`IP:PORT`), when paired.
    pub partner_addr: Option<String>,
    /// What the pair is for it.
    pub role: Role,
    /// How long it has waited since it came or was last measured.
    pub waited_ms: u64,
}

/// Who asks: the node of run `run_id`, of `rack`, its bandwidth server at `addr`, for step
/// `step` of suite `suite`, whose scheduler starts with `settings` if it is the first.
#[derive(Debug, Clone)]
pub struct PairAsk<'a> {
    /// The run.
    pub run_id: i64,
    /// Its node.
    pub node: NodeId,
    /// The node's rack.
    pub rack: Option<&'a str>,
    /// The run's suite, by digest.
    pub suite: &'a str,
    /// The step, by index.
    pub step: u32,
    /// The step's pairing settings.
    pub settings: Settings,
    /// Where the node's bandwidth server listens.
    pub addr: String,
}

/// The step's scheduler, locked until the transaction ends (made if it is the first ask).
fn locked_scheduler(
    conn: &Connection,
    suite: &str,
    step: u32,
    settings: Settings,
) -> Result<(i64, Scheduler), StoreError> {
    conn.execute(
        "INSERT INTO pair_steps (suite_sha256, step, state) VALUES (?1, ?2, '') ON CONFLICT DO NOTHING",
        params![suite, step],
    )?;
    let (id, state): (i64, String) = conn.query_row(
        &format!(
            "SELECT id, state FROM pair_steps WHERE suite_sha256 = ?1 AND step = ?2{}",
            conn.for_update()
        ),
        params![suite, step],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let scheduler = match state.as_str() {
        // Made just now: no node has asked yet.
        "" => Scheduler::numbered(settings, id),
        state => decode(state)?,
    };
    Ok((id, scheduler))
}

fn decode(state: &str) -> Result<Scheduler, StoreError> {
    serde_json::from_str(state).map_err(|source| StoreError::Corrupt {
        what: "pairing scheduler",
        source,
    })
}

fn save(conn: &Connection, id: i64, scheduler: &Scheduler) -> Result<(), StoreError> {
    let state = serde_json::to_string(scheduler).map_err(|source| StoreError::Encode {
        what: "pairing scheduler",
        source,
    })?;
    conn.execute(
        "UPDATE pair_steps SET state = ?2 WHERE id = ?1",
        params![id, state],
    )?;
    Ok(())
}

/// `ask`'s node asks at `now_ms` what to do; a wait no partner ended within the step's
/// timeout is stored as that node's result, in the same transaction.
pub fn ask_pair(conn: &Connection, ask: &PairAsk<'_>, now_ms: u64) -> Result<Asked, StoreError> {
    let tx = conn.savepoint()?;
    tx.execute(
        "INSERT INTO pair_addrs (node_id, addr) VALUES (?1, ?2)
         ON CONFLICT (node_id) DO UPDATE SET addr = excluded.addr",
        params![ask.node, ask.addr],
    )?;
    let (id, mut scheduler) = locked_scheduler(&tx, ask.suite, ask.step, ask.settings)?;
    let open: Vec<NodeId> = tx.query_map(
        "SELECT node_id FROM runs WHERE verdict IS NULL AND suite_sha256 = ?1",
        params![ask.suite],
        |r| r.get(0),
    )?;
    let more_coming = open.iter().any(|n| *n != ask.node && !scheduler.knows(*n));
    let answer = scheduler.ask_with(ask.node, ask.rack, now_ms, more_coming);
    let partner_addr = match &answer {
        Answer::Pair { partner, .. } => tx
            .query_row(
                "SELECT addr FROM pair_addrs WHERE node_id = ?1",
                params![*partner],
                |r| r.get(0),
            )
            .optional()?,
        _ => None,
    };
    let asked = Asked {
        role: scheduler.role(ask.node),
        waited_ms: scheduler.waited_ms(ask.node, now_ms),
        answer,
        partner_addr,
    };
    if asked.answer == Answer::TimedOut {
        let timed_out = PairResult {
            step: ask.step,
            pair: 0,
            partner_node: None,
            partner_name: None,
            download_mbps: None,
            upload_mbps: None,
            mbps: None,
            met: false,
            at_ms: now_ms as i64,
        };
        record_pair(&tx, ask.run_id, &timed_out)?;
    }
    save(&tx, id, &scheduler)?;
    tx.commit()?;
    Ok(asked)
}

/// The step (suite digest, index) of pair `pair` and `node`'s partner in it, while the pair
/// measures with `node` in it.
pub fn pair_of(
    conn: &Connection,
    pair: u64,
    node: NodeId,
) -> Result<Option<(String, u32, NodeId)>, StoreError> {
    let id = Scheduler::id_of(pair);
    let Some((suite, step, state)) = conn
        .query_row(
            "SELECT suite_sha256, step, state FROM pair_steps WHERE id = ?1",
            params![id],
            |r| Ok((r.get::<String>(0)?, r.get::<u32>(1)?, r.get::<String>(2)?)),
        )
        .optional()?
    else {
        return Ok(None);
    };
    if state.is_empty() {
        return Ok(None);
    }
    let scheduler = decode(&state)?;
    Ok(match scheduler.pair(pair) {
        Some((a, b)) if a == node => Some((suite, step, b)),
        Some((a, b)) if b == node => Some((suite, step, a)),
        _ => None,
    })
}

/// `node`'s end of pair `pair` is done with `result` (judged already): stored, and the pair
/// closed on this side, in one transaction; false, and nothing stored, when the pair does not
/// measure with `node` in it (any more).
pub fn finish_pair(
    conn: &Connection,
    run_id: i64,
    node: NodeId,
    result: &PairResult,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let tx = conn.savepoint()?;
    let id = Scheduler::id_of(result.pair);
    let Some(state) = tx
        .query_row(
            &format!(
                "SELECT state FROM pair_steps WHERE id = ?1 AND step = ?2{}",
                tx.for_update()
            ),
            params![id, result.step],
            |r| r.get::<String>(0),
        )
        .optional()?
    else {
        return Ok(false);
    };
    if state.is_empty() {
        return Ok(false);
    }
    let mut scheduler = decode(&state)?;
    if !scheduler
        .pair(result.pair)
        .is_some_and(|(a, b)| a == node || b == node)
    {
        return Ok(false);
    }
    record_pair(&tx, run_id, result)?;
    if !scheduler.finished(result.pair, node, result.met, now_ms) {
        return Ok(false);
    }
    save(&tx, id, &scheduler)?;
    tx.commit()?;
    Ok(true)
}
