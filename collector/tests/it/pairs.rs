//! Nodes paired for `nic: {target: peer}` through the real server, with the agent's own NIC
//! check: two nodes of a rack measure against each other at once, an odd third is measured
//! against a helper, a node of a rack alone times out with that fault, two nodes asking two
//! collectors on one database are paired all the same, and every hostile request is refused.

use std::sync::Mutex;
use std::time::Duration;

use kiln_agent::checks::nic::Nic;
use kiln_agent::checks::{CheckKind, CheckOutput, RunOptions, StepContext, StepObserver};
use kiln_agent::stop::{Interrupt, Stop};
use kiln_collector::config::Config;
use kiln_protocol::wire::{LogLevel, RegisterRequest, RegisterResponse};

use crate::common::*;

const PEER_SUITE: &str = "suite: p\ndescription: d\nsteps:\n  - name: pair\n    timeout: 2m\n    nic:\n      interfaces: [lo]\n      link: false\n      target: peer\n      pair_timeout: 8s\n      duration: 1s\n";

struct Lines(Mutex<Vec<String>>);

impl StepObserver for Lines {
    fn progress(&self, _fraction: f64, _status: &str) {}
    fn log(&self, _level: LogLevel, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

async fn run_of(server: &Server, n: u8) -> RegisterResponse {
    let req = RegisterRequest {
        identity: identity(n),
        hostname: None,
        suite_text: PEER_SUITE.into(),
    };
    register_admin(&server.ops, &req, &server.admin_token()).await
}

/// The agent's NIC check of the suite's one step, for `run`, on a thread of its own.
fn nic_step(
    base: String,
    run: RegisterResponse,
) -> std::thread::JoinHandle<(CheckOutput, Vec<String>)> {
    std::thread::spawn(move || {
        let plan = kiln_protocol::load("s", PEER_SUITE.as_bytes()).unwrap();
        let options = RunOptions {
            allow_destructive: false,
            collector: Some(base),
            collector_token: Some(run.token.clone()),
            run_id: Some(run.run_id),
            cpus: None,
        };
        let lines = Lines(Mutex::new(Vec::new()));
        let ctx = StepContext {
            step: 0,
            stop: Stop::new(Duration::from_secs(60), Interrupt::new()),
            observer: &lines,
            options: &options,
        };
        let out = Nic.run(&plan.steps[0].check, &ctx).unwrap();
        (out, lines.0.into_inner().unwrap())
    })
}

/// What the agents' NIC steps came to, each waited for off the runtime.
async fn finished(
    steps: Vec<std::thread::JoinHandle<(CheckOutput, Vec<String>)>>,
) -> Vec<(CheckOutput, Vec<String>)> {
    tokio::task::spawn_blocking(move || steps.into_iter().map(|h| h.join().unwrap()).collect())
        .await
        .unwrap()
}

/// Node `n`'s step measured its link without a fault.
fn measured(n: usize, out: &CheckOutput) {
    assert!(out.faults.is_empty(), "n{n}: {:?}", out.faults);
    assert!(
        mbps(out).is_some_and(|m| m > 1.0),
        "n{n}: {:?}",
        out.metrics
    );
}

fn mbps(out: &CheckOutput) -> Option<f64> {
    out.metrics
        .iter()
        .find(|m| m.name == "mbps")
        .map(|m| m.value)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rack_pairs_its_nodes_the_odd_one_with_a_helper_and_a_lonely_node_times_out() {
    let server = Server::start("pairs", Config::default()).await;
    import_nodes(
        &server,
        "mac,rack,slot,hostname\n52:54:00:00:00:01,R1,U1,n1\n52:54:00:00:00:02,R1,U2,n2\n52:54:00:00:00:03,R1,U3,n3\n52:54:00:00:00:04,R2,U1,m1\n",
    )
    .await;
    let runs = [
        run_of(&server, 1).await,
        run_of(&server, 2).await,
        run_of(&server, 3).await,
        run_of(&server, 4).await,
    ];
    let steps = runs
        .iter()
        .map(|r| nic_step(server.base.clone(), r.clone()))
        .collect();
    let results = finished(steps).await;
    for (i, (out, lines)) in results[..3].iter().enumerate() {
        measured(i + 1, out);
        let paired: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("paired with n"))
            .collect();
        assert!(!paired.is_empty(), "n{}: {lines:?}", i + 1);
    }
    // Three in a rack: one of them measured twice, the second time as a helper.
    let helpers = results[..3]
        .iter()
        .filter(|(_, lines)| lines.iter().any(|l| l.contains("as a helper")))
        .count();
    assert_eq!(helpers, 1, "{results:?}");
    // R2 has one node: nobody fits, and that is a fault, not a pass.
    let (lonely, _) = &results[3];
    assert_eq!(lonely.faults.len(), 1, "{:?}", lonely.faults);
    assert_eq!(lonely.faults[0].code, "nic.no_partner");
    assert!(mbps(lonely).is_none());
}

/// Two collectors share one PostgreSQL, each node asks its own: the pairing is the database's,
/// so they measure against each other (kept per collector, each would wait alone and time
/// out).
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_asking_two_collectors_on_one_database_are_paired() {
    use kiln_collector::config::Database;
    use kiln_collector::lab::postgres::{Cluster, USER};
    let pg = scratch("pairs-shared-pg");
    let dir = pg.clone();
    let cluster = std::thread::spawn(move || Cluster::start(&dir).unwrap())
        .join()
        .unwrap();
    let config = || Config {
        database: Database::Postgres(cluster.url(USER)),
        ..Config::default()
    };
    let a = Server::start("pairs-shared-a", config()).await;
    let b = Server::start("pairs-shared-b", config()).await;
    import_nodes(
        &a,
        "mac,rack,slot,hostname\n52:54:00:00:00:01,R1,U1,n1\n52:54:00:00:00:02,R1,U2,n2\n",
    )
    .await;
    let steps = vec![
        nic_step(a.base.clone(), run_of(&a, 1).await),
        nic_step(b.base.clone(), run_of(&b, 2).await),
    ];
    let results = finished(steps).await;
    for (i, (out, lines)) in results.iter().enumerate() {
        measured(i + 1, out);
        let partner = format!("paired with n{}", 2 - i);
        assert!(
            lines.iter().any(|l| l.starts_with(&partner)),
            "n{}: {lines:?}",
            i + 1
        );
    }
    drop((a, b));
    drop(cluster);
    let _ = std::fs::remove_dir_all(&pg);
}

#[tokio::test(flavor = "multi_thread")]
async fn pairing_requests_that_are_not_a_runs_own_are_refused() {
    let server = Server::start("pairs-hostile", Config::default()).await;
    let one = run_of(&server, 1).await;
    let other = register(&reqwest::Client::new(), &server.base, 2, SUITE).await;
    let client = reqwest::Client::new();
    let post = |run: &RegisterResponse, token: &str, path: &str, body: serde_json::Value| {
        client
            .post(format!("{}/api/v1/runs/{}/{path}", server.base, run.run_id))
            .bearer_auth(token.to_owned())
            .json(&body)
            .send()
    };
    for (run, token, path, body, status, says) in [
        (
            &one,
            other.token.as_str(),
            "pair",
            serde_json::json!({"step": 0, "port": 9}),
            401,
            "",
        ),
        (
            &one,
            one.token.as_str(),
            "pair",
            serde_json::json!({"step": 5, "port": 9}),
            400,
            "no NIC check with `target: peer`",
        ),
        (
            &other,
            other.token.as_str(),
            "pair",
            serde_json::json!({"step": 0, "port": 9}),
            400,
            "no NIC check",
        ),
        (
            &one,
            one.token.as_str(),
            "pair",
            serde_json::json!({"step": 0, "port": 0}),
            400,
            "port 0",
        ),
        (
            &one,
            one.token.as_str(),
            "pair",
            serde_json::json!({"step": 0, "port": 70000}),
            400,
            "expected u16",
        ),
        (
            &one,
            one.token.as_str(),
            "pair",
            serde_json::json!({"step": 0, "port": 9, "spy": 1}),
            400,
            "unknown field",
        ),
        (
            &one,
            one.token.as_str(),
            "pair/done",
            serde_json::json!({"pair": 77}),
            409,
            "in no pair 77",
        ),
        (
            &one,
            one.token.as_str(),
            "pair/done",
            serde_json::json!({"pair": 77, "download_mbps": -5.0, "mbps": -5.0}),
            400,
            "is no throughput",
        ),
        (
            &one,
            one.token.as_str(),
            "pair/done",
            serde_json::json!({"pair": 77, "download_mbps": 1.0e12}),
            400,
            "is no throughput",
        ),
        (
            &one,
            one.token.as_str(),
            "pair/done",
            serde_json::json!({"pair": 77, "download_mbps": 10.0, "upload_mbps": 20.0, "mbps": 20.0}),
            400,
            "faster than the slower direction",
        ),
        (
            &one,
            one.token.as_str(),
            "pair/done",
            serde_json::json!({"pair": 77, "met": true}),
            400,
            "unknown field",
        ),
    ] {
        let r = post(run, token, path, body.clone()).await.unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(
            code == status || (status == 401 && code == 403),
            "{path} {body}: {code} {text}"
        );
        assert!(text.contains(says), "{path} {body}: {text}");
    }
}

const BOUNDED_SUITE: &str = "suite: p\ndescription: d\nsteps:\n  - name: pair\n    timeout: 2m\n    nic:\n      interfaces: [lo]\n      link: false\n      target: peer\n      pair_timeout: 1m\n      duration: 1s\n      min_mbps: 100\n";

/// Node 2 is slow: its pair with node 1 misses, both are retested against the helpers of the
/// pair that met; node 1 meets with a third node and is cleared, node 2 misses again and is
/// released carrying it — the collector judging every figure against the stored suite.
#[tokio::test(flavor = "multi_thread")]
async fn a_pair_that_missed_is_retested_and_the_slow_node_alone_misses_twice() {
    let server = Server::start("pairs-blame", Config::default()).await;
    import_nodes(
        &server,
        "mac,rack,slot,hostname\n52:54:00:00:00:01,R1,U1,n1\n52:54:00:00:00:02,R1,U2,n2\n52:54:00:00:00:03,R1,U3,n3\n52:54:00:00:00:04,R1,U4,n4\n",
    )
    .await;
    let mut runs = Vec::new();
    for n in 1..=4 {
        let req = RegisterRequest {
            identity: identity(n),
            hostname: None,
            suite_text: BOUNDED_SUITE.into(),
        };
        runs.push(register_admin(&server.ops, &req, &server.admin_token()).await);
    }
    let client = reqwest::Client::new();
    let post = |n: usize, path: &str, body: serde_json::Value| {
        let run = runs[n - 1].clone();
        let client = client.clone();
        let url = format!("{}/api/v1/runs/{}/{path}", server.base, run.run_id);
        async move {
            let r = client
                .post(url)
                .bearer_auth(run.token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let ask = |n: usize| post(n, "pair", serde_json::json!({"step": 0, "port": 9000 + n}));
    let done = |n: usize, pair: &serde_json::Value, mbps: f64| {
        post(
            n,
            "pair/done",
            serde_json::json!({"pair": pair, "download_mbps": mbps, "upload_mbps": mbps, "mbps": mbps}),
        )
    };
    assert_eq!(ask(3).await["answer"], "wait");
    let p34 = ask(4).await;
    assert_eq!(
        (p34["name"].as_str(), p34["role"].as_str()),
        (Some("n3"), Some("first"))
    );
    assert_eq!(ask(1).await["answer"], "wait");
    let p12 = ask(2).await;
    assert_eq!(p12["name"], "n1");
    assert_eq!(ask(1).await["pair"], p12["pair"]);
    assert_eq!(done(3, &p34["pair"], 900.0).await["met"], true);
    assert_eq!(done(4, &p34["pair"], 900.0).await["met"], true);
    assert_eq!(
        done(1, &p12["pair"], 40.0).await["met"],
        false,
        "below min_mbps"
    );
    assert_eq!(done(2, &p12["pair"], 40.0).await["met"], false);
    // Both retested at once, each against a helper, never against each other.
    let r1 = ask(1).await;
    let r2 = ask(2).await;
    assert_eq!(
        (r1["role"].as_str(), r2["role"].as_str()),
        (Some("retest"), Some("retest"))
    );
    let (h1, h2) = (r1["name"].as_str().unwrap(), r2["name"].as_str().unwrap());
    assert!(
        h1 != h2 && ["n3", "n4"].contains(&h1) && ["n3", "n4"].contains(&h2),
        "{r1} {r2}"
    );
    let helper = |name: &str| if name == "n3" { 3 } else { 4 };
    assert_eq!(ask(helper(h1)).await["role"], "helper");
    assert_eq!(done(1, &r1["pair"], 800.0).await["met"], true);
    assert_eq!(done(helper(h1), &r1["pair"], 800.0).await["met"], true);
    assert_eq!(done(2, &r2["pair"], 30.0).await["met"], false);
    assert_eq!(done(helper(h2), &r2["pair"], 30.0).await["met"], false);
    // The slow node missed with two partners: it goes, and helps nobody.
    assert_eq!(ask(2).await["answer"], "released");
    assert_eq!(
        ask(1).await["answer"],
        "released",
        "cleared, and nobody else can come"
    );
    // A word on a closed pair is refused, and changes nothing.
    let client = reqwest::Client::new();
    let again = client
        .post(format!(
            "{}/api/v1/runs/{}/pair/done",
            server.base, runs[1].run_id
        ))
        .bearer_auth(runs[1].token.clone())
        .json(&serde_json::json!({"pair": r2["pair"], "mbps": 900.0, "download_mbps": 900.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 409);
    // The run page names each partner, both directions, met or missed.
    let page = server.ops.text(&format!("/runs/{}", runs[1].run_id)).await;
    let pairs = &page[page.find("id=\"pairs\"").expect("a pairs table")..];
    let pairs = &pairs[..pairs.find("</table>").unwrap()];
    assert!(
        pairs.contains(">n1</a>") && pairs.contains(&format!(">{h2}</a>")),
        "{pairs}"
    );
    assert_eq!(pairs.matches(">missed<").count(), 2, "{pairs}");
    assert!(
        pairs.contains("40 Mb/s") && pairs.contains("30 Mb/s"),
        "{pairs}"
    );
    assert!(
        !pairs.contains("900 Mb/s"),
        "the refused word changed nothing: {pairs}"
    );
}
