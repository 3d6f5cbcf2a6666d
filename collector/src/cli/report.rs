//! `kiln report`: which nodes passed, which failed, and why — as a table, CSV or JSON.

use clap::{Args, ValueEnum};

use kiln_protocol::api::ReportRow;

use super::client::ServerArgs;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub(super) struct ReportArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Only this rack.
    #[arg(long)]
    rack: Option<String>,
    /// Only runs started within this long, e.g. 7d or 12h.
    #[arg(long)]
    since: Option<String>,
    /// Only this verdict: pass, degraded, fail, error, incomplete or running.
    #[arg(long)]
    verdict: Option<String>,
}

/// Exit code 1 when any reported node's last run failed.
pub(super) fn run(args: ReportArgs) -> anyhow::Result<u8> {
    let mut query: Vec<(&str, String)> = Vec::new();
    for (key, value) in [
        ("rack", &args.rack),
        ("since", &args.since),
        ("verdict", &args.verdict),
    ] {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    let wire = if matches!(args.format, Format::Csv) {
        "csv"
    } else {
        "json"
    };
    query.push(("format", wire.to_owned()));
    let body = args.server.send(false, |client, base| {
        match reqwest::Url::parse_with_params(&format!("{base}/api/v1/report"), &query) {
            Ok(url) => client.get(url),
            // A base URL that does not parse: let the request itself report it.
            Err(_) => client.get(format!("{base}/api/v1/report")),
        }
    })?;
    let rows: Vec<ReportRow> = if wire == "json" {
        serde_json::from_str(&body).map_err(|e| {
            anyhow::anyhow!("the collector's report does not read as report rows: {e}")
        })?
    } else {
        Vec::new()
    };
    match args.format {
        Format::Csv => print!("{body}"),
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => print!("{}", table(&rows)),
    }
    let failed = if wire == "json" {
        rows.iter().any(|r| r.verdict.is_some_and(|v| !v.is_good()))
    } else {
        body.lines().skip(1).any(|l| {
            [",fail,", ",error,", ",incomplete,"]
                .iter()
                .any(|v| l.contains(v))
        })
    };
    Ok(if failed {
        super::EXIT_FAILURE_FOUND
    } else {
        super::EXIT_OK
    })
}

fn table(rows: &[ReportRow]) -> String {
    let s = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut lines: Vec<[String; 7]> = vec![
        [
            "node",
            "rack/slot",
            "serial",
            "suite",
            "stage",
            "verdict",
            "faults",
        ]
        .map(str::to_owned),
    ];
    for r in rows {
        let mut name = r
            .hostname
            .clone()
            .unwrap_or_else(|| format!("node {}", r.node_id));
        if r.ad_hoc {
            name.push_str(" (ad hoc)");
        }
        lines.push([
            name,
            format!("{}/{}", s(&r.rack), s(&r.slot)),
            s(&r.serial),
            s(&r.suite),
            r.stage.map_or_else(|| "-".to_owned(), |st| st.to_string()),
            r.state().to_owned(),
            r.faults.join("; "),
        ]);
    }
    // Whatever a node stored, the operator's terminal shows it and does not obey it.
    for line in &mut lines {
        for cell in line.iter_mut() {
            *cell = kiln_protocol::bounds::visible(cell);
        }
    }
    let mut widths = [0usize; 7];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count()).min(40);
        }
    }
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 6 {
                    cell.clone()
                } else {
                    format!("{:<w$}", cell.chars().take(w).collect::<String>())
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_control_characters_instead_of_obeying_them() {
        let rows = vec![ReportRow {
            node_id: 1,
            hostname: Some("n\u{1b}]52;c;ZXZpbA==\u{7}".into()),
            rack: None,
            slot: None,
            serial: Some("SN\r1".into()),
            uuid: None,
            macs: String::new(),
            mode: kiln_protocol::api::Mode::Verify,
            ad_hoc: true,
            allow_destructive: false,
            run_id: Some(1),
            suite: None,
            stage: None,
            verdict: Some(kiln_protocol::verdict::Verdict::Fail),
            verdict_reason: None,
            progress: None,
            faults: vec!["DIMM\u{1b}[2J B2".into()],
            started_ms: None,
            finished_ms: None,
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
}
