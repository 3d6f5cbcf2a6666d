//! `kiln serve`: run the collector until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::Config;
use crate::server::{Collector, Listeners};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Configuration file (YAML).
    #[arg(long, value_name = "kiln.yaml")]
    config: Option<PathBuf>,
    /// Data directory (default: the config's `data`, else ./kiln-data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Address the boot network reaches (default: the config's `listen`, else 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address of the management listener, HTTPS (default: the config's `management.listen`,
    /// else 127.0.0.1:8443).
    #[arg(long, value_name = "ADDR")]
    management: Option<SocketAddr>,
}

pub(super) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(listen) = args.management {
        config.management.listen = listen;
    }
    let data = args
        .data
        .or_else(|| config.data.clone())
        .unwrap_or_else(|| PathBuf::from("kiln-data"));
    // Logs go to stderr, coloured only on a terminal; stdout carries the one-line banner.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        let collector = Collector::open(config, &data)?;
        let boot = listeners.boot.local_addr()?;
        let management = listeners.management.local_addr()?;
        tracing::info!(%boot, %management, data = %data.display(), "kiln collector listening");
        println!(
            "kiln collector: boot network on http://{boot}, management on https://{management} (certificate {}; data {})",
            collector.tls.fingerprint,
            data.display()
        );
        collector.serve(listeners, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
