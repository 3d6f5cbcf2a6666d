//! A network-booted node's run, in the RAM image: the bootstrap token exchanged for the
//! session, the run attested on the node's console, the plan fetched, the payload fetched
//! from peers and verified (and served on until the run ends), the inventory and every
//! event delivered, the run attested again, the session closed. What the image does next is
//! written for its init: the plan's word, or `hold` when the run could not start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::After;

use crate::checks::RunOptions;
use crate::collector::Collector;
use crate::console::{Console, summary_table};
use crate::runner::EventSink;
use crate::stop::Interrupt;

/// How long each call waits for a collector that does not answer (a node booting with a
/// hall may wait its turn).
const PATIENCE: Duration = Duration::from_secs(600);

/// What the boot found on the kernel command line (or in flags and the environment).
#[derive(Debug, Clone)]
pub struct Booted {
    /// The collector's base URL.
    pub url: String,
    /// The run.
    pub run_id: i64,
    /// The node, when known: without it the run cannot be attested.
    pub node_id: Option<i64>,
    /// The bootstrap token, good for one exchange.
    pub bootstrap: String,
    /// Where the word for the image's init goes.
    pub after_file: Option<PathBuf>,
    /// The console the collector reads.
    pub console: PathBuf,
    /// Where the payload is unpacked (`/` in the image).
    pub payload_root: PathBuf,
}

/// What a boot of a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Ran the suite's steps to this verdict (the agent's; the collector computes its own).
    Run(Verdict),
    /// Reported the inventory of this power cycle's boot; the collector judges the cycles.
    Cycle(kiln_protocol::wire::CycleBoot),
}

/// Runs the booted run to its end: the verdict, or why the harness could not carry it out.
pub fn run(booted: &Booted) -> anyhow::Result<Done> {
    let after = |what: After| {
        if let Some(path) = &booted.after_file {
            let _ = std::fs::write(path, what.name());
        }
    };
    println!(
        "kiln-agent {}: run {} from {}",
        env!("CARGO_PKG_VERSION"),
        booted.run_id,
        booted.url
    );
    let collector = Collector::new(&booted.url)?;
    // The token on the command line is readable by every process in the image: it is only a
    // bootstrap, good for one exchange; the session token stays in this process.
    let session = collector
        .exchange(booted.run_id, &booted.bootstrap, PATIENCE)
        .inspect_err(|_| after(After::Hold))?;
    // The node's own console vouches for the run: written now, and again before the last
    // word (a console capture that reconnected in between still sees it). A run whose line
    // the collector never reads does not pass, so a failure here is said, not hidden.
    let attest = || match booted.node_id {
        Some(node) => {
            let line = kiln_protocol::attest::line(&session.attest_key, booted.run_id, node);
            if let Err(err) = crate::os::attest::write_line(&booted.console, &line) {
                eprintln!("kiln-agent: {err:#}");
            }
        }
        None => eprintln!(
            "kiln-agent: no node id (kiln.node= on the kernel command line): the run cannot be attested"
        ),
    };
    attest();
    let plan_wire = collector
        .plan(booted.run_id, &session.token, PATIENCE)
        .inspect_err(|_| after(After::Hold))?;
    after(plan_wire.after);
    if let Some(cycle) = plan_wire.cycle {
        // A power cycle's boot: the same hardware must be found again; no step runs.
        report_cycle(&collector, booted, &session.token, cycle)
            .inspect_err(|_| after(After::Hold))?;
        attest();
        return Ok(Done::Cycle(cycle));
    }
    let plan = kiln_protocol::load("suite", plan_wire.suite_text.as_bytes())
        .map_err(|err| anyhow::anyhow!("the run's suite is refused by this agent:\n{err}"))?;
    let interrupt = Interrupt::new();
    let _ = interrupt.install_handler();
    // Before the first step's AER reading: errors a driver left unreported are counted from
    // here on, and what was latched before the run is not blamed on its first step.
    let aer_lines = crate::hw::aer::prepare(std::path::Path::new("/sys"));
    let inventory = first_inventory(&plan_wire, &plan);
    // The payload and the steps measured against the collector use the one in use now.
    let bases = collector.bases().clone();
    let run = collector.open(
        booted.run_id,
        &session.token,
        Duration::from_secs(plan_wire.heartbeat_secs),
        &inventory,
        PATIENCE,
    )?;
    let console: Arc<dyn EventSink> = Arc::new(Console::new(true));
    let sink = run.sink(console);
    // The payload before any step: what a step runs from it is verified piece by piece, and a
    // run whose payload never arrived runs nothing (its steps have no result: never a pass).
    // It is served to the nodes still fetching until this run ends.
    let say = |level, line: String| {
        sink.emit(kiln_protocol::wire::EventBody::Log {
            step: None,
            level,
            line,
        })
    };
    for line in aer_lines {
        say(kiln_protocol::wire::LogLevel::Info, line);
    }
    let _serving =
        match crate::payload::boot(&bases, booted.run_id, &session.token, &booted.payload_root) {
            Ok(Some(serving)) => {
                println!("kiln-agent: {}", serving.summary());
                say(kiln_protocol::wire::LogLevel::Info, serving.summary());
                Some(serving)
            }
            Ok(None) => None,
            Err(err) => {
                let line =
                    format!("the payload could not be fetched and verified: {err:#}; no step runs");
                eprintln!("kiln-agent: {line}");
                say(kiln_protocol::wire::LogLevel::Error, line);
                attest();
                run.close(PATIENCE);
                anyhow::bail!("the run's payload could not be fetched: {err:#}");
            }
        };
    let options = RunOptions {
        allow_destructive: plan_wire.allow_destructive,
        collector: Some(bases.current().1.to_owned()),
        collector_token: Some(run.token().to_owned()),
        run_id: Some(booted.run_id),
        cpus: None,
    };
    let report = tracing::info_span!("run", run_id = booted.run_id, suite = plan.name())
        .in_scope(|| crate::runner::run_on(&plan, &options, &interrupt, sink, inventory));
    println!("\n{}", summary_table(&report));
    attest();
    anyhow::ensure!(
        run.close(PATIENCE),
        "the collector did not acknowledge every event of run {}",
        booted.run_id
    );
    Ok(Done::Run(report.verdict))
}

/// A power cycle's boot: the inventory taken again and reported, for the collector to compare
/// with the first boot's.
fn report_cycle(
    collector: &Collector,
    booted: &Booted,
    token: &str,
    cycle: kiln_protocol::wire::CycleBoot,
) -> anyhow::Result<()> {
    println!(
        "kiln-agent: power cycle {} of {}: taking the inventory again",
        cycle.cycle, cycle.count
    );
    let inventory = crate::inventory::collect();
    collector.report_cycle(booted.run_id, token, cycle.cycle, &inventory, PATIENCE)?;
    println!(
        "kiln-agent: power cycle {} of {} reported (boot id {})",
        cycle.cycle,
        cycle.count,
        inventory.boot_id.as_deref().unwrap_or("unknown")
    );
    Ok(())
}

/// The inventory of the run's first boot; when the site's map has this node's cables, or the
/// suite asks what the switch ports say, LLDP is heard first.
fn first_inventory(
    plan_wire: &kiln_protocol::wire::RunPlan,
    plan: &kiln_protocol::Plan,
) -> kiln_protocol::wire::Inventory {
    let mut inventory = crate::inventory::collect();
    if let Some(secs) = plan_wire
        .lldp_secs
        .or_else(|| crate::inventory::lldp_asked(plan))
    {
        crate::inventory::hear_lldp(
            &mut inventory,
            Duration::from_secs(u64::from(secs.min(300))),
        );
    }
    inventory
}
