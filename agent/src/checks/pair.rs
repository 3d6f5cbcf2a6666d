//! `nic: {target: peer}`: throughput against another node the collector pairs this one with.
//! The node serves the bandwidth endpoints on a port of its own for the whole step, asks the
//! collector for a partner, and when paired measures against the partner's server while the
//! partner measures against its own — both directions loaded at once, no collector link in
//! the way. Measured once, it stays a helper for an odd or late node until the collector
//! releases it. No partner within `pair_timeout` is a fault, never a pass.

use std::time::{Duration, Instant};

use kiln_protocol::pair::{PairAnswer, PairDone, PairRequest};
use kiln_protocol::routes;
use kiln_protocol::wire::{Fault, LogLevel};

use super::{CheckOutput, StepContext};

/// How often a waiting node asks again.
const POLL: Duration = Duration::from_millis(500);

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
) -> anyhow::Result<()> {
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
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let post = |url: &str, body: serde_json::Value| {
        runtime.block_on(async {
            http.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json::<serde_json::Value>()
                .await
        })
    };
    let ask_url = routes::url(base, routes::PAIR, run_id);
    let done_url = routes::url(base, routes::PAIR_DONE, run_id);
    let request = PairRequest {
        step: ctx.step as u32,
        port,
    };
    let started = Instant::now();
    let mut measured = false;
    let result =
        loop {
            if ctx.stop.should_stop() {
                break Err(anyhow::anyhow!(
                    "no partner was measured against within the step's timeout"
                ));
            }
            let answer: PairAnswer =
                serde_json::from_value(post(&ask_url, serde_json::to_value(&request)?)?)?;
            match answer {
                PairAnswer::Wait => {
                    if !measured {
                        ctx.observer.progress(
                            0.0,
                            &format!("waiting for a partner ({} s)", started.elapsed().as_secs()),
                        );
                    }
                    std::thread::sleep(POLL);
                }
                PairAnswer::Pair {
                    pair,
                    name,
                    addr,
                    helper,
                    ..
                } => {
                    let target = format!("http://{addr}");
                    ctx.observer.log(
                    LogLevel::Info,
                    &format!(
                        "paired with {name} ({addr}){}: both measure against each other at once",
                        if helper { ", as a helper for a node not measured yet" } else { "" }
                    ),
                );
                    // A helper loads the link for its partner's sake; its own figures stay those
                    // of its first pair.
                    let mut scratch = CheckOutput::default();
                    let sink = if measured { &mut scratch } else { &mut *out };
                    let outcome = measure(&target, sink);
                    let _ = post(&done_url, serde_json::to_value(PairDone { pair })?);
                    if let Err(err) = outcome {
                        break Err(err.context(format!("measuring against {name} ({addr})")));
                    }
                    measured = true;
                    ctx.observer
                        .progress(1.0, "measured; helping nodes still to be measured");
                }
                // Released before its own measurement: what the suite asked was not measured.
                PairAnswer::Released if !measured => {
                    break Err(anyhow::anyhow!(
                        "the collector released this node before it was measured against a partner"
                    ));
                }
                PairAnswer::Released => break Ok(()),
                PairAnswer::TimedOut { waited_s } => {
                    out.faults.push(
                        Fault::new(
                            "nic.no_partner",
                            format!(
                                "no partner reached this node within {waited_s} s (pair_timeout)"
                            ),
                        )
                        .with("policy", format!("{:?}", spec.peer.unwrap_or_default())),
                    );
                    break Ok(());
                }
            }
        };
    let _ = stop_tx.send(());
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}
