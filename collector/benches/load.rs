//! Load on the collector from simulated agents over loopback: 2,000 then 10,000 concurrent
//! agents, each streaming numbered batches and retrying with backoff and jitter until
//! acknowledged, as `kiln-agent` does. Midway through each round the collector is killed with
//! SIGKILL and restarted on the same data; afterwards the SQLite file is checked for every
//! event the collector acknowledged (`synchronous=FULL`: what is acknowledged survives power
//! loss too). Those rounds measure capacity: every agent always has a batch waiting, so their
//! ack latency is the queue. Then the 10,000 agents send on a clock, together offering
//! KILN_BENCH_RATE events/s (default 100,000): the latency at that load — once alone and once
//! while managers load the dashboard and the report over the same 10,000 nodes.
//!
//! Prints events stored per second, p50/p99 ack latency, the count of acknowledged events
//! missing (must be 0), the pages' p50/p99, and the paced ack p99 with pages beside without.
//! Targets: ≥ 100,000 events/s with ack p99 ≤ 500 ms at 10,000 agents; pages p99 ≤ 200 ms.
//! Run: `cargo bench -p kiln-collector --bench load` (KILN_BENCH_AGENTS=2000,10000
//! KILN_BENCH_BATCHES=5 KILN_BENCH_EVENTS=20 KILN_BENCH_RATE=100000 to change it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_protocol::wire::{
    Event, EventBatch, EventBody, LogLevel, NodeIdentity, RegisterRequest, RegisterResponse,
};

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

struct Server {
    child: Child,
}

impl Server {
    fn start(data: &Path, port: u16) -> Server {
        // Every simulated agent comes from 127.0.0.1: lift the per-source limits and the cap
        // on unknown nodes, which are for a real boot network.
        let config = data.join("kiln.yaml");
        std::fs::write(
            &config,
            "unauthenticated_rate: {per_second: 1000000, burst: 1000000}\nmax_unknown_nodes: 10000000\n",
        )
        .expect("bench config");
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "serve",
                "--config",
                config.to_str().unwrap_or("kiln.yaml"),
                "--data",
                data.to_str().unwrap_or("."),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kiln serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "kiln serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child }
    }

    fn kill9(&mut self) {
        // Child::kill sends SIGKILL: no graceful shutdown, no final flush.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn main() {
    let rounds = env_list("KILN_BENCH_AGENTS", &[2000, 10000]);
    let batches = env_list("KILN_BENCH_BATCHES", &[5])[0];
    let per_batch = env_list("KILN_BENCH_EVENTS", &[20])[0];
    let rate = env_list("KILN_BENCH_RATE", &[100_000])[0] as f64;
    for agents in &rounds {
        round(*agents, batches, per_batch, false, None);
    }
    if let Some(&agents) = rounds.last() {
        // Latency at the target rate rather than at saturation: each agent sends on a clock;
        // then the same with managers loading the dashboard and the report all along.
        let quiet = round(agents, batches, per_batch, false, Some(rate));
        let busy = round(agents, batches, per_batch, true, Some(rate));
        println!(
            "  ack p99 at {rate:.0} events/s with page loads {:.1} ms vs {:.1} ms without ({:.2}x)",
            busy.as_secs_f64() * 1000.0,
            quiet.as_secs_f64() * 1000.0,
            busy.as_secs_f64() / quiet.as_secs_f64().max(1e-9)
        );
    }
}

/// Loads `/` and `/api/v1/report` one after the other until `stop`, timing each.
async fn pages(
    client: reqwest::Client,
    base: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(&'static str, Duration)> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for (name, path) in [("dashboard", "/"), ("report", "/api/v1/report")] {
            let t = Instant::now();
            if let Ok(r) = client.get(format!("{base}{path}")).send().await {
                if r.status().is_success() && r.bytes().await.is_ok() {
                    out.push((name, t.elapsed()));
                }
            }
        }
    }
    out
}

fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// One round; returns its ack p99. Without `pace` every agent sends its next batch as soon as
/// the last is acknowledged (saturation) and the collector is killed midway; with `pace` the
/// agents together offer that many events per second, each on its own clock, and nothing is
/// killed (latency at a given load).
fn round(
    agents: usize,
    batches: usize,
    per_batch: usize,
    with_pages: bool,
    pace: Option<f64>,
) -> Duration {
    let data =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-load")).join(format!(
            "agents-{agents}{}{}",
            if with_pages { "-pages" } else { "" },
            if pace.is_some() { "-paced" } else { "" }
        ));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("bench data dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Server::start(&data, port);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(agents)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");

    // Register every agent (bounded concurrency: registration is not what is measured).
    let runs: Vec<RegisterResponse> = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let tasks: Vec<_> = (0..agents)
            .map(|i| {
                let (client, base, sem) = (client.clone(), base.clone(), sem.clone());
                tokio::spawn(async move {
                    let _permit = sem.acquire().await;
                    let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255);
                    let req = RegisterRequest {
                        identity: NodeIdentity { macs: vec![mac], uuid: None, serial: Some(format!("LOAD{i}")) },
                        hostname: None,
                        suite_text: "suite: load\ndescription: load\nsteps:\n  - name: s\n    exec: {argv: [true]}\n".into(),
                    };
                    loop {
                        if let Ok(r) = client.post(format!("{base}/api/v1/register")).json(&req).send().await {
                            if let Ok(run) = r.json::<RegisterResponse>().await {
                                return run;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(agents);
        for t in tasks {
            out.push(t.await.expect("register task"));
        }
        out
    });

    let total_batches = (agents * batches) as u64;
    let done_batches = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(agents * batches)));
    let stop_pages = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let page_loads =
        with_pages.then(|| rt.spawn(pages(client.clone(), base.clone(), stop_pages.clone())));
    let started = Instant::now();
    // With a pace: the interval between one agent's batches, and the agents spread over it.
    let interval =
        pace.map(|rate| Duration::from_secs_f64(agents as f64 * per_batch as f64 / rate));
    let clock = tokio::time::Instant::now();
    let (acked, server): (Vec<(i64, u64)>, Server) = rt.block_on(async {
        let tasks: Vec<_> = runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let (client, base, done, lat) = (client.clone(), base.clone(), done_batches.clone(), latencies.clone());
                let (run_id, token) = (run.run_id, run.token.clone());
                tokio::spawn(async move {
                    let url = format!("{base}/api/v1/runs/{run_id}/events");
                    let mut acked = 0u64;
                    let mut seq = 1u64;
                    for k in 0..batches {
                        if let Some(iv) = interval {
                            let offset = iv.mul_f64(i as f64 / agents as f64);
                            tokio::time::sleep_until(clock + offset + iv * k as u32).await;
                        }
                        let events: Vec<Event> = (0..per_batch as u64)
                            .map(|k| Event { seq: seq + k, at_ms: 0, body: EventBody::Log { step: Some(0), level: LogLevel::Info, line: format!("load event {}", seq + k) } })
                            .collect();
                        seq += per_batch as u64;
                        let batch = EventBatch { events };
                        let mut backoff = Duration::from_millis(100);
                        loop {
                            let t = Instant::now();
                            let sent = client.post(&url).bearer_auth(&token).json(&batch).send().await;
                            if let Ok(r) = sent {
                                if let Ok(ack) = r.json::<kiln_protocol::wire::BatchAck>().await {
                                    lat.lock().expect("latencies").push(t.elapsed());
                                    acked = acked.max(ack.acked);
                                    if ack.acked >= seq - 1 {
                                        break;
                                    }
                                }
                            }
                            let jitter = (run_id as u64 * 7919 + seq) % 100;
                            tokio::time::sleep(backoff.mul_f64(0.5 + jitter as f64 / 100.0)).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    (run_id, acked)
                })
            })
            .collect();
        // Kill -9 the collector when half the batches are in, restart it on the same data.
        let (killer, kept) = if pace.is_none() {
            let done = done_batches.clone();
            let data = data.clone();
            let killer = tokio::task::spawn_blocking(move || {
                while done.load(Ordering::Relaxed) < total_batches / 2 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let at = done.load(Ordering::Relaxed);
                server.kill9();
                std::thread::sleep(Duration::from_millis(500));
                (Server::start(&data, port), at)
            });
            (Some(killer), None)
        } else {
            (None, Some(server))
        };
        let mut out = Vec::with_capacity(agents);
        for t in tasks {
            out.push(t.await.expect("agent task"));
        }
        let server = match (killer, kept) {
            (Some(killer), _) => {
                let (restarted, at) = killer.await.expect("killer");
                println!("  killed the collector with SIGKILL after {at} of {total_batches} batches, restarted it");
                restarted
            }
            (None, Some(server)) => server,
            (None, None) => unreachable!("the server is either kept or restarted"),
        };
        (out, server)
    });
    let elapsed = started.elapsed();
    stop_pages.store(true, Ordering::Relaxed);
    let page_times = page_loads.map(|h| rt.block_on(h).expect("page loads"));
    drop(server);

    // Every acknowledged event must be in the file.
    let conn = rusqlite::Connection::open(data.join("kiln.sqlite")).expect("open sqlite");
    let mut missing = 0u64;
    let mut stmt = conn
        .prepare("SELECT count(*) FROM events WHERE run_id = ?1 AND seq <= ?2")
        .expect("prepare");
    for (run_id, acked) in &acked {
        let stored: i64 = stmt
            .query_row(rusqlite::params![run_id, *acked as i64], |r| r.get(0))
            .expect("count");
        missing += acked.saturating_sub(stored as u64);
    }
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count all");
    let mut lat = latencies.lock().expect("latencies").clone();
    lat.sort_unstable();
    let q = |p: f64| quantile(&lat, p);
    println!(
        "{agents} agents x {batches} batches x {per_batch} events{}: {stored} events stored in {:.1}s = {:.0} events/s; ack latency p50 {:.1} ms, p99 {:.1} ms; acknowledged events missing: {missing}",
        match (pace, with_pages) {
            (Some(rate), true) => format!(", paced at {rate:.0} events/s offered, with page loads"),
            (Some(rate), false) => format!(", paced at {rate:.0} events/s offered"),
            (None, true) => ", with page loads, killed mid-round".to_owned(),
            (None, false) => ", killed mid-round".to_owned(),
        },
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        q(0.50).as_secs_f64() * 1000.0,
        q(0.99).as_secs_f64() * 1000.0,
    );
    if let Some(times) = page_times {
        for name in ["dashboard", "report"] {
            let mut t: Vec<Duration> = times
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, d)| *d)
                .collect();
            t.sort_unstable();
            println!(
                "  {name} over {agents} nodes while ingesting: {} loads, p50 {:.1} ms, p99 {:.1} ms",
                t.len(),
                quantile(&t, 0.50).as_secs_f64() * 1000.0,
                quantile(&t, 0.99).as_secs_f64() * 1000.0
            );
        }
    }
    assert_eq!(missing, 0, "acknowledged events were lost");
    q(0.99)
}
