//! Operators' mutating calls (admin token): label nodes from a CSV, set modes, assign suites.

use axum::extract::State;

use super::{Admin, ApiError, AppState, Json};
use crate::lifecycle;
use crate::lifecycle::Mode;
use crate::memtest::power::{Action, Power};
use kiln_protocol::api::{
    BatchRequest, DestructiveRequest, Imported, ModeRequest, NodesChanged, SuiteRequest,
    VerifyNode, VerifyRequest, VerifyStarted, WaiveRequest, Waiver,
};

use crate::store::queries::{self, Label, Selector};

/// Most rows one import may carry.
const MAX_ROWS: usize = 100_000;

/// The rows of an operator's CSV with their index from 0: blank lines, `#` comments and a
/// first line starting with `header` skipped, fields trimmed.
pub(super) fn csv_rows<'a>(
    text: &'a str,
    header: &'a str,
) -> impl Iterator<Item = (usize, Vec<&'a str>)> + 'a {
    text.lines().enumerate().filter_map(move |(i, line)| {
        let line = line.trim();
        let skip = line.is_empty()
            || line.starts_with('#')
            || (i == 0 && line.to_lowercase().starts_with(header));
        (!skip).then(|| (i, line.split(',').map(str::trim).collect()))
    })
}

/// Parses `mac,rack,slot,hostname[,batch]` lines (a header line is allowed); every bad line
/// is named.
pub fn parse_labels(text: &str) -> Result<Vec<Label>, String> {
    let mut labels = Vec::new();
    let mut problems = Vec::new();
    for (i, fields) in csv_rows(text, "mac,") {
        let (mac, rack, slot, hostname, batch) = match fields.as_slice() {
            [mac, rack, slot, hostname] => (mac, rack, slot, hostname, None),
            [mac, rack, slot, hostname, batch] => (
                mac,
                rack,
                slot,
                hostname,
                Some(batch).filter(|b| !b.is_empty()),
            ),
            _ => {
                problems.push(format!(
                    "line {}: {} fields; expected mac,rack,slot,hostname[,batch]",
                    i + 1,
                    fields.len()
                ));
                continue;
            }
        };
        let mac = mac.to_lowercase();
        if let Err(e) = kiln_protocol::wire::check_mac(&mac) {
            problems.push(format!("line {}: {e}", i + 1));
            continue;
        }
        for (name, value) in [("rack", rack), ("slot", slot), ("hostname", hostname)]
            .into_iter()
            .chain(batch.map(|b| ("batch", b)))
        {
            if let Err(e) = kiln_protocol::wire::check_field(name, value) {
                problems.push(format!("line {}: {e}", i + 1));
            }
        }
        labels.push(Label {
            mac,
            rack: rack.to_string(),
            slot: slot.to_string(),
            hostname: hostname.to_string(),
            batch: batch.map(|b| b.to_string()),
        });
    }
    if labels.len() > MAX_ROWS {
        problems.push(format!(
            "{} rows; at most {MAX_ROWS} per import",
            labels.len()
        ));
    }
    if problems.is_empty() {
        Ok(labels)
    } else {
        Err(problems.join("\n"))
    }
}

pub(super) async fn import(
    State(state): State<AppState>,
    _admin: Admin,
    body: String,
) -> Result<axum::Json<Imported>, ApiError> {
    let labels =
        parse_labels(&body).map_err(|e| ApiError::BadRequest(format!("nothing imported:\n{e}")))?;
    let (updated, created) = state
        .db
        .call(move |c| queries::import_labels(c, &labels))
        .await?;
    Ok(axum::Json(Imported { updated, created }))
}

pub(super) async fn mode(
    State(state): State<AppState>,
    _admin: Admin,
    Json(req): Json<ModeRequest>,
) -> Result<axum::Json<NodesChanged>, ApiError> {
    check_selector(&req.select)?;
    let mode = req.mode;
    // A node's open run ends (the operator interrupted it), and its capture with it.
    let (n, ended) = state
        .db
        .call(move |c| lifecycle::set_mode(c, &req.select, mode))
        .await?;
    state.captures.stop(&ended);
    Ok(axum::Json(NodesChanged { nodes: n }))
}

/// The operator's consent to destructive disk steps, per node; recorded in each node's
/// history under the admin token's id.
pub(super) async fn destructive(
    State(state): State<AppState>,
    _admin: Admin,
    Json(req): Json<DestructiveRequest>,
) -> Result<axum::Json<NodesChanged>, ApiError> {
    check_selector(&req.select)?;
    let who = format!("admin token {}", &state.admin_hash[..12]);
    let n = state
        .db
        .call(move |c| lifecycle::set_destructive(c, &req.select, req.allow, &who))
        .await?;
    Ok(axum::Json(NodesChanged { nodes: n }))
}

pub(super) async fn suite(
    State(state): State<AppState>,
    _admin: Admin,
    Json(req): Json<SuiteRequest>,
) -> Result<axum::Json<NodesChanged>, ApiError> {
    check_selector(&req.select)?;
    if req.suite.is_empty()
        || !req
            .suite
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(ApiError::BadRequest(format!(
            "suite name {:?}; expected letters, digits, '.', '_' and '-'",
            req.suite
        )));
    }
    let n = state
        .db
        .call(move |c| queries::assign_suite(c, &req.select, &req.suite))
        .await?;
    Ok(axum::Json(NodesChanged { nodes: n }))
}

/// `kiln verify`: arms the selected nodes (mode verify, any open run ends) and power-cycles
/// each through its configured driver, once; says for each what happened or what the
/// technician must do.
pub(super) async fn verify(
    State(state): State<AppState>,
    _admin: Admin,
    Json(req): Json<VerifyRequest>,
) -> Result<axum::Json<VerifyStarted>, ApiError> {
    check_selector(&req.select)?;
    let select = req.select.clone();
    let nodes = state
        .db
        .read(move |c| queries::selected_nodes(c, &select))
        .await?;
    let select = req.select.clone();
    let (_, ended) = state
        .db
        .call(move |c| lifecycle::set_mode(c, &select, Mode::Verify))
        .await?;
    state.captures.stop(&ended);
    let mut out = Vec::with_capacity(nodes.len());
    for (row, macs) in nodes {
        let name = row
            .hostname
            .clone()
            .unwrap_or_else(|| format!("node {}", row.node_id));
        let power = state
            .config
            .access_for(&macs, row.rack.as_deref())
            .and_then(|a| a.power.clone());
        let (reset, said) = match power {
            None => (
                false,
                "no power driver configured (kiln.yaml `nodes:`): reset it by hand".to_owned(),
            ),
            Some(Power::Manual) => (false, "manual power: reset it by hand now".to_owned()),
            Some(p) => match p.act(&name, Action::Reset).await {
                Ok(()) => (true, format!("reset through {}", p.driver())),
                Err(e) => (
                    false,
                    format!("{} failed: {e:#}; reset it by hand", p.driver()),
                ),
            },
        };
        out.push(VerifyNode {
            node_id: row.node_id,
            hostname: row.hostname,
            run_before: row.run_id,
            reset,
            power: said,
        });
    }
    Ok(axum::Json(VerifyStarted { nodes: out }))
}

/// Puts nodes in a batch (a purchase order, a delivery), or takes them out of theirs.
pub(super) async fn batch(
    State(state): State<AppState>,
    _admin: Admin,
    Json(req): Json<BatchRequest>,
) -> Result<axum::Json<NodesChanged>, ApiError> {
    check_selector(&req.select)?;
    if let Some(batch) = &req.batch {
        kiln_protocol::wire::check_field("batch", batch).map_err(ApiError::BadRequest)?;
    }
    let n = state
        .db
        .call(move |c| queries::set_batch(c, &req.select, req.batch.as_deref()))
        .await?;
    Ok(axum::Json(NodesChanged { nodes: n }))
}

/// Waives a fault code of one node, with why, who (the admin token's id) and until when;
/// 201 with the waiver as kept.
pub(super) async fn waive(
    State(state): State<AppState>,
    _admin: Admin,
    Json(req): Json<WaiveRequest>,
) -> Result<(axum::http::StatusCode, axum::Json<Waiver>), ApiError> {
    kiln_protocol::wire::check_field("code", &req.code).map_err(ApiError::BadRequest)?;
    if req.code.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "code is empty; expected the fault code to waive, as reports show it (fan.speed)"
                .into(),
        ));
    }
    kiln_protocol::verdict::waivable(&req.code).map_err(ApiError::BadRequest)?;
    if req.reason.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "reason is empty; a waiver says why the node may ship with this fault".into(),
        ));
    }
    kiln_protocol::wire::check_field("reason", &req.reason).map_err(ApiError::BadRequest)?;
    if let Some(ticket) = &req.ticket {
        kiln_protocol::wire::check_field("ticket", ticket).map_err(ApiError::BadRequest)?;
    }
    let holds = match &req.expires {
        None => kiln_protocol::api::DEFAULT_WAIVER,
        Some(text) => {
            let d: kiln_protocol::units::HumanDuration = text
                .parse()
                .map_err(|e| ApiError::BadRequest(format!("expires: {e}")))?;
            if d.get() > kiln_protocol::api::MAX_WAIVER {
                return Err(ApiError::BadRequest(format!(
                    "expires: {text} is longer than a waiver may hold ({} days); grant it again when it runs out",
                    kiln_protocol::api::MAX_WAIVER.as_secs() / 86_400
                )));
            }
            d.get()
        }
    };
    let expires_ms = crate::store::now_ms() + holds.as_millis() as i64;
    let who = format!("admin token {}", &state.admin_hash[..12]);
    let (node, code) = (req.node, req.code.clone());
    let waiver = state
        .db
        .call(move |c| queries::add_waiver(c, &req, expires_ms, &who))
        .await?;
    match waiver {
        Ok(waiver) => Ok((axum::http::StatusCode::CREATED, axum::Json(waiver))),
        Err(queries::NotWaived::NoNode) => Err(ApiError::NotFound(format!("no node {node}"))),
        Err(queries::NotWaived::NoRun) => Err(ApiError::BadRequest(format!(
            "node {node} has no such finished run: a waiver is granted on a run's fault"
        ))),
        Err(queries::NotWaived::NotInRun { run, codes }) => Err(ApiError::BadRequest(format!(
            "run {run} of node {node} has no fault {code}; its codes: {}",
            if codes.is_empty() {
                "none".to_owned()
            } else {
                codes.join(", ")
            }
        ))),
    }
}

/// Revokes a waiver: kept in the log with when and by whom; 409 when it was revoked already.
pub(super) async fn revoke_waiver(
    State(state): State<AppState>,
    _admin: Admin,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let who = format!("admin token {}", &state.admin_hash[..12]);
    match state
        .db
        .call(move |c| queries::revoke_waiver(c, id, &who))
        .await?
    {
        None => Err(ApiError::NotFound(format!("no waiver {id}"))),
        Some(false) => Err(ApiError::Conflict(format!(
            "waiver {id} is revoked already"
        ))),
        Some(true) => Ok(axum::Json(serde_json::json!({ "revoked": id }))),
    }
}

/// `{"all": false}` would select nothing: say so rather than answer "0 nodes".
fn check_selector(select: &Selector) -> Result<(), ApiError> {
    if matches!(select, Selector::All(false)) {
        return Err(ApiError::BadRequest(
            "select: {\"all\": false} selects no node; name a rack, mac or node, or all: true"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_labels;

    #[test]
    fn csv_rows_are_checked_and_every_bad_line_named() {
        let good =
            parse_labels("mac,rack,slot,hostname\n52:54:00:AA:00:01,R12,U07,node-07\n").unwrap();
        assert_eq!(good[0].mac, "52:54:00:aa:00:01");
        assert_eq!(good[0].rack, "R12");
        assert_eq!(good[0].batch, None);
        // A fifth column is the batch; an empty one leaves the node's batch alone.
        let with_batch = parse_labels(
            "mac,rack,slot,hostname,batch\n52:54:00:aa:00:01,R12,U07,n7,PO-1187\n52:54:00:aa:00:02,R12,U08,n8,\n",
        )
        .unwrap();
        assert_eq!(with_batch[0].batch.as_deref(), Some("PO-1187"));
        assert_eq!(with_batch[1].batch, None);
        let err = parse_labels("52:54:00:aa:00:01,R12,U07\nnot-a-mac,R1,U1,h\n").unwrap_err();
        assert_eq!(
            err,
            "line 1: 3 fields; expected mac,rack,slot,hostname[,batch]\nline 2: \"not-a-mac\" is not a MAC address like aa:bb:cc:dd:ee:ff"
        );
    }
}
