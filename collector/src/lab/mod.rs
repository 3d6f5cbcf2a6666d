//! `kiln lab`: a virtual rack on this machine through the real boot chain. A collector on
//! 127.0.0.1, N QEMU nodes (each with its own MAC, SMBIOS serial and UUID, a virtio NIC with
//! Debian's iPXE ROM on restricted user networking that reaches only the collector, its
//! serial console on a TCP socket the collector captures, a QMP socket as its power driver,
//! and a scratch qcow2 disk), memtest86+ → RAM Linux → the suite → verdict, with live
//! progress and a report at the end. Every process it starts is stopped by PID when it ends,
//! also on Ctrl-C and on failure.
//!
//! `--profile server` gives each node what a rack server has ([`server`]) and `--inject`
//! puts real faults into chosen nodes while a named step runs ([`inject`]).

pub mod bridge;
mod collector;
pub mod inject;
pub mod postgres;
mod proxy;
pub mod qemu;
mod report;
pub mod rogue;
pub mod server;
mod vm;
mod watch;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::lifecycle::RunStage;

use inject::{Fault, Injection};

pub use report::table;

/// What the lab's nodes are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// A PC: virtio NIC and disk (the quick lab).
    #[default]
    Basic,
    /// A rack server: q35 with PCIe root ports, NVMe, SATA on AHCI, an IPMI BMC, a DIMM
    /// table ([`server`]).
    Server,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "basic" => Ok(Profile::Basic),
            "server" => Ok(Profile::Server),
            _ => Err(format!("unknown profile {s:?}: expected basic or server")),
        }
    }
}

/// How the lab's nodes are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Each node alone on QEMU's restricted user network, reaching only the collector.
    #[default]
    User,
    /// Every node on one Linux bridge in a namespace of the lab's, with DHCP from dnsmasq:
    /// nodes reach each other as in a rack ([`bridge`]).
    Bridge,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "user" => Ok(Network::User),
            "bridge" => Ok(Network::Bridge),
            _ => Err(format!("unknown network {s:?}: expected user or bridge")),
        }
    }
}

/// What `kiln lab up` is asked to do.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Working directory (data, sockets, disks, PIDs, report).
    pub dir: PathBuf,
    /// How many nodes.
    pub nodes: usize,
    /// The suite every node runs…
    pub suite: PathBuf,
    /// …except these (node number from 1, suite file).
    pub suite_for: Vec<(usize, PathBuf)>,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Scratch disk size in MiB.
    pub disk_mib: u32,
    /// Boot with OVMF.
    pub uefi: bool,
    /// A directory with vmlinuz, initramfs.img and memtest86+ (else built).
    pub image: Option<PathBuf>,
    /// `tcg` (default) or `kvm`.
    pub accel: String,
    /// Give up after this long.
    pub timeout: Duration,
    /// Show progress bars (else plain lines).
    pub bars: bool,
    /// What the nodes are made of.
    pub profile: Profile,
    /// Faults to inject (server profile only).
    pub inject: Vec<Injection>,
    /// How the nodes are networked.
    pub network: Network,
    /// MiB of payload the nodes fetch after boot (0: none beyond the image's own).
    pub payload_mib: u32,
    /// Put a rogue peer on the boot network, serving corrupted pieces ([`rogue`]).
    pub rogue_peer: bool,
    /// How many collectors serve the lab, and whether one is killed.
    pub collectors: Collectors,
}

/// Several collectors behind the lab's boot address, sharing a PostgreSQL the lab starts: the
/// lab's own, in its process, and `count - 1` `kiln serve` children ([`proxy`] hands each
/// connection to the next live one).
#[derive(Debug, Clone)]
pub struct Collectors {
    /// How many (1: the lab's own alone, on SQLite).
    pub count: usize,
    /// Kill the first `kiln serve` child with SIGKILL once every node has reached this stage.
    pub kill_at: Option<RunStage>,
    /// The `kiln` binary the children run (default: this process's own).
    pub kiln: Option<PathBuf>,
}

impl Default for Collectors {
    fn default() -> Self {
        Collectors {
            count: 1,
            kill_at: None,
            kiln: None,
        }
    }
}

/// One node's result.
#[derive(Debug, Clone, Serialize)]
pub struct LabNode {
    /// Name.
    pub name: String,
    /// SMBIOS serial.
    pub serial: String,
    /// MAC.
    pub mac: String,
    /// Run id.
    pub run_id: Option<i64>,
    /// memtest86+ result (`pass`/`fail`), when the stage ran.
    pub memtest: Option<String>,
    /// memtest86+ passes read off the screen.
    pub memtest_passes: Option<u64>,
    /// Steps passed / run.
    pub steps: String,
    /// Verdict.
    pub verdict: String,
    /// Faults, one line each.
    pub faults: Vec<String>,
    /// Seconds from VM start to the memtest verdict.
    pub secs_to_memtest_verdict: Option<f64>,
    /// Seconds from VM start to the agent's first report.
    pub secs_to_agent_report: Option<f64>,
    /// Seconds from VM start to the final verdict.
    pub secs_to_verdict: Option<f64>,
    /// The faults injected into this node, each with when and how it went.
    pub injected: Vec<String>,
    /// Its NIC steps against a peer: whom it was paired with, and each direction's figure.
    pub pairs: Vec<String>,
}

/// The lab's result.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    /// Nodes.
    pub nodes: Vec<LabNode>,
    /// Kernel + initramfs bytes.
    pub image_bytes: u64,
    /// Whether every node passed.
    pub all_passed: bool,
    /// Where the nodes' payload came from, when there was one.
    pub payload: Option<report::Payload>,
    /// The collector's data directory (its SQLite file is there).
    pub data: PathBuf,
}

/// The Debian packages the lab needs, installed together (see `check_dependencies`).
const LAB_PACKAGES: &str = "qemu-system-x86 qemu-utils ipxe-qemu busybox-static cpio ovmf openipmi dnsmasq-base iproute2 lldpd";

/// Checks the lab's dependencies by command and by file, not by package name alone: a
/// package apt removed to install another leaves its name in no list, only a command that
/// no longer runs. The error names what is missing and asks for the whole set in one apt
/// transaction, so apt resolves the versions together instead of trading one for another.
pub fn check_dependencies(uefi: bool, profile: Profile, network: Network) -> anyhow::Result<()> {
    if !runs("apt-get", "--version") || !runs("dpkg", "--version") {
        anyhow::bail!(
            "the lab fetches the kernel and memtest86+ with apt-get download and dpkg -x: run it on Debian"
        );
    }
    let mut missing = Vec::new();
    if !runs("qemu-system-x86_64", "--version") {
        missing.push("command qemu-system-x86_64 (qemu-system-x86)");
    }
    if !runs("qemu-img", "--version") {
        missing.push("command qemu-img (qemu-utils)");
    }
    if !Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom").exists()
        && !Path::new("/usr/share/qemu/efi-virtio.rom").exists()
    {
        missing.push("file /usr/lib/ipxe/qemu/efi-virtio.rom (ipxe-qemu)");
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("file /bin/busybox (busybox-static)");
    }
    if uefi && !Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists() {
        missing.push("file /usr/share/OVMF/OVMF_CODE.fd (ovmf)");
    }
    // ipmi_sim has no --version that succeeds: it prints its version, then fails to find
    // its default configuration.
    let ipmi_sim = Command::new("ipmi_sim")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("IPMI Simulator"));
    if profile == Profile::Server && !ipmi_sim {
        missing.push("command ipmi_sim (openipmi)");
    }
    if network == Network::Bridge {
        if !runs("dnsmasq", "--version") {
            missing.push("command dnsmasq (dnsmasq-base)");
        }
        if !runs("ip", "-V") {
            missing.push("command ip (iproute2)");
        }
        if !runs("lldpd", "-v") {
            missing.push("command lldpd (lldpd)");
        }
    }
    anyhow::ensure!(
        missing.is_empty(),
        "missing: {}; run `bash .ci/setup lab` in the kiln checkout, or install the whole set in \
         one transaction: `apt-get update && apt-get install -y {LAB_PACKAGES}`",
        missing.join(", ")
    );
    Ok(())
}

/// Whether `cmd` is on PATH and runs.
fn runs(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One node as the lab plans it: identity, console port, QMP socket, disks, suite.
struct NodePlan {
    name: String,
    mac: String,
    serial: String,
    uuid: String,
    console: u16,
    qmp: PathBuf,
    disks: Vec<PathBuf>,
    suite: String,
}

/// Refuses what needs peers on a network where there are none, before anything starts.
fn check_options(opts: &LabOptions) -> anyhow::Result<()> {
    let bridge = opts.network == Network::Bridge;
    let peers = bridge && opts.payload_mib > 0;
    let needs = "a node serves the payload only on the bridge network with a payload \
                 (--network bridge --payload-mib N)";
    anyhow::ensure!(!opts.rogue_peer || peers, "--rogue-peer: {needs}");
    let mut swapped = Vec::new();
    for i in &opts.inject {
        match i.fault {
            Fault::KillPeer => anyhow::ensure!(peers, "--inject {i}: {needs}"),
            Fault::SwapCable => {
                anyhow::ensure!(
                    bridge,
                    "--inject {i}: cables are swapped on the bridge network only (--network bridge)"
                );
                let m = i.partner.unwrap_or(0);
                anyhow::ensure!(
                    (1..=opts.nodes).contains(&i.node) && (1..=opts.nodes).contains(&m),
                    "--inject {i}: the lab has nodes 1 to {}",
                    opts.nodes
                );
                anyhow::ensure!(
                    !swapped.contains(&i.node) && !swapped.contains(&m),
                    "--inject {i}: a node's cable is swapped once at most"
                );
                swapped.extend([i.node, m]);
            }
            Fault::SlowNic => anyhow::ensure!(
                bridge && (1..=opts.nodes).contains(&i.node),
                "--inject {i}: a link is slowed on the bridge network only (--network bridge), on one of nodes 1 to {}",
                opts.nodes
            ),
            _ => {}
        }
    }
    Ok(())
}

/// The tap node `i` (from 1) is cabled to: its own, or its swap partner's.
fn tap_of(opts: &LabOptions, i: usize) -> usize {
    opts.inject
        .iter()
        .filter(|j| j.fault == Fault::SwapCable)
        .find_map(|j| match (j.node, j.partner) {
            (n, Some(m)) if n == i => Some(m),
            (n, Some(m)) if m == i => Some(n),
            _ => None,
        })
        .unwrap_or(i)
}

/// Refuses injections the lab cannot carry out, before anything starts: a node that does
/// not exist, the basic profile (no NVMe, BMC or root ports), a step the node's suite does
/// not have.
fn check_injections(opts: &LabOptions, suites: &[kiln_protocol::Plan]) -> anyhow::Result<()> {
    anyhow::ensure!(
        !opts.rogue_peer || suites.first().is_some_and(|s| s.memtest.is_none()),
        "--rogue-peer: the rogue boots straight into Linux with node 1's suite, which must have \
         memtest off (suites/lab-payload.yaml)"
    );
    for i in &opts.inject {
        anyhow::ensure!(
            opts.profile == Profile::Server || !i.fault.needs_server(),
            "--inject {i}: faults are injected into server nodes only (--profile server)"
        );
        anyhow::ensure!(
            (1..=opts.nodes).contains(&i.node),
            "--inject {i}: the lab has nodes 1 to {}",
            opts.nodes
        );
        let suite = &suites[i.node - 1];
        if let Some(k) = i.during.as_deref().and_then(inject::cycle_of) {
            let count = suite.suite.cycles.map_or(0, |c| c.count);
            anyhow::ensure!(
                k <= count,
                "--inject {i}: node {}'s suite {} has {count} power cycle(s), so no cycle {k} (suites/lab-cycles.yaml has three)",
                i.node,
                suite.name()
            );
        } else if let Some(step) = &i.during {
            anyhow::ensure!(
                suite.steps.iter().any(|s| &s.name == step),
                "--inject {i}: node {}'s suite {} has no step {step:?} (it has {})",
                i.node,
                suite.name(),
                suite
                    .steps
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// What the kernel and the RAM image keep of a guest's memory before the agent counts it
/// (a 256 MiB guest reports about 206 MiB): a suite's `min_total` needs this much more.
const GUEST_OVERHEAD_MIB: u64 = 64;

/// Refuses a `--mem` no node's suite can pass with: its `expect.memory.min_total` and what
/// the kernel keeps must fit, or every node fails for the lab's own setting.
fn check_memory(opts: &LabOptions, suites: &[kiln_protocol::Plan]) -> anyhow::Result<()> {
    for (i, suite) in suites.iter().enumerate() {
        let Some(min) = suite
            .expect()
            .and_then(|e| e.memory.as_ref())
            .and_then(|m| m.min_total)
        else {
            continue;
        };
        let need = min.bytes().div_ceil(1 << 20) + GUEST_OVERHEAD_MIB;
        anyhow::ensure!(
            u64::from(opts.mem_mib) >= need,
            "--mem {}MiB: node {}'s suite {} expects memory.min_total {min}, and the kernel keeps \
             about {GUEST_OVERHEAD_MIB} MiB: give the nodes at least --mem {need}M",
            opts.mem_mib,
            i + 1,
            suite.name()
        );
    }
    Ok(())
}

/// A loopback port nothing listens on now, and one this process has not handed out before:
/// the kernel may give a just-released port to the next `bind(:0)`, and two nodes on one
/// console port is one QEMU that cannot start.
/// Has the kernel stop the process `cmd` starts when the lab dies, even killed outright.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl is one,
    // and it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..64 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no loopback port left that this lab has not used already")
}

/// How long the lab's collector waits for an agent's word. The window opens when a node is
/// handed its kernel, so it covers the kernel's boot too: a few seconds under KVM, but under
/// software emulation (TCG) the guests run several times slower than the hardware and share
/// the host's CPUs — on a 2-CPU host seven guests booting the RAM image together were still in
/// the kernel's init after the collector's default 60 s, and every node failed as "lost
/// contact" before its agent could start.
fn lab_heartbeat(accel: &str) -> Duration {
    if accel == "kvm" {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(300)
    }
}

/// Runs the lab to the end and returns its report: the image, the nodes' plans, the
/// collector, the VMs, the wait (with injections), the report from the collector's records.
pub fn up(opts: &LabOptions) -> anyhow::Result<LabReport> {
    check_options(opts)?;
    check_dependencies(opts.uefi, opts.profile, opts.network)?;
    down(&opts.dir);
    let data = opts.dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(data.join("artifacts"))?;
    std::fs::create_dir_all(data.join("suites"))?;
    let image_bytes = prepare_image(
        opts.image.as_deref(),
        &data.join("artifacts"),
        opts.payload_mib,
    )?;
    let plans = plan_nodes(opts, &data)?;
    // Everything from here on starts inside the bridge's namespace, when there is one.
    let mut bridge = match opts.network {
        Network::User => None,
        Network::Bridge => Some(bridge::Bridge::up(&opts.dir, plans.len())?),
    };
    let boot_ip = match opts.network {
        Network::User => std::net::Ipv4Addr::LOCALHOST,
        Network::Bridge => bridge::COLLECTOR_IP.parse()?,
    };
    let lab = collector::LabCollector::start(
        &plans,
        &data,
        lab_heartbeat(&opts.accel),
        boot_ip,
        &opts.collectors,
    )?;
    if let Some(bridge) = bridge.as_mut() {
        let macs: Vec<String> = plans.iter().map(|p| p.mac.clone()).collect();
        bridge.dhcp(&opts.dir, &macs, lab.port)?;
        bridge.switch(&opts.dir, plans.len())?;
        for i in opts.inject.iter().filter(|i| i.fault == Fault::SlowNic) {
            bridge::limit(tap_of(opts, i.node), i.rate_mbps.unwrap_or(1))?;
        }
        // The map the site would import: node N's NIC on port N of the lab's switch.
        let map: Vec<(String, String, String)> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), p.mac.clone(), bridge::port(i + 1)))
            .collect();
        lab.import_cabling(&map)?;
    }
    let rogue = match opts.rogue_peer {
        true => Some(rogue::start(&format!("http://{boot_ip}:{}", lab.port))?),
        false => None,
    };
    if let Some(r) = &rogue {
        println!(
            "kiln lab: a rogue peer ({}, run {}) claims every piece of the payload and serves wrong bytes",
            rogue::MAC,
            r.run_id
        );
    }
    let interrupted = lab.interrupt_flag();
    let mut rack = vm::start(opts, &plans, lab.port)?;
    println!(
        "kiln lab: {} node(s) booting from http://{boot_ip}:{}/ (accel {}, {} network)",
        plans.len(),
        lab.port,
        opts.accel,
        match opts.network {
            Network::User => "user",
            Network::Bridge => "bridge",
        }
    );
    let started = Instant::now();
    let (result, injected) =
        watch::until_done(opts, &plans, &mut rack, &lab, &interrupted, started);
    let vm_starts: Vec<Instant> = rack.vms.iter().map(|v| v.started).collect();
    drop(rack);
    vm::forget(&opts.dir);
    let nodes = report::nodes(&lab, &plans, &vm_starts, injected, started)?;
    let payload = report::payload(&lab, &plans, &data)?;
    drop(rogue);
    lab.stop();
    if let Some(bridge) = bridge.take() {
        let acks = bridge::Bridge::acks(&opts.dir);
        drop(bridge);
        println!(
            "kiln lab: dnsmasq acknowledged {acks} DHCP lease(s); the bridge's namespace is gone"
        );
    }
    let report = LabReport {
        all_passed: nodes.iter().all(|n| n.verdict == "pass"),
        nodes,
        image_bytes,
        payload,
        data,
    };
    std::fs::write(
        opts.dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    result?;
    Ok(report)
}

/// The image into `artifacts`: copied from `image`, or built. Returns kernel + initramfs bytes.
fn prepare_image(image: Option<&Path>, artifacts: &Path, payload_mib: u32) -> anyhow::Result<u64> {
    match image {
        Some(dir) => {
            for f in [
                "vmlinuz",
                "initramfs.img",
                "memtest86+x64.bin",
                "memtest86+x64.efi",
            ] {
                std::fs::copy(dir.join(f), artifacts.join(f))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(f).display()))?;
            }
            let payload = dir.join(crate::image::PAYLOAD);
            if payload.exists() {
                anyhow::ensure!(
                    payload_mib == 0,
                    "--payload-mib {payload_mib}: {} has a payload of its own; build the image with \
                     the lab (no --image) or drop --payload-mib",
                    dir.display()
                );
                std::fs::copy(&payload, artifacts.join(crate::image::PAYLOAD))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", payload.display()))?;
            } else if payload_mib > 0 {
                crate::image::write_ballast(artifacts, payload_mib)?;
            }
        }
        None => {
            let agent = crate::image::static_agent()?;
            let inputs = crate::image::Inputs {
                cache: PathBuf::from(".kiln-cache"),
                agent,
                busybox: "/bin/busybox".into(),
                kernel_package: None,
                firmware: Vec::new(),
                packages: Vec::new(),
                ballast_mib: payload_mib,
            };
            crate::image::build(&inputs, artifacts)?;
        }
    }
    let image_bytes = ["vmlinuz", "initramfs.img"]
        .iter()
        .map(|f| {
            std::fs::metadata(artifacts.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    Ok(image_bytes)
}

/// Each node's plan, its suite stored in the collector's data directory and loaded (a bad
/// suite stops the lab here, before anything starts), its scratch disks created.
fn plan_nodes(opts: &LabOptions, data: &Path) -> anyhow::Result<Vec<NodePlan>> {
    let mut plans = Vec::new();
    let mut suites = Vec::new();
    for i in 1..=opts.nodes {
        let suite_file = opts
            .suite_for
            .iter()
            .find(|(n, _)| *n == i)
            .map_or(&opts.suite, |(_, f)| f);
        let suite_name = format!("lab-node-{i}");
        let text = std::fs::read_to_string(suite_file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", suite_file.display()))?;
        suites.push(kiln_protocol::load(
            &suite_file.display().to_string(),
            text.as_bytes(),
        )?);
        std::fs::write(data.join("suites").join(format!("{suite_name}.yaml")), text)?;
        // A node its suite power-cycles gets a third disk, on virtio-scsi: the one
        // `drop-disk` pulls. Only those: it could take /dev/sda from the SATA disk the
        // server suite's steps write.
        let cycled = suites
            .last()
            .is_some_and(|s: &kiln_protocol::Plan| s.suite.cycles.is_some());
        let kinds: &[&str] = match (opts.profile, cycled) {
            (Profile::Basic, _) => &[""],
            (Profile::Server, false) => &["-nvme", "-sata"],
            (Profile::Server, true) => &["-nvme", "-sata", "-scsi"],
        };
        let mut disks = Vec::new();
        for kind in kinds {
            let disk = opts.dir.join(format!("node-{i}{kind}.qcow2"));
            let _ = std::fs::remove_file(&disk);
            let status = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&disk)
                .arg(format!("{}M", opts.disk_mib))
                .status()?;
            anyhow::ensure!(
                status.success(),
                "qemu-img create {} failed",
                disk.display()
            );
            disks.push(disk);
        }
        plans.push(NodePlan {
            name: format!("lab-node-{i}"),
            mac: format!("52:54:00:6b:00:{i:02x}"),
            serial: format!("KILNLAB{i:02}"),
            uuid: format!("6b696c6e-0000-4000-8000-0000000000{i:02x}"),
            console: free_port()?,
            qmp: opts.dir.join(format!("node-{i}.qmp")),
            disks,
            suite: suite_name,
        });
    }
    check_injections(opts, &suites)?;
    check_memory(opts, &suites)?;
    Ok(plans)
}

/// Stops processes a previous lab left (by the PIDs it recorded, and only its own kinds).
pub fn down(dir: &Path) -> usize {
    processes_down(dir) + bridge::down(dir) + postgres::down(&dir.join("pg"))
}

fn processes_down(dir: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(dir.join("pids")) else {
        return 0;
    };
    let mut stopped = 0;
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("qemu-system") || cmdline.starts_with("ipmi_sim") {
            // SAFETY: kill has no memory preconditions; the PID is one this lab recorded and
            // was just seen to be a QEMU process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            stopped += 1;
        }
    }
    let _ = std::fs::remove_file(dir.join("pids"));
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(profile: Profile, inject: &[&str]) -> LabOptions {
        LabOptions {
            dir: PathBuf::from("/nonexistent"),
            nodes: 2,
            suite: PathBuf::from("suites/lab-server.yaml"),
            suite_for: Vec::new(),
            mem_mib: 512,
            disk_mib: 256,
            uefi: false,
            image: None,
            accel: "tcg".into(),
            timeout: Duration::from_secs(60),
            bars: false,
            profile,
            inject: inject.iter().map(|i| i.parse().unwrap()).collect(),
            network: Network::User,
            payload_mib: 0,
            rogue_peer: false,
            collectors: Default::default(),
        }
    }

    #[test]
    fn a_guest_too_small_for_its_suite_is_refused_before_anything_starts() {
        let suite = kiln_protocol::load(
            "suites/lab-server.yaml",
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../suites/lab-server.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        let mut opts = options(Profile::Server, &[]);
        check_memory(&opts, std::slice::from_ref(&suite)).unwrap();
        opts.mem_mib = 256;
        let err = check_memory(&opts, &[suite]).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "--mem 256MiB: node 1's suite lab-server expects memory.min_total 256MiB"
            ),
            "{err}"
        );
        assert!(err.ends_with("at least --mem 320M"), "{err}");
    }

    #[test]
    fn peers_are_asked_for_only_where_nodes_can_reach_each_other() {
        let mut opts = options(Profile::Basic, &["1:kill-peer"]);
        let err = check_options(&opts).unwrap_err().to_string();
        assert!(err.contains("--network bridge --payload-mib"), "{err}");
        opts.network = Network::Bridge;
        assert!(check_options(&opts).is_err(), "a bridge without a payload");
        opts.payload_mib = 16;
        check_options(&opts).unwrap();
        opts.inject = vec!["2:swap-cable=3".parse().unwrap()];
        let err = check_options(&opts).unwrap_err().to_string();
        assert!(err.contains("the lab has nodes 1 to 2"), "{err}");
        opts.inject = vec![
            "1:swap-cable=2".parse().unwrap(),
            "2:swap-cable=1".parse().unwrap(),
        ];
        let err = check_options(&opts).unwrap_err().to_string();
        assert!(err.contains("swapped once at most"), "{err}");
        opts.inject.truncate(1);
        check_options(&opts).unwrap();
        assert_eq!((tap_of(&opts, 1), tap_of(&opts, 2)), (2, 1));
        opts.inject.clear();
        assert_eq!(tap_of(&opts, 1), 1);
        opts.rogue_peer = true;
        opts.network = Network::User;
        let err = check_options(&opts).unwrap_err().to_string();
        assert!(err.starts_with("--rogue-peer"), "{err}");
    }

    #[test]
    fn injections_the_lab_cannot_carry_out_are_refused_before_anything_starts() {
        let suite = kiln_protocol::load(
            "s.yaml",
            b"suite: s\ndescription: d\nsteps:\n  - name: memory\n    memory: {size: 16MiB}\n",
        )
        .unwrap();
        let suites = [suite.clone(), suite];
        assert!(check_injections(&options(Profile::Server, &["2:mce@memory"]), &suites).is_ok());
        for (profile, inject, says) in [
            (Profile::Basic, "1:mce@memory", "server nodes only"),
            (Profile::Server, "3:mce@memory", "nodes 1 to 2"),
            (
                Profile::Server,
                "1:sel@disk",
                "has no step \"disk\" (it has memory)",
            ),
            (
                Profile::Server,
                "1:drop-disk@cycle2",
                "has 0 power cycle(s)",
            ),
            (Profile::Basic, "1:drop-disk@cycle1", "server nodes only"),
        ] {
            let err = check_injections(&options(profile, &[inject]), &suites)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{inject}: {err}");
        }
    }
}
