//! What agents call: register an ad-hoc run, fetch the plan, post inventory and events. Each
//! call on a run needs its token and the run open; what a post means is the lifecycle's.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kiln_protocol::wire::{
    BatchAck, EventBatch, Inventory, RegisterRequest, RegisterResponse, RunPlan, SessionResponse,
    check_field,
};

use super::{ApiError, AppState, Json, RunAuth, RunToken, Source, closed};
use crate::config::Registration;
use crate::lifecycle::{self, Exchange, Ingested, NewRunOwned, SessionRequest};
use crate::tokens;

/// A registration on the boot network: an agent's own, never with the admin token, which
/// must not cross a network anyone can sniff. With `registration: admin` none is taken here.
pub(super) async fn register_boot(
    state: State<AppState>,
    headers: HeaderMap,
    body: Json<RegisterRequest>,
) -> Result<(StatusCode, axum::Json<RegisterResponse>), ApiError> {
    if state.config.registration == Registration::Admin {
        return Err(ApiError::Forbidden(
            "registration: admin — runs are registered on the management listener only (with the admin token, over TLS)".into(),
        ));
    }
    if tokens::bearer(&headers).is_some() {
        return Err(ApiError::Forbidden(
            "a registration with a token is taken on the management listener only: the admin token never crosses the boot network".into(),
        ));
    }
    register(state, headers, body).await
}

pub(super) async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, axum::Json<RegisterResponse>), ApiError> {
    // Without the admin token a registration gets a node of its own (ad hoc); only an operator
    // may attach a run to a known node. A token that is there must be the admin token.
    let admin = match state.config.registration {
        Registration::Admin => {
            state.require_admin(&headers)?;
            true
        }
        Registration::Open if tokens::bearer(&headers).is_some() => {
            state.require_admin(&headers)?;
            true
        }
        Registration::Open => false,
    };
    req.identity
        .validate()
        .map_err(|e| ApiError::BadRequest(format!("identity: {e}")))?;
    if let Some(h) = &req.hostname {
        check_field("hostname", h).map_err(ApiError::BadRequest)?;
    }
    let plan = kiln_protocol::load("suite", req.suite_text.as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("the suite is refused:\n{e}")))?;
    let token = tokens::mint()?;
    let token_hash = tokens::hash(&token);
    let heartbeat_secs = state.config.heartbeat_timeout.get().as_secs().max(1);
    let suite_name = plan.name().to_owned();
    let caps = lifecycle::Caps {
        unknown: state.config.max_unknown_nodes,
        ad_hoc: state.config.max_ad_hoc_nodes,
        runs_per_day: state.config.runs_per_node_per_day,
    };
    let bounds = if admin {
        state.config.run_bounds
    } else {
        state.config.ad_hoc_bounds
    };
    let attestation = state.config.attestation;
    let registered = state
        .db
        .call(move |c| {
            lifecycle::register(
                c,
                &req.identity,
                req.hostname.as_deref(),
                admin,
                caps,
                |_| NewRunOwned {
                    suite_name: suite_name.clone(),
                    suite_text: req.suite_text.clone(),
                    token_hash: token_hash.clone(),
                    heartbeat_secs,
                    bounds,
                    attestation,
                },
            )
        })
        .await?;
    let (node_id, run_id) = match registered {
        lifecycle::Registered::Run { node_id, run_id } => (node_id, run_id),
        lifecycle::Registered::TooManyRuns(why) => return Err(ApiError::TooMany(why)),
        lifecycle::Registered::NoRoom => return Err(no_room(admin, caps)),
    };
    tracing::info!(node_id, run_id, admin, "registered an ad-hoc run");
    Ok((
        StatusCode::CREATED,
        axum::Json(RegisterResponse {
            node_id,
            run_id,
            token,
            heartbeat_secs,
        }),
    ))
}

/// The answer when a registration would create one node too many: an operator's counts
/// against the machines booting, anyone else's against the ad-hoc quota.
fn no_room(admin: bool, caps: lifecycle::Caps) -> ApiError {
    if admin {
        return super::too_many_unknown(caps.unknown);
    }
    tracing::warn!(
        cap = caps.ad_hoc,
        "max_ad_hoc_nodes reached: refusing an unauthenticated registration"
    );
    ApiError::Unavailable(format!(
        "the collector already has {} ad-hoc nodes (max_ad_hoc_nodes); register with the admin token, or raise the limit",
        caps.ad_hoc
    ))
}

/// `POST /api/v1/runs/{id}/session`: the bootstrap token from the kernel command line, once,
/// for the run's session token.
pub(super) async fn session(
    State(state): State<AppState>,
    axum::extract::Path(run_id): axum::extract::Path<i64>,
    Source(source): Source,
    headers: HeaderMap,
) -> Result<(StatusCode, axum::Json<SessionResponse>), ApiError> {
    let bootstrap = tokens::bearer(&headers).ok_or_else(|| {
        ApiError::Unauthorized(
            "the session exchange needs the bootstrap token (Authorization: Bearer …)".into(),
        )
    })?;
    let bootstrap_hash = tokens::hash(bootstrap);
    let session = tokens::mint()?;
    let session_hash = tokens::hash(&session);
    let request = SessionRequest {
        source,
        attest_key: tokens::mint()?,
    };
    let attest_key = request.attest_key.clone();
    let (exchanged, ended) = state
        .db
        .call(move |c| lifecycle::exchange(c, run_id, &bootstrap_hash, &session_hash, &request))
        .await?;
    state.captures.stop(&ended);
    match exchanged {
        Exchange::Issued => Ok((
            StatusCode::CREATED,
            axum::Json(SessionResponse {
                token: session,
                heartbeat_secs: state.config.heartbeat_timeout.get().as_secs().max(1),
                attest_key,
            }),
        )),
        Exchange::Denied => Err(ApiError::Forbidden(format!(
            "the token is not run {run_id}'s bootstrap token"
        ))),
        Exchange::Closed(verdict) => Err(closed(run_id, verdict)),
        Exchange::Reused => {
            tracing::warn!(
                run_id,
                "security: a bootstrap token was used twice; the run fails"
            );
            Err(ApiError::Conflict(format!(
                "run {run_id}'s bootstrap token was already exchanged: the run fails (a second holder of the token is a security event)"
            )))
        }
    }
}

pub(super) async fn plan(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
) -> Result<axum::Json<RunPlan>, ApiError> {
    let plan = state
        .db
        .call(move |c| lifecycle::plan(c, run_id))
        .await?
        .ok_or_else(|| {
            ApiError::Conflict(format!("run {run_id} is finished; it accepts nothing more"))
        })?;
    Ok(axum::Json(plan))
}

pub(super) async fn inventory(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
    Json(inventory): Json<Inventory>,
) -> Result<StatusCode, ApiError> {
    inventory
        .validate()
        .map_err(|e| ApiError::BadRequest(format!("inventory: {e}")))?;
    let stored = state
        .db
        .call(move |c| lifecycle::put_inventory(c, run_id, &inventory))
        .await?;
    if !stored {
        return Err(ApiError::Conflict(format!(
            "run {run_id} is finished; it accepts nothing more"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/runs/{id}/cycles/{cycle}`: a power cycle's boot reports the node's inventory.
pub(super) async fn cycle(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
    axum::extract::Path((_id, cycle)): axum::extract::Path<(i64, u32)>,
    Json(inventory): Json<Inventory>,
) -> Result<StatusCode, ApiError> {
    inventory
        .validate()
        .map_err(|e| ApiError::BadRequest(format!("inventory: {e}")))?;
    let (reported, ended) = state
        .db
        .call(move |c| lifecycle::cycles::report(c, run_id, cycle, &inventory))
        .await?;
    state.captures.stop(&ended);
    match reported {
        lifecycle::cycles::Reported::Stored => Ok(StatusCode::NO_CONTENT),
        lifecycle::cycles::Reported::Refused(why) => Err(ApiError::Conflict(why)),
        lifecycle::cycles::Reported::Closed => Err(ApiError::Conflict(format!(
            "run {run_id} is finished; it accepts nothing more"
        ))),
    }
}

/// `POST /api/v1/runs/{id}/events`. The token is checked inside the ingest transaction (one
/// database round trip per batch, which is what an agent does most); a batch that does not
/// validate is answered only after the token is checked, so a stranger learns nothing from
/// the message.
pub(super) async fn events(
    State(state): State<AppState>,
    RunToken { run_id, hash }: RunToken,
    Source(source): Source,
    Json(batch): Json<EventBatch>,
) -> Result<axum::Json<BatchAck>, ApiError> {
    let arrived = std::time::Instant::now();
    if let Err(message) = batch.validate() {
        state.require_run_hash(run_id, hash).await?;
        return Err(ApiError::BadRequest(message));
    }
    let batch = lifecycle::BatchIn {
        run_id,
        token_hash: hash,
        source,
        batch,
    };
    let (ingested, ended) = state.ingest.ingest(&state.db, batch).await?;
    state.captures.stop(&ended);
    match ingested {
        Ingested::Acked { acked, stored } => {
            // Counted once committed: the answer below is the acknowledgement.
            let metrics = &crate::metrics::METRICS;
            metrics.events_stored.inc_by(stored);
            metrics
                .event_ack_seconds
                .observe(arrived.elapsed().as_secs_f64());
            Ok(axum::Json(BatchAck { acked }))
        }
        Ingested::Closed(verdict) => Err(closed(run_id, verdict)),
        Ingested::Denied => Err(super::not_the_runs_token(run_id)),
        Ingested::OverBound(lifecycle::Bound::Events, why) => Err(ApiError::TooMany(format!(
            "run {run_id}: {why}; it ended as an error"
        ))),
        Ingested::OverBound(lifecycle::Bound::LogBytes, why) => Err(ApiError::TooLarge(format!(
            "run {run_id}: {why}; it ended as an error"
        ))),
    }
}
