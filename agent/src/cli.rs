//! The `kiln-agent` command line.
//!
//! Exit-code contract (the one place it is defined; `--help` prints it too):
//! - 0: every step passed (or was degraded or skipped);
//! - 1: a hardware fault: some step failed;
//! - 2: the harness failed, or bad usage or a refused suite.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::Inventory;

use crate::checks::RunOptions;
use crate::collector::{Collector, Session};
use crate::console::{Console, summary_table};
use crate::runner::{EventSink, RunReport};
use crate::stop::Interrupt;

/// Every step passed, was degraded or skipped.
pub const EXIT_PASS: u8 = 0;
/// A step failed: a hardware fault.
pub const EXIT_FAULT: u8 = 1;
/// The harness failed, bad usage, or a refused suite.
pub const EXIT_HARNESS: u8 = 2;

/// kiln-agent: runs kiln suites on this node.
#[derive(Debug, Parser)]
#[command(name = "kiln-agent", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 all steps pass (or degraded); 1 hardware fault (a step failed); \
2 harness error, bad usage or a refused suite."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a suite on this host: live progress, then a summary table; exit code per the
    /// contract below.
    Run(RunArgs),
    /// Run the plan the collector holds for this boot (in the RAM image): the collector URL,
    /// run and token come from the flags, from KILN_URL/KILN_RUN/KILN_TOKEN, or from
    /// kiln.url=/kiln.run=/kiln.token= on the kernel command line.
    Boot(BootArgs),
    /// Fetch a run's payload through the collector's grants, serving the pieces held to the
    /// nodes still fetching; prints where the bytes came from as one JSON line, then serves
    /// on until `--linger` ends (the boot-storm check runs hundreds of these).
    FetchPayload(FetchArgs),
    /// Serve the bandwidth endpoints NIC steps measure against, for use without a collector.
    ServeBandwidth {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8181")]
        listen: std::net::SocketAddr,
        /// Stop after this many seconds (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
    },
    /// Load the kernel modules this machine's devices ask for (their modaliases against the
    /// image's module catalog), dependencies first; the RAM image's /init runs it.
    Modules {
        /// Directory holding the modules and `kiln.modules`.
        #[arg(long, default_value = "/lib/modules")]
        dir: PathBuf,
    },
    /// Print what this node is made of and what its disks report, as JSON: the inventory
    /// (SMBIOS identity, sockets and DIMM slots included, and the sources it lacks), each
    /// whole disk's native health (NVMe health log, SATA SMART), and with `--lldp` each NIC's
    /// switch port. Reads only.
    Inspect {
        /// Add the raw NVMe log page and SMART blocks, in hex, for a bug report.
        #[arg(long)]
        raw: bool,
        /// Listen this many seconds for LLDP on every NIC with a link (all at once; a
        /// switch announces every 30 s) and show what each switch port said (needs
        /// CAP_NET_RAW). At most 300.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=300))]
        lldp: Option<u64>,
    },
    /// Check suite files with the same loader `run` uses; exits 0 when good, 2 when refused.
    Check {
        /// Suite files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let code = match cli.command {
        Command::Check { files } => check(&files),
        Command::Run(args) => run(&args),
        Command::Boot(args) => boot(&args),
        Command::FetchPayload(args) => fetch_payload(&args),
        Command::ServeBandwidth { listen, seconds } => serve_bandwidth(listen, seconds),
        Command::Inspect { raw, lldp } => inspect(raw, lldp),
        Command::Modules { dir } => modules(&dir),
    };
    ExitCode::from(code)
}

/// Diagnostics (the reporter's retries and refusals, each step's start and end) go to stderr
/// through `tracing`, inside a span for the run (its id, when a collector gave one) and one
/// per step, so one run's story reads from the log by its run id. `KILN_LOG` sets the level
/// (`info` shows every step; default `warn`: the console is the operator's screen).
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn modules(dir: &std::path::Path) -> u8 {
    match crate::os::modules::load_for_hardware(dir, std::path::Path::new("/sys")) {
        Ok(done) => {
            println!(
                "kiln: loaded {} module(s) for this hardware{}{}",
                done.loaded.len(),
                if done.loaded.is_empty() {
                    String::new()
                } else {
                    format!(": {}", done.loaded.join(" "))
                },
                if done.present > 0 {
                    format!(" ({} already loaded)", done.present)
                } else {
                    String::new()
                }
            );
            for (name, why) in &done.failed {
                println!("kiln: module {name} did not load: {why}");
            }
            EXIT_PASS
        }
        Err(err) => {
            eprintln!("kiln-agent modules: {err}");
            EXIT_HARNESS
        }
    }
}

fn inspect(raw: bool, lldp: Option<u64>) -> u8 {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut inventory = crate::inventory::collect();
    if let Some(secs) = lldp {
        crate::inventory::hear_lldp(&mut inventory, std::time::Duration::from_secs(secs));
    }
    let disks: Vec<serde_json::Value> = inventory
        .disks
        .iter()
        .map(|d| {
            let device = std::path::Path::new(&d.path);
            let mut entry = serde_json::json!({ "device": d.path });
            let health = if d.name.starts_with("nvme") {
                crate::hw::nvme::read_log(device).and_then(|log| {
                    if raw {
                        entry["raw_health_log"] = hex(&log).into();
                    }
                    crate::hw::nvme::parse(&log).map(|h| serde_json::json!(h))
                })
            } else if d.name.starts_with("sd") {
                crate::hw::ata::read_raw(device).and_then(|r| {
                    if raw {
                        entry["raw_smart_data"] = hex(&r.data).into();
                        entry["raw_smart_thresholds"] = r.thresholds.as_deref().map(hex).into();
                        entry["raw_status_sense"] = r.status_sense.as_deref().map(hex).into();
                    }
                    crate::hw::ata::read(device).map(|s| serde_json::json!(s))
                })
            } else {
                Err("no native SMART reader for this kind of device".into())
            };
            match health {
                Ok(h) => entry["health"] = h,
                Err(e) => entry["absent"] = e.into(),
            }
            entry
        })
        .collect();
    let out = serde_json::json!({ "inventory": inventory, "disk_health": disks });
    match serde_json::to_string_pretty(&out) {
        Ok(text) => {
            println!("{text}");
            EXIT_PASS
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_HARNESS
        }
    }
}

fn check(files: &[PathBuf]) -> u8 {
    let mut code = EXIT_PASS;
    for file in files {
        match crate::suites::load_file(file) {
            Ok(plan) => println!("{}: ok: {}", file.display(), plan.summary()),
            Err(err) => {
                eprintln!("{:#}", anyhow::Error::from(err));
                code = EXIT_HARNESS;
            }
        }
    }
    code
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The suite to run.
    suite: PathBuf,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE.xml")]
    junit: Option<PathBuf>,
    /// Allow steps that overwrite raw disks (they must also say `destructive: true`).
    #[arg(long)]
    allow_destructive: bool,
    /// Plain timestamped lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// The collector's base URL (for `nic: {target: collector}`).
    #[arg(long, value_name = "URL")]
    collector: Option<String>,
}

/// The exit code a verdict maps to.
pub fn exit_code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Pass | Verdict::Degraded => EXIT_PASS,
        Verdict::Fail => EXIT_FAULT,
        Verdict::Error | Verdict::Incomplete | Verdict::Unattested => EXIT_HARNESS,
    }
}

fn run(args: &RunArgs) -> u8 {
    let (text, plan) = match crate::suites::read_and_load(&args.suite) {
        Ok(read) => read,
        Err(err) => {
            eprintln!("{err}");
            return EXIT_HARNESS;
        }
    };
    let interrupt = Interrupt::new();
    if let Err(err) = interrupt.install_handler() {
        eprintln!("{err:#}");
        return EXIT_HARNESS;
    }
    let mut options = RunOptions {
        allow_destructive: args.allow_destructive,
        collector: args.collector.clone(),
        collector_token: None,
        run_id: None,
        cpus: None,
    };
    let console: Arc<dyn EventSink> = Arc::new(Console::new(args.plain));
    let mut inventory = crate::inventory::collect();
    if let Some(secs) = crate::inventory::lldp_asked(&plan) {
        crate::inventory::hear_lldp(
            &mut inventory,
            std::time::Duration::from_secs(u64::from(secs)),
        );
    }
    // With a collector: register this host's run, deliver the inventory, stream every event.
    let session = match &args.collector {
        None => None,
        Some(base) => match connect(base, &inventory, &String::from_utf8_lossy(&text)) {
            Ok(session) => {
                options.collector_token = Some(session.token().to_owned());
                options.run_id = Some(session.run_id());
                Some(session)
            }
            Err(err) => {
                eprintln!("kiln-agent: {err:#}");
                return EXIT_HARNESS;
            }
        },
    };
    let sink = match &session {
        Some(s) => s.sink(console),
        None => console,
    };
    let span = tracing::info_span!(
        "run",
        run_id = session.as_ref().map(Session::run_id),
        suite = plan.name()
    );
    let report =
        span.in_scope(|| crate::runner::run_on(&plan, &options, &interrupt, sink, inventory));
    println!("\n{}", summary_table(&report));
    let mut code = exit_code(report.verdict);
    if let Some(session) = session {
        if !session.close(FLUSH_PATIENCE) {
            code = EXIT_HARNESS;
        }
    }
    for (path, text) in [
        (&args.report, report_json(&report)),
        (&args.junit, crate::report::junit(&report)),
    ] {
        if let Some(path) = path {
            if let Err(err) = write_file(path, &text) {
                eprintln!("{err:#}");
                code = EXIT_HARNESS;
            }
        }
    }
    code
}

/// How long the agent waits for the collector to acknowledge the last events before it gives
/// up and says how many were not delivered.
const FLUSH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Registers this host's run with the collector at `base` and opens its session.
fn connect(base: &str, inventory: &Inventory, suite_text: &str) -> anyhow::Result<Session> {
    let patience = std::time::Duration::from_secs(60);
    let collector = Collector::new(base)?;
    let registered = collector.register(inventory, suite_text, patience)?;
    println!(
        "registered with {base} as node {}, run {}",
        registered.node_id, registered.run_id
    );
    collector.open(
        registered.run_id,
        &registered.token,
        std::time::Duration::from_secs(registered.heartbeat_secs),
        inventory,
        patience,
    )
}

fn report_json(report: &RunReport) -> String {
    crate::report::json(report)
}

/// Writes a report through a temporary file and a rename, so a reader never sees half of it.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn serve_bandwidth(listen: std::net::SocketAddr, seconds: u64) -> u8 {
    let threads = crate::bandwidth::stream_threads(usize::MAX);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return EXIT_HARNESS;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        println!(
            "serving /bandwidth/download and /bandwidth/upload on http://{}",
            listener.local_addr()?
        );
        let shutdown = async move {
            if seconds > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(seconds)) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        crate::bandwidth::serve(listener, shutdown)
            .await
            .map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => EXIT_PASS,
        Err(err) => {
            eprintln!("{err:#}");
            EXIT_HARNESS
        }
    }
}

#[derive(Debug, Args)]
struct FetchArgs {
    /// The collector's base URL (its boot listener).
    #[arg(long)]
    collector: String,
    /// The run.
    #[arg(long)]
    run: i64,
    /// The run's session token (else $KILN_SESSION_TOKEN: not on a command line others read).
    #[arg(long)]
    token: Option<String>,
    /// Cap this node's link, each way, in Mb/s.
    #[arg(long)]
    mbps: Option<f64>,
    /// The longest one piece may take, in seconds.
    #[arg(long, default_value_t = 60)]
    deadline: u64,
    /// Serve the pieces this long after the last one arrived, in seconds.
    #[arg(long, default_value_t = 0)]
    linger: u64,
}

fn fetch_payload(args: &FetchArgs) -> u8 {
    if args.mbps.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
        eprintln!("kiln-agent: --mbps must be a rate above 0");
        return EXIT_HARNESS;
    }
    let Some(token) = args
        .token
        .clone()
        .or_else(|| std::env::var("KILN_SESSION_TOKEN").ok())
    else {
        eprintln!("kiln-agent: no session token (--token or KILN_SESSION_TOKEN)");
        return EXIT_HARNESS;
    };
    let fetched = crate::payload::fetch_and_serve(&crate::payload::FetchSettings {
        collector: args.collector.clone(),
        run_id: args.run,
        token,
        mbps: args.mbps,
        deadline: std::time::Duration::from_secs(args.deadline),
        linger: std::time::Duration::from_secs(args.linger),
    });
    match fetched {
        // Its line went out as soon as it was known, before the lingering.
        Ok(_) => EXIT_PASS,
        Err(err) => {
            eprintln!("kiln-agent: {err:#}");
            EXIT_HARNESS
        }
    }
}

#[derive(Debug, Args)]
struct BootArgs {
    /// Collector base URL.
    #[arg(long)]
    url: Option<String>,
    /// Run id.
    #[arg(long)]
    run: Option<i64>,
    /// The run's bootstrap token (exchanged once for the session token).
    #[arg(long)]
    token: Option<String>,
    /// Where to write what the node does next (poweroff, reboot, hold), for /init.
    #[arg(long, value_name = "FILE")]
    after_file: Option<PathBuf>,
    /// The console the run's attestation is written to (the one the collector reads).
    #[arg(long, value_name = "DEVICE", default_value = crate::os::attest::CONSOLE)]
    console: PathBuf,
    /// Where the payload (when the collector serves one) is unpacked before any step runs.
    #[arg(long, value_name = "DIR", default_value = "/")]
    payload_root: PathBuf,
}

fn boot(args: &BootArgs) -> u8 {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let pick = |flag: Option<String>, env: &str, name: &str| {
        flag.or_else(|| std::env::var(env).ok())
            .or_else(|| kiln_protocol::cmdline::value(&cmdline, name).map(str::to_owned))
    };
    let (Some(url), Some(run_id), Some(bootstrap)) = (
        pick(args.url.clone(), "KILN_URL", "url"),
        pick(args.run.map(|r| r.to_string()), "KILN_RUN", "run")
            .and_then(|r| r.parse::<i64>().ok()),
        pick(args.token.clone(), "KILN_TOKEN", "token"),
    ) else {
        eprintln!(
            "kiln-agent boot: no collector URL, run and bootstrap token (flags, KILN_* variables or kiln.* on the kernel command line)"
        );
        return EXIT_HARNESS;
    };
    let node_id = kiln_protocol::cmdline::value(&cmdline, "node")
        .and_then(|n| n.parse::<i64>().ok())
        .or_else(|| std::env::var("KILN_NODE").ok()?.parse().ok());
    let booted = crate::boot::Booted {
        url,
        run_id,
        node_id,
        bootstrap,
        after_file: args.after_file.clone(),
        console: args.console.clone(),
        payload_root: args.payload_root.clone(),
    };
    match crate::boot::run(&booted) {
        Ok(crate::boot::Done::Run(verdict)) => exit_code(verdict),
        Ok(crate::boot::Done::Cycle(_)) => EXIT_PASS,
        Err(err) => {
            eprintln!("kiln-agent: {err:#}");
            EXIT_HARNESS
        }
    }
}
