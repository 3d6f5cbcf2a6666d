//! The pairing routes of an open run (its session token) for `nic: {target: peer}`: the
//! agent asks with its step and its bandwidth server's port and is told to wait, whom to
//! measure against, to go on, or that no partner came; it says when a pair is done, with its
//! figures, which the collector judges against the run's stored suite and stores. One
//! [`Scheduler`](crate::pairing::Scheduler) per suite and step decides ([`crate::pairing`]),
//! retests included, kept in the database so that every collector sharing it asks the same
//! one ([`ask_pair`]); this only reads the run's node, rack and step and judges the figures.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use kiln_protocol::pair::{PairAnswer, PairDone, PairDoneReply, PairRequest, PairRole};
use kiln_protocol::suite::{CheckSpec, PeerPolicy};

use super::{ApiError, AppState, Json, RunAuth};
use crate::pairing::{Answer, Policy, Role, Settings};
use crate::store::queries::{Asked, PairAsk, PairResult, ask_pair, finish_pair, pair_of};

/// How long a node waits for any partner unless its step says.
pub const PAIR_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// How long an unmeasured node waits for another unmeasured one before a helper.
pub const GRACE_MS: u64 = 2_000;

/// Past the step's own measuring time, how long the end of a pair done first waits for its
/// partner's word before the partner counts as gone.
pub const STALE_SLACK_MS: u64 = 60_000;

/// What the run's step asks for, read from the store.
struct Asking {
    node: i64,
    rack: Option<String>,
    suite: String,
    step: kiln_protocol::PlannedStep,
    settings: Settings,
}

async fn asking(state: &AppState, run_id: i64, step: u32) -> Result<Asking, ApiError> {
    let (node, rack, suite, text): (i64, Option<String>, String, String) = state
        .db
        .read(move |c| {
            c.query_row(
                "SELECT n.id, n.rack, r.suite_sha256, s.text FROM runs r JOIN nodes n ON n.id = r.node_id
                 JOIN suites s ON s.sha256 = r.suite_sha256 WHERE r.id = ?1 AND r.verdict IS NULL",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(crate::store::StoreError::from)
        })
        .await
        .map_err(|_| ApiError::Conflict(format!("run {run_id} is not open")))?;
    let plan = kiln_protocol::load("suite", text.as_bytes())
        .map_err(|_| ApiError::Conflict("the run's stored suite no longer loads".into()))?;
    let planned = plan.steps.get(step as usize).cloned();
    let nic = planned
        .as_ref()
        .and_then(|s| match &s.check {
            kiln_protocol::Check::Nic(n) if n.target.as_deref() == Some("peer") => Some(n),
            _ => None,
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "step {step} of the run's suite is no NIC check with `target: peer`"
            ))
        })?;
    let timeout = nic
        .pair_timeout
        .map_or(PAIR_TIMEOUT_MS, |d| d.get().as_millis() as u64);
    let measuring = nic.own_duration().unwrap_or_default().as_millis() as u64;
    let settings = Settings {
        policy: match nic.peer.unwrap_or_default() {
            PeerPolicy::SameRack => Policy::SameRack,
            PeerPolicy::OtherRack => Policy::OtherRack,
        },
        grace_ms: GRACE_MS.min(timeout),
        pair_timeout_ms: timeout,
        // A measured node helps as long as anyone may still wait.
        linger_ms: timeout,
        stale_ms: measuring + STALE_SLACK_MS,
    };
    Ok(Asking {
        node,
        rack,
        suite,
        step: planned.expect("checked above"),
        settings,
    })
}

/// The name reports use for node `node`.
async fn name_of(state: &AppState, node: i64) -> Result<String, ApiError> {
    Ok(state
        .db
        .read(move |c| {
            c.query_row(
                "SELECT coalesce(hostname, 'node ' || id) FROM nodes WHERE id = ?1",
                [node],
                |r| r.get(0),
            )
            .map_err(crate::store::StoreError::from)
        })
        .await?)
}

/// `POST …/pair`: what this node does now.
pub(super) async fn ask(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(req): Json<PairRequest>,
) -> Result<axum::Json<PairAnswer>, ApiError> {
    if req.port == 0 {
        return Err(ApiError::BadRequest(
            "port 0 is no port a partner can reach".into(),
        ));
    }
    let a = asking(&state, run_id, req.step).await?;
    let Asking {
        node,
        rack,
        suite,
        settings,
        ..
    } = a;
    let step = req.step;
    let addr = SocketAddr::new(from.ip(), req.port).to_string();
    let asked = state
        .db
        .call(move |c| {
            let ask = PairAsk {
                run_id,
                node,
                rack: rack.as_deref(),
                suite: &suite,
                step,
                settings,
                addr: addr.clone(),
            };
            // The database's clock: every collector pairing this step reads the same one.
            let now = crate::store::leases::clock(c)?.max(0) as u64;
            ask_pair(c, &ask, now)
        })
        .await?;
    let Asked {
        answer,
        partner_addr: addr,
        role,
        waited_ms: since,
    } = asked;
    Ok(axum::Json(match answer {
        Answer::Wait => PairAnswer::Wait,
        Answer::Released => PairAnswer::Released,
        // Stored as the node's result already, with the answer.
        Answer::TimedOut => PairAnswer::TimedOut {
            waited_s: since / 1000,
        },
        Answer::Pair { pair, partner } => PairAnswer::Pair {
            pair,
            node: partner,
            name: name_of(&state, partner).await?,
            addr: addr.ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "node {partner} was paired without an address"
                ))
            })?,
            role: match role {
                Role::First => PairRole::First,
                Role::Retest => PairRole::Retest,
                Role::Helper => PairRole::Helper,
            },
        },
    }))
}

/// `POST …/pair/done`: the pair measured, with this end's figures; they are judged against
/// the run's stored suite and stored before the pair is closed. 400 for figures no NIC
/// measures, 409 for a pair this run's node is not in.
pub(super) async fn done(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
    Json(req): Json<PairDone>,
) -> Result<axum::Json<PairDoneReply>, ApiError> {
    if let Some(why) = req.implausible() {
        return Err(ApiError::BadRequest(why));
    }
    let node: i64 = state
        .db
        .read(move |c| {
            c.query_row("SELECT node_id FROM runs WHERE id = ?1", [run_id], |r| {
                r.get(0)
            })
            .map_err(crate::store::StoreError::from)
        })
        .await?;
    let not_in = || ApiError::Conflict(format!("node {node} is in no pair {} now", req.pair));
    let pair = req.pair;
    let (suite, step, partner) = state
        .db
        .read(move |c| pair_of(c, pair, node))
        .await?
        .ok_or_else(not_in)?;
    let a = asking(&state, run_id, step).await?;
    if a.suite != suite {
        return Err(not_in());
    }
    let met = kiln_protocol::verdict::pairs::met(&a.step, req.mbps);
    let mut result = PairResult {
        step,
        pair: req.pair,
        partner_node: Some(partner),
        partner_name: Some(name_of(&state, partner).await?),
        download_mbps: req.download_mbps,
        upload_mbps: req.upload_mbps,
        mbps: req.mbps,
        met,
        at_ms: 0,
    };
    // Judged against the run's stored suite, stored and closed on this side together: a pair
    // another request closed meanwhile stores nothing.
    let finished = state
        .db
        .call(move |c| {
            let now = crate::store::leases::clock(c)?.max(0);
            result.at_ms = now;
            finish_pair(c, run_id, node, &result, now as u64)
        })
        .await?;
    if !finished {
        return Err(not_in());
    }
    Ok(axum::Json(PairDoneReply {
        done: req.pair,
        met,
    }))
}
