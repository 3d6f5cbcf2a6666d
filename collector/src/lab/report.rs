//! The lab's report: each node's result from the collector's own records (verdict, steps,
//! faults, memtest86+ reading, timings from VM start), and the table printed at the end.

use std::time::Instant;

use serde::Serialize;

use kiln_protocol::verdict::Verdict;

use super::collector::LabCollector;
use super::{LabNode, LabReport, NodePlan};
use crate::lifecycle::Stage;
use crate::store::queries::{self, Filter};

/// Each node's result. `vm_starts` are the VMs' start times, `started` the wait's.
pub(super) fn nodes(
    lab: &LabCollector,
    plans: &[NodePlan],
    vm_starts: &[Instant],
    injected: Vec<Vec<String>>,
    started: Instant,
) -> anyhow::Result<Vec<LabNode>> {
    let (rt, db) = (&lab.rt, &lab.db);
    let lab_start_ms = crate::store::now_ms() - started.elapsed().as_millis() as i64;
    let rows = rt.block_on(db.read(|c| queries::node_rows(c, &Filter::default())))?;
    let mut nodes = Vec::new();
    for ((p, vm_start), injected) in plans.iter().zip(vm_starts).zip(injected) {
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
            pairs: match (run_id, &detail) {
                (Some(id), Some(d)) => pairs(lab, id, &d.steps)?,
                _ => Vec::new(),
            },
        });
    }
    Ok(nodes)
}

/// The NIC steps measured against a peer, from the collector's judged pairs: one line per
/// pair, with the partner, both directions' figures and whether they met the thresholds.
fn pairs(
    lab: &LabCollector,
    run_id: i64,
    steps: &[kiln_protocol::wire::StepReport],
) -> anyhow::Result<Vec<String>> {
    let results = lab
        .rt
        .block_on(lab.db.read(move |c| queries::pair_results(c, run_id)))?;
    let figure = |v: Option<f64>| v.map_or("-".to_owned(), |m| format!("{m:.0} Mb/s"));
    Ok(results
        .iter()
        .map(|r| {
            let step = steps
                .iter()
                .find(|s| s.step == r.step)
                .map_or_else(|| format!("step {}", r.step + 1), |s| s.name.clone());
            match &r.partner_name {
                Some(partner) => format!(
                    "{step}: with {partner}, download {}, upload {} — {}",
                    figure(r.download_mbps),
                    figure(r.upload_mbps),
                    if r.met { "met" } else { "missed" }
                ),
                None => format!("{step}: no partner came within pair_timeout"),
            }
        })
        .collect())
}

/// Where the nodes' payload came from: the collector's bytes against the peers', per node.
#[derive(Debug, Clone, Serialize)]
pub struct Payload {
    /// The payload's size.
    pub bytes: u64,
    /// Bytes the collector served, all nodes together.
    pub collector_bytes: u64,
    /// Bytes peers served.
    pub peer_bytes: u64,
    /// Each node's.
    pub nodes: Vec<NodePayload>,
}

impl Payload {
    /// How many copies of the payload the collector served.
    pub fn collector_copies(&self) -> f64 {
        self.collector_bytes as f64 / self.bytes.max(1) as f64
    }
}

/// One node's payload.
#[derive(Debug, Clone, Serialize)]
pub struct NodePayload {
    /// The node.
    pub name: String,
    /// Bytes from the collector.
    pub collector_bytes: u64,
    /// Bytes from each peer, by name.
    pub peers: Vec<(String, u64)>,
    /// Peers whose pieces failed their hash here, with how many.
    pub corrupt: Vec<(String, i64)>,
    /// Fetches that broke off or stalled, retried elsewhere.
    pub broken: i64,
    /// Seconds from its first verified piece to its last.
    pub secs: f64,
}

/// The payload's figures from the collector's records; none when the lab served none.
pub(super) fn payload(
    lab: &LabCollector,
    plans: &[NodePlan],
    data: &std::path::Path,
) -> anyhow::Result<Option<Payload>> {
    let Ok(meta) = std::fs::metadata(data.join(crate::api::payload::FILE)) else {
        return Ok(None);
    };
    let (rt, db) = (&lab.rt, &lab.db);
    let rows = rt.block_on(db.read(|c| queries::node_rows(c, &Filter::default())))?;
    let name_of = |node: i64| {
        let row = rows.iter().find(|r| r.node_id == node);
        match row.and_then(|r| plans.iter().find(|p| r.macs.contains(&p.mac))) {
            Some(p) => p.name.clone(),
            None if row.is_some_and(|r| r.macs.contains(super::rogue::MAC)) => {
                format!("the rogue peer (node {node})")
            }
            None => format!("node {node} (not the lab's)"),
        }
    };
    let mut out = Payload {
        bytes: meta.len(),
        collector_bytes: 0,
        peer_bytes: 0,
        nodes: Vec::new(),
    };
    for p in plans {
        let Some(run_id) = rows
            .iter()
            .find(|r| r.macs.contains(&p.mac))
            .and_then(|r| r.run_id)
        else {
            continue;
        };
        let Some(detail) = rt.block_on(db.read(move |c| queries::run_detail(c, run_id)))? else {
            continue;
        };
        let mut node = NodePayload {
            name: p.name.clone(),
            collector_bytes: 0,
            peers: Vec::new(),
            corrupt: Vec::new(),
            broken: 0,
            secs: 0.0,
        };
        let (mut first, mut last) = (i64::MAX, 0);
        for source in &detail.payload {
            if source.pieces > 0 {
                first = first.min(source.first_ms);
                last = last.max(source.last_ms);
            }
            node.broken += source.broken;
            match source.node {
                None => node.collector_bytes += source.bytes as u64,
                Some(peer) => {
                    if source.bytes > 0 {
                        node.peers.push((name_of(peer), source.bytes as u64));
                    }
                    if source.corrupt > 0 {
                        node.corrupt.push((name_of(peer), source.corrupt));
                    }
                }
            }
        }
        node.secs = if last >= first {
            (last - first) as f64 / 1000.0
        } else {
            0.0
        };
        out.collector_bytes += node.collector_bytes;
        out.peer_bytes += node.peers.iter().map(|(_, b)| b).sum::<u64>();
        out.nodes.push(node);
    }
    Ok(Some(out))
}

/// The payload's figures as lines.
fn payload_lines(p: &Payload) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut out = format!(
        "payload {:.0} MiB: the collector served {:.1} MiB ({:.2} copies), peers {:.1} MiB\n",
        mib(p.bytes),
        mib(p.collector_bytes),
        p.collector_copies(),
        mib(p.peer_bytes)
    );
    for n in &p.nodes {
        let peers: Vec<String> = n
            .peers
            .iter()
            .map(|(name, b)| format!("{name} {:.0}", mib(*b)))
            .collect();
        out.push_str(&format!(
            "  {:<12} {:>5.1} s  collector {:>4.0} MiB  peers: {}\n",
            n.name,
            n.secs,
            mib(n.collector_bytes),
            if peers.is_empty() {
                "-".to_owned()
            } else {
                peers.join(", ") + " MiB"
            }
        ));
        for (peer, count) in &n.corrupt {
            out.push_str(&format!(
                "  {:<12} {count} piece(s) from {peer} failed the hash: fetched again elsewhere\n",
                ""
            ));
        }
        if n.broken > 0 {
            out.push_str(&format!(
                "  {:<12} {} fetch(es) broke off or stalled: fetched again elsewhere\n",
                "", n.broken
            ));
        }
    }
    out
}

/// The report as a table.
pub fn table(report: &LabReport) -> String {
    let rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.serial.clone(),
                n.memtest.clone().unwrap_or_else(|| "-".into()),
                n.steps.to_string(),
                n.verdict.clone(),
                n.faults.join("; "),
            ]
        })
        .collect();
    let mut out = kiln_protocol::text::table(
        &["node", "serial", "memtest", "steps", "verdict", "faults"],
        &rows,
        40,
        usize::MAX,
    );
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
    for n in report.nodes.iter().filter(|n| !n.pairs.is_empty()) {
        out.push_str(&format!("paired: {} {}\n", n.name, n.pairs.join("; ")));
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
    if let Some(p) = &report.payload {
        out.push_str(&payload_lines(p));
    }
    out
}
