//! The lab's report: each node's result from the collector's own records (verdict, steps,
//! faults, memtest86+ reading, timings from VM start), and the table printed at the end.

use std::time::Instant;

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
        });
    }
    Ok(nodes)
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
