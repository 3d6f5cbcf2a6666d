//! What every handler shares: the database, the configuration, token hashes, templates,
//! digests, captures, rate limits — and the checks of the tokens a request carries against
//! them. At the bottom of the HTTP layer: handlers import it, it imports no handler.

use std::sync::Arc;

use axum::http::HeaderMap;

use super::digests::Digests;
use super::error::{ApiError, closed, not_the_runs_token};
use super::limits::RateLimiter;
use super::templates::Pages;
use crate::config::Config;
use crate::store::Db;
use crate::tokens;

/// What every handler shares: one allocation behind one reference count. axum clones the
/// state for every request (each middleware with state, each `State` extractor) and drops
/// it after; with its parts cloned one by one that was a dozen atomic counts up and down per
/// clone, each a cache line the two CPUs handed back and forth — about 7 % of the tokio
/// workers' samples under the load bench's saturated round (`perf`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of a collector made of `shared`.
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
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
    pub digests: Arc<Digests>,
    /// Running memtest86+ console captures.
    pub captures: Arc<crate::lifecycle::captures::Captures>,
    /// Per-source rate limits on unauthenticated routes.
    pub limiter: Arc<RateLimiter>,
    /// Report bodies kept while what they show is unchanged.
    pub reports: Arc<super::report_cache::ReportCache>,
    /// Page sessions `/login` opened.
    pub sessions: super::sessions::Sessions,
    /// Peer-assisted boot: the payload's tracker.
    pub swarms: super::swarms::Swarms,
    /// This collector's id among those sharing the database (its host and boot port), once
    /// it serves.
    pub collector_id: std::sync::OnceLock<String>,
    /// Agents' event batches on their way to the database.
    pub ingest: super::ingest::IngestQueue,
}

impl AppState {
    /// Digest of the RAM image nodes boot now, when it has been built: from the artifact
    /// digest cache (hashed once per change of the file, on a blocking thread), never read
    /// whole on an async worker for each boot.
    /// The sha256 of every boot artifact present now (kernel, initramfs, memtest86+ for BIOS
    /// and UEFI), by file name, as JSON: a run's provenance. From the digest cache.
    pub async fn artifact_digests(&self) -> Option<String> {
        let mut digests = std::collections::BTreeMap::new();
        for name in [
            "vmlinuz",
            "initramfs.img",
            "memtest86+x64.bin",
            "memtest86+x64.efi",
        ] {
            if let Ok(d) = self
                .digests
                .of(&self.data.join("artifacts").join(name))
                .await
            {
                digests.insert(name, d);
            }
        }
        (!digests.is_empty()).then(|| serde_json::json!(digests).to_string())
    }

    pub async fn image_digest(&self) -> Option<String> {
        self.digests
            .of(&self.data.join("artifacts/initramfs.img"))
            .await
            .ok()
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
