//! `nic: {target: peer}`: throughput against another node the collector pairs this one with.
//! The node serves the bandwidth endpoints on a port of its own for the whole step, asks the
//! collector for a partner, and when paired measures against the partner's server while the
//! partner measures against its own — both directions loaded at once, no collector link in
//! the way. It tells the collector its figures, which the collector judges against the
//! run's suite; a pair that missed is retested, each member against a third node, and the
//! node's outcome follows the rule both sides share ([`kiln_protocol::verdict::pairs`]):
//! cleared, carrying the fault, or inconclusive (`degraded`). Measured and cleared, it stays a
//! helper for odd, late and retested nodes until the collector releases it.

use std::time::{Duration, Instant};

use kiln_protocol::pair::{PairAnswer, PairDone, PairDoneReply, PairRequest, PairRole};
use kiln_protocol::routes;
use kiln_protocol::verdict::pairs::{Blame, Measured, blame};
use kiln_protocol::wire::{Fault, LogLevel};

use super::{CheckOutput, StepContext};

/// How often a waiting node asks again.
const POLL: Duration = Duration::from_millis(500);

/// How the pairing ended.
pub enum Paired {
    /// Measured against one partner or more; the outcome is in the output.
    Judged,
    /// No partner came within the step's `pair_timeout`.
    NoPartner {
        /// How long it waited, in seconds.
        waited_s: u64,
    },
}

/// One measurement against a partner, as the collector judged it.
struct Measurement {
    partner: String,
    met: bool,
    figures: CheckOutput,
}

/// The collector's pairing routes for this run.
struct Collector<'a> {
    runtime: &'a tokio::runtime::Runtime,
    http: reqwest::Client,
    token: &'a str,
    ask_url: String,
    done_url: String,
}

impl Collector<'_> {
    fn post<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        self.runtime.block_on(async {
            Ok(self
                .http
                .post(url)
                .bearer_auth(self.token)
                .json(body)
                .send()
                .await?
                .error_for_status()?
                .json::<T>()
                .await?)
        })
    }
}

/// The bandwidth endpoints on a port of this node's own, until the sender is used or dropped.
fn serve(
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(u16, tokio::sync::oneshot::Sender<()>)> {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("0.0.0.0:0"))?;
    let port = listener.local_addr()?.port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(crate::bandwidth::serve(listener, async move {
        let _ = stop_rx.await;
    }));
    Ok((port, stop_tx))
}

/// Pairs through the collector and measures; `measure` runs the throughput against the
/// partner's server (the same code as against the collector) and records its metrics.
pub fn run(
    spec: &kiln_protocol::suite::NicCheck,
    ctx: &StepContext<'_>,
    out: &mut CheckOutput,
    measure: &dyn Fn(&str, &mut CheckOutput) -> anyhow::Result<()>,
) -> anyhow::Result<Paired> {
    let (Some(base), Some(token), Some(run_id)) = (
        ctx.options.collector.as_deref(),
        ctx.options.collector_token.as_deref(),
        ctx.options.run_id,
    ) else {
        anyhow::bail!(
            "`target: peer` needs a collector to pair the nodes (run with --collector URL, or boot from one)"
        );
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::bandwidth::stream_threads(
            spec.streams.unwrap_or(1) as usize
        ))
        .enable_all()
        .build()?;
    let (port, stop_tx) = serve(&runtime)?;
    let collector = Collector {
        runtime: &runtime,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        token,
        ask_url: routes::url(base, routes::PAIR, run_id),
        done_url: routes::url(base, routes::PAIR_DONE, run_id),
    };
    let request = PairRequest {
        step: ctx.step as u32,
        port,
    };
    let started = Instant::now();
    let mut measured: Vec<Measurement> = Vec::new();
    let result = loop {
        if ctx.stop.should_stop() {
            break if measured.is_empty() {
                Err(anyhow::anyhow!(
                    "no partner was measured against within the step's timeout"
                ))
            } else {
                Ok(Paired::Judged)
            };
        }
        let answer: PairAnswer = match collector.post(&collector.ask_url, &request) {
            Ok(answer) => answer,
            Err(err) => break Err(err.context("asking the collector for a partner")),
        };
        match answer {
            PairAnswer::Wait => {
                let waiting = match measured.last() {
                    None => "waiting for a partner",
                    Some(m) if !m.met => "waiting for a third node to retest against",
                    Some(_) => "measured; helping nodes still to be measured",
                };
                ctx.observer.progress(
                    if measured.is_empty() { 0.0 } else { 1.0 },
                    &format!("{waiting} ({} s)", started.elapsed().as_secs()),
                );
                std::thread::sleep(POLL);
            }
            PairAnswer::Pair {
                pair,
                name,
                addr,
                role,
                ..
            } => match measure_pair(&collector, pair, &name, &addr, role, ctx, measure) {
                // A helper loads the link for its partner's sake: only a met result counts for
                // it (its standing is proven, or its partner was not: a miss proves nothing).
                Ok(m) if role == PairRole::Helper && !m.met => drop(m),
                Ok(m) => measured.push(m),
                Err(err) => break Err(err),
            },
            // Released before its own measurement: what the suite asked was not measured.
            PairAnswer::Released if measured.is_empty() => {
                break Err(anyhow::anyhow!(
                    "the collector released this node before it was measured against a partner"
                ));
            }
            PairAnswer::TimedOut { waited_s } if measured.is_empty() => {
                break Ok(Paired::NoPartner { waited_s });
            }
            PairAnswer::Released | PairAnswer::TimedOut { .. } => break Ok(Paired::Judged),
        }
    };
    let _ = stop_tx.send(());
    runtime.shutdown_timeout(Duration::from_secs(2));
    if matches!(result, Ok(Paired::Judged)) {
        judge(&measured, ctx, out);
    }
    result
}

/// Measures against the partner of pair `pair` and tells the collector the figures. A
/// measurement that broke off (the partner died, the link dropped) is a miss, not an error:
/// the collector retests this node against a third.
fn measure_pair(
    collector: &Collector<'_>,
    pair: u64,
    name: &str,
    addr: &str,
    role: PairRole,
    ctx: &StepContext<'_>,
    measure: &dyn Fn(&str, &mut CheckOutput) -> anyhow::Result<()>,
) -> anyhow::Result<Measurement> {
    let why = match role {
        PairRole::First => "",
        PairRole::Retest => ", a third node to retest against: the first pair missed",
        PairRole::Helper => ", as a helper for a node not measured yet",
    };
    ctx.observer.log(
        LogLevel::Info,
        &format!("paired with {name} ({addr}){why}: both measure against each other at once"),
    );
    let mut figures = CheckOutput::default();
    if let Err(err) = measure(&format!("http://{addr}"), &mut figures) {
        ctx.observer.log(
            LogLevel::Warn,
            &format!("measuring against {name} ({addr}) broke off, a miss: {err:#}"),
        );
        figures = CheckOutput::default();
    }
    let figure = |n: &str| {
        figures
            .metrics
            .iter()
            .find(|m| m.name == n)
            .map(|m| m.value)
    };
    let done = PairDone {
        pair,
        download_mbps: figure("download_mbps"),
        upload_mbps: figure("upload_mbps"),
        mbps: figure("mbps"),
    };
    let reply: PairDoneReply = collector
        .post(&collector.done_url, &done)
        .map_err(|e| e.context(format!("telling the collector pair {pair} is done")))?;
    ctx.observer.log(
        if reply.met {
            LogLevel::Info
        } else {
            LogLevel::Warn
        },
        &format!(
            "against {name}: {} — {} the step's thresholds",
            done.mbps
                .map_or("nothing measured".to_owned(), |m| format!("{m:.0} Mb/s")),
            if reply.met { "met" } else { "missed" }
        ),
    );
    Ok(Measurement {
        partner: name.to_owned(),
        met: reply.met,
        figures,
    })
}

/// The step's figures and outcome from its measurements: those of the pair that met the
/// thresholds (else the first), and the shared rule's blame.
fn judge(measured: &[Measurement], ctx: &StepContext<'_>, out: &mut CheckOutput) {
    let list: Vec<Measured> = measured
        .iter()
        .map(|m| Measured {
            partner: m.partner.clone(),
            met: m.met,
        })
        .collect();
    let blame = blame(&list);
    if let Some(chosen) = measured.iter().find(|m| m.met).or(measured.first()) {
        out.metrics.extend(chosen.figures.metrics.iter().cloned());
    }
    let reason = blame.reason();
    match blame {
        Blame::Cleared => {
            if list.iter().any(|m| !m.met) {
                ctx.observer.log(
                    LogLevel::Info,
                    "cleared: a miss with one partner, its thresholds met with another",
                );
            }
        }
        Blame::Fault { partners } => out.faults.push(
            Fault::new("nic.pair_blame", reason.unwrap_or_default())
                .with("partners", partners.join(", ")),
        ),
        Blame::Inconclusive { .. } => out.inconclusive = reason,
        Blame::Unmeasured => out
            .faults
            .push(Fault::new("nic.no_partner", reason.unwrap_or_default())),
    }
}
