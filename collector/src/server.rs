//! Starting and stopping the collector: data directory, database, tokens, the heartbeat
//! monitor, and the HTTP server with graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{AppState, router};
use crate::config::Config;
use crate::lifecycle::{self, captures::Captures};
use crate::store::Db;
use crate::tokens;
use crate::web::Pages;

/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A collector ready to serve.
pub struct Collector {
    /// Shared state.
    pub state: AppState,
    /// Data directory.
    pub data: PathBuf,
}

impl Collector {
    /// Prepares the data directory (`kiln.sqlite`, `admin.token`) and the state.
    pub fn open(config: Config, data: &Path) -> anyhow::Result<Collector> {
        std::fs::create_dir_all(data)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", data.display()))?;
        let db = Db::open(&data.join("kiln.sqlite"))?;
        let configured = match (&config.admin_token, std::env::var("KILN_ADMIN_TOKEN").ok()) {
            (Some(token), _) => Some(("admin_token in the configuration", token.clone())),
            (None, Some(token)) => Some(("KILN_ADMIN_TOKEN", token)),
            (None, None) => None,
        };
        let admin = match configured {
            Some((what, token)) => {
                tokens::check_configured(what, &token).map_err(anyhow::Error::msg)?;
                token
            }
            None => admin_token_file(data)?,
        };
        if let Some(read) = &config.read_token {
            tokens::check_configured("read_token in the configuration", read)
                .map_err(anyhow::Error::msg)?;
        }
        let read_hash = config
            .read_token
            .as_deref()
            .map(|t| Arc::new(tokens::hash(t)));
        crate::boot::install_defaults(data)?;
        let state = AppState {
            db,
            config: Arc::new(config),
            admin_hash: Arc::new(tokens::hash(&admin)),
            read_hash,
            pages: Arc::new(Pages::new()?),
            data: Arc::new(data.to_owned()),
            digests: Arc::new(crate::artifacts::Digests::default()),
            captures: Arc::new(crate::lifecycle::captures::Captures::default()),
        };
        Ok(Collector {
            state,
            data: data.to_owned(),
        })
    }

    /// Serves on `listener` until `shutdown` resolves; in-flight requests get a grace period.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let db = self.state.db.clone();
        let (restarted, memtests) = db.call(lifecycle::collector_started).await?;
        if restarted > 0 {
            tracing::info!(
                runs = restarted,
                "open runs get a fresh heartbeat window after the restart"
            );
        }
        for run_id in memtests {
            tracing::warn!(
                run_id,
                "memtest stage failed: the collector restarted while it ran"
            );
        }
        let monitor = tokio::spawn(monitor(db, self.state.captures.clone()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = axum::serve(listener, router(self.state)).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let mut stop_rx = stop_rx;
        let result = tokio::select! {
            r = server => r.map_err(anyhow::Error::from),
            _ = async {
                let _ = stop_rx.wait_for(|s| *s).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("in-flight requests did not finish within {}s; stopping anyway", SHUTDOWN_GRACE.as_secs());
                Ok(())
            }
        };
        monitor.abort();
        result
    }
}

/// Reads `DATA/admin.token`, creating it (mode 0600) with a fresh token the first time.
fn admin_token_file(data: &Path) -> anyhow::Result<String> {
    let path = data.join("admin.token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let token = tokens::mint()?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
    tracing::info!(path = %path.display(), "generated the admin token");
    Ok(token)
}

/// Fails runs whose agents went silent, every second.
async fn monitor(db: Db, captures: Arc<Captures>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match db
            .call(|c| lifecycle::lost_contact(c, crate::store::now_ms()))
            .await
        {
            Ok((lost, ended)) => {
                captures.stop(&ended);
                for run_id in lost {
                    tracing::warn!(run_id, "run failed: lost contact with its agent");
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "heartbeat monitor could not read the database")
            }
        }
    }
}

/// Binds the configured address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
