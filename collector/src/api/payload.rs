//! The payload routes of an open run (its session token): the manifest, the grants the
//! tracker gives (a peer of the rack first, the collector last), how a grant ended, and the
//! collector's own pieces. The payload is `DATA/artifacts/payload.img`, cut into pieces and
//! hashed once per change of the file, on a blocking thread.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::response::IntoResponse;
use kiln_protocol::payload::{
    DoneRequest, Grant, GrantsRequest, Manifest, Outcome, PIECE_SIZE, Source,
};

use super::swarms::Inner;
use super::{ApiError, AppState, Json, RunAuth};
use crate::tracker::{self, Fetched, Tracker};

/// The payload file, in the data directory's artifacts.
pub const FILE: &str = "artifacts/payload.img";

/// How long a grant holds a source's slot when its fetcher never says how it ended (it
/// crashed, or will not): far longer than a piece takes at any link a node still boots on.
pub const GRANT_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// The manifest of the payload as it is now; 404 when this collector has none.
async fn manifest(state: &AppState) -> Result<Arc<Manifest>, ApiError> {
    let path = state.data.join(FILE);
    let meta = tokio::fs::metadata(&path).await.map_err(|_| {
        ApiError::NotFound("this collector serves no payload (no artifacts/payload.img)".into())
    })?;
    let stamp = (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
    if let Some((kept, m)) = &state.swarms.lock().manifest {
        if *kept == stamp {
            return Ok(m.clone());
        }
    }
    let made = tokio::task::spawn_blocking(move || -> std::io::Result<Manifest> {
        Ok(Manifest::of(&std::fs::read(&path)?, PIECE_SIZE))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("{FILE}: {e}")))?;
    let made = Arc::new(made);
    let mut inner = state.swarms.lock();
    // Requests that found no manifest make it at once; only another payload (another digest)
    // is a new swarm, in which nobody holds anything yet.
    let same = inner
        .manifest
        .as_ref()
        .is_some_and(|(_, kept)| kept.sha256 == made.sha256);
    if !same {
        inner.tracker = Some(Tracker::new(tracker::Settings::default()));
        inner.addrs.clear();
    }
    inner.manifest = Some((stamp, made.clone()));
    Ok(made)
}

/// `GET …/payload`: the manifest.
pub(super) async fn get_manifest(
    State(state): State<AppState>,
    RunAuth(_run): RunAuth,
) -> Result<axum::Json<Manifest>, ApiError> {
    Ok(axum::Json((*manifest(&state).await?).clone()))
}

/// The node and rack of run `run_id`.
async fn node_of(state: &AppState, run_id: i64) -> Result<(i64, Option<String>), ApiError> {
    state
        .db
        .read(move |c| {
            c.query_row(
                "SELECT n.id, n.rack FROM runs r JOIN nodes n ON n.id = r.node_id WHERE r.id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(crate::store::StoreError::from)
        })
        .await
        .map_err(ApiError::from)
}

/// Whether node `node` may serve: its latest run is still open and no step of it has failed
/// or errored so far (a node that is failing serves nobody, whatever the hashes would catch).
async fn serving(state: &AppState, node: i64) -> Result<bool, ApiError> {
    let open: Option<bool> = state
        .db
        .read(move |c| {
            use crate::store::sql::OptionalExtension;
            c.query_row(
                "SELECT r.verdict IS NULL
                        AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.outcome IN ('fail', 'error'))
                 FROM nodes n JOIN runs r ON r.id = n.latest_run WHERE n.id = ?1",
                [node],
                |r| r.get(0),
            )
            .optional()
            .map_err(crate::store::StoreError::from)
        })
        .await?;
    Ok(open == Some(true))
}

/// `POST …/payload/grants`: what the node may fetch now.
pub(super) async fn grants(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(req): Json<GrantsRequest>,
) -> Result<axum::Json<Vec<Grant>>, ApiError> {
    let manifest = manifest(&state).await?;
    req.have
        .check(manifest.pieces.len())
        .map_err(ApiError::BadRequest)?;
    let (node, rack) = node_of(&state, run_id).await?;
    let mut out = Vec::new();
    // A peer whose run closed since it joined is dropped and asked again, a few times at most.
    for _ in 0..8 {
        let grant = {
            let mut inner = state.swarms.lock();
            let Inner { tracker, addrs, .. } = &mut *inner;
            let tracker = tracker.get_or_insert_with(|| Tracker::new(Default::default()));
            tracker.expire(crate::store::now_ms().max(0) as u64, GRANT_LIFETIME_MS);
            if !tracker.joined(node) {
                tracker.join(
                    node,
                    &manifest.sha256,
                    manifest.pieces.len(),
                    rack.as_deref(),
                    Some(req.have.clone()),
                );
                match req.port {
                    Some(port) => {
                        addrs.insert(node, SocketAddr::new(from.ip(), port).to_string());
                    }
                    None => tracker.exclude(node),
                }
            }
            tracker
                .next(node)
                .map_err(|e| ApiError::Conflict(e.to_string()))?
        };
        let Some(grant) = grant else { break };
        let from = match grant.source {
            tracker::Source::Collector => Source::Collector,
            tracker::Source::Peer(peer) => {
                let addr = state.swarms.lock().addrs.get(&peer).cloned();
                match addr {
                    Some(addr) if serving(&state, peer).await? => Source::Peer { node: peer, addr },
                    _ => {
                        let mut inner = state.swarms.lock();
                        if let Some(t) = inner.tracker.as_mut() {
                            let _ = t.done(node, grant, Fetched::Broken);
                            t.leave(peer);
                        }
                        continue;
                    }
                }
            }
        };
        out.push(Grant {
            piece: grant.piece,
            from,
        });
    }
    Ok(axum::Json(out))
}

/// `POST …/payload/done`: how a granted fetch ended; a corrupt piece's peer is never granted
/// again.
pub(super) async fn done(
    State(state): State<AppState>,
    RunAuth(run_id): RunAuth,
    Json(req): Json<DoneRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let (node, _) = node_of(&state, run_id).await?;
    let source = match req.grant.from {
        Source::Collector => tracker::Source::Collector,
        Source::Peer { node, .. } => tracker::Source::Peer(node),
    };
    let how = match req.outcome {
        Outcome::Verified => Fetched::Verified,
        Outcome::Broken => Fetched::Broken,
        Outcome::Corrupt => Fetched::Corrupt,
    };
    let complete = {
        let mut inner = state.swarms.lock();
        let tracker = inner
            .tracker
            .as_mut()
            .ok_or_else(|| ApiError::Conflict(format!("node {node} is fetching no payload")))?;
        tracker
            .done(
                node,
                tracker::Grant {
                    piece: req.grant.piece,
                    source,
                },
                how,
            )
            .map_err(|e| ApiError::Conflict(e.to_string()))?
    };
    let peer = match source {
        tracker::Source::Collector => None,
        tracker::Source::Peer(peer) => Some(peer),
    };
    match (req.outcome, peer) {
        (Outcome::Verified, _) => {
            let manifest = manifest(&state).await?;
            let bytes = manifest
                .piece_len(req.grant.piece)
                .map_err(|e| ApiError::BadRequest(e.to_string()))? as i64;
            state
                .db
                .call(move |c| {
                    crate::store::queries::payload_piece(c, run_id, peer, bytes)?;
                    if complete {
                        crate::store::queries::payload_complete(c, run_id)?;
                    }
                    Ok(())
                })
                .await?;
        }
        (how, Some(peer)) => {
            let corrupt = how == Outcome::Corrupt;
            if corrupt {
                tracing::warn!(
                    run_id,
                    peer,
                    piece = req.grant.piece,
                    "a peer served a piece that failed its hash; it serves no more"
                );
            }
            state
                .db
                .call(move |c| crate::store::queries::payload_fault(c, run_id, peer, corrupt))
                .await?;
        }
        (_, None) => {}
    }
    Ok(axum::Json(serde_json::json!({ "complete": complete })))
}

/// `GET …/payload/pieces/{piece}`: one piece from the collector.
pub(super) async fn piece(
    State(state): State<AppState>,
    RunAuth(_run): RunAuth,
    Path((_id, index)): Path<(i64, usize)>,
) -> Result<axum::response::Response, ApiError> {
    let manifest = manifest(&state).await?;
    let (offset, len) = manifest
        .piece_offset(index)
        .and_then(|o| Ok((o, manifest.piece_len(index)?)))
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    let path = state.data.join(FILE);
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len as usize];
        std::fs::File::open(&path)?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("{FILE}: {e}")))?;
    if let Some(up) = &state.swarms.up {
        up.take(bytes.len()).await;
    }
    Ok(([("content-type", "application/octet-stream")], bytes).into_response())
}
