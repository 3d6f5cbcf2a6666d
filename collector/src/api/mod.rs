//! The HTTP API and pages: `fn router(state)` so tests drive the whole app in process. One
//! error type answers every failure: client errors with a message, server errors logged in
//! full under a request id and answered generically.

mod agent;
pub mod artifacts;
pub mod boot;
pub mod limits;
mod operator;
pub mod pages;
mod reports;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use kiln_protocol::routes;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::store::{Db, StoreError};
use crate::tokens;
use pages::Pages;

/// Largest request body accepted (an event batch is at most 1000 events).
pub const MAX_BODY: usize = 4 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// The configuration.
    pub config: Arc<Config>,
    /// Hash of the admin token.
    pub admin_hash: Arc<String>,
    /// Hash of the read token, when reports need one.
    pub read_hash: Option<Arc<String>>,
    /// Page templates.
    pub pages: Arc<Pages>,
    /// Data directory.
    pub data: Arc<std::path::PathBuf>,
    /// Artifact digests.
    pub digests: Arc<artifacts::Digests>,
    /// Running memtest86+ console captures.
    pub captures: Arc<crate::lifecycle::captures::Captures>,
    /// Per-source rate limits on unauthenticated routes.
    pub limiter: Arc<limits::RateLimiter>,
}

impl AppState {
    /// Digest of the RAM image nodes boot now, when it has been built: from the artifact
    /// digest cache (hashed once per change of the file, on a blocking thread), never read
    /// whole on an async worker for each boot.
    pub async fn image_digest(&self) -> Option<String> {
        self.digests
            .of(&self.data.join("artifacts/initramfs.img"))
            .await
            .ok()
    }
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let limited = || axum::middleware::from_fn_with_state(state.clone(), limits::per_source);
    Router::new()
        .route("/healthz", get(reports::healthz))
        .route("/metrics", get(reports::metrics))
        .route(routes::REGISTER, post(agent::register).layer(limited()))
        .route(routes::SESSION, post(agent::session))
        .route(routes::PLAN, get(agent::plan))
        .route(routes::INVENTORY, put(agent::inventory))
        .route(routes::EVENTS, post(agent::events))
        .route("/api/v1/nodes", get(reports::nodes))
        .route(routes::NODES_IMPORT, post(operator::import))
        .route(routes::NODES_MODE, post(operator::mode))
        .route(routes::NODES_SUITE, post(operator::suite))
        .route(routes::NODES_DESTRUCTIVE, post(operator::destructive))
        .route(routes::REPORT, get(reports::report))
        .route("/api/v1/runs/{id}", get(reports::run))
        .route("/api/v1/runs/{id}/junit.xml", get(reports::junit))
        .route("/api/v1/runs/{id}/logs", get(reports::logs))
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login).layer(limited()))
        .route("/nodes/{id}", get(pages::node))
        .route("/runs/{id}", get(pages::run))
        .route("/boot.ipxe", get(boot::boot_ipxe).layer(limited()))
        .route("/ipxe", get(boot::node_ipxe).layer(limited()))
        .route("/artifacts/", get(artifacts::list).layer(limited()))
        .route(
            "/artifacts/{*path}",
            get(artifacts::serve)
                .head(artifacts::serve)
                .layer(limited()),
        )
        // A request (body included) that takes longer than this is cut off: a slow client
        // cannot hold a handler. The bandwidth routes below run as long as a NIC step asks.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline,
        ))
        // The agent's bandwidth endpoints, the same that `kiln-agent serve-bandwidth` serves;
        // here only for an open run's agent (its session token): anyone else could use the
        // collector to flood the boot network.
        .merge(
            kiln_agent::bandwidth::router().route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                open_run_only,
            )),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(traced))
        .with_state(state)
}

/// Runs each request inside a span (method, route, and the run it is about, when its path
/// names one), so one run's story can be read from the log by its run id; a failed request
/// is logged with its status and time.
async fn traced(req: Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    // The route the request matched (`/api/v1/runs/{run}/events`), never the client's own
    // path, which may be anything: a series per path would be a way to flood the metrics.
    let route: String = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().clone();
    // `/api/v1/runs/{id}/…`: the run id, for the span.
    let run = req
        .uri()
        .path()
        .strip_prefix("/api/v1/runs/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|id| id.parse::<i64>().ok());
    let span = tracing::info_span!("request", method = %req.method(), route = %route, run);
    let started = std::time::Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    crate::metrics::METRICS.request(&route, method.as_str(), status.as_u16(), started.elapsed());
    if status.is_server_error() {
        span.in_scope(|| {
            tracing::warn!(
                status = status.as_u16(),
                ms = started.elapsed().as_millis() as u64,
                "request failed"
            )
        });
    } else if status.is_client_error() {
        span.in_scope(|| {
            tracing::info!(
                status = status.as_u16(),
                ms = started.elapsed().as_millis() as u64,
                "request refused"
            )
        });
    }
    response
}

/// Cuts off a request (body included) that takes longer than `request_timeout`.
async fn deadline(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = state.config.request_timeout.get();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({
                "error": format!("the request took longer than {}s (a slow body?)", limit.as_secs())
            })),
        )
            .into_response(),
    }
}

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
    /// Body over the limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The collector will not take more of this now (503): a configured cap is reached.
    #[error("{0}")]
    Unavailable(String),
    /// The collector itself failed (500); details go to the log only.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::Internal(err.into())
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

/// A JSON body whose rejections are answered with a message: 413 over the size limit, 400
/// for anything malformed (syntax, types, unknown fields).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::BadRequest(
                "expected a JSON body (Content-Type: application/json)".into(),
            ));
        }
        let body = match axum::body::Bytes::from_request(req, state).await {
            Ok(body) => body,
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::TooLarge(format!(
                    "request body is over the limit of {MAX_BODY} bytes"
                )));
            }
            Err(r) => return Err(ApiError::BadRequest(r.body_text())),
        };
        // The plain parser first (agents' batches are the hot path); only a body that fails
        // is parsed again, tracking the path, to say where it went wrong.
        if let Ok(value) = serde_json::from_slice(&body) {
            return Ok(Json(value));
        }
        let de = &mut serde_json::Deserializer::from_slice(&body);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(value) => Ok(Json(value)),
            Err(e) if e.path().iter().next().is_none() => Err(ApiError::BadRequest(format!(
                "the JSON body is refused: {}",
                e.inner()
            ))),
            Err(e) => Err(ApiError::BadRequest(format!(
                "the JSON body is refused: {}: {}",
                e.path(),
                e.inner()
            ))),
        }
    }
}

impl AppState {
    /// Requires the admin token.
    pub fn require_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = tokens::bearer(headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "this call needs the admin token (Authorization: Bearer …)".into(),
            )
        })?;
        if tokens::equal(&tokens::hash(token), &self.admin_hash) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "the token is not the admin token".into(),
            ))
        }
    }

    /// Requires the read token (or the admin token) when one is configured.
    pub fn require_reader(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(read) = &self.read_hash else {
            return Ok(());
        };
        let token = tokens::bearer(headers).ok_or_else(|| {
            ApiError::Unauthorized("reports need the read token (Authorization: Bearer …)".into())
        })?;
        let hash = tokens::hash(token);
        if tokens::equal(&hash, read) || tokens::equal(&hash, &self.admin_hash) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "the token is neither the read token nor the admin token".into(),
            ))
        }
    }

    /// Requires that `hash` is run `run_id`'s token and the run open: 403 with any other token,
    /// 409 once the run has its verdict (a finished run is closed).
    pub async fn require_run_hash(&self, run_id: i64, hash: String) -> Result<(), ApiError> {
        let access = self
            .db
            .read(move |c| crate::lifecycle::access(c, run_id, &hash))
            .await?;
        match access {
            crate::lifecycle::RunAccess::Open => Ok(()),
            crate::lifecycle::RunAccess::Closed(verdict) => Err(closed(run_id, verdict)),
            crate::lifecycle::RunAccess::Denied => Err(not_the_runs_token(run_id)),
        }
    }
}

/// The answer to a token that is not the run's — the same whether the run exists or not: a
/// token never learns about other runs.
pub fn not_the_runs_token(run_id: i64) -> ApiError {
    ApiError::Forbidden(format!("the token is not run {run_id}'s token"))
}

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
        let axum::extract::Path(run_id) =
            axum::extract::Path::<i64>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
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

/// Lets a request through only when it holds an open run's session token.
async fn open_run_only(
    _run: OpenRunSession,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    next.run(req).await
}

/// The caller holds the session token of some open run (which run does not matter).
pub struct OpenRunSession;

impl axum::extract::FromRequestParts<AppState> for OpenRunSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = tokens::bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "the bandwidth endpoints need a run's session token (Authorization: Bearer …)"
                    .into(),
            )
        })?;
        let hash = tokens::hash(token);
        let open = state
            .db
            .read(move |c| crate::lifecycle::open_run_with_session(c, &hash))
            .await?;
        match open {
            Some(_) => Ok(OpenRunSession),
            None => Err(ApiError::Forbidden(
                "the token is not the session token of an open run".into(),
            )),
        }
    }
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
