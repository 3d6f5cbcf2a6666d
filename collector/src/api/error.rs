//! Every way a request can fail, and the answer each one gets: a status and a message
//! (`{"error": "…"}`); an internal error says only its request id, its details go to the log.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid input (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Wrong credentials (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// The thing is in a state that refuses the request (409): a finished run.
    #[error("{0}")]
    Conflict(String),
    /// Body over the limit, or a run past its log bytes (413).
    #[error("{0}")]
    TooLarge(String),
    /// More than the caller may send (429): a run past its events.
    #[error("{0}")]
    TooMany(String),
    /// The collector will not take more of this now (503): a configured cap is reached.
    #[error("{0}")]
    Unavailable(String),
    /// The collector itself failed (500); details go to the log only.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            // Said to the caller as it is: it passes once the database is back.
            StoreError::Unavailable(_) => ApiError::Unavailable(err.to_string()),
            err => ApiError::Internal(err.into()),
        }
    }
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::TooMany(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Internal(err) => {
                let id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    request_id = id,
                    error = format!("{err:#}"),
                    "request failed"
                );
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error (request {id}); see the collector's log"),
                )
            }
        };
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// The answer to a token that is not the run's — the same whether the run exists or not: a
/// token never learns about other runs.
pub fn not_the_runs_token(run_id: i64) -> ApiError {
    ApiError::Forbidden(format!("the token is not run {run_id}'s token"))
}

/// The answer when an unknown machine would be one unknown node too many (logged: an
/// operator should label the nodes, raise `max_unknown_nodes`, or find the flood).
pub fn too_many_unknown(cap: u64) -> ApiError {
    tracing::warn!(
        cap,
        "max_unknown_nodes reached: refusing to create a node for an unknown machine"
    );
    ApiError::Unavailable(format!(
        "the collector already has {cap} unlabelled nodes (max_unknown_nodes); label nodes with `kiln nodes import` or raise the limit"
    ))
}

/// The answer to anything posted to a finished run.
pub fn closed(run_id: i64, verdict: kiln_protocol::verdict::Verdict) -> ApiError {
    ApiError::Conflict(format!(
        "run {run_id} is finished (verdict {verdict}); it accepts nothing more"
    ))
}
