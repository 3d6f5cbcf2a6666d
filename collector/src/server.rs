//! Starting and stopping the collector: data directory, database, tokens, the heartbeat
//! monitor, and the HTTP server with graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::api::templates::Pages;
use crate::api::{AppState, boot_router, management_router};
use crate::config::Config;
use crate::lifecycle::{self, captures::Captures};
use crate::store::Db;
use crate::tokens;

/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A collector ready to serve.
pub struct Collector {
    /// Shared state.
    pub state: AppState,
    /// Data directory.
    pub data: PathBuf,
    /// The management listener's TLS.
    pub tls: crate::tls::ServerTls,
}

/// Where a collector listens: the boot network, and the management network (TLS).
pub struct Listeners {
    /// Boot scripts, artifacts, the agents.
    pub boot: tokio::net::TcpListener,
    /// Operators, pages, reports.
    pub management: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds both addresses of `config`.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            boot: bind(config.listen).await?,
            management: bind(config.management.listen).await?,
        })
    }

    /// Both on 127.0.0.1, ports chosen by the system (tests, the lab).
    pub async fn loopback() -> anyhow::Result<Listeners> {
        Ok(Listeners {
            boot: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            management: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        })
    }
}

impl Collector {
    /// Prepares the data directory (`kiln.sqlite`, `admin.token`) and the state.
    pub fn open(config: Config, data: &Path) -> anyhow::Result<Collector> {
        std::fs::create_dir_all(data)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", data.display()))?;
        let db = match &config.database {
            crate::config::Database::Sqlite => Db::open(&data.join("kiln.sqlite"))?,
            crate::config::Database::Postgres(url) => Db::open_postgres(url)?,
        };
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
        crate::api::boot::install_defaults(data)?;
        let tls = match (&config.management.cert, &config.management.key) {
            (Some(cert), Some(key)) => crate::tls::server(data, Some((cert, key)))?,
            (None, None) => crate::tls::server(data, None)?,
            _ => anyhow::bail!(
                "management: cert and key go together (or leave both out for a self-signed certificate)"
            ),
        };
        let swarms = crate::api::swarms::Swarms::new(config.payload_mbps);
        let state = AppState::new(crate::api::state::Shared {
            db,
            config: Arc::new(config),
            admin_hash: Arc::new(tokens::hash(&admin)),
            read_hash,
            pages: Arc::new(Pages::new()?),
            data: Arc::new(data.to_owned()),
            digests: Arc::new(crate::api::digests::Digests::default()),
            captures: Arc::new(crate::lifecycle::captures::Captures::default()),
            limiter: Arc::new(crate::api::limits::RateLimiter::default()),
            reports: Arc::default(),
            sessions: Default::default(),
            swarms,
            collector_id: Default::default(),
            ingest: Default::default(),
        });
        Ok(Collector {
            state,
            data: data.to_owned(),
            tls,
        })
    }

    /// Serves both listeners until `shutdown` resolves; in-flight requests get a grace period.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let db = self.state.db.clone();
        let boot_addr = listeners.boot.local_addr()?;
        let id = collector_id(boot_addr);
        let _ = self.state.collector_id.set(id.clone());
        let me = id.clone();
        let restarted = db
            .call(move |c| lifecycle::collector_started(c, &me))
            .await?;
        if restarted.reopened > 0 {
            tracing::info!(
                runs = restarted.reopened,
                "open runs get a fresh heartbeat window after the restart"
            );
        }
        for run_id in restarted.memtests {
            tracing::warn!(
                run_id,
                "memtest stage failed: the collector restarted while it ran"
            );
        }
        rerun(&db, &self.state.config, restarted.rearmed).await;
        let monitor = tokio::spawn(monitor(db.clone(), self.state.captures.clone()));
        tokio::spawn(power_cycles(
            db,
            self.state.config.clone(),
            self.state.captures.clone(),
        ));
        tokio::spawn(heartbeats(
            crate::memtest::stage::Deps {
                db: self.state.db.clone(),
                config: self.state.config.clone(),
                captures: self.state.captures.clone(),
                me: id,
            },
            self.state.config.public_url.clone(),
            boot_addr,
        ));
        let config = self.state.config.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.config.clone());
        let (boot, management) = tokio::join!(
            accept_loop(
                listeners.boot,
                None,
                boot_router(self.state.clone()),
                &config,
                stopped(stop_rx.clone()),
            ),
            accept_loop(
                listeners.management,
                Some(acceptor),
                management_router(self.state),
                &config,
                stopped(stop_rx),
            ),
        );
        monitor.abort();
        boot.and(management)
    }
}

/// Accepts connections until `shutdown`, serving each with HTTP/1.1 under the configured
/// limits: at most `max_connections` open (past it, new ones are closed at once, so a flood of
/// silent connections cannot starve the agents that hold one), `header_timeout` to send
/// headers or start the next request. Then lets in-flight requests finish for up to
/// [`SHUTDOWN_GRACE`].
async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    config: &Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = config.max_connections.clamp(1, u32::MAX as usize);
    let header_timeout = config.header_timeout.get();
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut last_refusal_log = std::time::Instant::now() - Duration::from_secs(60);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if last_refusal_log.elapsed() > Duration::from_secs(1) {
                tracing::warn!(%peer, "connection limit ({max}) reached: closing new connections");
                last_refusal_log = std::time::Instant::now();
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            // The permit lives as long as the connection, and past it in a NIC stream's raw
            // socket when the connection is upgraded (the bandwidth routes hold it).
            let permit = kiln_agent::bandwidth::ConnectionHold(Arc::new(permit));
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req.extensions_mut().insert(permit.clone());
                    let mut app = app.clone();
                    async move { tower_service::Service::call(&mut app, req).await }
                },
            );
            match tls {
                None => serve_connection(stream, service, header_timeout, &mut stop).await,
                Some(tls) => {
                    // The handshake gets the same time as headers do.
                    match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, service, header_timeout, &mut stop).await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake took too long"),
                    }
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    // Every connection returns its permit when it closes.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(max as u32)).await;
    if drained.is_err() {
        tracing::warn!(
            "in-flight requests did not finish within {}s; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}

/// Serves HTTP/1.1 on one connection (TCP, or TLS over it) until it closes, or until `stop`
/// turns, then lets its request in flight finish.
async fn serve_connection<IO, S>(
    io: IO,
    service: S,
    header_timeout: Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = async {
            let _ = stop.wait_for(|s| *s).await;
        } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
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
                crate::metrics::METRICS
                    .lost_contacts
                    .inc_by(lost.len() as u64);
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

/// This collector's id among those sharing a database: its host and boot port.
fn collector_id(boot: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "collector".to_owned());
    format!("{host}:{}", boot.port())
}

/// This collector's heartbeat in the database, every lease round: the collectors sharing it
/// see it live (`kiln collectors`), and the leases it holds stay its own; it counts the live
/// ones, for its share of the database's ingest ([`Db::set_sharers`]). Its id is its host
/// and boot port; its URL the configured `public_url`, else its boot address. Then the round
/// of console leases ([`crate::memtest::leases::round`]): the nodes it re-arms are reset.
async fn heartbeats(
    deps: crate::memtest::stage::Deps,
    public_url: Option<String>,
    boot: SocketAddr,
) {
    use crate::store::leases;
    let url = public_url.unwrap_or_else(|| format!("http://{boot}"));
    let mut tick = tokio::time::interval(leases::ROUND);
    loop {
        tick.tick().await;
        let (id, url) = (deps.me.clone(), url.clone());
        let beat = deps
            .db
            .call(move |c| {
                let now = leases::clock(c)?;
                leases::heartbeat(c, &id, &url, now)?;
                Ok(leases::live(c, now)?.len())
            })
            .await;
        match beat {
            Ok(live) => deps.db.set_sharers(live),
            Err(err) => {
                tracing::error!(error = %err, "the collector's heartbeat could not be written");
                continue;
            }
        }
        match crate::memtest::leases::round(&deps).await {
            Ok(taken) => {
                for (node_id, run_id) in taken.tails {
                    crate::memtest::stage::follow_tail_on(&deps, node_id, run_id).await;
                }
                rerun(&deps.db, &deps.config, taken.rearmed).await;
            }
            Err(err) => tracing::error!(error = %err, "the console lease round failed"),
        }
    }
}

/// Resets the nodes re-armed after their memtest stage lost its reader, through their power
/// drivers, so they boot into their new run; a node without one waits for a technician.
async fn rerun(db: &Db, config: &crate::config::Config, nodes: Vec<i64>) {
    use crate::memtest::power::Action;
    for node_id in nodes {
        let keys = db
            .read(move |c| crate::store::queries::node_access_keys(c, node_id))
            .await;
        let power = keys.ok().and_then(|k| {
            config
                .access_for(&k.0, k.1.as_deref())
                .and_then(|a| a.power.clone())
        });
        match power {
            Some(power) => match power.act(&format!("node {node_id}"), Action::Reset).await {
                Ok(()) => tracing::info!(
                    node_id,
                    "re-armed after its memtest reader was lost; reset to run again"
                ),
                Err(err) => {
                    tracing::error!(node_id, error = %format!("{err:#}"), "re-armed, but the power driver failed: reset the node by hand")
                }
            },
            None => tracing::warn!(
                node_id,
                "re-armed after its memtest reader was lost; no power driver: reset the node by hand"
            ),
        }
    }
}

/// Sends the power cycles runs are owed, every second: each through its node's power driver;
/// a node without one, or a driver that fails, fails its run's cycles stage.
async fn power_cycles(db: Db, config: Arc<crate::config::Config>, captures: Arc<Captures>) {
    use crate::memtest::power::Action;
    use kiln_protocol::suite::CycleKind;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let due = match db
            .call(|c| lifecycle::cycles::take_due(c, crate::store::now_ms()))
            .await
        {
            Ok(due) => due,
            Err(err) => {
                tracing::error!(error = %err, "power cycles: cannot read the database");
                continue;
            }
        };
        for due in due {
            let (db, config, captures) = (db.clone(), config.clone(), captures.clone());
            tokio::spawn(async move {
                let node_id = due.node_id;
                let power = match db
                    .read(move |c| crate::store::queries::node_access_keys(c, node_id))
                    .await
                {
                    Ok(keys) => config
                        .access_for(&keys.0, keys.1.as_deref())
                        .and_then(|a| a.power.clone()),
                    Err(err) => {
                        tracing::error!(node_id, error = %err, "power cycles: node unreadable");
                        None
                    }
                };
                let action = match due.kind {
                    CycleKind::Warm => Action::Warm,
                    CycleKind::Cold => Action::Cold,
                };
                tracing::info!(
                    run_id = due.run_id,
                    node_id,
                    cycle = due.cycle,
                    action = action.name(),
                    "power cycle"
                );
                let failed = match power {
                    Some(power) => power
                        .act(&format!("node {node_id}"), action)
                        .await
                        .err()
                        .map(|e| format!("{} power driver: {e:#}", power.driver())),
                    None => Some(format!(
                        "no power driver is configured for node {node_id} (kiln.yaml `nodes:`)"
                    )),
                };
                if let Some(why) = failed {
                    tracing::error!(run_id = due.run_id, cycle = due.cycle, "{why}");
                    let (run_id, cycle) = (due.run_id, due.cycle);
                    match db
                        .call(move |c| lifecycle::cycles::power_failed(c, run_id, cycle, &why))
                        .await
                    {
                        Ok(ended) => captures.stop(&ended),
                        Err(err) => tracing::error!(run_id, error = %err, "cannot fail the cycle"),
                    }
                }
            });
        }
    }
}

/// Binds the configured address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
