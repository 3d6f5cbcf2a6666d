//! The payload after boot: fetched piece by piece from the sources the collector grants (a
//! neighbour first, the collector last), every piece checked against the manifest's SHA-256
//! before it is kept — nothing unverified is ever served or run — and served, while the run is
//! open, to the nodes still fetching. A source that stalls past the deadline or breaks off is
//! reported and the piece asked for again; one that sends wrong bytes is reported as corrupt
//! and the collector never grants it again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use kiln_protocol::payload::{
    DoneRequest, Grant, GrantsRequest, Manifest, Outcome, Pieces, Source,
};
use kiln_protocol::routes;

/// Where a peer serves piece N.
pub const PIECE_ROUTE: &str = "/payload/pieces/{piece}";

/// The payload as it arrives: its bytes and which pieces are verified.
pub struct Store {
    manifest: Manifest,
    bytes: Mutex<Vec<u8>>,
    have: Mutex<Pieces>,
}

impl Store {
    /// An empty store for `manifest` (checked first: a manifest that cannot be is refused
    /// before anything is allocated for it).
    pub fn new(manifest: Manifest) -> anyhow::Result<Store> {
        manifest.check()?;
        let count = manifest.pieces.len();
        Ok(Store {
            bytes: Mutex::new(vec![0; manifest.size as usize]),
            have: Mutex::new(Pieces::none(count)),
            manifest,
        })
    }

    /// The pieces held.
    pub fn have(&self) -> Pieces {
        self.have.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps piece `index` if `bytes` are it.
    fn keep(&self, index: usize, bytes: &[u8]) -> Result<(), kiln_protocol::payload::PieceError> {
        self.manifest.verify(index, bytes)?;
        let offset = self.manifest.piece_offset(index)? as usize;
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())[offset..offset + bytes.len()]
            .copy_from_slice(bytes);
        self.have
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(index);
        Ok(())
    }

    /// Piece `index`, when held (verified).
    fn piece(&self, index: usize) -> Option<Vec<u8>> {
        if !self
            .have
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .has(index)
        {
            return None;
        }
        let offset = self.manifest.piece_offset(index).ok()? as usize;
        let len = self.manifest.piece_len(index).ok()? as usize;
        Some(self.bytes.lock().unwrap_or_else(|e| e.into_inner())[offset..offset + len].to_vec())
    }

    /// A copy of the whole payload, once every piece is verified.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        let complete = self
            .have
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .complete();
        complete.then(|| self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The piece server: what this node holds, to its peers (read-only; nothing else).
pub fn router(store: Arc<Store>) -> axum::Router {
    async fn piece(
        State(store): State<Arc<Store>>,
        Path(index): Path<usize>,
    ) -> axum::response::Response {
        match store.piece(index) {
            Some(bytes) => ([("content-type", "application/octet-stream")], bytes).into_response(),
            None => (
                axum::http::StatusCode::NOT_FOUND,
                format!("piece {index} is not held here"),
            )
                .into_response(),
        }
    }
    axum::Router::new()
        .route(PIECE_ROUTE, axum::routing::get(piece))
        .with_state(store)
}

/// Where this node's payload came from: bytes by source, and how long it took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fetched {
    /// Bytes from the collector.
    pub from_collector: u64,
    /// Bytes from each peer, by node.
    pub from_peers: BTreeMap<i64, u64>,
    /// Peers that sent a piece failing its hash.
    pub corrupt: Vec<i64>,
    /// Fetches that broke off or stalled, retried elsewhere.
    pub broken: u64,
    /// Seconds from the first grant to the last piece.
    pub secs: f64,
}

/// The run's way to the collector, for the payload calls.
pub struct Run<'a> {
    /// HTTP client.
    pub http: &'a reqwest::Client,
    /// The collector's base URL.
    pub base: &'a str,
    /// The run.
    pub run_id: i64,
    /// Its session token.
    pub token: &'a str,
    /// The port this node serves pieces on (none: it does not serve).
    pub port: Option<u16>,
    /// The longest one piece may take from any source.
    pub deadline: Duration,
}

/// Fetches every piece of `store`'s payload through `run`'s grants; gives up after `patience`
/// without progress.
pub async fn fetch(run: &Run<'_>, store: &Store, patience: Duration) -> anyhow::Result<Fetched> {
    let started = Instant::now();
    let mut report = Fetched::default();
    let mut last_progress = Instant::now();
    while !store.have().complete() {
        anyhow::ensure!(
            last_progress.elapsed() < patience,
            "no piece of the payload arrived for {}s",
            patience.as_secs()
        );
        let grants: Vec<Grant> = run
            .http
            .post(routes::url(run.base, routes::PAYLOAD_GRANTS, run.run_id))
            .bearer_auth(run.token)
            .json(&GrantsRequest {
                have: store.have(),
                port: run.port,
            })
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if grants.is_empty() {
            // Every source that could help is busy: ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let fetches = grants.into_iter().map(|grant| async move {
            let outcome = match one(run, &grant).await {
                Ok(bytes) => match store.keep(grant.piece, &bytes) {
                    Ok(()) => (Outcome::Verified, bytes.len() as u64),
                    Err(_) => (Outcome::Corrupt, 0),
                },
                Err(_) => (Outcome::Broken, 0),
            };
            (grant, outcome)
        });
        for (grant, (outcome, bytes)) in futures_util::future::join_all(fetches).await {
            match (&grant.from, outcome) {
                (Source::Collector, Outcome::Verified) => report.from_collector += bytes,
                (Source::Peer { node, .. }, Outcome::Verified) => {
                    *report.from_peers.entry(*node).or_default() += bytes
                }
                (Source::Peer { node, .. }, Outcome::Corrupt) => report.corrupt.push(*node),
                _ => report.broken += 1,
            }
            if outcome == Outcome::Verified {
                last_progress = Instant::now();
            }
            run.http
                .post(routes::url(run.base, routes::PAYLOAD_DONE, run.run_id))
                .bearer_auth(run.token)
                .json(&DoneRequest { grant, outcome })
                .send()
                .await?
                .error_for_status()?;
        }
    }
    report.secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One piece from its source, within the deadline.
async fn one(run: &Run<'_>, grant: &Grant) -> anyhow::Result<bytes::Bytes> {
    let request = match &grant.from {
        Source::Collector => run
            .http
            .get(
                routes::url(run.base, routes::PAYLOAD_PIECE, run.run_id)
                    .replace("{piece}", &grant.piece.to_string()),
            )
            .bearer_auth(run.token),
        Source::Peer { addr, .. } => run.http.get(format!(
            "http://{addr}{}",
            PIECE_ROUTE.replace("{piece}", &grant.piece.to_string())
        )),
    };
    let fetch = async { anyhow::Ok(request.send().await?.error_for_status()?.bytes().await?) };
    tokio::time::timeout(run.deadline, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("piece {} stalled past {:?}", grant.piece, run.deadline))?
}
