//! RMA evidence: what a vendor needs to accept a failed node back, in one ZIP — its serials
//! (system, board, chassis, DIMMs, disks, NICs), every fault with its structured details
//! (address, slot, device), the BMC's event log at boot, the memtest86+ screen, the serial
//! console's last lines, the run's log, and the provenance of the verdict; the whole run as
//! JSON beside them. Node-supplied text is written as it was stored, in text files.

use std::fmt::Write as _;
use std::io::Write as _;

use kiln_protocol::api::ReportRow;
use kiln_protocol::wire::Outcome;

use crate::store::queries::{LogLine, RunDetail};

/// The ZIP's bytes.
pub fn evidence_zip(
    node: &ReportRow,
    run: &RunDetail,
    logs: &[LogLine],
) -> Result<Vec<u8>, zip::result::ZipError> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let files = [
        ("README.txt", summary(node, run)),
        ("identity.txt", identity(run)),
        ("faults.txt", faults(run)),
        (
            "sel-at-boot.txt",
            run.inventory
                .as_ref()
                .map(|i| i.sel.join("\n"))
                .unwrap_or_default(),
        ),
        (
            "memtest-screen.txt",
            run.memtest
                .as_ref()
                .map(|m| m.screen.clone())
                .unwrap_or_default(),
        ),
        ("console.txt", run.console.join("\n")),
        ("log.txt", log(logs)),
        (
            "run.json",
            serde_json::to_string_pretty(run).unwrap_or_default(),
        ),
    ];
    for (name, text) in files {
        if text.is_empty() {
            continue;
        }
        zip.start_file(name, options)?;
        zip.write_all(text.as_bytes())?;
        zip.write_all(b"\n")?;
    }
    Ok(zip.finish()?.into_inner())
}

fn summary(node: &ReportRow, run: &RunDetail) -> String {
    let mut out = String::new();
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "kiln RMA evidence");
    let _ = writeln!(out, "node:     {} ({})", node.node_id, or(&node.hostname));
    let _ = writeln!(
        out,
        "place:    rack {} slot {}",
        or(&node.rack),
        or(&node.slot)
    );
    let _ = writeln!(out, "batch:    {}", or(&node.batch));
    let _ = writeln!(out, "serial:   {}", or(&node.serial));
    let _ = writeln!(out, "run:      {} (suite {})", run.run_id, run.suite);
    let _ = writeln!(out, "verdict:  {}", node.verdict_text());
    let _ = writeln!(
        out,
        "started:  {}",
        kiln_protocol::junit::rfc3339(run.started_ms.max(0) as u64)
    );
    let _ = writeln!(out, "\nwhy:");
    for f in &run.faults {
        let _ = writeln!(out, "  {f}");
    }
    let _ = writeln!(out, "\nprovenance:");
    for (name, value) in run.provenance.properties() {
        let _ = writeln!(out, "  {name}: {value}");
    }
    out
}

fn identity(run: &RunDetail) -> String {
    let Some(inv) = &run.inventory else {
        return "no inventory was posted".into();
    };
    let mut out = String::new();
    let s = &inv.system;
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "system:  {} {} serial {} uuid {}",
        or(&s.vendor),
        or(&s.product),
        or(&s.serial),
        or(&s.uuid)
    );
    let _ = writeln!(
        out,
        "board:   {} {} serial {}",
        or(&s.board_vendor),
        or(&s.board_product),
        or(&s.board_serial)
    );
    let _ = writeln!(
        out,
        "chassis: serial {} asset {}",
        or(&s.chassis_serial),
        or(&s.chassis_asset_tag)
    );
    let _ = writeln!(out, "bios:    {}", or(&s.bios_version));
    let _ = writeln!(out, "cpu:     {} × {}", inv.cpu.logical, inv.cpu.brand);
    for d in inv.memory.dimms.iter().flatten() {
        let _ = writeln!(
            out,
            "dimm:    {} {} {} part {} serial {}",
            d.locator,
            d.size_bytes
                .map(|b| kiln_protocol::readable::readable(b as f64, "B"))
                .unwrap_or_else(|| "empty".into()),
            or(&d.manufacturer),
            or(&d.part),
            or(&d.serial)
        );
    }
    for d in &inv.disks {
        let _ = writeln!(
            out,
            "disk:    {} {} serial {}",
            d.path,
            or(&d.model),
            or(&d.serial)
        );
    }
    for n in &inv.nics {
        let _ = writeln!(out, "nic:     {} {}", n.name, n.mac);
    }
    out
}

/// Every fault of the run with its details, step by step.
fn faults(run: &RunDetail) -> String {
    let mut out = String::new();
    let mut outcomes: Vec<(&str, &Outcome)> = run
        .steps
        .iter()
        .map(|s| (s.name.as_str(), &s.outcome))
        .collect();
    if let Some(expect) = &run.expect {
        outcomes.insert(0, ("expect", expect));
    }
    for (step, outcome) in outcomes {
        match outcome {
            Outcome::Fail { faults } => {
                for f in faults {
                    let _ = writeln!(out, "{step}: [{}] {}", f.code, f.message);
                    for (k, v) in &f.details {
                        let _ = writeln!(out, "    {k}: {v}");
                    }
                }
            }
            Outcome::Error { message } => {
                let _ = writeln!(out, "{step}: error: {message}");
            }
            _ => {}
        }
    }
    for f in &run.findings {
        let _ = writeln!(out, "collector: {f}");
    }
    for s in &run.stages {
        if let Some(d) = &s.detail {
            let _ = writeln!(out, "{} stage: {d}", s.name);
        }
    }
    out
}

fn log(logs: &[LogLine]) -> String {
    logs.iter()
        .map(|l| {
            format!(
                "{} {} {}",
                kiln_protocol::junit::rfc3339(l.at_ms.max(0) as u64),
                l.body["level"].as_str().unwrap_or("-"),
                l.body["line"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
