//! What the technician at the crash cart sees: an indicatif bar per step with the live metric
//! when stdout is a terminal, plain timestamped lines otherwise; then a summary table.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_protocol::readable::readable;
use kiln_protocol::wire::{EventBody, LogLevel, Metric, Outcome};

use crate::runner::{EventSink, RunReport};

/// How often a plain-text console repeats a running step's progress.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// The console sink.
pub struct Console {
    mode: Mode,
    state: Mutex<State>,
}

enum Mode {
    Bars(MultiProgress),
    Plain,
}

#[derive(Default)]
struct State {
    bars: HashMap<u32, ProgressBar>,
    names: HashMap<u32, String>,
    last_plain: HashMap<u32, Instant>,
}

impl Console {
    /// Bars on a terminal, plain lines otherwise (or when `plain` is asked for).
    pub fn new(plain: bool) -> Self {
        let mode = if !plain && std::io::stdout().is_terminal() {
            Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stdout()))
        } else {
            Mode::Plain
        };
        Self {
            mode,
            state: Mutex::new(State::default()),
        }
    }

    fn line(&self, text: &str) {
        match &self.mode {
            Mode::Bars(mp) => {
                let _ = mp.println(text);
            }
            Mode::Plain => println!(
                "{} {text}",
                humantime::format_rfc3339_seconds(SystemTime::now())
            ),
        }
    }
}

impl EventSink for Console {
    fn emit(&self, body: EventBody) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match body {
            EventBody::RunStarted {
                suite,
                steps,
                agent,
            } => {
                self.line(&format!(
                    "kiln-agent {agent}: suite {suite:?}, {steps} step(s)"
                ));
            }
            EventBody::ExpectChecked { outcome } => match outcome {
                Outcome::Fail { faults } => {
                    for f in faults {
                        self.line(&format!("expect: FAULT {}", f.message));
                    }
                }
                other => self.line(&format!("expect: {}", other.name())),
            },
            EventBody::StepStarted { step, name, kind } => {
                state.names.insert(step, name.clone());
                match &self.mode {
                    Mode::Bars(mp) => {
                        let bar = mp.add(ProgressBar::new(1000));
                        bar.set_style(
                            ProgressStyle::with_template("{spinner:.cyan} {prefix:<22} [{bar:30.cyan/blue}] {percent:>3}% {elapsed:>4}/{eta:<4} {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        bar.set_prefix(format!("{name} ({kind})"));
                        bar.enable_steady_tick(Duration::from_millis(120));
                        state.bars.insert(step, bar);
                    }
                    Mode::Plain => self.line(&format!("{name}: started ({kind})")),
                }
            }
            EventBody::Progress {
                step,
                fraction,
                status,
            } => match &self.mode {
                Mode::Bars(_) => {
                    if let Some(bar) = state.bars.get(&step) {
                        bar.set_position((fraction * 1000.0) as u64);
                        if let Some(status) = status {
                            bar.set_message(status);
                        }
                    }
                }
                Mode::Plain => {
                    let due = state
                        .last_plain
                        .get(&step)
                        .is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
                    if due {
                        state.last_plain.insert(step, Instant::now());
                        let name = state.names.get(&step).cloned().unwrap_or_default();
                        self.line(&format!(
                            "{name}: {:.0}% {}",
                            fraction * 100.0,
                            status.unwrap_or_default()
                        ));
                    }
                }
            },
            EventBody::Log { step, level, line } => {
                let who = step
                    .and_then(|s| state.names.get(&s).cloned())
                    .unwrap_or_else(|| "agent".into());
                let tag = match level {
                    LogLevel::Debug => return,
                    LogLevel::Info => "",
                    LogLevel::Warn => "WARNING: ",
                    LogLevel::Error => "ERROR: ",
                };
                self.line(&format!("{who}: {tag}{line}"));
            }
            EventBody::LogsDropped { count } => self.line(&format!("({count} log lines dropped)")),
            // Charted by the collector; a reading past a threshold is its step's fault.
            EventBody::Sensors { .. } => {}
            EventBody::StepFinished { report } => {
                let summary = format!("{} {}", report.outcome.name(), key_metrics(&report.metrics));
                match state.bars.remove(&report.step) {
                    Some(bar) => {
                        bar.set_position(1000);
                        bar.finish_with_message(summary);
                    }
                    None => self.line(&format!(
                        "{}: {summary} in {:.1}s",
                        report.name,
                        report.duration_ms as f64 / 1000.0
                    )),
                }
                if let Outcome::Fail { faults } = &report.outcome {
                    for f in faults.iter().take(10) {
                        self.line(&format!("{}: FAULT {}", report.name, f.message));
                    }
                }
            }
            EventBody::RunFinished { verdict } => {
                self.line(&format!("verdict: {}", verdict.name()))
            }
        }
    }
}

/// The metrics worth a glance, for reading (`7.90 GB/s, 61 °C`; [`readable`]): the well-known ones by name,
/// or, for a kind that reports none of them, its first two as they come (so a new kind shows
/// its figures without a line here).
pub fn key_metrics(metrics: &[Metric]) -> String {
    const SHOWN: &[&str] = &[
        "gbps",
        "ops_per_sec",
        "temp_c",
        "core_spread_pct",
        "write_mbps",
        "read_mbps",
        "latency_p99_ms",
        "speed_mbps",
        "mbps",
        "errors",
        "edac_corrected",
    ];
    let value = |m: &Metric| readable(m.value, &m.unit);
    let mut parts = Vec::new();
    for name in SHOWN {
        if let Some(m) = metrics.iter().find(|m| m.name == *name) {
            let value = value(m);
            parts.push(match m.name.as_str() {
                "core_spread_pct" => format!("spread {value}"),
                "latency_p99_ms" => format!("p99 {value}"),
                "write_mbps" => format!("write {value}"),
                "read_mbps" => format!("read {value}"),
                "errors" => format!("{value} errors"),
                "edac_corrected" => format!("{value} CE"),
                _ => value,
            });
        }
    }
    if parts.is_empty() {
        parts = metrics
            .iter()
            .take(2)
            .map(|m| format!("{} {}", m.name, value(m)))
            .collect();
    }
    parts.join(", ")
}

/// The summary table: step, outcome, key metrics, faults.
pub fn summary_table(report: &RunReport) -> String {
    let mut rows: Vec<[String; 4]> = Vec::new();
    if let Some(outcome) = &report.expect {
        rows.push([
            "expect".into(),
            outcome.name().into(),
            String::new(),
            first_problem(outcome),
        ]);
    }
    for s in &report.steps {
        rows.push([
            s.name.clone(),
            s.outcome.name().into(),
            key_metrics(&s.metrics),
            first_problem(&s.outcome),
        ]);
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    let mut out = kiln_protocol::text::table(
        &["step", "outcome", "metrics", "faults / notes"],
        &rows,
        60,
        200,
    );
    let skipped = report.planned_steps.saturating_sub(report.steps.len());
    if skipped > 0 {
        out.push_str(&format!("({skipped} step(s) not run)\n"));
    }
    out.push_str(&format!(
        "verdict: {}  ({:.1}s)\n",
        report.verdict.name(),
        report.duration_ms as f64 / 1000.0
    ));
    out
}

fn first_problem(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Pass => String::new(),
        Outcome::Degraded { reasons } => reasons.join("; "),
        Outcome::Fail { faults } => {
            let first = faults
                .first()
                .map(|f| f.message.clone())
                .unwrap_or_default();
            if faults.len() > 1 {
                format!("{first} (+{} more)", faults.len() - 1)
            } else {
                first
            }
        }
        Outcome::Skip { reason } => reason.clone(),
        Outcome::Error { message } => message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, value: f64, unit: &str) -> Metric {
        Metric {
            name: name.into(),
            value,
            unit: unit.into(),
        }
    }

    #[test]
    fn key_metrics_name_the_well_known_ones_and_fall_back_to_the_first_two() {
        let known = [
            metric("passes", 3.0, ""),
            metric("read_mbps", 842.4, "MB/s"),
            metric("write_mbps", 1093.0, "MB/s"),
        ];
        assert_eq!(key_metrics(&known), "write 1.09 GB/s, read 842 MB/s");
        let new_kind = [
            metric("fan_rpm", 5400.0, "rpm"),
            metric("fans", 6.0, ""),
            metric("psu_w", 410.0, "W"),
        ];
        assert_eq!(key_metrics(&new_kind), "fan_rpm 5400 rpm, fans 6");
        assert_eq!(key_metrics(&[]), "");
    }
}
