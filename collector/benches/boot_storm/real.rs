//! The model checked against reality: `kiln serve` with a 64 MiB payload and N fetcher
//! processes on loopback (this bench's own executable in fetcher mode, running the agent's
//! real fetch and piece server), each capped to a node's link each way, the collector's
//! payload traffic capped likewise; then the simulator on the same numbers. Loopback has no
//! racks, so the model's rack uplinks are left unbounded.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_collector::tracker::Settings;

use super::{Links, percentile, storm};

/// Set in a fetcher process's environment.
pub const FETCHER: &str = "KILN_STORM_FETCHER";
/// A node's link in the check, each way.
const NODE_MBPS: f64 = 40.0;
/// The collector's payload cap: two nodes' links, as in the hall.
const COLLECTOR_MBPS: f64 = 2.0 * NODE_MBPS;

/// In a fetcher process: fetch the run's payload and serve it, say where the bytes came from
/// (one JSON line), serve on until killed.
pub fn fetcher() {
    let get = |k: &str| std::env::var(k).unwrap_or_default();
    let settings = kiln_agent::payload::FetchSettings {
        collector: get("KILN_STORM_COLLECTOR"),
        run_id: get("KILN_STORM_RUN").parse().unwrap_or(0),
        token: get("KILN_SESSION_TOKEN"),
        mbps: Some(NODE_MBPS),
        deadline: Duration::from_secs(120),
        linger: Duration::from_secs(600),
    };
    if let Err(e) = kiln_agent::payload::fetch_and_serve(&settings) {
        eprintln!("fetcher: {e:#}");
        std::process::exit(2);
    }
}

/// Children killed (SIGKILL, by the handle that started them) when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One call to the management listener with the admin token: the answer's body.
fn ops(
    rt: &tokio::runtime::Runtime,
    url: &str,
    pin: &str,
    admin: &str,
    body: reqwest::Body,
    json: bool,
) -> Vec<u8> {
    let mut request = reqwest::Client::new()
        .post(url)
        .bearer_auth(admin)
        .body(body);
    if json {
        request = request.header("content-type", "application/json");
    }
    let answer = rt
        .block_on(kiln_collector::tls::send_pinned(
            request.build().expect("a request"),
            Some(pin.to_owned()),
            &Default::default(),
            Duration::from_secs(60),
        ))
        .expect("the management listener answers");
    assert!(
        (200..300).contains(&answer.status),
        "{url}: {} {}",
        answer.status,
        answer.text()
    );
    answer.body
}

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-scratch/boot-storm-real");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("artifacts")).expect("scratch directory");
    dir
}

/// Runs the check with `nodes` fetchers and a payload of `payload` bytes.
pub fn check(nodes: usize, payload: u64) {
    let data = scratch();
    let bytes: Vec<u8> = (0..payload as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(data.join("artifacts/payload.img"), &bytes).expect("payload");
    std::fs::write(
        data.join("kiln.yaml"),
        format!("payload_mbps: {COLLECTOR_MBPS}\nheartbeat_timeout: 1h\nrequest_timeout: 10m\n"),
    )
    .expect("config");
    let mut server = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(data.join("kiln.yaml"))
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--management", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln serve");
    let mut banner = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut banner)
        .expect("banner");
    let server = Children(vec![server]);
    let field = |marker: &str, end: char| {
        let rest = banner
            .split(marker)
            .nth(1)
            .unwrap_or_else(|| panic!("{banner}"));
        rest[..rest.find(end).unwrap_or(rest.len())].to_owned()
    };
    let boot = format!("http://{}", field("boot network on http://", ','));
    let ops_url = format!("https://{}", field("management on https://", ' '));
    let pin = field("(certificate ", ';');
    let admin = std::fs::read_to_string(data.join("admin.token")).expect("admin token");
    let admin = admin.trim();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mac = |n: usize| format!("52:54:00:5e:{:02x}:{:02x}", n >> 8, n & 255);
    let csv: String = std::iter::once("mac,rack,slot,hostname\n".to_owned())
        .chain((0..nodes).map(|n| {
            format!(
                "{},R{},U{:02},n{n}\n",
                mac(n),
                n / super::RACK,
                n % super::RACK
            )
        }))
        .collect();
    ops(
        &rt,
        &format!("{ops_url}/api/v1/nodes/import"),
        &pin,
        admin,
        csv.into(),
        false,
    );
    let runs: Vec<kiln_protocol::wire::RegisterResponse> = (0..nodes)
        .map(|n| {
            let req = kiln_protocol::wire::RegisterRequest {
                identity: kiln_protocol::wire::NodeIdentity {
                    macs: vec![mac(n)],
                    uuid: None,
                    serial: Some(format!("STORM{n}")),
                },
                hostname: None,
                suite_text:
                    "suite: s\ndescription: d\nsteps:\n  - name: t\n    exec: {argv: [true]}\n"
                        .into(),
            };
            let body = serde_json::to_vec(&req).expect("json");
            serde_json::from_slice(&ops(
                &rt,
                &format!("{ops_url}/api/v1/register"),
                &pin,
                admin,
                body.into(),
                true,
            ))
            .expect("a registration")
        })
        .collect();
    let started = Instant::now();
    let mut fetchers = Children(
        runs.iter()
            .map(|run| {
                Command::new(std::env::current_exe().expect("this bench"))
                    .env(FETCHER, "1")
                    .env("KILN_STORM_COLLECTOR", &boot)
                    .env("KILN_STORM_RUN", run.run_id.to_string())
                    .env("KILN_SESSION_TOKEN", &run.token)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("a fetcher")
            })
            .collect(),
    );
    let spawned = started.elapsed();
    let (tx, rx) = std::sync::mpsc::channel();
    for child in &mut fetchers.0 {
        let out = child.stdout.take().expect("stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
    }
    drop(tx);
    let mut secs = Vec::new();
    let (mut from_collector, mut from_peers) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(900);
    while secs.len() < nodes {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        secs.push(v["secs"].as_f64().unwrap_or(f64::NAN));
        from_collector += v["from_collector"].as_u64().unwrap_or(0);
        from_peers += v["from_peers"].as_u64().unwrap_or(0);
    }
    drop(fetchers);
    drop(server);
    assert_eq!(
        secs.len(),
        nodes,
        "{} of {nodes} fetchers finished",
        secs.len()
    );
    secs.sort_by(f64::total_cmp);
    let links = Links {
        node: NODE_MBPS / 1000.0,
        // Loopback has no racks: uplinks that never bind.
        oversubscription: 1e-6,
        collector: COLLECTOR_MBPS / 1000.0,
    };
    let model = storm(nodes, payload, links, Settings::default());
    let mut predicted = model.done_s.clone();
    predicted.sort_by(f64::total_cmp);
    let alone = storm(1, payload, links, Settings::default()).done_s[0];
    println!(
        "\nthe model against {nodes} real fetcher processes on loopback: {} MiB payload, each node {NODE_MBPS} Mb/s each way, the collector {COLLECTOR_MBPS} Mb/s (one node alone: {alone:.1} s; processes started within {:.1} s)",
        payload >> 20,
        spawned.as_secs_f64()
    );
    println!(
        "{:>10} {:>9} {:>9} {:>9} {:>12}",
        "", "p50 s", "p99 s", "max s", "collector"
    );
    println!(
        "{:>10} {:>9.1} {:>9.1} {:>9.1} {:>7.1} cps",
        "measured",
        percentile(&secs, 0.5),
        percentile(&secs, 0.99),
        secs[secs.len() - 1],
        from_collector as f64 / payload as f64
    );
    println!(
        "{:>10} {:>9.1} {:>9.1} {:>9.1} {:>7.1} cps",
        "model",
        percentile(&predicted, 0.5),
        percentile(&predicted, 0.99),
        predicted[predicted.len() - 1],
        model.collector_bytes as f64 / payload as f64
    );
    println!(
        "measured / model: p50 {:.2}, p99 {:.2} (the line: within 0.75–1.25); peers carried {:.1} copies",
        percentile(&secs, 0.5) / percentile(&predicted, 0.5),
        percentile(&secs, 0.99) / percentile(&predicted, 0.99),
        from_peers as f64 / payload as f64
    );
}
