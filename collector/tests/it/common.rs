//! What the collector's integration tests share: an in-process collector on 127.0.0.1:0 with
//! a temporary data directory, a `kiln serve` child, and the agent's calls.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln_collector::config::{Config, Database};
use kiln_collector::lab::postgres::{Cluster, USER};
use kiln_collector::server::Collector;
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{
    Event, EventBatch, EventBody, LogLevel, NodeIdentity, Outcome, RegisterRequest,
    RegisterResponse, StepReport,
};
use serde_json::Value;

#[path = "../../../tests/src/paths.rs"]
mod paths;
pub use paths::{repo, scratch};

/// Debian's promtool: unpacked by `.ci/setup` into `.kiln-cache/promtool`, or on PATH.
pub fn promtool() -> PathBuf {
    let unpacked = repo().join(".kiln-cache/promtool/usr/bin/promtool");
    if unpacked.exists() {
        return unpacked;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("promtool"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "promtool is neither at {} nor on PATH: run `bash .ci/setup`",
                unpacked.display()
            )
        })
}

pub const SUITE: &str =
    "suite: t\ndescription: d\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n";

/// A suite whose one step measures throughput against the collector (its bandwidth
/// endpoints serve such a run of a known node, for as long as the step's timeout).
pub const NIC_SUITE: &str = "suite: n\ndescription: d\nsteps:\n  - name: net\n    timeout: 3s\n    nic: {target: collector, duration: 1s}\n";

/// An in-process collector on 127.0.0.1: its boot listener (`base`, plain HTTP, what nodes
/// reach) and its management listener (`ops`, HTTPS, what operators, reports and pages use).
pub struct Server {
    pub base: String,
    pub ops: Ops,
    pub data: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The cluster this collector keeps its runs in, when the tests run on PostgreSQL
    /// (stopped, by its PID, when the server drops).
    cluster: Option<Cluster>,
}

/// Whether these tests run on PostgreSQL (`KILN_TEST_DATABASE=postgres`) rather than SQLite.
pub fn on_postgres() -> bool {
    match std::env::var("KILN_TEST_DATABASE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("KILN_TEST_DATABASE={other}: expected sqlite or postgres"),
    }
}

impl Server {
    pub async fn start(name: &str, mut config: Config) -> Server {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let data = scratch(name);
        // A throwaway cluster of its own, beside the data directory.
        let cluster = (on_postgres() && config.database == Database::Sqlite).then(|| {
            let pg = data.with_extension("pg");
            let _ = std::fs::remove_dir_all(&pg);
            // Off the runtime: PostgreSQL's blocking client starts one of its own.
            let cluster = std::thread::spawn(move || Cluster::start(&pg).unwrap())
                .join()
                .unwrap();
            config.database = Database::Postgres(cluster.url(USER));
            cluster
        });
        let listeners = kiln_collector::server::Listeners::loopback().await.unwrap();
        let base = format!("http://{}", listeners.boot.local_addr().unwrap());
        let collector = Collector::open(config, &data).unwrap();
        let ops = Ops::new(
            &format!("https://{}", listeners.management.local_addr().unwrap()),
            &collector.tls.fingerprint,
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(collector.serve(listeners, async move {
            let _ = rx.await;
        }));
        Server {
            base,
            ops,
            data,
            stop: Some(tx),
            cluster,
        }
    }

    /// Runs `f` on a connection of the test's own to the collector's database, whichever it
    /// is, on a thread of its own (PostgreSQL's blocking client may not run on the runtime's).
    pub fn with_sql<T: Send>(
        &self,
        f: impl FnOnce(&kiln_collector::store::Connection<'_>) -> T + Send,
    ) -> T {
        use kiln_collector::store::Connection;
        let url = self.cluster.as_ref().map(|c| c.url(USER));
        let file = self.data.join("kiln.sqlite");
        std::thread::scope(|s| {
            s.spawn(|| {
                let conn = match url {
                    Some(url) => Connection::postgres(&url).unwrap(),
                    None => {
                        let db = rusqlite::Connection::open(&file).unwrap();
                        db.busy_timeout(Duration::from_secs(5)).unwrap();
                        Connection::sqlite(db)
                    }
                };
                f(&conn)
            })
            .join()
            .unwrap()
        })
    }

    /// GETs `path` from the management listener: its status and body.
    pub async fn ops_get(&self, path: &str) -> (u16, String) {
        let reply = self.ops.get(path).send().await.unwrap();
        (reply.status().as_u16(), reply.answer.text())
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// An operator's way to a collector: its management URL and the certificate it must show
/// (pinned, as `kiln` pins it).
#[derive(Clone)]
pub struct Ops {
    pub url: String,
    pub fingerprint: String,
    // Builds requests only; they travel over `tls::send_pinned`.
    builder: reqwest::Client,
}

impl Ops {
    pub fn new(url: &str, fingerprint: &str) -> Ops {
        Ops {
            url: url.to_owned(),
            fingerprint: fingerprint.to_owned(),
            builder: reqwest::Client::new(),
        }
    }

    pub fn get(&self, path: &str) -> OpsRequest {
        self.request(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> OpsRequest {
        self.request(reqwest::Method::POST, path)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> OpsRequest {
        OpsRequest {
            builder: self.builder.request(method, format!("{}{path}", self.url)),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// The flags that send `kiln`'s operator commands here.
    pub fn flags(&self) -> [&str; 4] {
        ["--server", &self.url, "--fingerprint", &self.fingerprint]
    }

    /// The body of a GET of `path`, whatever its status.
    pub async fn text(&self, path: &str) -> String {
        self.get(path).send().await.unwrap().answer.text()
    }

    /// The JSON of a GET of `path`, which must be a 200.
    pub async fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let reply = self.get(path).send().await.unwrap();
        assert_eq!(reply.status(), 200, "GET {path}: {}", reply.answer.text());
        reply.answer.json().unwrap()
    }

    /// A run as `GET /api/v1/runs/N` shows it.
    pub async fn run(&self, run_id: i64) -> Value {
        self.json(&format!("/api/v1/runs/{run_id}")).await
    }

    /// [`Ops::text`] from a plain thread.
    pub fn blocking_text(&self, path: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.text(path))
    }
}

/// A request to the management listener, built as reqwest builds one.
pub struct OpsRequest {
    builder: reqwest::RequestBuilder,
    fingerprint: String,
}

impl OpsRequest {
    pub fn bearer_auth(self, token: impl std::fmt::Display) -> OpsRequest {
        self.with(|b| b.bearer_auth(token))
    }

    pub fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> OpsRequest {
        self.with(|b| b.json(body))
    }

    pub fn body(self, body: impl Into<reqwest::Body>) -> OpsRequest {
        self.with(|b| b.body(body))
    }

    pub fn header(self, key: &str, value: impl AsRef<str>) -> OpsRequest {
        self.with(|b| b.header(key, value.as_ref()))
    }

    fn with(self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        OpsRequest {
            builder: f(self.builder),
            ..self
        }
    }

    /// Sends it over TLS to the collector whose certificate this is, and nowhere else.
    pub async fn send(self) -> anyhow::Result<Reply> {
        let answer = kiln_collector::tls::send_pinned(
            self.builder.build()?,
            Some(self.fingerprint),
            &Default::default(),
            Duration::from_secs(60),
        )
        .await?;
        Ok(Reply { answer })
    }
}

/// What the management listener answered. Its readers are async and fallible as reqwest's
/// `Response`'s are, so a call reads the same whichever listener it went to.
pub struct Reply {
    pub answer: kiln_collector::tls::Answer,
}

impl Reply {
    pub fn status(&self) -> reqwest::StatusCode {
        reqwest::StatusCode::from_u16(self.answer.status).unwrap()
    }

    pub fn headers(&self) -> &reqwest::header::HeaderMap {
        &self.answer.headers
    }

    pub async fn text(self) -> anyhow::Result<String> {
        Ok(self.answer.text())
    }

    pub async fn json<T: serde::de::DeserializeOwned>(self) -> anyhow::Result<T> {
        self.answer.json()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut cluster) = self.cluster.take() {
            let _ = cluster.stop();
            let _ = std::fs::remove_dir_all(self.data.with_extension("pg"));
        }
    }
}

pub fn identity(n: u8) -> NodeIdentity {
    NodeIdentity {
        macs: vec![format!("52:54:00:00:00:{n:02x}")],
        uuid: None,
        serial: Some(format!("SN{n}")),
    }
}

pub async fn register(
    client: &reqwest::Client,
    base: &str,
    n: u8,
    suite: &str,
) -> RegisterResponse {
    let req = RegisterRequest {
        identity: identity(n),
        hostname: Some(format!("node-{n}")),
        suite_text: suite.into(),
    };
    register_with(client, base, &req).await
}

/// Registers `req` on the boot network, as an agent does (no token); the answer must be 201.
pub async fn register_with(
    client: &reqwest::Client,
    base: &str,
    req: &RegisterRequest,
) -> RegisterResponse {
    let r = client
        .post(format!("{base}/api/v1/register"))
        .json(req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// Registers `req` with the admin token, on the management listener (where an operator's
/// registration goes: the token never crosses the boot network); the answer must be 201.
pub async fn register_admin(ops: &Ops, req: &RegisterRequest, admin: &str) -> RegisterResponse {
    let r = ops
        .post("/api/v1/register")
        .bearer_auth(admin)
        .json(req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.answer.text());
    r.json().await.unwrap()
}

pub fn ev(seq: u64, body: EventBody) -> Event {
    Event {
        seq,
        at_ms: 1,
        body,
    }
}

pub fn log(seq: u64) -> Event {
    ev(
        seq,
        EventBody::Log {
            step: Some(0),
            level: LogLevel::Info,
            line: format!("line {seq}"),
        },
    )
}

pub fn full_run() -> Vec<Event> {
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
                    attempts: vec![],
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

/// A whole run whose one step failed with a fault `code` saying `message`.
pub fn failed_run(code: &str, message: &str) -> Vec<Event> {
    let mut events = full_run();
    if let EventBody::StepFinished { report } = &mut events[3].body {
        report.outcome = Outcome::Fail {
            faults: vec![kiln_protocol::wire::Fault::new(code, message)],
        };
    }
    events[4] = ev(
        5,
        EventBody::RunFinished {
            verdict: Verdict::Fail,
        },
    );
    events
}

pub async fn post_events(
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

/// A `kiln serve` child process, and the way to its management listener.
pub struct Child_ {
    pub child: Child,
    pub ops: Ops,
}

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kiln serve` on 127.0.0.1:`port` with its log in `DATA.log` (beside the data directory:
/// the collector owns what is inside it).
pub fn spawn_kiln(data: &Path, port: u16) -> Child_ {
    spawn_kiln_with(data, port, None)
}

/// [`spawn_kiln`] with a `kiln.yaml` of its own.
pub fn spawn_kiln_with(data: &Path, port: u16, config: Option<&Path>) -> Child_ {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.args([
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--management",
        "127.0.0.1:0",
    ]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    // Ready when it says where it listens — not when something answers on the port, which
    // could be another test's server that took the port first.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "kiln serve on port {port} did not start (port taken?); see {}",
                data.with_extension("log").display()
            )
        });
    assert!(
        banner.contains(&format!("http://127.0.0.1:{port},")),
        "kiln serve said {banner:?}"
    );
    // "… management on https://ADDR (certificate sha256:…; data …)"
    let after = |marker: &str, end: char| {
        let rest = banner.split(marker).nth(1).expect(&banner);
        rest[..rest.find(end).expect(&banner)].to_owned()
    };
    let ops = Ops::new(
        &format!("https://{}", after("management on https://", ' ')),
        &after("(certificate ", ';'),
    );
    Child_ { child, ops }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Labels nodes from an inventory CSV with the admin token; the answer must be 200.
pub async fn import_nodes(server: &Server, csv: &str) {
    let r = server
        .ops
        .post("/api/v1/nodes/import")
        .bearer_auth(server.admin_token())
        .body(csv.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.answer.text());
}

/// The body of a GET, whatever its status.
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// Sends a raw HTTP/1.1 request (so paths reach the server exactly as written) and returns
/// the status line and body.
pub fn raw_get(base: &str, path: &str, extra: &str) -> (String, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    // A Host header in `extra` replaces the default one (two would be ambiguous).
    let host = if extra.to_ascii_lowercase().contains("host:") {
        ""
    } else {
        "Host: 10.0.2.100\r\n"
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\n{host}Connection: close\r\n{extra}\r\n"
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

/// A node's serial console as a console server offers it (ser2net, a BMC's serial over LAN):
/// the collector connects and reads; the test writes what the node's serial port shows.
pub struct ConsoleServer {
    pub addr: String,
    readers: std::sync::Arc<tokio::sync::Mutex<Vec<tokio::net::TcpStream>>>,
}

impl ConsoleServer {
    pub async fn start() -> ConsoleServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let readers = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let accepted = readers.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.lock().await.push(stream);
            }
        });
        ConsoleServer { addr, readers }
    }

    /// Shows `text` on the console, once the collector reads it (waiting up to 10 s).
    pub async fn show(&self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut readers = self.readers.lock().await;
            if !readers.is_empty() {
                for r in readers.iter_mut() {
                    let _ = r.write_all(text.as_bytes()).await;
                }
                return;
            }
            drop(readers);
            assert!(
                std::time::Instant::now() < deadline,
                "the collector never connected to the console at {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// kiln.yaml's `nodes:` entries: each MAC's console at its server.
pub fn consoles(nodes: &[(&str, &ConsoleServer)]) -> Vec<kiln_collector::config::NodeAccess> {
    let yaml: String = nodes
        .iter()
        .map(|(mac, console)| {
            format!(
                "- mac: \"{mac}\"\n  console: {{tcp: \"{}\"}}\n",
                console.addr
            )
        })
        .collect();
    serde_yaml::from_str(&yaml).unwrap()
}

/// A client whose requests come from `ip` (any address of 127.0.0.0/8): another machine on
/// the boot network, as far as the collector can tell.
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(ip.parse().unwrap()))
        .build()
        .unwrap()
}

/// What a node's Linux stage carries on its kernel command line.
#[derive(Debug, Clone)]
pub struct Booted {
    pub run_id: i64,
    pub node_id: i64,
    pub bootstrap: String,
}

/// Asks for `mac`'s boot script (`52-54-00-…`) and reads the Linux stage's command line.
pub async fn boot_linux(client: &reqwest::Client, base: &str, mac: &str) -> Booted {
    let script = get_text(client, &format!("{base}/ipxe?mac={mac}")).await;
    let value = |key: &str| {
        script
            .split(&format!("kiln.{key}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no kiln.{key}= in {script}"))
            .to_owned()
    };
    Booted {
        run_id: value("run").parse().unwrap(),
        node_id: value("node").parse().unwrap(),
        bootstrap: value("token"),
    }
}

/// Exchanges the bootstrap token: the session (as a registration's answer, for the helpers
/// that post) and the attestation line the node's agent would write to its console.
pub async fn open_session(
    client: &reqwest::Client,
    base: &str,
    booted: &Booted,
) -> (RegisterResponse, String) {
    let r = client
        .post(format!("{base}/api/v1/runs/{}/session", booted.run_id))
        .bearer_auth(&booted.bootstrap)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let session: kiln_protocol::wire::SessionResponse = r.json().await.unwrap();
    let line = kiln_protocol::attest::line(&session.attest_key, booted.run_id, booted.node_id);
    (
        RegisterResponse {
            node_id: booted.node_id,
            run_id: booted.run_id,
            token: session.token,
            heartbeat_secs: session.heartbeat_secs,
        },
        line,
    )
}

/// The run once it has a verdict (the collector may wait for its console).
pub async fn wait_verdict(ops: &Ops, run_id: i64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let run = ops.run(run_id).await;
        if !run["verdict"].is_null() || std::time::Instant::now() > deadline {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A whole network-booted run of the one-step `SUITE` on `mac`, attested on its console and
/// reported no sooner than a boot takes: what an honest node does. Returns the run.
pub async fn attested_run(
    client: &reqwest::Client,
    base: &str,
    ops: &Ops,
    mac: &str,
    console: &ConsoleServer,
    events: Vec<Event>,
) -> Value {
    let booted = boot_linux(client, base, mac).await;
    let (session, line) = open_session(client, base, &booted).await;
    console.show(&format!("\r\n{line}\r\n")).await;
    tokio::time::sleep(kiln_protocol::attest::LEAST_BOOT).await;
    let r = post_events(client, base, &session, events).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    wait_verdict(ops, booted.run_id).await
}
