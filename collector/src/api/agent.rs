//! What agents call: register an ad-hoc run, fetch the plan, post inventory and events.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kiln_protocol::wire::{
    BatchAck, EventBatch, Inventory, RegisterRequest, RegisterResponse, RunPlan, check_field,
};

use super::{ApiError, AppState, Json, RunAuth};
use crate::config::Registration;
use crate::store::queries::{self, NewRun};
use crate::tokens;

pub(super) async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, axum::Json<RegisterResponse>), ApiError> {
    if state.config.registration == Registration::Admin {
        state.require_admin(&headers)?;
    }
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
    let (node_id, run_id) = state
        .db
        .call(move |c| {
            let node_id =
                queries::find_or_register_node(c, &req.identity, req.hostname.as_deref())?;
            let run_id = queries::create_run(
                c,
                &NewRun {
                    node_id,
                    suite_name: &suite_name,
                    suite_text: &req.suite_text,
                    token_hash: &token_hash,
                    stages: &["linux"],
                    allow_destructive: false,
                    heartbeat_secs,
                    image_digest: None,
                },
            )?;
            Ok((node_id, run_id))
        })
        .await?;
    tracing::info!(node_id, run_id, "registered an ad-hoc run");
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

pub(super) async fn plan(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
) -> Result<axum::Json<RunPlan>, ApiError> {
    let plan = state
        .db
        .call(move |c| {
            queries::touch_run(c, run_id)?;
            queries::plan(c, run_id)
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run {run_id}")))?;
    Ok(axum::Json(plan))
}

pub(super) async fn inventory(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
    Json(inventory): Json<Inventory>,
) -> Result<StatusCode, ApiError> {
    validate_inventory(&inventory).map_err(|e| ApiError::BadRequest(format!("inventory: {e}")))?;
    state
        .db
        .call(move |c| queries::put_inventory(c, run_id, &inventory))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn validate_inventory(inv: &Inventory) -> Result<(), String> {
    let sys = &inv.system;
    for (name, value) in [
        ("vendor", &sys.vendor),
        ("product", &sys.product),
        ("serial", &sys.serial),
        ("uuid", &sys.uuid),
        ("bios_version", &sys.bios_version),
    ] {
        if let Some(v) = value {
            check_field(name, v)?;
        }
    }
    check_field("cpu.brand", &inv.cpu.brand)?;
    if inv.cpu.flags.len() > 1024 || inv.disks.len() > 1024 || inv.nics.len() > 256 {
        return Err("too many CPU flags, disks or NICs".into());
    }
    for d in &inv.disks {
        check_field("disk name", &d.name)?;
        for v in [&d.model, &d.serial].into_iter().flatten() {
            check_field("disk field", v)?;
        }
    }
    for n in &inv.nics {
        check_field("nic name", &n.name)?;
    }
    if let Some(dimms) = &inv.memory.dimms {
        if dimms.len() > 512 {
            return Err("too many DIMM slots".into());
        }
    }
    Ok(())
}

pub(super) async fn events(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
    Json(batch): Json<EventBatch>,
) -> Result<axum::Json<BatchAck>, ApiError> {
    batch.validate().map_err(ApiError::BadRequest)?;
    let acked = state
        .db
        .call(move |c| queries::ingest(c, run_id, &batch))
        .await?;
    Ok(axum::Json(BatchAck { acked }))
}
