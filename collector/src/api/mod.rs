//! The HTTP API and pages: `fn router(state)` so tests drive the whole app in process, with
//! the middleware every request passes (a span and metrics, a deadline, body limits). At the
//! bottom: [`state`] (what handlers share), [`error`] (one error type answers every failure:
//! client errors with a message, server errors logged in full under a request id and answered
//! generically) and [`auth`] (the token extractors); the handlers, one file per audience, sit
//! on them.

mod agent;
pub mod artifacts;
pub mod auth;
pub mod boot;
mod cabling;
pub mod digests;
pub mod elevation;
pub mod error;
pub mod evidence;
pub mod ingest;
pub mod limits;
mod operator;
pub mod pages;
mod pairs;
pub mod payload;
pub mod report_cache;
pub mod report_rows;
pub mod reports;
pub mod sessions;
pub mod state;
pub mod swarms;
pub mod templates;
pub mod workbook;

use axum::Router;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use kiln_protocol::routes;
use serde::de::DeserializeOwned;

use auth::open_run_only;
pub use auth::{Admin, Reader, RunAuth, RunToken, Source};
pub use error::{ApiError, closed, not_the_runs_token, too_many_unknown};
pub use state::AppState;

/// Largest request body accepted (an event batch is at most 1000 events).
pub const MAX_BODY: usize = 4 << 20;

/// What the boot network is served: what nodes need and nothing else — the boot scripts,
/// artifacts, the agent's calls and the bandwidth endpoints. Every operator route and page
/// is a 404 here: whoever sniffs or spoofs this network never reaches them.
pub fn boot_router(state: AppState) -> Router {
    let limited = || axum::middleware::from_fn_with_state(state.clone(), per_source);
    Router::new()
        .route("/healthz", get(reports::healthz))
        .route(
            routes::REGISTER,
            post(agent::register_boot).layer(limited()),
        )
        .route(routes::SESSION, post(agent::session))
        .route(routes::PLAN, get(agent::plan))
        .route(routes::INVENTORY, put(agent::inventory))
        .route(routes::CYCLE, put(agent::cycle))
        .route(routes::EVENTS, post(agent::events))
        .route(routes::PAYLOAD, get(payload::get_manifest))
        .route(routes::PAYLOAD_GRANTS, post(payload::grants))
        .route(routes::PAIR, post(pairs::ask))
        .route(routes::PAIR_DONE, post(pairs::done))
        .route(routes::PAYLOAD_DONE, post(payload::done))
        .route(routes::PAYLOAD_PIECE, get(payload::piece))
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
        // here only for an open run's agent (its session token), within its suite's limits.
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

/// What the management listener serves (over TLS): operators' calls, reports, pages,
/// metrics, and registrations with the admin token.
pub fn management_router(state: AppState) -> Router {
    let limited = axum::middleware::from_fn_with_state(state.clone(), per_source);
    let routes = operator_routes(&state)
        .route("/healthz", get(reports::healthz))
        .route(routes::REGISTER, post(agent::register).layer(limited));
    layered(routes, state)
}

/// Operators' calls, reports, pages and metrics.
fn operator_routes(state: &AppState) -> Router<AppState> {
    let limited = || axum::middleware::from_fn_with_state(state.clone(), per_source);
    Router::new()
        .route("/metrics", get(reports::metrics))
        .route("/api/v1/nodes", get(reports::nodes))
        .route(routes::NODES_IMPORT, post(operator::import))
        .route(routes::NODES_MODE, post(operator::mode))
        .route(routes::NODES_SUITE, post(operator::suite))
        .route(routes::NODES_BATCH, post(operator::batch))
        .route(routes::NODES_VERIFY, post(operator::verify))
        .route(routes::BATCH, get(reports::batch))
        .route(routes::WAIVERS, post(operator::waive).get(reports::waivers))
        .route(routes::COLLECTORS, get(reports::collectors))
        .route(routes::CABLING, post(cabling::import).get(cabling::list))
        .route(routes::WAIVER_REVOKE, post(operator::revoke_waiver))
        .route(routes::BATCH_WORKBOOK, get(reports::batch_workbook))
        .route(routes::NODES_DESTRUCTIVE, post(operator::destructive))
        .route(routes::REPORT, get(reports::report))
        .route("/api/v1/runs/{id}", get(reports::run))
        .route("/api/v1/runs/{id}/junit.xml", get(reports::junit))
        .route("/api/v1/runs/{id}/logs", get(reports::logs))
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login).layer(limited()))
        .route("/logout", get(pages::logout))
        .route("/nodes/{id}", get(pages::node))
        .route("/runs/{id}", get(pages::run))
        .route("/batches/{name}", get(pages::batch))
        .route(routes::EVIDENCE, get(reports::evidence))
}

/// `routes` with what every request passes: a deadline, the body limit, a span and metrics.
fn layered(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline,
        ))
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

/// The per-source rate limit of the routes anyone may call ([`limits`]): 429 with
/// `Retry-After` past the source's rate.
pub async fn per_source(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = &state.config.unauthenticated_rate;
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(source) = source {
        if let Err(wait) = state.limiter.take(source, limit.per_second, limit.burst) {
            let secs = wait.ceil().max(1.0) as u64;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                axum::Json(serde_json::json!({
                    "error": format!(
                        "{source} is over {} requests/s to this route; retry in {secs}s",
                        limit.per_second
                    )
                })),
            )
                .into_response();
        }
    }
    next.run(req).await
}
