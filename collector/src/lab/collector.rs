//! The lab's own collector: its boot listener on 127.0.0.1 (or the bridge's collector
//! address), a fresh data directory, every node's console
//! and QMP power driver configured, the nodes labelled (rack `lab`), given their suites, set
//! to verify and granted consent to destroy their own scratch disks.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::NodePlan;
use crate::config::Source;
use crate::config::{Config, NodeAccess};
use crate::lifecycle::Mode;
use crate::memtest::power::Power;
use crate::server::Collector;
use crate::store::queries::{self, Label, Selector};

/// The running collector and the runtime it runs on.
pub(super) struct LabCollector {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) db: crate::store::Db,
    /// Its boot listener's port (on 127.0.0.1, or the bridge's collector address).
    pub(super) port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl LabCollector {
    /// Starts it serving and arms the nodes.
    pub(super) fn start(
        plans: &[NodePlan],
        data: &Path,
        heartbeat: std::time::Duration,
        boot_ip: std::net::Ipv4Addr,
    ) -> anyhow::Result<LabCollector> {
        let access: Vec<NodeAccess> = plans
            .iter()
            .map(|p| NodeAccess {
                mac: Some(p.mac.clone()),
                rack: None,
                console: Some(Source::Tcp(format!("127.0.0.1:{}", p.console))),
                power: Some(Power::Qmp(p.qmp.clone())),
            })
            .collect();
        let config = Config {
            after_verify: crate::config::AfterVerify::Hold,
            nodes: access,
            heartbeat_timeout: kiln_protocol::units::HumanDuration(heartbeat),
            // A host the lab did not plan (the rogue peer) runs node 1's suite.
            default_suite: plans.first().map_or_else(String::new, |p| p.suite.clone()),
            ..Config::default()
        };

        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let listeners = rt.block_on(async {
            anyhow::Ok(crate::server::Listeners {
                boot: tokio::net::TcpListener::bind((boot_ip, 0)).await?,
                management: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            })
        })?;
        let port = listeners.boot.local_addr()?.port();
        let collector = Collector::open(config, data)?;
        let db = collector.state.db.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(collector.serve(listeners, async move {
            let _ = stop_rx.await;
        }));
        // Label the nodes, give each its suite, arm them.
        let labels: Vec<Label> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| Label {
                mac: p.mac.clone(),
                rack: "lab".into(),
                slot: format!("{}", i + 1),
                hostname: p.name.clone(),
                // One delivery: `kiln report --batch lab` tells how it went.
                batch: Some("lab".into()),
            })
            .collect();
        let assignments: Vec<(String, String)> = plans
            .iter()
            .map(|p| (p.mac.clone(), p.suite.clone()))
            .collect();
        rt.block_on(db.call(move |c| {
            queries::import_labels(c, &labels)?;
            for (mac, suite) in &assignments {
                queries::assign_suite(c, &Selector::Mac(mac.clone()), suite)?;
                // A fresh lab database: no run is open, so nothing ends here.
                let _ = crate::lifecycle::set_mode(c, &Selector::Mac(mac.clone()), Mode::Verify)?;
                // The lab's scratch disks are its own to destroy.
                crate::lifecycle::set_destructive(
                    c,
                    &Selector::Mac(mac.clone()),
                    true,
                    "kiln lab (its own scratch disks)",
                )?;
            }
            Ok(())
        }))?;

        Ok(LabCollector {
            rt,
            db,
            port,
            stop: Some(stop_tx),
            server: Some(server),
        })
    }

    /// Imports the cabling map: each (node, interface, port of the lab's switch).
    pub(super) fn import_cabling(&self, map: &[(String, String, String)]) -> anyhow::Result<()> {
        let lines: Vec<queries::MapLine> = map
            .iter()
            .enumerate()
            .map(|(i, (node, interface, port))| queries::MapLine {
                line: i + 1,
                node: node.clone(),
                cable: kiln_protocol::verdict::cabling::Cable {
                    interface: interface.clone(),
                    switch: super::bridge::SWITCH.into(),
                    port: port.clone(),
                },
            })
            .collect();
        self.rt
            .block_on(self.db.call(move |c| queries::import_cabling(c, &lines)))?
            .map_err(|e| anyhow::anyhow!("the lab's cabling map: {e}"))?;
        Ok(())
    }

    /// A flag Ctrl-C raises.
    pub(super) fn interrupt_flag(&self) -> Arc<AtomicBool> {
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        self.rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        interrupted
    }

    /// Stops serving and waits for the server to end.
    pub(super) fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = self.rt.block_on(server);
        }
    }
}
