//! The lab's QEMU nodes: each one's command line (the basic PC or the server profile), the
//! processes started and their BMCs, all stopped by PID however the lab ends.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Instant;

use super::inject::Fault;
use super::qemu::NodeCommand;
use super::{LabOptions, Network, NodePlan, Profile, free_port, server};

/// One node's QEMU process.
pub(super) struct Vm {
    pub(super) child: Child,
    pub(super) started: Instant,
    pub(super) done_at: Option<Instant>,
    /// Where QEMU's own complaints go (a port taken, a device refused).
    pub(super) log: PathBuf,
}

impl Vm {
    /// The last lines QEMU wrote, for an error when it stopped too early.
    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        if lines.is_empty() {
            return format!("QEMU wrote nothing to {}", self.log.display());
        }
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }
}

/// The VMs and their BMCs; the VMs are killed (by the PIDs the lab started) when it drops,
/// the BMCs stop with their own drop.
pub(super) struct Rack {
    pub(super) vms: Vec<Vm>,
    pub(super) bmcs: Vec<Option<server::Bmc>>,
    /// Nodes (from 0) started paused (`-S`), to be let go once a node due to be killed
    /// serving holds pieces they want: otherwise all fetch at once and it may never serve.
    pub(super) held: Vec<usize>,
}

impl Drop for Rack {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            let _ = vm.child.kill();
            let _ = vm.child.wait();
        }
    }
}

/// Starts every node (and, for servers, its BMC) booting from the collector on `port`, and
/// records their PIDs in `DIR/pids` for `kiln lab down`.
pub(super) fn start(opts: &LabOptions, plans: &[NodePlan], port: u16) -> anyhow::Result<Rack> {
    let mut rack = Rack {
        vms: Vec::new(),
        bmcs: Vec::new(),
        held: Vec::new(),
    };
    let victims: Vec<usize> = opts
        .inject
        .iter()
        .filter(|j| j.fault == Fault::KillPeer)
        .map(|j| j.node - 1)
        .collect();
    let mut pids = String::new();
    for (i, p) in plans.iter().enumerate() {
        let mut node = NodeCommand::new(&opts.accel, opts.mem_mib)
            .args(["-smp", "1", "-name", &p.name])
            .identity(&format!(
                "manufacturer=kiln,product=lab-node,serial={},uuid={}",
                p.serial, p.uuid
            ))
            .console_tcp(p.console)
            .qmp(&p.qmp);
        if opts.uefi {
            node = node.uefi();
        }
        let netdev = match opts.network {
            Network::User => NodeCommand::netdev(port),
            Network::Bridge => super::bridge::netdev(super::tap_of(opts, i + 1)),
        };
        match opts.profile {
            Profile::Basic => {
                node = node.nic(&netdev, "virtio-net-pci", &p.mac).args([
                    "-drive".to_owned(),
                    format!("file={},if=virtio,format=qcow2", p.disks[0].display()),
                ]);
                rack.bmcs.push(None);
            }
            Profile::Server => {
                let bmc = server::Bmc::start(&opts.dir, i + 1, free_port()?)?;
                pids.push_str(&format!("{}\n", bmc.pid()));
                let narrow = opts
                    .inject
                    .iter()
                    .any(|j| j.node == i + 1 && j.fault == Fault::NarrowSlot);
                let disks = server::Disks {
                    nvme: p.disks[0].clone(),
                    sata: p.disks[1].clone(),
                    scsi: p.disks.get(2).cloned(),
                };
                node = node.args(server::qemu_args(
                    i + 1,
                    &p.mac,
                    &netdev,
                    &disks,
                    bmc.port,
                    narrow,
                ));
                rack.bmcs.push(Some(bmc));
            }
        }
        if !victims.is_empty() && !victims.contains(&i) {
            node = node.args(["-S".to_owned()]);
            rack.held.push(i);
        }
        let mut cmd = node.command();
        let log = opts.dir.join(format!("node-{}.qemu.log", i + 1));
        cmd.stderr(std::fs::File::create(&log)?);
        // If the lab itself is killed outright, the kernel still stops its VMs.
        super::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start qemu-system-x86_64: {e}"))?;
        pids.push_str(&format!("{}\n", child.id()));
        rack.vms.push(Vm {
            child,
            started: Instant::now(),
            done_at: None,
            log,
        });
    }
    std::fs::write(opts.dir.join("pids"), &pids)?;
    Ok(rack)
}

/// The PIDs file, gone once the lab has stopped what it lists.
pub(super) fn forget(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("pids"));
}
