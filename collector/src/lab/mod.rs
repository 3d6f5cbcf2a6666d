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

pub mod inject;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_protocol::verdict::Verdict;
use serde::Serialize;

use crate::config::{Config, NodeAccess};
use crate::lifecycle::{Mode, RunStage, Stage};
use crate::memtest::capture::Source;
use crate::memtest::power::Power;
use crate::server::Collector;
use crate::store::queries::{self, Filter, Label, Selector};

use inject::{Fault, Injection};

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
    /// The collector's data directory (its SQLite file is there).
    pub data: PathBuf,
}

/// The Debian packages the lab needs, installed together (see `check_dependencies`).
const LAB_PACKAGES: &str = "qemu-system-x86 qemu-utils ipxe-qemu busybox-static cpio ovmf openipmi";

/// Checks the lab's dependencies by command and by file, not by package name alone: a
/// package apt removed to install another leaves its name in no list, only a command that
/// no longer runs. The error names what is missing and asks for the whole set in one apt
/// transaction, so apt resolves the versions together instead of trading one for another.
pub fn check_dependencies(uefi: bool, profile: Profile) -> anyhow::Result<()> {
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

struct Vm {
    name: String,
    child: Child,
    started: Instant,
    done_at: Option<Instant>,
}

/// Kills the VMs (by the PIDs it started) however the lab ends.
struct Vms(Vec<Vm>);

impl Drop for Vms {
    fn drop(&mut self) {
        for vm in &mut self.0 {
            let _ = vm.child.kill();
            let _ = vm.child.wait();
        }
    }
}

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

/// Refuses injections the lab cannot carry out, before anything starts: a node that does
/// not exist, the basic profile (no NVMe, BMC or root ports), a step the node's suite does
/// not have.
fn check_injections(opts: &LabOptions, suites: &[kiln_protocol::Plan]) -> anyhow::Result<()> {
    for i in &opts.inject {
        anyhow::ensure!(
            opts.profile == Profile::Server,
            "--inject {i}: faults are injected into server nodes only (--profile server)"
        );
        anyhow::ensure!(
            (1..=opts.nodes).contains(&i.node),
            "--inject {i}: the lab has nodes 1 to {}",
            opts.nodes
        );
        if let Some(step) = &i.during {
            let suite = &suites[i.node - 1];
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the lab to the end and returns its report.
pub fn up(opts: &LabOptions) -> anyhow::Result<LabReport> {
    check_dependencies(opts.uefi, opts.profile)?;
    down(&opts.dir);
    let data = opts.dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(data.join("artifacts"))?;
    std::fs::create_dir_all(data.join("suites"))?;

    // The image: copied from --image, or built.
    match &opts.image {
        Some(dir) => {
            for f in [
                "vmlinuz",
                "initramfs.img",
                "memtest86+x64.bin",
                "memtest86+x64.efi",
            ] {
                std::fs::copy(dir.join(f), data.join("artifacts").join(f))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(f).display()))?;
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
            };
            crate::image::build(&inputs, &data.join("artifacts"))?;
        }
    }
    let image_bytes = ["vmlinuz", "initramfs.img"]
        .iter()
        .map(|f| {
            std::fs::metadata(data.join("artifacts").join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();

    // Nodes: identity, console port, QMP socket, disk, suite.
    struct Plan {
        name: String,
        mac: String,
        serial: String,
        uuid: String,
        console: u16,
        qmp: PathBuf,
        disks: Vec<PathBuf>,
        suite: String,
    }
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
        let kinds: &[&str] = match opts.profile {
            Profile::Basic => &[""],
            Profile::Server => &["-nvme", "-sata"],
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
        plans.push(Plan {
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
        after_verify: "hold".into(),
        nodes: access,
        ..Config::default()
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let collector = Collector::open(config, &data)?;
    let db = collector.state.db.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(collector.serve(listener, async move {
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

    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }

    let mut vms = Vms(Vec::new());
    let mut bmcs: Vec<Option<server::Bmc>> = Vec::new();
    let mut pids = String::new();
    for (i, p) in plans.iter().enumerate() {
        let netdev = format!(
            "user,id=n0,restrict=on,bootfile=http://10.0.2.100/boot.ipxe,guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 {port}"
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            &opts.accel,
            "-m",
            &opts.mem_mib.to_string(),
            "-smp",
            "1",
            "-display",
            "none",
            "-boot",
            "n",
            "-monitor",
            "none",
        ])
        .args(["-name", &p.name])
        .args([
            "-smbios",
            &format!(
                "type=1,manufacturer=kiln,product=lab-node,serial={},uuid={}",
                p.serial, p.uuid
            ),
        ])
        .args([
            "-serial",
            &format!("tcp:127.0.0.1:{},server=on,wait=off", p.console),
        ])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", p.qmp.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if opts.uefi {
            cmd.args([
                "-drive",
                "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
            ]);
        }
        match opts.profile {
            Profile::Basic => {
                cmd.args(["-netdev", &netdev])
                    .args([
                        "-device",
                        &format!("virtio-net-pci,netdev=n0,mac={}", p.mac),
                    ])
                    .args([
                        "-drive",
                        &format!("file={},if=virtio,format=qcow2", p.disks[0].display()),
                    ]);
                bmcs.push(None);
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
                };
                cmd.args(server::qemu_args(
                    i + 1,
                    &p.mac,
                    &netdev,
                    &disks,
                    bmc.port,
                    narrow,
                ));
                bmcs.push(Some(bmc));
            }
        }
        // If the lab itself is killed outright, the kernel still stops its VMs.
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start qemu-system-x86_64: {e}"))?;
        pids.push_str(&format!("{}\n", child.id()));
        vms.0.push(Vm {
            name: p.name.clone(),
            child,
            started: Instant::now(),
            done_at: None,
        });
    }
    std::fs::write(opts.dir.join("pids"), &pids)?;
    println!(
        "kiln lab: {} node(s) booting from http://127.0.0.1:{port}/ (accel {})",
        plans.len(),
        opts.accel
    );

    // Live progress until every node has a verdict and its VM is gone.
    let multi = MultiProgress::new();
    if !opts.bars {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{prefix:<12} [{bar:25.cyan/blue}] {pos:>3}% {elapsed:>4} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bars: Vec<ProgressBar> = plans
        .iter()
        .map(|p| {
            let b = multi.add(ProgressBar::new(100));
            b.set_style(style.clone());
            b.set_prefix(p.name.clone());
            b
        })
        .collect();
    let started = Instant::now();
    let mut last_plain = Instant::now() - Duration::from_secs(60);
    // Injections still to fire, and what each node has had done to it.
    let mut pending: Vec<Injection> = opts
        .inject
        .iter()
        .filter(|j| !j.fault.at_power_on())
        .cloned()
        .collect();
    let mut injected: Vec<Vec<String>> = vec![Vec::new(); plans.len()];
    for j in opts.inject.iter().filter(|j| j.fault.at_power_on()) {
        injected[j.node - 1].push(format!("{}: at power-on", j.fault.name()));
    }
    let result = loop {
        std::thread::sleep(Duration::from_millis(500));
        let rows = rt.block_on(db.read(|c| queries::node_rows(c, &Filter::default())))?;
        let mut lines = Vec::new();
        let mut all_done = true;
        for (n, ((p, bar), vm)) in plans.iter().zip(&bars).zip(vms.0.iter_mut()).enumerate() {
            let row = rows.iter().find(|r| r.macs.contains(&p.mac));
            let exited = vm.child.try_wait().ok().flatten().is_some();
            let verdict = row.and_then(|r| r.verdict);
            // A fault due while this step runs goes in as soon as the step shows.
            let running = row
                .filter(|r| verdict.is_none() && r.stage == Some(RunStage::Linux))
                .and_then(|r| r.progress.as_ref())
                .map(|pr| pr.name.clone());
            if let Some(step) = running {
                let (due, rest): (Vec<Injection>, Vec<Injection>) = pending
                    .drain(..)
                    .partition(|j| j.node == n + 1 && j.during.as_deref() == Some(step.as_str()));
                pending = rest;
                for j in due {
                    let outcome = match fire(&rt, j.fault, &p.qmp, bmcs[n].as_mut()) {
                        Ok(answer) => answer,
                        Err(err) => format!("FAILED: {err:#}"),
                    };
                    let line = format!(
                        "{} during {step} at {:.0}s: {outcome}",
                        j.fault.name(),
                        vm.started.elapsed().as_secs_f64()
                    );
                    if !opts.bars {
                        println!("kiln lab: {}: injected {line}", p.name);
                    }
                    injected[n].push(line);
                }
            }
            let (pos, msg) = match (&verdict, row) {
                (Some(v), _) => (100, format!("done: {v}")),
                (None, Some(r)) if r.stage == Some(RunStage::Memtest) => match &r.progress {
                    Some(pr) => (
                        (pr.fraction * 19.0) as u64,
                        format!(
                            "memtest86+ {:.0}%: {}",
                            pr.fraction * 100.0,
                            pr.status.clone().unwrap_or_default()
                        ),
                    ),
                    None => (
                        0,
                        format!("memtest86+ starting ({}s)", vm.started.elapsed().as_secs()),
                    ),
                },
                (None, Some(r)) if r.stage == Some(RunStage::Linux) => match &r.progress {
                    Some(pr) => (
                        20 + (pr.fraction * 79.0) as u64,
                        format!(
                            "linux: {} {:.0}% {}",
                            pr.name,
                            pr.fraction * 100.0,
                            pr.status.clone().unwrap_or_default()
                        ),
                    ),
                    None => (20, "linux: booting the RAM image".into()),
                },
                _ => (0, "booting (iPXE)".into()),
            };
            bar.set_position(pos);
            bar.set_message(msg.clone());
            lines.push(format!("{}: {msg}", p.name));
            if verdict.is_some() {
                let done_at = *vm.done_at.get_or_insert_with(Instant::now);
                // A node that passed powers itself off; one that failed holds in iPXE.
                if !exited && done_at.elapsed() > Duration::from_secs(20) {
                    let _ = vm.child.kill();
                    let _ = vm.child.wait();
                }
            }
            let vm_gone = vm.child.try_wait().ok().flatten().is_some();
            all_done &= verdict.is_some() && vm_gone;
            if exited && verdict.is_none() && vm.done_at.is_none() {
                vm.done_at = Some(Instant::now());
            }
        }
        if !opts.bars && last_plain.elapsed() > Duration::from_secs(10) {
            last_plain = Instant::now();
            println!(
                "[{:>4}s] {}",
                started.elapsed().as_secs(),
                lines.join(" | ")
            );
        }
        if all_done {
            break Ok(());
        }
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            break Err(anyhow::anyhow!(
                "interrupted: stopping every VM the lab started"
            ));
        }
        if started.elapsed() > opts.timeout {
            break Err(anyhow::anyhow!(
                "the lab did not finish within {}s",
                opts.timeout.as_secs()
            ));
        }
        // A VM that died before its node got a verdict will not get one.
        if vms.0.iter().zip(&plans).any(|(vm, p)| {
            vm.done_at
                .is_some_and(|d| d.elapsed() > Duration::from_secs(90))
                && !rows
                    .iter()
                    .any(|r| r.macs.contains(&p.mac) && r.verdict.is_some())
        }) {
            break Err(anyhow::anyhow!(
                "a node's VM stopped without a verdict; see the collector's run pages"
            ));
        }
    };
    for bar in &bars {
        bar.finish();
    }
    let vm_starts: Vec<(String, Instant)> =
        vms.0.iter().map(|v| (v.name.clone(), v.started)).collect();
    drop(vms);
    drop(bmcs);
    let _ = std::fs::remove_file(opts.dir.join("pids"));

    // The report, from the collector's own records.
    let lab_start_ms = crate::store::now_ms() - started.elapsed().as_millis() as i64;
    let rows = rt.block_on(db.read(|c| queries::node_rows(c, &Filter::default())))?;
    let mut nodes = Vec::new();
    for ((p, (_, vm_start)), injected) in plans.iter().zip(&vm_starts).zip(injected) {
        let row = rows.iter().find(|r| r.macs.contains(&p.mac));
        let run_id = row.and_then(|r| r.run_id);
        let detail = match run_id {
            Some(id) => rt.block_on(db.read(move |c| queries::run_detail(c, id)))?,
            None => None,
        };
        let vm_ms = lab_start_ms + vm_start.duration_since(started).as_millis() as i64;
        let secs = |ms: Option<i64>| ms.map(|m| (m - vm_ms) as f64 / 1000.0);
        let agent_started = detail.as_ref().and_then(|d| d.agent_started_ms);
        let memtest_done = detail.as_ref().and_then(|d| {
            d.stages
                .iter()
                .find(|s| s.name == Stage::Memtest)
                .and_then(|s| s.finished_ms)
        });
        let (memtest, memtest_passes) = match detail.as_ref().and_then(|d| d.memtest.as_ref()) {
            Some(m) => (
                Some(if m.pass { "pass" } else { "fail" }.to_owned()),
                m.reading.as_ref().and_then(|r| r["passes"].as_u64()),
            ),
            None => (None, None),
        };
        let steps = detail.as_ref().map_or("-".to_owned(), |d| {
            format!(
                "{}/{}",
                d.steps
                    .iter()
                    .filter(|s| matches!(
                        s.outcome,
                        kiln_protocol::wire::Outcome::Pass
                            | kiln_protocol::wire::Outcome::Degraded { .. }
                    ))
                    .count(),
                d.steps.len()
            )
        });
        nodes.push(LabNode {
            name: p.name.clone(),
            serial: p.serial.clone(),
            mac: p.mac.clone(),
            run_id,
            memtest,
            memtest_passes,
            steps,
            // A node without a verdict when the lab ends did not finish: incomplete.
            verdict: row
                .and_then(|r| r.verdict)
                .unwrap_or(Verdict::Incomplete)
                .to_string(),
            faults: row.map(|r| r.faults.clone()).unwrap_or_default(),
            secs_to_memtest_verdict: secs(memtest_done),
            secs_to_agent_report: secs(agent_started),
            secs_to_verdict: secs(row.and_then(|r| r.finished_ms)),
            injected,
        });
    }
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    let report = LabReport {
        all_passed: nodes.iter().all(|n| n.verdict == "pass"),
        nodes,
        image_bytes,
        data: data.clone(),
    };
    std::fs::write(
        opts.dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    result?;
    Ok(report)
}

/// Injects `fault` now: through the node's QMP socket, or its BMC's console. Returns what
/// the emulator answered.
fn fire(
    rt: &tokio::runtime::Runtime,
    fault: Fault,
    qmp: &Path,
    bmc: Option<&mut server::Bmc>,
) -> anyhow::Result<String> {
    if fault == Fault::SelEntry {
        let bmc = bmc.ok_or_else(|| anyhow::anyhow!("the node has no BMC"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        bmc.command(&inject::sel_add_line(now))?;
        return Ok("added to the BMC's event log".into());
    }
    let answers = rt.block_on(crate::memtest::power::qmp(
        qmp,
        &inject::qmp_commands(fault),
    ))?;
    // HMP answers in text: nothing, or "OK …", on success; anything else is its complaint.
    let text = answers
        .iter()
        .filter_map(|a| a["return"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let text = text.trim();
    anyhow::ensure!(
        text.is_empty() || text.starts_with("OK"),
        "QEMU refused: {text}"
    );
    Ok(if text.is_empty() {
        "done".into()
    } else {
        text.to_owned()
    })
}

/// Stops processes a previous lab left (by the PIDs it recorded, and only QEMU ones).
pub fn down(dir: &Path) -> usize {
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

/// The report as a table.
pub fn table(report: &LabReport) -> String {
    let mut out = format!(
        "{:<12} {:<11} {:<8} {:<6} {:<10} faults\n",
        "node", "serial", "memtest", "steps", "verdict"
    );
    out.push_str(&format!(
        "{:-<12} {:-<11} {:-<8} {:-<6} {:-<10} {:-<6}\n",
        "", "", "", "", "", ""
    ));
    for n in &report.nodes {
        out.push_str(&format!(
            "{:<12} {:<11} {:<8} {:<6} {:<10} {}\n",
            n.name,
            n.serial,
            n.memtest.as_deref().unwrap_or("-"),
            n.steps,
            n.verdict,
            n.faults.join("; ")
        ));
    }
    out.push_str(
        "\ntimings from VM start (s): node, memtest verdict, agent's first report, final verdict\n",
    );
    let s = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.0}"));
    for n in &report.nodes {
        out.push_str(&format!(
            "  {:<12} {:>6} {:>6} {:>6}\n",
            n.name,
            s(n.secs_to_memtest_verdict),
            s(n.secs_to_agent_report),
            s(n.secs_to_verdict)
        ));
    }
    for n in report.nodes.iter().filter(|n| !n.injected.is_empty()) {
        out.push_str(&format!(
            "injected into {}: {}\n",
            n.name,
            n.injected.join("; ")
        ));
    }
    out.push_str(&format!(
        "image (kernel + initramfs): {:.1} MB\n",
        report.image_bytes as f64 / 1e6
    ));
    out
}
