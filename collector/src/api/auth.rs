//! Who may call: the extractors that check a request's bearer token before its handler runs
//! (an agent's run token, an open run's session token, the admin token, the read token).

use axum::extract::Request;
use axum::response::Response;

use super::error::ApiError;
use super::state::AppState;
use crate::tokens;

/// A run id and the hash of the bearer token that came with it, not checked yet (the call
/// checks it where it touches the run).
pub struct RunToken {
    /// The run in the path.
    pub run_id: i64,
    /// Hash of the bearer token.
    pub hash: String,
}

impl axum::extract::FromRequestParts<AppState> for RunToken {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The run is the path's `id`, whatever else the path names (a piece, …).
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let run_id = params
            .iter()
            .find(|(name, _)| *name == "id")
            .and_then(|(_, value)| value.parse::<i64>().ok())
            .ok_or_else(|| ApiError::BadRequest("the path names no run id".into()))?;
        let token = tokens::bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "agent calls need their run's token (Authorization: Bearer …)".into(),
            )
        })?;
        Ok(RunToken {
            run_id,
            hash: tokens::hash(token),
        })
    }
}

/// The address a request came from (the peer's IP), when the server knows it: a run's Linux
/// stage and its session each belong to one source.
pub struct Source(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Source(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|axum::extract::ConnectInfo(addr)| addr.ip().to_string()),
        ))
    }
}

/// The caller holds run `.0`'s token. Checked before the body is read, so a caller without
/// the right token learns nothing from validation messages.
pub struct RunAuth(pub i64);

impl axum::extract::FromRequestParts<AppState> for RunAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let RunToken { run_id, hash } = RunToken::from_request_parts(parts, state).await?;
        state.require_run_hash(run_id, hash).await?;
        Ok(RunAuth(run_id))
    }
}

/// The fastest a bandwidth stream can honestly go (100 Gb/s): what a request may move is this
/// times the longest its run's suite measures against the collector.
const LINE_RATE_BYTES_PER_SEC: u64 = 12_500_000_000;

/// Lets a bandwidth request through only for an open run of a known node whose suite measures
/// against the collector, with the limits its streams keep ([`kiln_agent::bandwidth::StreamLimit`]):
/// no more than that step could move at line rate, no longer than its timeout, and cut when
/// the run closes. Anyone else could use the collector to flood the boot network.
pub(super) async fn open_run_only(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    match stream_limit(&state, req.headers()).await {
        Ok(limit) => {
            req.extensions_mut().insert(limit);
            next.run(req).await
        }
        Err(err) => axum::response::IntoResponse::into_response(err),
    }
}

async fn stream_limit(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<kiln_agent::bandwidth::StreamLimit, ApiError> {
    let token = tokens::bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized(
            "the bandwidth endpoints need a run's session token (Authorization: Bearer …)".into(),
        )
    })?;
    let hash = tokens::hash(token);
    let run = state
        .db
        .read(move |c| crate::lifecycle::streaming_run(c, &hash))
        .await?
        .ok_or_else(|| {
            ApiError::Forbidden("the token is not the session token of an open run".into())
        })?;
    if run.ad_hoc {
        return Err(ApiError::Forbidden(format!(
            "run {} is ad hoc: the collector's bandwidth endpoints serve runs of known nodes only (measure against a peer's kiln-agent serve-bandwidth)",
            run.run_id
        )));
    }
    let allowed = kiln_protocol::load("suite", run.suite_text.as_bytes())
        .ok()
        .and_then(|plan| plan.collector_bandwidth())
        .ok_or_else(|| {
            ApiError::Forbidden(format!(
                "run {}'s suite has no NIC step that measures against the collector",
                run.run_id
            ))
        })?;
    Ok(kiln_agent::bandwidth::StreamLimit {
        max_bytes: allowed
            .as_secs()
            .max(1)
            .saturating_mul(LINE_RATE_BYTES_PER_SEC),
        until: tokio::time::Instant::now() + allowed,
        cancel: state.captures.stream(run.run_id),
    })
}

/// The caller holds the admin token.
pub struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.require_admin(&parts.headers)?;
        Ok(Admin)
    }
}

/// The caller may read reports (always, when no read token is configured).
pub struct Reader;

impl axum::extract::FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.require_reader(&parts.headers)?;
        Ok(Reader)
    }
}
