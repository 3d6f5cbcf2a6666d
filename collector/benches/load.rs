//! Load on the collector from simulated agents over loopback: 2,000 then 10,000 concurrent
//! agents, each streaming numbered batches and retrying with backoff and jitter until
//! acknowledged, as `kiln-agent` does, each on a connection opened before the round's clock
//! starts, as a running agent's is. Midway through each of those rounds the collector is
//! killed with SIGKILL and restarted on the same data; afterwards the SQLite file is checked
//! for every event the collector acknowledged (`synchronous=FULL`: what is acknowledged
//! survives power loss too). Then capacity: the 10,000 agents again, nothing killed, every
//! agent always with a batch waiting (so its ack latency is the queue, not the service time).
//! With `KILN_BENCH_DATABASE=postgres` (see `database`), every round runs with one collector
//! and again with two on the one database (KILN_BENCH_COLLECTORS=1,2), the agents spread over
//! them and going on with the next after a failure, as `kiln-agent` does with its `kiln.url=`
//! list (the first collector is the one killed); the capacity round runs again on SQLite and
//! the ratios are printed, all from the same run.
//! Then latency at a given load: the 10,000 agents send on a clock, together offering
//! KILN_BENCH_RATE events/s (default 100,000), KILN_BENCH_REPEATS rounds (default 30: with
//! fewer the interval of the pages' cost is too wide to decide), while managers load pages
//! over the same 10,000 nodes (ten dashboards open, reloading every 5 s, and the full report
//! pulled every second) in every other window of 2 s — so the acks with pages and those
//! without come from the same rounds, side by side (see `Windows`); last, one round with the
//! dashboard and the report loaded back to back without pause, the worst case.
//! The page client has a thread and runtime of its own, as if on another machine.
//!
//! Prints events stored per second, p50/p99 ack latency, the count of acknowledged events
//! missing (must be 0), the pages' p50/p99, and the paced ack p50/p99 with pages beside
//! without: pooled over the rounds, the median over the windows of each window's p99, and
//! each window with pages against its neighbours without (`Paired`, with a 90 % interval).
//! Targets: ≥ 100,000 events/s at 10,000 agents, ack p99 ≤ 500 ms at 100,000 events/s, pages
//! p99 ≤ 200 ms, acks no slower with pages.
//! Run: `cargo bench -p kiln-collector --bench load` (KILN_BENCH_AGENTS=2000,10000
//! KILN_BENCH_BATCHES=7 KILN_BENCH_EVENTS=20 KILN_BENCH_RATE=100000 KILN_BENCH_REPEATS=30;
//! about 15 minutes; KILN_BENCH_ROUNDS=killed,capacity,paced picks the parts). The agents send log lines, which change nothing the pages show, so a
//! report or dashboard built once in a round is handed out again; KILN_BENCH_PROGRESS=1 ends
//! every batch with the step's progress instead, and every page load is a build.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "load/agent.rs"]
mod agent;
#[path = "load/database.rs"]
mod database;
#[path = "load/server.rs"]
mod server;
#[path = "load/windows.rs"]
mod windows;
use agent::Agent;
use database::database_for;
use server::Server;
use windows::{Paired, Windows};

use kiln_protocol::wire::{
    Event, EventBatch, EventBody, LogLevel, NodeIdentity, RegisterRequest, RegisterResponse,
};

/// The numbers of variable `name` (comma-separated), else `default`; a bench asked for
/// something it cannot read stops and says so, rather than measuring something else.
fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    let Ok(v) = std::env::var(name) else {
        return default.to_vec();
    };
    let parsed: Vec<usize> = v
        .split(',')
        .map(|x| {
            x.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v}: {x:?} is not a whole number"))
        })
        .collect();
    assert!(!parsed.is_empty(), "{name} is empty");
    parsed
}

fn main() {
    database::choose();
    // PostgreSQL's cluster outlives a panic unless stopped here.
    let rounds = std::panic::catch_unwind(all_rounds);
    database::stop();
    if let Err(panic) = rounds {
        std::panic::resume_unwind(panic);
    }
}

fn all_rounds() {
    let rounds = env_list("KILN_BENCH_AGENTS", &[2000, 10000]);
    let batches = env_list("KILN_BENCH_BATCHES", &[7])[0];
    let per_batch = env_list("KILN_BENCH_EVENTS", &[20])[0];
    let rate = env_list("KILN_BENCH_RATE", &[100_000])[0] as f64;
    let repeats = env_list("KILN_BENCH_REPEATS", &[30])[0].max(1);
    // Several collectors share one PostgreSQL database; SQLite is one collector's.
    let collectors = match database::on_postgres() {
        true => env_list("KILN_BENCH_COLLECTORS", &[1, 2]),
        false => vec![1],
    };
    let parts =
        std::env::var("KILN_BENCH_ROUNDS").unwrap_or_else(|_| "killed,capacity,paced".into());
    const PARTS: [&str; 3] = ["killed", "capacity", "paced"];
    if let Some(bad) = parts.split(',').map(str::trim).find(|p| !PARTS.contains(p)) {
        panic!("KILN_BENCH_ROUNDS={parts}: no part {bad:?}; the parts are {PARTS:?}");
    }
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    for agents in rounds.iter().filter(|_| part("killed")) {
        for &n in &collectors {
            round(n, *agents, batches, per_batch, Load::Killed);
        }
    }
    let Some(&agents) = rounds.last() else {
        return;
    };
    if part("capacity") {
        // Capacity without the outage a kill makes (the agents' backoff after it counts in
        // the killed rounds' rate).
        let capacity: Vec<(usize, f64)> = collectors
            .iter()
            .map(|&n| (n, round(n, agents, batches, per_batch, Load::Saturated).1))
            .collect();
        if database::on_postgres() {
            // SQLite's capacity on this host, in this run: the ratio #42 asks for.
            let (_, sqlite) =
                database::on_sqlite(|| round(1, agents, batches, per_batch, Load::Saturated));
            for (n, capacity) in capacity {
                println!(
                    "  capacity on PostgreSQL with {n} collector{} {capacity:.0} events/s, on SQLite {sqlite:.0} in the same run ({:.2}x)",
                    if n == 1 { "" } else { "s" },
                    capacity / sqlite.max(1e-9)
                );
            }
        }
    }
    for &n in collectors.iter().filter(|_| part("paced")) {
        paced(n, agents, batches, per_batch, rate, repeats);
    }
}

/// Latency at the target rate rather than at saturation: each agent sends on a clock while
/// managers load pages in every other window of each round (see `Windows`); every ack of
/// those rounds pooled by the window it was sent in.
fn paced(
    collectors: usize,
    agents: usize,
    batches: usize,
    per_batch: usize,
    rate: f64,
    repeats: usize,
) {
    let who = match collectors {
        1 => String::new(),
        n => format!(" with {n} collectors"),
    };
    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    let (mut quiet_windows, mut busy_windows) = (Vec::new(), Vec::new());
    let mut by_round = Vec::new();
    // Every ack of every round, the first seconds included, and each round's p99.
    let (mut every, mut round_p99) = (Vec::new(), Vec::new());
    for repeat in 0..repeats {
        // Pages in the odd windows, then in the even ones: each side gets early and late
        // batches of a round alike (the database grows through it).
        let windows = Windows {
            odd: repeat % 2 == 0,
            // The round's schedule: each agent's batches one interval apart.
            count: (batches as f64 * (agents * per_batch) as f64
                / rate
                / Windows::LEN.as_secs_f64())
            .ceil() as u128,
        };
        let (acks, _) = round(
            collectors,
            agents,
            batches,
            per_batch,
            Load::Paced {
                rate,
                pages: Pages::Managers(windows),
            },
        );
        let mut all: Vec<Duration> = acks.iter().map(|(_, d)| *d).collect();
        all.sort_unstable();
        round_p99.push(ms(quantile(&all, 0.99)));
        every.extend(all);
        let split = windows.split(&acks);
        by_round.push(
            split
                .iter()
                .map(|(pages, l)| (*pages, ms(quantile(l, 0.99))))
                .collect::<Vec<_>>(),
        );
        for (pages, latencies) in split {
            let p99 = quantile(&latencies, 0.99);
            if pages {
                busy_windows.push(p99);
                busy.extend(latencies);
            } else {
                quiet_windows.push(p99);
                quiet.extend(latencies);
            }
        }
    }
    quiet.sort_unstable();
    busy.sort_unstable();
    every.sort_unstable();
    println!(
        "  ack p99 at {rate:.0} events/s{who}, every ack of the {repeats} rounds: {:.1} ms (rounds from {:.1} to {:.1} ms; target <= 500 ms)",
        ms(quantile(&every, 0.99)),
        round_p99.iter().copied().fold(f64::INFINITY, f64::min),
        round_p99.iter().copied().fold(0.0, f64::max),
    );
    for (name, p) in [("p50", 0.50), ("p99", 0.99)] {
        let (b, q) = (ms(quantile(&busy, p)), ms(quantile(&quiet, p)));
        println!(
            "  ack {name} at {rate:.0} events/s{who} over {repeats} rounds, pooled: {} acks sent while managers loaded pages {b:.1} ms, {} while none did {q:.1} ms ({:.2}x)",
            busy.len(),
            quiet.len(),
            b / q.max(1e-9)
        );
    }
    // A stall of the host (a few hundred ms, seen in rounds without any pages) lands in
    // one window and moves the pooled p99 of whichever side it fell on; the median of the
    // windows' own p99s is what the pages do to the tail, window after window.
    busy_windows.sort_unstable();
    quiet_windows.sort_unstable();
    let (b, q) = (
        ms(quantile(&busy_windows, 0.5)),
        ms(quantile(&quiet_windows, 0.5)),
    );
    println!(
        "  ack p99 at {rate:.0} events/s{who}, median over windows: {} windows with managers loading pages {b:.1} ms, {} without {q:.1} ms ({:.2}x)",
        busy_windows.len(),
        quiet_windows.len(),
        b / q.max(1e-9)
    );
    if let Some(p) = Paired::of(&by_round) {
        println!(
            "  ack p99 at {rate:.0} events/s{who}, neighbouring windows paired: {} pairs, median ratio with pages / without {:.2}x (90 % interval {:.2}-{:.2}x, resampling the {} rounds; target <= 1.00)",
            p.pairs,
            p.ratio,
            p.low,
            p.high,
            by_round.len()
        );
    }
    // The worst case once, for the record: pages back to back.
    let (hammered, _) = round(
        collectors,
        agents,
        batches,
        per_batch,
        Load::Paced {
            rate,
            pages: Pages::Hammer,
        },
    );
    let mut hammered: Vec<Duration> = hammered.into_iter().map(|(_, d)| d).collect();
    hammered.sort_unstable();
    let (h, q) = (ms(quantile(&hammered, 0.99)), ms(quantile(&quiet, 0.99)));
    println!(
        "  ack p99{who} with pages loaded back to back (one round) {h:.1} ms, without {q:.1} ms ({:.2}x)",
        h / q.max(1e-9)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Who loads pages during a round.
#[derive(Clone, Copy, PartialEq)]
enum Pages {
    /// Nobody.
    None,
    /// Managers as they are: ten with the dashboard open (it reloads itself every 5 s) and
    /// one pulling the full report every second — each load on its own schedule, whether or
    /// not the last one is done.
    Managers(Windows),
    /// One client loading the dashboard and the report back to back as fast as they come:
    /// the worst case, far beyond what managers do.
    Hammer,
}

/// One page load: which page, when it was asked for (since the round's start), how long it
/// took to arrive whole.
struct PageLoad {
    name: &'static str,
    at: Duration,
    took: Duration,
}

/// Loads `/` and `/api/v1/report` from the management listener `ops` (its certificate `pin`)
/// as `who` does until `stop`, timing each: a connection and TLS handshake per load, as a
/// browser opening the page anew.
async fn pages(
    who: Pages,
    ops: String,
    pin: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
) -> Vec<PageLoad> {
    async fn load(
        ops: &str,
        pin: &str,
        name: &'static str,
        path: &str,
        started: Instant,
    ) -> Option<PageLoad> {
        let t = Instant::now();
        let r = kiln_collector::tls::get_pinned(&format!("{ops}{path}"), pin)
            .await
            .ok()?;
        (200..300).contains(&r.status).then(|| PageLoad {
            name,
            at: t - started,
            took: t.elapsed(),
        })
    }
    let mut out = Vec::new();
    if who == Pages::Hammer {
        while !stop.load(Ordering::Relaxed) {
            out.extend(load(&ops, &pin, "dashboard", "/", started).await);
            out.extend(load(&ops, &pin, "report", "/api/v1/report", started).await);
        }
        return out;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut loads = tokio::task::JoinSet::new();
    for n in 0u64.. {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Pages::Managers(windows) = who {
            if !windows.pages_at(started.elapsed()) {
                continue;
            }
        }
        let due: &[(&'static str, &'static str)] = if n % 2 == 0 {
            &[("dashboard", "/"), ("report", "/api/v1/report")]
        } else {
            &[("dashboard", "/")]
        };
        for &(name, path) in due {
            let (ops, pin) = (ops.clone(), pin.clone());
            loads.spawn(async move { load(&ops, &pin, name, path, started).await });
        }
    }
    while let Some(done) = loads.join_next().await {
        out.extend(done.ok().flatten());
    }
    out
}

fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// How a round loads the collector.
#[derive(Clone, Copy)]
enum Load {
    /// Every agent sends its next batch as soon as the last is acknowledged; the collector is
    /// killed with SIGKILL midway and restarted.
    Killed,
    /// The same, nothing killed: capacity.
    Saturated,
    /// The agents together offer `rate` events per second, each on its own clock (latency at
    /// a given load), with or without managers loading pages all along.
    Paced { rate: f64, pages: Pages },
}

/// One round; returns its acks: when each was asked for (since the round's start) and how
/// long it took.
/// Runs a round; gives each acknowledgement (when its batch was sent, how long it took) and
/// the events stored per second.
fn round(
    collectors: usize,
    agents: usize,
    batches: usize,
    per_batch: usize,
    load: Load,
) -> (Vec<(Duration, Duration)>, f64) {
    let (pace, with_pages) = match load {
        Load::Paced { rate, pages } => (Some(rate), pages),
        Load::Killed | Load::Saturated => (None, Pages::None),
    };
    let kill = matches!(load, Load::Killed);
    let data =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-load")).join(format!(
            "agents-{agents}{}{}{}",
            match with_pages {
                Pages::None => "",
                Pages::Managers(_) => "-pages",
                Pages::Hammer => "-hammer",
            },
            if pace.is_some() { "-paced" } else { "" },
            if kill { "-killed" } else { "" }
        ));
    let database = database_for(&data);
    assert!(
        collectors == 1 || database.is_some(),
        "several collectors share a PostgreSQL database: KILN_BENCH_DATABASE=postgres"
    );
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("bench data dir");
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    };
    // Each collector: its data directory (the first one's is the round's), its boot port and
    // its management port.
    let places: Vec<(PathBuf, u16, u16)> = (0..collectors)
        .map(|k| {
            let dir = match k {
                0 => data.clone(),
                k => data.join(format!("collector-{}", k + 1)),
            };
            std::fs::create_dir_all(&dir).expect("collector data dir");
            (dir, free_port(), free_port())
        })
        .collect();
    let bases: Vec<String> = places
        .iter()
        .map(|(_, port, _)| format!("http://127.0.0.1:{port}"))
        .collect();
    let ops = format!("https://127.0.0.1:{}", places[0].2);
    let mut servers: Vec<Server> = places
        .iter()
        .map(|(dir, port, ops)| Server::start(dir, *port, *ops, database.as_deref()))
        .collect();
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
                // Agents spread over the collectors, as the boot scripts put each first.
                let (client, base, sem) = (client.clone(), bases[i % collectors].clone(), sem.clone());
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

    // Each agent's connection open before the clock starts, as a running kiln-agent's is: its
    // reporter keeps one from its first batch on (its heartbeats keep it busy). 10,000
    // connections opened in a round's first seconds are a start no rack makes: its nodes
    // boot over minutes.
    let addrs: Arc<[std::net::SocketAddr]> = places
        .iter()
        .map(|(_, port, _)| std::net::SocketAddr::from(([127, 0, 0, 1], *port)))
        .collect();
    let connected: Vec<Agent> = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let tasks: Vec<_> = runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let mut agent = Agent::new(addrs.clone(), i % collectors, run.run_id, &run.token);
                let sem = sem.clone();
                tokio::spawn(async move {
                    let _permit = sem.acquire().await;
                    // One that fails connects again at its first batch, as after any error.
                    agent.connect().await;
                    agent
                })
            })
            .collect();
        let mut out = Vec::with_capacity(agents);
        for t in tasks {
            out.push(t.await.expect("connect task"));
        }
        out
    });

    let total_batches = (agents * batches) as u64;
    let done_batches = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(agents * batches)));
    let stop_pages = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The round's clock, shared by the agents' schedule and the managers' windows.
    let started = Instant::now();
    let page_loads = (with_pages != Pages::None).then(|| {
        // A manager's browser is another machine: here it gets a thread and a runtime of its
        // own, apart from the agents' runtime, at the lowest priority, so that what it costs to
        // receive and parse the pages (CPU a real collector never spends) is taken from idle
        // time rather than from the collector being measured.
        let (ops, pin, stop) = (ops.clone(), servers[0].pin.clone(), stop_pages.clone());
        std::thread::spawn(move || {
            // SAFETY: no pointers; PRIO_PROCESS with a thread id changes only this thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("page runtime");
            rt.block_on(pages(with_pages, ops, pin, stop, started))
        })
    });
    // With a pace: the interval between one agent's batches, and the agents spread over it.
    let interval =
        pace.map(|rate| Duration::from_secs_f64(agents as f64 * per_batch as f64 / rate));
    let clock = tokio::time::Instant::from_std(started);
    // KILN_BENCH_PROGRESS=1: every batch ends with the step's progress (the first begins the
    // step), so that what the pages show changes between any two loads and every report and
    // dashboard is built again, as on a site whose nodes are all mid-step.
    let progress = std::env::var("KILN_BENCH_PROGRESS").is_ok_and(|v| v == "1");
    let (acked, servers): (Vec<(i64, u64)>, Vec<Server>) = rt.block_on(async {
        let tasks: Vec<_> = connected
            .into_iter()
            .enumerate()
            .map(|(i, mut agent)| {
                let (done, lat) = (done_batches.clone(), latencies.clone());
                let run_id = agent.run_id;
                tokio::spawn(async move {
                    let mut acked = 0u64;
                    let mut seq = 1u64;
                    for k in 0..batches {
                        if let Some(iv) = interval {
                            let offset = iv.mul_f64(i as f64 / agents as f64);
                            tokio::time::sleep_until(clock + offset + iv * k as u32).await;
                        }
                        let events: Vec<Event> = (0..per_batch as u64)
                            .map(|j| {
                                let body = match (progress, k, j) {
                                    (true, 0, 0) => EventBody::StepStarted {
                                        step: 0,
                                        name: "load".into(),
                                        kind: "exec".into(),
                                    },
                                    (true, _, j) if j + 1 == per_batch as u64 => {
                                        EventBody::Progress {
                                            step: 0,
                                            fraction: (k + 1) as f64 / batches as f64,
                                            status: None,
                                        }
                                    }
                                    _ => EventBody::Log {
                                        step: Some(0),
                                        level: LogLevel::Info,
                                        line: format!("load event {}", seq + j),
                                    },
                                };
                                Event {
                                    seq: seq + j,
                                    at_ms: 0,
                                    body,
                                }
                            })
                            .collect();
                        seq += per_batch as u64;
                        // Encoded once, sent as often as it takes (the agent's spool keeps the batch).
                        let body = bytes::Bytes::from(
                            serde_json::to_vec(&EventBatch { events }).expect("encode batch"),
                        );
                        let mut backoff = Duration::from_millis(100);
                        loop {
                            let t = Instant::now();
                            if let Some(ack) = agent.post(body.clone()).await {
                                lat.lock()
                                    .expect("latencies")
                                    .push((t - started, t.elapsed()));
                                acked = acked.max(ack.acked);
                                if ack.acked >= seq - 1 {
                                    break;
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
        // Kill -9 the (first) collector when half the batches are in, restart it on the same
        // data; with others, its agents go on with the next one meanwhile.
        let (killer, kept) = if kill {
            let done = done_batches.clone();
            let (dir, port, ops_port) = places[0].clone();
            let database = database.clone();
            let mut servers = std::mem::take(&mut servers);
            let killer = tokio::task::spawn_blocking(move || {
                while done.load(Ordering::Relaxed) < total_batches / 2 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let at = done.load(Ordering::Relaxed);
                servers[0].kill9();
                std::thread::sleep(Duration::from_millis(500));
                servers[0] = Server::start(&dir, port, ops_port, database.as_deref());
                // On PostgreSQL the database crashes too, later in the round: what the collector
                // acknowledged before must survive it, and the collector resumes by itself.
                database::crash_at(&done, total_batches * 3 / 4, total_batches);
                (servers, at)
            });
            (Some(killer), None)
        } else {
            (None, Some(servers))
        };
        let mut out = Vec::with_capacity(agents);
        for t in tasks {
            out.push(t.await.expect("agent task"));
        }
        let servers = match (killer, kept) {
            (Some(killer), _) => {
                let (restarted, at) = killer.await.expect("killer");
                println!(
                    "  killed {} with SIGKILL after {at} of {total_batches} batches, restarted it",
                    if collectors == 1 {
                        "the collector"
                    } else {
                        "one collector"
                    }
                );
                restarted
            }
            (None, Some(servers)) => servers,
            (None, None) => unreachable!("the servers are either kept or restarted"),
        };
        (out, servers)
    });
    let elapsed = started.elapsed();
    stop_pages.store(true, Ordering::Relaxed);
    let page_times = page_loads.map(|h| h.join().expect("page loads"));
    drop(servers);

    // Every acknowledged event must be in the database.
    let conn = match &database {
        Some(url) => kiln_collector::store::Connection::postgres(url).expect("open PostgreSQL"),
        None => kiln_collector::store::Connection::sqlite(
            rusqlite::Connection::open(data.join("kiln.sqlite")).expect("open sqlite"),
        ),
    };
    let mut missing = 0u64;
    for (run_id, acked) in &acked {
        let stored: i64 = conn
            .query_row(
                "SELECT count(*) FROM events WHERE run_id = ?1 AND seq <= ?2",
                [*run_id, *acked as i64],
                |r| r.get(0),
            )
            .expect("count");
        missing += acked.saturating_sub(stored as u64);
    }
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count all");
    let acks = latencies.lock().expect("latencies").clone();
    let mut lat: Vec<Duration> = acks.iter().map(|(_, d)| *d).collect();
    lat.sort_unstable();
    let q = |p: f64| quantile(&lat, p);
    println!(
        "{agents} agents x {batches} batches x {per_batch} events{}{}: {stored} events stored in {:.1}s = {:.0} events/s; ack latency p50 {:.1} ms, p99 {:.1} ms; acknowledged events missing: {missing}",
        match collectors {
            1 => String::new(),
            n => format!(", {n} collectors"),
        },
        match (pace, with_pages) {
            (Some(rate), Pages::Managers(_)) => format!(
                ", paced at {rate:.0} events/s offered, with managers loading pages every other {} s",
                Windows::LEN.as_secs()
            ),
            (Some(rate), Pages::Hammer) =>
                format!(", paced at {rate:.0} events/s offered, with pages loaded back to back"),
            (Some(rate), Pages::None) => format!(", paced at {rate:.0} events/s offered"),
            (None, _) if kill => ", killed mid-round".to_owned(),
            (None, _) => ", saturated".to_owned(),
        },
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        q(0.50).as_secs_f64() * 1000.0,
        q(0.99).as_secs_f64() * 1000.0,
    );
    if let Pages::Managers(windows) = with_pages {
        let windows: Vec<String> = windows
            .split(&acks)
            .iter()
            .map(|(pages, l)| {
                format!(
                    "{} {:.1} ms",
                    if *pages { "pages" } else { "none" },
                    ms(quantile(l, 0.99))
                )
            })
            .collect();
        println!(
            "  ack p99 window by window ({} s each, the first {} left out): {}",
            Windows::LEN.as_secs(),
            Windows::WARM_UP,
            windows.join(", ")
        );
    }
    if let Some(times) = page_times {
        for name in ["dashboard", "report"] {
            let mut t: Vec<&PageLoad> = times.iter().filter(|l| l.name == name).collect();
            t.sort_unstable_by_key(|l| l.took);
            let took: Vec<Duration> = t.iter().map(|l| l.took).collect();
            // With a handful of loads a round, p99 is the slowest: say when it came.
            let slowest = t
                .iter()
                .rev()
                .take(2)
                .map(|l| format!("{:.1} ms at {:.1} s", ms(l.took), l.at.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "  {name} over {agents} nodes while ingesting: {} loads, p50 {:.1} ms, p99 {:.1} ms (slowest {slowest})",
                t.len(),
                ms(quantile(&took, 0.50)),
                ms(quantile(&took, 0.99)),
            );
        }
    }
    assert_eq!(missing, 0, "acknowledged events were lost");
    (acks, stored as f64 / elapsed.as_secs_f64())
}
