//! What managers pull: nodes with their latest verdicts (JSON, CSV), one run in full, JUnit
//! XML per run, logs; and `/healthz`, `/metrics`.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::report_rows::render_json;
use super::{ApiError, AppState, Reader, report_cache};
use bytes::Bytes;
use kiln_protocol::api::ReportFormat;
use kiln_protocol::verdict::Verdict;

use crate::store::StoreError;
use crate::store::queries::{self, Filter, NodeRow};

/// Report query: `?rack=R12&verdict=fail&since=7d&format=csv`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Only this rack.
    pub rack: Option<String>,
    /// Only this batch.
    pub batch: Option<String>,
    /// Only this verdict (`pass`, `degraded`, `unattested`, `fail`, `error`, `incomplete`,
    /// `running`).
    pub verdict: Option<String>,
    /// Only runs started within this long (`7d`, `12h`).
    pub since: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<ReportFormat>,
}

impl ReportQuery {
    /// The store filter, or a message saying what is wrong.
    pub fn filter(&self) -> Result<Filter, ApiError> {
        let since_ms = match &self.since {
            None => None,
            Some(text) => {
                let d: kiln_protocol::units::HumanDuration = text
                    .parse()
                    .map_err(|e| ApiError::BadRequest(format!("since: {e}")))?;
                Some(crate::store::now_ms() - d.get().as_millis() as i64)
            }
        };
        if let Some(v) = &self.verdict {
            if ![
                "pass",
                "degraded",
                "unattested",
                "fail",
                "error",
                "incomplete",
                "running",
            ]
            .contains(&v.as_str())
            {
                return Err(ApiError::BadRequest(format!(
                    "verdict {v:?}; expected pass, degraded, unattested, fail, error, incomplete or running"
                )));
            }
        }
        Ok(Filter {
            rack: self.rack.clone(),
            batch: self.batch.clone(),
            verdict: self.verdict.clone(),
            since_ms,
            ..Filter::default()
        })
    }
}

pub(super) async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state
        .db
        .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<i64>(0))?))
        .await?;
    Ok("ok\n")
}

pub(super) async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let (nodes, runs) = state.db.read(queries::counts).await?;
    let metrics = &crate::metrics::METRICS;
    metrics.set_state(
        nodes,
        &runs,
        state.captures.counts(),
        state.db.queued(),
        state.db.ingest_share(),
    );
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, text) = metrics.encode(accept);
    Ok(([("content-type", content_type)], text).into_response())
}

pub(super) async fn nodes(
    State(state): State<AppState>,
    _reader: Reader,
) -> Result<axum::Json<Vec<NodeRow>>, ApiError> {
    Ok(axum::Json(
        state
            .db
            .read(|c| queries::node_rows(c, &Filter::default()))
            .await?,
    ))
}

pub(super) async fn report(
    State(state): State<AppState>,
    _reader: Reader,
    Query(query): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let filter = query.filter()?;
    let format = query.format.unwrap_or(ReportFormat::Json);
    let content_type = match format {
        ReportFormat::Json => "application/json",
        ReportFormat::Csv => "text/csv; charset=utf-8",
    };
    let cache = state.reports.clone();
    // Built on the reader thread, the whole report at the readers' priority; handed out again
    // while the reports' clock stands still (see `report_cache`).
    let body = state
        .db
        .read(move |c| match report_cache::Key::report(&filter, format) {
            Some(key) if format == ReportFormat::Csv => cache.through(c, key, |c| {
                Ok::<_, StoreError>(Bytes::from(render_report(c, &filter, format)?).into())
            }),
            Some(key) => cache.through(c, key, |c| {
                let (body, rows) = render_json(c, &filter)?;
                Ok::<_, StoreError>(report_cache::Built {
                    body: body.into(),
                    rows: Some(std::sync::Arc::new(rows)),
                })
            }),
            None => Ok(render_report(c, &filter, format)?.into()),
        })
        .await?;
    Ok(([("content-type", content_type)], body).into_response())
}

/// Query of the waiver log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaiversQuery {
    node: Option<i64>,
}

/// The waiver log, newest first (every waiver ever given, revoked and expired ones too).
pub(super) async fn waivers(
    State(state): State<AppState>,
    _reader: Reader,
    Query(q): Query<WaiversQuery>,
) -> Result<axum::Json<Vec<kiln_protocol::api::Waiver>>, ApiError> {
    Ok(axum::Json(
        state
            .db
            .read(move |c| queries::read_waivers(c, q.node, crate::store::now_ms()))
            .await?,
    ))
}

/// `GET /api/v1/collectors`: the collectors sharing the database, their heartbeats (by the
/// database's clock) and the leases each holds.
pub(super) async fn collectors(
    State(state): State<AppState>,
    _reader: Reader,
) -> Result<axum::Json<Vec<kiln_protocol::api::CollectorState>>, ApiError> {
    use crate::store::leases;
    Ok(axum::Json(
        state
            .db
            .read(|c| {
                let now = leases::clock(c)?;
                Ok(leases::collectors(c, now)?)
            })
            .await?,
    ))
}

/// A batch's yield, failure pareto, stage times and failed nodes (JSON), or 404.
pub(super) async fn batch(
    State(state): State<AppState>,
    _reader: Reader,
    Path(name): Path<String>,
) -> Result<axum::Json<kiln_protocol::api::BatchSummary>, ApiError> {
    let wanted = name.clone();
    state
        .db
        .read(move |c| queries::batch_summary(c, &wanted))
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::NotFound(format!("no node is in batch {name:?}")))
}

/// A node's RMA evidence for its latest run (ZIP), or 404.
pub(super) async fn evidence(
    State(state): State<AppState>,
    _reader: Reader,
    Path(node_id): Path<i64>,
) -> Result<Response, ApiError> {
    let zip = state
        .db
        .read(move |c| {
            let rows = queries::node_rows(
                c,
                &Filter {
                    node_id: Some(node_id),
                    ..Filter::default()
                },
            )?;
            let Some(node) = rows.into_iter().next() else {
                return Ok(Err(format!("no node {node_id}")));
            };
            let Some(run_id) = node.run_id else {
                return Ok(Err(format!("node {node_id} has not run yet")));
            };
            let Some(run) = queries::run_detail(c, run_id)? else {
                return Ok(Err(format!("no run {run_id}")));
            };
            let logs = queries::run_logs(c, run_id, 5000)?;
            Ok(Ok(super::evidence::evidence_zip(&node, &run, &logs)))
        })
        .await?
        .map_err(ApiError::NotFound)?
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the evidence of node {node_id}: {e}")))?;
    Ok((
        [
            ("content-type", "application/zip".to_owned()),
            (
                "content-disposition",
                format!("attachment; filename=\"kiln-node-{node_id}-evidence.zip\""),
            ),
        ],
        zip,
    )
        .into_response())
}

/// A batch as an XLSX workbook (summary, nodes, faults), or 404.
pub(super) async fn batch_workbook(
    State(state): State<AppState>,
    _reader: Reader,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let wanted = name.clone();
    // Built on the reader thread: the whole workbook at the readers' priority.
    let book = state
        .db
        .read(move |c| {
            let Some(summary) = queries::batch_summary(c, &wanted)? else {
                return Ok(None);
            };
            let rows = queries::node_rows(
                c,
                &Filter {
                    batch: Some(wanted.clone()),
                    ..Filter::default()
                },
            )?;
            Ok(Some(super::workbook::batch_workbook(&summary, &rows)))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no node is in batch {name:?}")))?
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the workbook of batch {name:?}: {e}")))?;
    let file = name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
    Ok((
        [
            (
                "content-type",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet".to_owned(),
            ),
            (
                "content-disposition",
                format!("attachment; filename=\"batch-{file}.xlsx\""),
            ),
        ],
        book,
    )
        .into_response())
}

/// The report over the nodes `filter` selects, as JSON or CSV, built from the database
/// (never from [`report_cache`]), each row written out as it is read: no list of every node's
/// row is held besides the text.
pub fn render_report(
    conn: &crate::store::sql::Connection,
    filter: &Filter,
    format: ReportFormat,
) -> Result<Vec<u8>, StoreError> {
    if format == ReportFormat::Csv {
        let mut out = CSV_HEADER.to_owned();
        queries::each_node_row(conn, filter, |row| {
            csv_row(&row, &mut out);
            Ok(())
        })?;
        return Ok(out.into_bytes());
    }
    Ok(render_json(conn, filter)?.0)
}

/// The first line of the CSV report (one line per node after it).
const CSV_HEADER: &str =
    "node_id,hostname,rack,slot,batch,serial,macs,mode,ad_hoc,run_id,suite,stage,verdict,faults\n";

/// One node's line of the CSV report, appended to `out`.
fn csv_row(r: &NodeRow, out: &mut String) {
    let fields = [
        r.node_id.to_string(),
        r.hostname.clone().unwrap_or_default(),
        r.rack.clone().unwrap_or_default(),
        r.slot.clone().unwrap_or_default(),
        r.batch.clone().unwrap_or_default(),
        r.serial.clone().unwrap_or_default(),
        r.macs.replace(',', " "),
        r.mode.to_string(),
        if r.ad_hoc { "yes" } else { "no" }.to_owned(),
        r.run_id.map(|i| i.to_string()).unwrap_or_default(),
        r.suite.clone().unwrap_or_default(),
        r.stage.map(|s| s.to_string()).unwrap_or_default(),
        match (r.verdict, r.run_id) {
            (Some(_), _) => r.verdict_text(),
            (None, Some(_)) => "running".into(),
            (None, None) => String::new(),
        },
        r.faults.join("; "),
    ];
    out.push_str(
        &fields
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(","),
    );
    out.push('\n');
}

fn csv_field(text: &str) -> String {
    // Control characters shown, not obeyed; quote when needed; defuse spreadsheet formulas
    // in node-supplied text.
    let text = kiln_protocol::bounds::visible(text);
    // Spreadsheets skip leading blanks before they look for a formula (` =2+3` computes).
    let text = if text
        .trim_start_matches([' ', '\u{a0}', '\u{3000}'])
        .starts_with(['=', '+', '-', '@', '\t', '\r', '|', '%'])
    {
        format!("'{text}")
    } else {
        text
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// One run in full, or 404.
async fn load_run(state: &AppState, run_id: i64) -> Result<queries::RunDetail, ApiError> {
    state
        .db
        .read(move |c| queries::run_detail(c, run_id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run {run_id}")))
}

pub(super) async fn run(
    State(state): State<AppState>,
    _reader: Reader,
    Path(run_id): Path<i64>,
) -> Result<Response, ApiError> {
    let detail = load_run(&state, run_id).await?;
    Ok(axum::Json(detail).into_response())
}

pub(super) async fn junit(
    State(state): State<AppState>,
    _reader: Reader,
    Path(run_id): Path<i64>,
) -> Result<Response, ApiError> {
    let detail = load_run(&state, run_id).await?;
    let mut properties = detail.provenance.properties();
    // A waived failure says so in every export: the verdict as shown, and what was waived.
    let node_id = detail.node_id;
    let node = state
        .db
        .read(move |c| {
            queries::node_rows(
                c,
                &Filter {
                    node_id: Some(node_id),
                    ..Filter::default()
                },
            )
        })
        .await?;
    if let Some(row) = node.first().filter(|r| r.run_id == Some(run_id)) {
        if let Some(w) = &row.waiver {
            properties.push(("verdict_shown".into(), row.verdict_text()));
            properties.push(("waived".into(), w.codes.join(", ")));
        }
    }
    let xml = kiln_protocol::junit::render(&kiln_protocol::junit::JunitRun {
        suite: &detail.suite,
        host: None,
        serial: detail
            .inventory
            .as_ref()
            .and_then(|i| i.system.serial.as_deref()),
        agent: None,
        started_ms: detail.started_ms as u64,
        duration_ms: detail
            .finished_ms
            .map_or(0, |f| (f - detail.started_ms).max(0) as u64),
        // A run without its verdict yet is not a pass.
        verdict: detail.verdict.unwrap_or(Verdict::Incomplete),
        expect: detail.expect.as_ref(),
        steps: &detail.steps,
        findings: &detail.findings,
        properties: &properties,
    });
    Ok(([("content-type", "application/xml")], xml).into_response())
}

/// Query of the logs endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    /// Lines in the page, at most [`LOG_PAGE`].
    limit: Option<i64>,
    /// Only lines before this sequence number: the next page back is `before=` the first
    /// line's `seq` of this one.
    before: Option<i64>,
}

/// Most log lines one answer carries (each at most 16 KiB).
pub const LOG_PAGE: i64 = 1000;

/// `GET /api/v1/runs/{id}/logs?limit=N&before=SEQ`: a page of the run's log, the newest first
/// read, oldest first shown; `X-Kiln-Before` names the cursor of the page before it when
/// there is one.
pub(super) async fn logs(
    State(state): State<AppState>,
    _reader: Reader,
    Path(run_id): Path<i64>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(LOG_PAGE);
    if !(1..=LOG_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit {limit}: a page holds 1 to {LOG_PAGE} lines; read earlier ones with before= the first line's seq"
        )));
    }
    let before = q.before.unwrap_or(i64::MAX);
    let lines = state
        .db
        .read(move |c| queries::run_logs_before(c, run_id, limit, before))
        .await?;
    let mut response = axum::Json(&lines).into_response();
    if let Some(first) = lines.first().filter(|_| lines.len() as i64 == limit) {
        if let Ok(value) = axum::http::HeaderValue::from_str(&first.seq.to_string()) {
            response.headers_mut().insert("x-kiln-before", value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
    }
}
