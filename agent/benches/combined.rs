//! Each member of a `parallel:` group measured alone and inside the group, on the same
//! machine in one run: memory (GB/s), CPU (it/s), disk (write and read MB/s to a file) and
//! NIC (Mb/s each way over loopback to `kiln-agent serve-bandwidth`), each alone for
//! `KILN_BENCH_SECS` (default 20 s), then all four together for as long, through the
//! agent's own runner — the CPU split and the repeats as a suite gets them — once with
//! `cpus: split` (the default) and once with `cpus: shared`, so the split's effect is
//! measured beside it. Rounds alternate alone, split and shared (`KILN_BENCH_ROUNDS`,
//! default 2); each figure is the median of its rounds.
//!
//! Memory and CPU split the CPUs in the group (each gets half, swapped at half time), so
//! their rates there are compared per CPU too: the group's figure over the CPUs it had,
//! against alone's over all of them. A member below half of its alone rate per CPU is a
//! defect; the disk and the NIC share the CPUs with everything and are compared as they are.
//! Run: `cargo bench -p kiln-agent --bench combined`.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_agent::checks::RunOptions;
use kiln_agent::runner::{EventSink, run};
use kiln_agent::stop::Interrupt;
use kiln_protocol::wire::EventBody;

/// Drops every event: the figures come from the report.
struct Quiet;

impl EventSink for Quiet {
    fn emit(&self, _: EventBody) {}
}

/// The members: name, their step body (indented for a group member), the metrics read.
fn members(dir: &str, url: &str) -> Vec<(&'static str, String, &'static [&'static str])> {
    vec![
        ("memory", "memory: {size: 256MiB}".to_owned(), &["gbps"]),
        ("cpu", "cpu: {}".to_owned(), &["ops_per_sec"]),
        (
            "disk",
            format!("disk: {{dir: {dir}, size: 256MiB}}"),
            &["write_mbps", "read_mbps"],
        ),
        (
            "nic",
            format!(
                "nic: {{link: false, interfaces: [lo], target: \"{url}\", duration: 3s, streams: 1}}"
            ),
            &["download_mbps", "upload_mbps"],
        ),
    ]
}

/// Runs `steps` as a suite and returns every metric of every step, by step and metric.
fn measure(steps: &str) -> BTreeMap<(String, String), f64> {
    let text = format!("suite: bench\ndescription: combined bench\nsteps:\n{steps}");
    let plan = kiln_protocol::load("bench.yaml", text.as_bytes()).expect("the bench's suite");
    let report = run(
        &plan,
        &RunOptions::default(),
        &Interrupt::new(),
        Arc::new(Quiet),
    );
    let mut out = BTreeMap::new();
    for s in &report.steps {
        assert_eq!(
            s.outcome.name(),
            "pass",
            "{} did not pass: {:?}",
            s.name,
            s.outcome
        );
        for m in &s.metrics {
            out.insert((s.name.clone(), m.name.clone()), m.value);
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let secs: u64 = std::env::var("KILN_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rounds: usize = std::env::var("KILN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-combined");
    std::fs::create_dir_all(&dir).expect("target/bench-combined");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(kiln_agent::bandwidth::serve(listener, async move {
        let _ = stopped.await;
    }));
    let members = members(&dir.display().to_string(), &url);
    let cpus = kiln_agent::os::affinity::allowed_cpus().len();
    println!(
        "combined bench: {cpus} CPU(s), {secs} s each, {rounds} round(s); members alone, then together (cpus: split, then shared)"
    );
    let mut alone: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut together: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut shared: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for round in 1..=rounds {
        for (name, body, _) in &members {
            let body = body
                .replace(
                    "memory: {size: 256MiB}",
                    &format!("memory: {{size: 256MiB, duration: {secs}s}}"),
                )
                .replace("cpu: {}", &format!("cpu: {{duration: {secs}s}}"));
            for (k, v) in measure(&format!("  - name: {name}\n    {body}\n")) {
                alone.entry(k).or_default().push(v);
            }
        }
        let group: String = members
            .iter()
            .map(|(name, body, _)| format!("        - name: {name}\n          {body}\n"))
            .collect();
        for (share, into) in [("split", &mut together), ("shared", &mut shared)] {
            let steps = format!(
                "  - name: together\n    parallel:\n      duration: {secs}s\n      cpus: {share}\n      steps:\n{group}"
            );
            for (k, v) in measure(&steps) {
                into.entry(k).or_default().push(v);
            }
        }
        println!("round {round} of {rounds} done");
    }
    let _ = stop.send(());
    let _ = rt.block_on(server);
    println!(
        "\n{:<8} {:<14} {:>12} {:>12} {:>7} {:>14} {:>12} {:>7}",
        "member", "metric", "alone", "split", "ratio", "ratio per CPU", "shared", "ratio"
    );
    for (name, _, metrics) in &members {
        for metric in *metrics {
            let key = (name.to_string(), metric.to_string());
            let (Some(a), Some(g)) = (alone.get(&key), together.get(&key)) else {
                println!("{name:<8} {metric:<14} not measured");
                continue;
            };
            let (a, g) = (median(a.clone()), median(g.clone()));
            let s = shared.get(&key).map_or(f64::NAN, |v| median(v.clone()));
            let ratio = g / a;
            // Memory and cpu had half the CPUs in the group.
            let given = if ["memory", "cpu"].contains(name) && cpus >= 2 {
                (cpus / 2) as f64 / cpus as f64
            } else {
                1.0
            };
            println!(
                "{name:<8} {metric:<14} {a:>12.1} {g:>12.1} {ratio:>7.2} {:>14.2} {s:>12.1} {:>7.2}",
                ratio / given,
                s / a
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
