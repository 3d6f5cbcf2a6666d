//! `kiln verify`: one command for the technician. Arms the selected nodes (mode verify),
//! power-cycles each through its configured driver (a node with `manual` power, or none, is
//! listed with what to do), then shows them live — one bar per node with stage, step and
//! progress — until every one has a verdict from a run that started after arming, or the
//! timeout; prints the table and exits 0 only if all passed. Ctrl-C stops watching and leaves
//! the nodes running; `kiln watch` picks it up again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_protocol::api::{ReportRow, VerifyRequest, VerifyStarted};
use kiln_protocol::bounds::visible;
use kiln_protocol::routes;
use kiln_protocol::units::HumanDuration;

use super::client::ServerArgs;
use super::nodes::Select;

/// Exit code when the technician stopped watching (the nodes keep running).
const EXIT_STOPPED: u8 = 130;

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    select: Select,
    /// Longest to wait for every verdict, e.g. 6h.
    #[arg(long, default_value = "6h")]
    timeout: HumanDuration,
    #[command(flatten)]
    server: ServerArgs,
}

pub(super) fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let payload = VerifyRequest {
        select: args.select.selector(),
    };
    let body = args.server.send(true, |c, base| {
        c.post(format!("{base}{}", routes::NODES_VERIFY))
            .json(&payload)
    })?;
    let started: VerifyStarted = serde_json::from_str(&body).map_err(|e| {
        anyhow::anyhow!("the collector answered something unexpected ({e}): {body}")
    })?;
    if started.nodes.is_empty() {
        anyhow::bail!("no node matches {}", args.select.args());
    }
    for n in &started.nodes {
        println!(
            "{:<20} {}",
            visible(
                n.hostname
                    .as_deref()
                    .unwrap_or(&format!("node {}", n.node_id))
            ),
            n.power
        );
    }
    let before: HashMap<i64, Option<i64>> = started
        .nodes
        .iter()
        .map(|n| (n.node_id, n.run_before))
        .collect();
    watch_until(&args.server, &args.select, Some(before), args.timeout)
}

#[derive(Debug, Args)]
pub(super) struct WatchArgs {
    #[command(flatten)]
    select: Select,
    /// Longest to wait for every verdict, e.g. 6h.
    #[arg(long, default_value = "6h")]
    timeout: HumanDuration,
    #[command(flatten)]
    server: ServerArgs,
}

/// `kiln watch`: the same live view, for nodes already on their way.
pub(super) fn watch(args: WatchArgs) -> anyhow::Result<u8> {
    watch_until(&args.server, &args.select, None, args.timeout)
}

/// Shows the selected nodes live until each has a verdict — from a run later than `before`'s
/// when given — or `timeout`; then the table and the exit code.
fn watch_until(
    server: &ServerArgs,
    select: &Select,
    before: Option<HashMap<i64, Option<i64>>>,
    timeout: HumanDuration,
) -> anyhow::Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second handler (another watch in this process) is no reason to fail.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:20} [{bar:30}] {pos:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut shown: HashMap<i64, (ProgressBar, String)> = HashMap::new();
    let deadline = Instant::now() + timeout.get();
    let done = |row: &ReportRow| {
        row.verdict.is_some()
            && before
                .as_ref()
                .is_none_or(|b| b.get(&row.node_id).is_some_and(|r| *r != row.run_id))
    };
    loop {
        let body = server.send(false, |c, base| c.get(format!("{base}{}", routes::REPORT)))?;
        let rows: Vec<ReportRow> = serde_json::from_str(&body)
            .map_err(|e| anyhow::anyhow!("the collector's report does not read: {e}"))?;
        let rows: Vec<ReportRow> = rows
            .into_iter()
            .filter(|r| select.matches(r))
            .filter(|r| before.as_ref().is_none_or(|b| b.contains_key(&r.node_id)))
            .collect();
        for row in &rows {
            let name = visible(
                row.hostname
                    .as_deref()
                    .unwrap_or(&format!("node {}", row.node_id)),
            );
            let (bar, last) = shown.entry(row.node_id).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(100));
                bar.set_style(style.clone());
                bar.set_prefix(name.clone());
                (bar, String::new())
            });
            let state = if done(row) {
                row.verdict_text()
            } else {
                let stage = row
                    .stage
                    .map_or("waiting to boot".to_owned(), |s| s.to_string());
                match &row.progress {
                    Some(p) if row.run_id.is_some() => format!(
                        "{stage}: {} {}",
                        visible(&p.name),
                        visible(p.status.as_deref().unwrap_or(""))
                    ),
                    _ => stage,
                }
            };
            let fraction = if done(row) {
                1.0
            } else {
                row.progress.as_ref().map_or(0.0, |p| p.fraction)
            };
            bar.set_position((fraction * 100.0).round() as u64);
            if *last != state {
                bar.set_message(state.clone());
                if bars.is_hidden() {
                    println!("{name:<20} {state}");
                }
                *last = state;
            }
        }
        let all_done = !rows.is_empty() && rows.iter().all(done);
        if all_done {
            for (bar, _) in shown.values() {
                bar.finish();
            }
            print!("\n{}", super::report::table(&rows));
            return Ok(if rows.iter().any(ReportRow::failed) {
                super::EXIT_FAILURE_FOUND
            } else {
                super::EXIT_OK
            });
        }
        if Instant::now() >= deadline {
            print!("\n{}", super::report::table(&rows));
            let waiting = rows.iter().filter(|r| !done(r)).count();
            eprintln!("kiln: {timeout} passed with {waiting} node(s) still without a verdict");
            return Ok(super::EXIT_FAILURE_FOUND);
        }
        for _ in 0..20 {
            if stop.load(Ordering::SeqCst) {
                eprintln!(
                    "\nkiln: stopped watching; the nodes keep running. Watch again with: kiln watch {}",
                    select.args()
                );
                return Ok(EXIT_STOPPED);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
