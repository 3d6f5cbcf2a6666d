//! `kiln report`: which nodes passed, which failed, and why — as a table, CSV or JSON.

use clap::{Args, ValueEnum};

use kiln_protocol::api::{BatchSummary, ReportFormat, ReportRow};

use super::client::ServerArgs;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum Format {
    Table,
    Csv,
    Json,
    /// A workbook (with `--batch` and `--out`).
    Xlsx,
}

#[derive(Debug, Args)]
pub(super) struct ReportArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Where to write the workbook of `--format xlsx`, or the evidence of `--evidence`.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// A node's RMA evidence for its latest run, as a ZIP written to `--out` (serials, faults
    /// with details, BMC log, memtest86+ screen, console, log, provenance).
    #[arg(long, value_name = "NODE")]
    evidence: Option<i64>,
    /// Only this rack.
    #[arg(long)]
    rack: Option<String>,
    /// A batch (purchase order, delivery): its yield, failure pareto, slowest stage and failed
    /// nodes (table or JSON); with `--format csv`, its nodes.
    #[arg(long)]
    batch: Option<String>,
    /// Only runs started within this long, e.g. 7d or 12h.
    #[arg(long)]
    since: Option<String>,
    /// Only this verdict: pass, degraded, unattested, fail, error, incomplete or running.
    #[arg(long)]
    verdict: Option<String>,
}

/// Exit code 1 when any reported node's last run failed.
pub(super) fn run(args: ReportArgs) -> anyhow::Result<u8> {
    if let Some(node) = args.evidence {
        return evidence(&args, node);
    }
    if matches!(args.format, Format::Xlsx) {
        return workbook(&args);
    }
    if let (Some(batch), false) = (&args.batch, matches!(args.format, Format::Csv)) {
        return batch_report(&args, batch);
    }
    let mut query: Vec<(&str, String)> = Vec::new();
    for (key, value) in [
        ("rack", &args.rack),
        ("batch", &args.batch),
        ("since", &args.since),
        ("verdict", &args.verdict),
    ] {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    let fetch = |format: ReportFormat| {
        let mut query = query.clone();
        query.push(("format", format.name().to_owned()));
        args.server.send(false, |client, base| {
            match reqwest::Url::parse_with_params(&format!("{base}/api/v1/report"), &query) {
                Ok(url) => client.get(url),
                // A base URL that does not parse: let the request itself report it.
                Err(_) => client.get(format!("{base}/api/v1/report")),
            }
        })
    };
    // The rows typed, always: the exit code is decided from them (a CSV's verdict column is
    // text for people, `pass (1 waived)`), whatever is printed.
    let rows: Vec<ReportRow> = serde_json::from_str(&fetch(ReportFormat::Json)?)
        .map_err(|e| anyhow::anyhow!("the collector's report does not read as report rows: {e}"))?;
    match args.format {
        Format::Csv => print!("{}", fetch(ReportFormat::Csv)?),
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table | Format::Xlsx => print!("{}", table(&rows)),
    }
    let failed = rows.iter().any(ReportRow::failed);
    Ok(if failed {
        super::EXIT_FAILURE_FOUND
    } else {
        super::EXIT_OK
    })
}

/// `--evidence NODE --out FILE.zip`: the node's RMA evidence, written to FILE.
fn evidence(args: &ReportArgs, node: i64) -> anyhow::Result<u8> {
    let Some(out) = &args.out else {
        anyhow::bail!("--evidence needs --out FILE.zip");
    };
    let zip = args.server.send_bytes(false, |client, base| {
        let path = kiln_protocol::routes::EVIDENCE.replace("{id}", &node.to_string());
        client.get(format!("{base}{path}"))
    })?;
    std::fs::write(out, &zip)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", out.display()))?;
    println!(
        "node {node}: evidence in {} ({} bytes)",
        out.display(),
        zip.len()
    );
    Ok(super::EXIT_OK)
}

/// `--batch NAME --format xlsx --out FILE`: the batch's workbook, written to FILE.
fn workbook(args: &ReportArgs) -> anyhow::Result<u8> {
    let (Some(batch), Some(out)) = (&args.batch, &args.out) else {
        anyhow::bail!("--format xlsx needs --batch NAME and --out FILE.xlsx");
    };
    let book = args.server.send_bytes(false, |client, base| {
        let path = kiln_protocol::routes::BATCH_WORKBOOK.replace("{name}", batch);
        match reqwest::Url::parse(base).and_then(|b| b.join(&path)) {
            Ok(url) => client.get(url),
            Err(_) => client.get(format!("{base}{path}")),
        }
    })?;
    std::fs::write(out, &book)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", out.display()))?;
    println!("batch {batch}: {} ({} bytes)", out.display(), book.len());
    Ok(super::EXIT_OK)
}

/// `--batch NAME` as a table or JSON; exit 1 when any of its nodes failed.
fn batch_report(args: &ReportArgs, batch: &str) -> anyhow::Result<u8> {
    let body = args.server.send(false, |client, base| {
        let path = kiln_protocol::routes::BATCH.replace("{name}", batch);
        match reqwest::Url::parse(base).and_then(|b| b.join(&path)) {
            Ok(url) => client.get(url),
            Err(_) => client.get(format!("{base}{path}")),
        }
    })?;
    let summary: BatchSummary = serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("the collector's batch summary does not read as one: {e}"))?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        _ => print!("{}", batch_text(&summary)),
    }
    Ok(if summary.yield_.fail > 0 {
        super::EXIT_FAILURE_FOUND
    } else {
        super::EXIT_OK
    })
}

/// A batch for people: yield, the paretos, stage times, the failed nodes.
fn batch_text(s: &BatchSummary) -> String {
    use std::fmt::Write;
    let v = kiln_protocol::bounds::visible;
    let y = &s.yield_;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "batch {}: {} node(s) — {} pass, {} degraded, {} pass (waived), {}{} fail, {} running, {} not started{}",
        v(&s.batch),
        y.nodes,
        y.pass,
        y.degraded,
        y.waived,
        if y.unattested > 0 {
            format!("{} unattested (attestation optional), ", y.unattested)
        } else {
            String::new()
        },
        y.fail,
        y.running,
        y.not_started,
        y.pass_pct()
            .map(|p| format!("; yield {p:.1} % of those with a verdict"))
            .unwrap_or_default()
    );
    for (title, bars) in [
        ("failures by fault code", &s.pareto_codes),
        ("failures by component", &s.pareto_components),
    ] {
        if bars.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}:");
        let most = bars.iter().map(|b| b.nodes).max().unwrap_or(1).max(1);
        for bar in bars {
            let _ = writeln!(
                out,
                "  {:<32} {:>5}  {}",
                v(&bar.key),
                bar.nodes,
                "#".repeat((bar.nodes * 30).div_ceil(most))
            );
        }
    }
    if !s.stages.is_empty() {
        let _ = writeln!(out, "\nstages (slowest first):");
        for st in &s.stages {
            let _ = writeln!(
                out,
                "  {:<8} mean {:>7.1} s, longest {:>7.1} s over {} run(s)",
                st.stage, st.mean_s, st.max_s, st.runs
            );
        }
    }
    out.push_str(&payload_lines(&s.payload));
    if !s.failed.is_empty() {
        let _ = writeln!(out, "\nfailed nodes:");
        for f in &s.failed {
            let _ = writeln!(
                out,
                "  {:<16} {:<10} {:<10} {}",
                v(f.hostname.as_deref().unwrap_or("-")),
                v(&format!(
                    "{}/{}",
                    f.rack.as_deref().unwrap_or("-"),
                    f.slot.as_deref().unwrap_or("-")
                )),
                f.verdict,
                v(&f.reason)
            );
        }
    }
    out
}

/// Per rack, the payload bytes the collector served against the peers'.
fn payload_lines(racks: &[kiln_protocol::payload::RackPayload]) -> String {
    let mut out = String::new();
    if racks.is_empty() {
        return out;
    }
    out.push_str("\npayload by rack (nodes that fetched it):\n");
    let mib = |b: u64| b as f64 / 1048576.0;
    for r in racks {
        out.push_str(&format!(
            "  {:<12} {:>4} node(s)  collector {:>9.1} MiB  peers {:>9.1} MiB{}\n",
            kiln_protocol::bounds::visible(r.rack.as_deref().unwrap_or("-")),
            r.nodes,
            mib(r.collector_bytes),
            mib(r.peer_bytes),
            if r.corrupt > 0 {
                format!("  {} piece(s) failed the hash", r.corrupt)
            } else {
                String::new()
            }
        ));
    }
    out
}

pub(super) fn table(rows: &[ReportRow]) -> String {
    let s = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut name = r
                .hostname
                .clone()
                .unwrap_or_else(|| format!("node {}", r.node_id));
            if r.ad_hoc {
                name.push_str(" (ad hoc)");
            }
            vec![
                name,
                format!("{}/{}", s(&r.rack), s(&r.slot)),
                s(&r.serial),
                s(&r.suite),
                r.stage.map_or_else(|| "-".to_owned(), |st| st.to_string()),
                r.verdict_text(),
                r.faults.join("; "),
            ]
        })
        .collect();
    // Whatever a node stored, the operator's terminal shows it and does not obey it.
    let racks = kiln_protocol::payload::by_rack(
        rows.iter()
            .filter_map(|r| Some((r.rack.as_deref(), r.payload.as_ref()?))),
    );
    kiln_protocol::text::table(
        &[
            "node",
            "rack/slot",
            "serial",
            "suite",
            "stage",
            "verdict",
            "faults",
        ],
        &lines,
        40,
        usize::MAX,
    ) + &payload_lines(&racks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_control_characters_instead_of_obeying_them() {
        let rows = vec![ReportRow {
            hostname: Some("n\u{1b}]52;c;ZXZpbA==\u{7}".into()),
            serial: Some("SN\r1".into()),
            ad_hoc: true,
            run_id: Some(1),
            verdict: Some(kiln_protocol::verdict::Verdict::Fail),
            faults: vec!["DIMM\u{1b}[2J B2".into()],
            ..ReportRow::new(1, kiln_protocol::api::Mode::Verify)
        }];
        let text = table(&rows);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains("n\\x1b]52;c;ZXZpbA==\\u{7} (ad hoc)"),
            "{text}"
        );
        assert!(text.contains("DIMM\\x1b[2J B2"), "{text}");
    }

    #[test]
    fn the_table_ends_with_the_payload_by_rack_and_its_hostile_rack_names_shown_inert() {
        let tally = |c, p| kiln_protocol::payload::Tally {
            collector_bytes: c,
            peer_bytes: p,
            peers: 1,
            corrupt: 1,
            ms: 5,
        };
        let rows = [
            ReportRow {
                rack: Some("R\x1b[2J1".into()),
                payload: Some(tally(1 << 20, 3 << 20)),
                ..ReportRow::new(1, kiln_protocol::api::Mode::Verify)
            },
            ReportRow {
                rack: Some("R\x1b[2J1".into()),
                payload: Some(tally(0, 4 << 20)),
                ..ReportRow::new(2, kiln_protocol::api::Mode::Verify)
            },
            ReportRow::new(3, kiln_protocol::api::Mode::Verify),
        ];
        let text = table(&rows);
        let line = text
            .lines()
            .find(|l| l.contains("node(s)"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("   2 node(s)"), "{line}");
        assert!(line.contains("collector       1.0 MiB"), "{line}");
        assert!(line.contains("peers       7.0 MiB"), "{line}");
        assert!(line.contains("2 piece(s) failed the hash"), "{line}");
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(!table(&rows[2..]).contains("payload by rack"));
    }
}
