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

/// Where a guest on the user network reaches the lab's boot address (QEMU's forward).
const GUEST_BASE: &str = "http://10.0.2.100";

/// The running collector and the runtime it runs on; with several, the others (`kiln serve`
/// children) and the PostgreSQL they share.
pub(super) struct LabCollector {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) db: crate::store::Db,
    /// The boot address's port (on 127.0.0.1, or the bridge's collector address): the
    /// collector's own listener, or the proxy in front of several.
    pub(super) port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    others: std::sync::Mutex<Vec<Other>>,
    /// Dropped after everything that uses it.
    cluster: Option<crate::lab::postgres::Cluster>,
}

/// Another collector: `kiln serve` sharing the lab's PostgreSQL, killed when the lab ends.
struct Other {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Other {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LabCollector {
    /// Starts it serving and arms the nodes.
    pub(super) fn start(
        plans: &[NodePlan],
        data: &Path,
        heartbeat: std::time::Duration,
        boot_ip: std::net::Ipv4Addr,
        shared: &super::Collectors,
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
        let dir = data.parent().unwrap_or(data);
        log_to(&dir.join("collector-1.log"));
        let cluster = match shared.count {
            0 | 1 => None,
            _ => Some(crate::lab::postgres::Cluster::start_sized(
                &dir.join("pg"),
                crate::lab::postgres::Sizing::Site,
            )?),
        };
        let mut config = Config {
            after_verify: crate::config::AfterVerify::Hold,
            nodes: access,
            heartbeat_timeout: kiln_protocol::units::HumanDuration(heartbeat),
            // A host the lab did not plan (the rogue peer) runs node 1's suite.
            default_suite: plans.first().map_or_else(String::new, |p| p.suite.clone()),
            database: cluster
                .as_ref()
                .map_or(crate::config::Database::Sqlite, |c| {
                    crate::config::Database::Postgres(c.url(crate::lab::postgres::USER))
                }),
            ..Config::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let reach = Reach::of(boot_ip, cluster.is_some());
        let listeners = rt.block_on(async {
            anyhow::Ok(crate::server::Listeners {
                boot: tokio::net::TcpListener::bind((reach.ip, 0)).await?,
                management: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            })
        })?;
        let own = listeners.boot.local_addr()?;
        if reach.direct {
            config.public_url = Some(format!("http://{own}"));
        }
        let others = match &cluster {
            Some(_) => (1..shared.count)
                .map(|i| Other::start(dir, i + 1, &config, plans, shared.kiln.as_deref(), reach))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let port = match others.is_empty() {
            true => own.port(),
            false => {
                // The boot address: a proxy in front of them all, for the first request.
                let front = rt.block_on(tokio::net::TcpListener::bind((boot_ip, 0)))?;
                let port = front.local_addr()?.port();
                let mut backends = vec![own];
                backends.extend(others.iter().map(|o| o.addr));
                rt.spawn(super::proxy::serve(front, backends));
                println!(
                    "kiln lab: {} collectors share PostgreSQL behind port {port}",
                    others.len() + 1
                );
                port
            }
        };
        let collector = Collector::open(config, data)?;
        let db = collector.state.db.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(collector.serve(listeners, async move {
            let _ = stop_rx.await;
        }));
        rt.block_on(arm(&db, plans))?;

        Ok(LabCollector {
            rt,
            db,
            port,
            stop: Some(stop_tx),
            server: Some(server),
            others: std::sync::Mutex::new(others),
            cluster,
        })
    }

    /// Kills the first other collector still running with SIGKILL; says which, or `None`
    /// when there is none.
    pub(super) fn kill_other(&self) -> Option<String> {
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        let other = others.first_mut()?;
        let pid = other.child.id();
        let _ = other.child.kill();
        let _ = other.child.wait();
        let addr = other.addr;
        others.remove(0);
        Some(format!(
            "killed the collector at {addr} (PID {pid}) with SIGKILL"
        ))
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

    /// Stops serving and waits for the server to end; then the other collectors and the
    /// database they shared.
    pub(super) fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = self.rt.block_on(server);
        }
        self.others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        drop(self.cluster.take());
    }
}

/// Labels the lab's nodes (rack `lab`, one batch), gives each its suite and arms it, with
/// consent to destroy its own scratch disks.
async fn arm(db: &crate::store::Db, plans: &[NodePlan]) -> anyhow::Result<()> {
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
    db.call(move |c| {
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
    })
    .await?;
    Ok(())
}

/// The lab's own collector logs to `path` (info and up, or as `RUST_LOG` says), as the
/// others log beside it; a process that has its logging set up already keeps it.
fn log_to(path: &Path) {
    let Ok(file) = std::fs::File::create(path) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
}

/// Where the lab's collectors listen and how the nodes reach each, when there are several.
#[derive(Clone, Copy)]
struct Reach {
    /// The address each listens on.
    ip: std::net::Ipv4Addr,
    /// Whether the nodes reach each collector at its own address, as on a site (the bridge
    /// network: the one that served a node's script is the one it talks to from then on, the
    /// others its fallbacks), rather than only through the proxy at the boot address (the
    /// user network: QEMU forwards one address to the host).
    direct: bool,
}

impl Reach {
    fn of(boot_ip: std::net::Ipv4Addr, several: bool) -> Reach {
        match (several, boot_ip.is_loopback()) {
            // One collector: it is the boot address.
            (false, _) => Reach {
                ip: boot_ip,
                direct: false,
            },
            (true, true) => Reach {
                ip: std::net::Ipv4Addr::LOCALHOST,
                direct: false,
            },
            (true, false) => Reach {
                ip: boot_ip,
                direct: true,
            },
        }
    }
}

impl Other {
    /// `kiln serve` number `n` on a port of its own, with a data directory beside the lab's
    /// (the same suites and artifacts), `config`'s settings, listening and reached as
    /// `reach` says; ready once it says where it listens.
    fn start(
        dir: &Path,
        n: usize,
        config: &Config,
        plans: &[NodePlan],
        kiln: Option<&Path>,
        reach: Reach,
    ) -> anyhow::Result<Other> {
        use std::io::BufRead;
        let data = dir.join(format!("data-{n}"));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(data.join("suites"))?;
        let own = dir.join("data");
        for entry in std::fs::read_dir(own.join("suites"))? {
            let entry = entry?;
            std::fs::copy(entry.path(), data.join("suites").join(entry.file_name()))?;
        }
        std::os::unix::fs::symlink(own.join("artifacts"), data.join("artifacts"))?;
        let crate::config::Database::Postgres(url) = &config.database else {
            anyhow::bail!("another collector needs the lab's PostgreSQL");
        };
        let port = super::free_port()?;
        let addr = std::net::SocketAddr::from((reach.ip, port));
        let public = match reach.direct {
            true => format!("http://{addr}"),
            false => GUEST_BASE.to_owned(),
        };
        let mut yaml = format!(
            "database: \"{url}\"\npublic_url: \"{public}\"\nafter_verify: hold\nheartbeat_timeout: {}s\ndefault_suite: \"{}\"\nnodes:\n",
            config.heartbeat_timeout.get().as_secs(),
            config.default_suite
        );
        for p in plans {
            yaml += &format!(
                "- mac: \"{}\"\n  console: {{tcp: \"127.0.0.1:{}\"}}\n  power: {{qmp: \"{}\"}}\n",
                p.mac,
                p.console,
                p.qmp.display()
            );
        }
        let file = dir.join(format!("kiln-{n}.yaml"));
        std::fs::write(&file, yaml)?;
        let kiln = match kiln {
            Some(k) => k.to_owned(),
            None => std::env::current_exe()?,
        };
        let log = std::fs::File::create(dir.join(format!("collector-{n}.log")))?;
        let mut cmd = std::process::Command::new(&kiln);
        cmd.arg("serve")
            .arg("--config")
            .arg(&file)
            .arg("--data")
            .arg(&data)
            .args(["--listen", &addr.to_string()])
            .args(["--management", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(log);
        super::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {} serve: {e}", kiln.display()))?;
        let mut banner = String::new();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("kiln serve's output"))?;
        let mut reader = std::io::BufReader::new(stdout);
        reader.read_line(&mut banner)?;
        // Its output from here on goes nowhere; a thread drains it so it never blocks.
        std::thread::spawn(move || for _ in reader.lines() {});
        let mut other = Other { child, addr };
        if !banner.contains(&addr.to_string()) {
            let _ = other.child.kill();
            anyhow::bail!(
                "collector {n} did not start (it said {banner:?}); see {}",
                dir.join(format!("collector-{n}.log")).display()
            );
        }
        Ok(other)
    }
}
