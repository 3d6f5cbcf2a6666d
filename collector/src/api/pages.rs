//! The HTML pages managers and technicians look at: the dashboard (every node, its stage,
//! live progress and last verdict, filterable), a node's history, and a run in full. Templates
//! are minijinja with HTML auto-escaping, so node-supplied text is never markup.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Html;
use minijinja::context;
use serde::Deserialize;

use crate::api::{ApiError, AppState};
use crate::store::queries::{self, Filter};

/// Seconds between dashboard refreshes.
const REFRESH_SECS: u32 = 5;

/// Query of the dashboard.
#[derive(Debug, Default, Deserialize)]
pub struct DashboardQuery {
    rack: Option<String>,
    verdict: Option<String>,
    token: Option<String>,
    /// Page of the node table, from 1.
    page: Option<usize>,
}

/// Nodes per dashboard page: a rack or two at a glance, and a page that renders at once
/// whatever the site's size (the report exports have every node).
const PAGE_ROWS: usize = 200;

/// A page's reader: the `Authorization` header, else the session `/login` opened (its
/// cookie), else `?token=` (browsers cannot add a header to a link).
fn page_auth(state: &AppState, headers: &HeaderMap, token: Option<&str>) -> Result<(), ApiError> {
    if crate::tokens::bearer(headers).is_some() {
        return state.require_reader(headers);
    }
    if super::sessions::cookie(headers).is_some_and(|id| state.sessions.valid(id)) {
        return Ok(());
    }
    match token {
        Some(t) => state.require_reader(&bearer_headers(t)?),
        None => state.require_reader(headers).map_err(|e| match e {
            ApiError::Unauthorized(_) => ApiError::Unauthorized(
                "log in with /login?token=THE-READ-TOKEN (a session ends after 12 hours, or at /logout)".into(),
            ),
            other => other,
        }),
    }
}

fn bearer_headers(token: &str) -> Result<HeaderMap, ApiError> {
    let mut h = HeaderMap::new();
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| ApiError::BadRequest("the token has characters no header can carry".into()))?;
    h.insert(axum::http::header::AUTHORIZATION, value);
    Ok(h)
}

/// `GET /login?token=…`: checks the read (or admin) token and opens a page session whose id
/// (not the token) goes in a cookie, so the pages' links need no `?token=`.
pub async fn login(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let token = q
        .token
        .ok_or_else(|| ApiError::Unauthorized("log in with /login?token=THE-READ-TOKEN".into()))?;
    state.require_reader(&bearer_headers(&token)?)?;
    let id = state.sessions.open()?;
    let cookie = format!(
        "{}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        super::sessions::COOKIE,
        super::sessions::SESSION.as_secs()
    );
    Ok((
        axum::http::StatusCode::SEE_OTHER,
        [
            (axum::http::header::SET_COOKIE, cookie),
            (axum::http::header::LOCATION, "/".to_owned()),
        ],
    )
        .into_response())
}

/// `GET /logout`: ends the page session and clears its cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(id) = super::sessions::cookie(&headers) {
        state.sessions.close(id);
    }
    let cookie = format!(
        "{}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        super::sessions::COOKIE
    );
    (
        axum::http::StatusCode::OK,
        [(axum::http::header::SET_COOKIE, cookie)],
        "logged out\n",
    )
        .into_response()
}

/// `GET /`.
pub async fn dashboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DashboardQuery>,
) -> Result<Html<bytes::Bytes>, ApiError> {
    page_auth(&state, &headers, q.token.as_deref())?;
    let rack = q.rack.filter(|r| !r.is_empty());
    let verdict = q.verdict.filter(|v| !v.is_empty());
    let page = q.page.unwrap_or(1).max(1);
    let templates = state.pages.clone();
    let cache = state.reports.clone();
    let key = crate::api::report_cache::Key::dashboard(rack.clone(), verdict.clone(), page);
    // Rendered on the reader thread too: the whole page at the readers' priority; handed out
    // again while the reports' clock stands still (see `report_cache`).
    let html = state
        .db
        .read(move |c| {
            Ok(cache.through(c, key, |c| {
                render_dashboard(c, &templates, rack, verdict, page).map(Into::into)
            }))
        })
        .await??;
    Ok(Html(html))
}

/// Dashboard page `page` (from 1) of the nodes in `rack` with `verdict`, built from the
/// database (never from [`crate::api::report_cache`]).
pub fn render_dashboard(
    conn: &crate::store::sql::Connection,
    templates: &crate::api::templates::Pages,
    rack: Option<String>,
    verdict: Option<String>,
    page: usize,
) -> Result<bytes::Bytes, ApiError> {
    let filter = Filter {
        rack: rack.clone(),
        verdict: verdict.clone(),
        // One row more than a page says whether there is a next one.
        limit: Some(PAGE_ROWS + 1),
        offset: (page - 1).saturating_mul(PAGE_ROWS),
        ..Filter::default()
    };
    let mut rows = queries::node_rows(conn, &filter)?;
    let consoles = console_readers(conn)?;
    let counts = queries::tally(conn)?;
    let batches = queries::batches(conn)?;
    let more = rows.len() > PAGE_ROWS;
    rows.truncate(PAGE_ROWS);
    let pages = context! {
        page,
        prev => (page > 1).then(|| page - 1),
        next => more.then(|| page + 1),
        first => (page - 1) * PAGE_ROWS + 1,
        last => (page - 1) * PAGE_ROWS + rows.len(),
    };
    let Html(html) = templates.render(
        "dashboard.html",
        context! { rows, consoles, counts, batches, pages, filter => context! { rack, verdict }, refresh => REFRESH_SECS },
    )?;
    Ok(html.into())
}

/// Which collector reads each node's console now (an unexpired lease), by node id.
fn console_readers(
    conn: &crate::store::sql::Connection,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    use crate::store::leases;
    let now = leases::clock(conn).map_err(crate::store::StoreError::from)?;
    Ok(leases::held(conn)
        .map_err(crate::store::StoreError::from)?
        .into_iter()
        .filter(|(_, _, _, expires)| *expires >= now)
        .filter_map(|(resource, owner, _, _)| {
            Some((resource.strip_prefix("console:")?.to_owned(), owner))
        })
        .collect())
}

/// Query of the other pages.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    token: Option<String>,
}

/// `GET /nodes/{id}`.
pub async fn node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(node_id): Path<i64>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, ApiError> {
    page_auth(&state, &headers, q.token.as_deref())?;
    let only = Filter {
        node_id: Some(node_id),
        ..Filter::default()
    };
    let (rows, runs, history) = state
        .db
        .read(move |c| {
            Ok((
                queries::node_rows(c, &only)?,
                queries::node_runs(c, node_id)?,
                queries::node_history(c, node_id)?,
            ))
        })
        .await?;
    let node = rows
        .into_iter()
        .find(|r| r.node_id == node_id)
        .ok_or_else(|| ApiError::NotFound(format!("no node {node_id}")))?;
    state.pages.render(
        "node.html",
        context! { node, runs, history, refresh => minijinja::Value::from(()) },
    )
}

/// `GET /batches/{name}`: the batch's yield, its racks drawn with each node where it sits,
/// what failed most, stage times and the failed nodes; refreshing itself while nodes run.
pub async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, ApiError> {
    page_auth(&state, &headers, q.token.as_deref())?;
    let templates = state.pages.clone();
    let wanted = name.clone();
    state
        .db
        .read(move |c| {
            let Some(s) = queries::batch_summary(c, &wanted)? else {
                return Ok(Err(ApiError::NotFound(format!(
                    "no node is in batch {wanted:?}"
                ))));
            };
            let rows = queries::node_rows(
                c,
                &Filter {
                    batch: Some(wanted.clone()),
                    ..Filter::default()
                },
            )?;
            let racks = super::elevation::racks(&rows);
            let distributions = queries::batch_distributions(c, &wanted)?;
            let refresh = if s.yield_.running > 0 {
                minijinja::Value::from(REFRESH_SECS)
            } else {
                minijinja::Value::from(())
            };
            let pass_pct = s.yield_.pass_pct().map(|p| format!("{p:.1}"));
            Ok(templates.render(
                "batch.html",
                context! { s, racks, distributions, pass_pct, refresh, unit_px => super::elevation::U_PX },
            ))
        })
        .await?
}

/// One measurement of a run among its peers', for a strip drawn on the run page: every
/// peer a tick, this node a dot, the median a line (x in pixels across 300).
#[derive(Debug, serde::Serialize)]
struct AmongPeers {
    step: String,
    metric: String,
    value: String,
    median: String,
    peers: usize,
    ticks: Vec<u32>,
    me: u32,
    median_x: u32,
}

/// The run's throughput metrics that have peers, placed among them.
fn against_peers(
    run: &queries::RunDetail,
    peers: &kiln_protocol::verdict::peers::Peers,
) -> Vec<AmongPeers> {
    let mut out = Vec::new();
    for step in &run.steps {
        for m in &step.metrics {
            let Some(values) = peers.values.get(&(step.name.clone(), m.name.clone())) else {
                continue;
            };
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let median = if sorted.len() % 2 == 0 {
                (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
            } else {
                sorted[sorted.len() / 2]
            };
            let (lo, hi) = sorted
                .iter()
                .chain([m.value].iter())
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            let x = |v: f64| {
                if hi > lo {
                    (10.0 + 280.0 * (v - lo) / (hi - lo)).round() as u32
                } else {
                    150
                }
            };
            out.push(AmongPeers {
                step: step.name.clone(),
                metric: m.name.clone(),
                value: kiln_protocol::readable::readable(m.value, &m.unit),
                median: kiln_protocol::readable::readable(median, &m.unit),
                peers: sorted.len(),
                ticks: sorted.iter().map(|v| x(*v)).collect(),
                me: x(m.value),
                median_x: x(median),
            });
        }
    }
    out
}

/// `GET /runs/{id}`.
pub async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(run_id): Path<i64>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, ApiError> {
    page_auth(&state, &headers, q.token.as_deref())?;
    let (detail, logs, peers, (series, sensors, cycles)) = state
        .db
        .read(move |c| {
            let detail = queries::run_detail(c, run_id)?;
            let series = (
                queries::step_series(c, run_id)?,
                queries::sensor_series(c, run_id)?,
                queries::power_cycles(c, run_id)?,
            );
            let peers = match &detail {
                Some(d) => against_peers(
                    d,
                    &crate::lifecycle::peers::read(c, run_id, d.inventory.as_ref())?,
                ),
                None => Vec::new(),
            };
            Ok((detail, queries::run_logs(c, run_id, 500)?, peers, series))
        })
        .await?;
    let run = detail.ok_or_else(|| ApiError::NotFound(format!("no run {run_id}")))?;
    let refresh = if run.verdict.is_none() {
        minijinja::Value::from(REFRESH_SECS)
    } else {
        minijinja::Value::from(())
    };
    state.pages.render(
        "run.html",
        context! { run, logs, peers, series, sensors, cycles, refresh },
    )
}
