//! `kiln lab up|down`: the virtual rack (see [`crate::lab`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::lab::{LabOptions, down, table, up};

#[derive(Debug, Subcommand)]
pub(super) enum LabCommand {
    /// Boot N virtual nodes through memtest86+ and the RAM image, print the report; exits 0
    /// only if every node passed.
    Up(Box<UpArgs>),
    /// Stop whatever a previous lab left running (by the PIDs it recorded).
    Down {
        /// The lab's directory.
        #[arg(long, default_value = ".kiln-lab")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(super) struct UpArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// What the nodes are made of: `basic` (virtio NIC and disk) or `server` (q35 with PCIe
    /// root ports, NVMe, SATA/AHCI, an IPMI BMC from OpenIPMI's ipmi_sim, a DIMM table).
    #[arg(long, default_value = "basic")]
    profile: crate::lab::Profile,
    /// The suite the nodes run [default: suites/lab.yaml; suites/lab-server.yaml with
    /// --profile server; suites/lab-payload.yaml with --payload-mib; suites/lab-rack.yaml
    /// on the bridge network (cabling over LLDP, NICs paired)].
    #[arg(long)]
    suite: Option<PathBuf>,
    /// A different suite for one node: N=FILE (repeatable).
    #[arg(long, value_name = "N=FILE")]
    suite_for: Vec<String>,
    /// Guest memory (MiB, or with a unit: 256M, 1G) [default: 256M, and twice the payload
    /// more with --payload-mib: the payload is held while it is served, and unpacked].
    #[arg(long)]
    mem: Option<String>,
    /// How the nodes are networked: `user` (each alone, reaching only the collector) or
    /// `bridge` (all on one Linux bridge in a network namespace the lab makes and removes,
    /// DHCP from dnsmasq: nodes reach each other as in a rack; needs root).
    #[arg(long, default_value = "user")]
    network: crate::lab::Network,
    /// A payload of this many MiB the nodes fetch after boot, in verified pieces, from each
    /// other and the collector (filler standing for a site's firmware and tools). Its
    /// figures are printed at the end.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    payload_mib: u32,
    /// Put a rogue host on the bridge network: it boots as an unknown node would, claims to
    /// hold every piece of the payload and serves wrong bytes. The nodes must catch each
    /// such piece by its hash and fetch it elsewhere; the report names it.
    #[arg(long)]
    rogue_peer: bool,
    /// Scratch disk size (256M, 1G).
    #[arg(long, default_value = "1G")]
    disk: String,
    /// Boot with UEFI (OVMF) instead of BIOS.
    #[arg(long)]
    uefi: bool,
    /// Use this directory's vmlinuz, initramfs.img and memtest86+ instead of building them.
    #[arg(long, value_name = "DIR")]
    image: Option<PathBuf>,
    /// QEMU accelerator: tcg, or kvm where KVM really runs guests.
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "kvm"])]
    accel: String,
    /// Give up after this many minutes.
    #[arg(long, default_value_t = 30)]
    timeout_min: u64,
    /// Working directory.
    #[arg(long, default_value = ".kiln-lab")]
    dir: PathBuf,
    /// Inject a fault (repeatable): into a server node, NODE:FAULT@STEP while that step runs,
    /// FAULT one of nvme-warning, mce, mce-fatal, sel, aer, aer-correctable, fan-fail,
    /// psu-redundancy-lost; NODE:psu-watts=W@STEP (the BMC's PSU input power); NODE:narrow-slot
    /// (the NIC's slot limited to x1 at 2.5 GT/s from power-on); on the bridge network, NODE:kill-peer
    /// (killed once it serves the payload), NODE:swap-cable=M (two nodes' cables crossed) or
    /// NODE:slow-nic=MBPS (its switch port limited to MBPS towards it). E.g.
    /// `--inject 2:mce@memory`, `--inject 4:slow-nic=10`.
    #[arg(long, value_name = "NODE:FAULT[@STEP|=VALUE]")]
    inject: Vec<crate::lab::inject::Injection>,
    /// How many collectors serve the lab: more than one share a PostgreSQL the lab starts
    /// (and stops), behind one boot address that hands each connection to a live one.
    #[arg(long, default_value_t = 1)]
    collectors: usize,
    /// Kill one collector with SIGKILL once every node is in this stage (`memtest`, or
    /// `linux`: once every agent runs a step); needs --collectors 2 or more.
    #[arg(long, value_name = "STAGE")]
    kill_collector: Option<String>,
}

fn mib(text: &str) -> anyhow::Result<u32> {
    let size: kiln_protocol::units::Size = text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes = if text.chars().all(|c| c.is_ascii_digit()) {
        size.bytes() << 20
    } else {
        size.bytes()
    };
    Ok((bytes >> 20) as u32)
}

pub(super) fn run(cmd: LabCommand) -> anyhow::Result<u8> {
    match cmd {
        LabCommand::Down { dir } => {
            println!("stopped {} process(es)", down(&dir));
            Ok(super::EXIT_OK)
        }
        LabCommand::Up(args) => {
            let suite_for = args
                .suite_for
                .iter()
                .map(|s| {
                    let (n, f) = s
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--suite-for {s:?}: expected N=FILE"))?;
                    Ok((
                        n.parse::<usize>().map_err(|_| {
                            anyhow::anyhow!("--suite-for {s:?}: N is a node number")
                        })?,
                        PathBuf::from(f),
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(
                (1..=16).contains(&args.nodes),
                "--nodes {}: expected 1 to 16",
                args.nodes
            );
            anyhow::ensure!(
                args.payload_mib <= 4096,
                "--payload-mib {}: at most 4096",
                args.payload_mib
            );
            let mem_mib = match &args.mem {
                Some(mem) => mib(mem)?,
                // The server profile's suite asks for 256 MiB after the kernel's share.
                None => {
                    let base = match args.profile {
                        crate::lab::Profile::Basic => 256,
                        crate::lab::Profile::Server => 512,
                    };
                    base + 2 * args.payload_mib
                }
            };
            anyhow::ensure!(
                (1..=4).contains(&args.collectors),
                "--collectors {}: expected 1 to 4",
                args.collectors
            );
            let kill_at = match args.kill_collector.as_deref() {
                None => None,
                Some("memtest") => Some(crate::lifecycle::RunStage::Memtest),
                Some("linux") => Some(crate::lifecycle::RunStage::Linux),
                Some(other) => {
                    anyhow::bail!("--kill-collector {other:?}: expected memtest or linux")
                }
            };
            anyhow::ensure!(
                kill_at.is_none() || args.collectors >= 2,
                "--kill-collector needs --collectors 2 or more: the lab's own collector cannot be killed outright"
            );
            std::fs::create_dir_all(&args.dir)?;
            let opts = LabOptions {
                dir: args.dir.canonicalize()?,
                nodes: args.nodes,
                suite: args.suite.unwrap_or_else(|| {
                    PathBuf::from(match (args.profile, args.payload_mib, args.network) {
                        (crate::lab::Profile::Server, ..) => "suites/lab-server.yaml",
                        (crate::lab::Profile::Basic, 1.., _) => "suites/lab-payload.yaml",
                        (crate::lab::Profile::Basic, 0, crate::lab::Network::Bridge) => {
                            "suites/lab-rack.yaml"
                        }
                        (crate::lab::Profile::Basic, 0, crate::lab::Network::User) => {
                            "suites/lab.yaml"
                        }
                    })
                }),
                suite_for,
                mem_mib,
                disk_mib: mib(&args.disk)?,
                uefi: args.uefi,
                image: args.image,
                accel: args.accel,
                timeout: Duration::from_secs(args.timeout_min * 60),
                bars: std::io::stdout().is_terminal(),
                profile: args.profile,
                inject: args.inject,
                network: args.network,
                payload_mib: args.payload_mib,
                rogue_peer: args.rogue_peer,
                collectors: crate::lab::Collectors {
                    count: args.collectors,
                    kill_at,
                    kiln: None,
                },
            };
            let report = up(&opts)?;
            println!("\n{}", table(&report));
            println!("report: {}", opts.dir.join("report.json").display());
            println!(
                "dashboard: kiln serve --data {} → https://127.0.0.1:8443/",
                report.data.display()
            );
            Ok(if report.all_passed {
                super::EXIT_OK
            } else {
                super::EXIT_FAILURE_FOUND
            })
        }
    }
}
