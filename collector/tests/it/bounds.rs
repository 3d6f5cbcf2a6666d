//! Bounds that hold for everyone: what one run may send, how many ad-hoc nodes registrations
//! may create (never at the expense of machines booting), and how much of a log one answer
//! carries. Each bound is answered with a 4xx and a message, and nothing past it is stored.

use kiln_collector::config::{Config, RunBounds};
use kiln_protocol::units::Size;
use kiln_protocol::wire::{EventBody, LogLevel};
use serde_json::Value;

use crate::common::*;

fn line(seq: u64, bytes: usize) -> kiln_protocol::wire::Event {
    ev(
        seq,
        EventBody::Log {
            step: Some(0),
            level: LogLevel::Info,
            line: "x".repeat(bytes),
        },
    )
}

async fn stored_events(ops: &Ops, run_id: i64) -> usize {
    let logs: Vec<Value> = ops
        .get(&format!("/api/v1/runs/{run_id}/logs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    logs.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ad_hoc_run_past_its_events_or_log_bytes_is_refused_and_ends_as_an_error() {
    let config = Config {
        ad_hoc_bounds: RunBounds {
            events: 10,
            log_bytes: Size(4096),
        },
        ..Config::default()
    };
    let server = Server::start("bounds-run", config).await;
    let client = reqwest::Client::new();
    let base = &server.base;

    // Events: eight fit, a batch of four more would pass ten.
    let run = register(&client, base, 1, SUITE).await;
    let r = post_events(&client, base, &run, (1..=8).map(|s| line(s, 10)).collect()).await;
    assert_eq!(r.status(), 200);
    let r = post_events(&client, base, &run, (9..=12).map(|s| line(s, 10)).collect()).await;
    assert_eq!(r.status(), 429);
    let why = r.text().await.unwrap();
    assert!(
        why.contains("the run sent more than its 10 events"),
        "{why}"
    );
    assert_eq!(stored_events(&server.ops, run.run_id).await, 8);
    let detail = server.ops.run(run.run_id).await;
    assert_eq!(detail["verdict"], "error", "{detail}");
    assert!(detail["faults"].to_string().contains("bounds:"), "{detail}");
    // Closed: the agent's retry learns so.
    let r = post_events(&client, base, &run, (9..=12).map(|s| line(s, 10)).collect()).await;
    assert_eq!(r.status(), 409);

    // Log bytes: 3 KiB fit, another 2 KiB would pass 4 KiB.
    let run = register(&client, base, 2, SUITE).await;
    let r = post_events(&client, base, &run, vec![line(1, 3072)]).await;
    assert_eq!(r.status(), 200);
    let r = post_events(&client, base, &run, vec![line(2, 2048)]).await;
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("of log lines"));
    assert_eq!(stored_events(&server.ops, run.run_id).await, 1);

    // A known node's run (the admin's registration) has the known bounds.
    let req = kiln_protocol::wire::RegisterRequest {
        identity: identity(3),
        hostname: None,
        suite_text: SUITE.into(),
    };
    let run = register_admin(&server.ops, &req, &server.admin_token()).await;
    let r = post_events(&client, base, &run, (1..=12).map(|s| line(s, 10)).collect()).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn ad_hoc_registrations_have_their_own_quota_and_never_crowd_out_a_machine_booting() {
    let config = Config {
        max_ad_hoc_nodes: 2,
        max_unknown_nodes: 2,
        ..Config::default()
    };
    let server = Server::start("bounds-ad-hoc", config).await;
    let client = reqwest::Client::new();
    let base = &server.base;
    for n in 1..=2 {
        register(&client, base, n, SUITE).await;
    }
    let req = kiln_protocol::wire::RegisterRequest {
        identity: identity(3),
        hostname: None,
        suite_text: SUITE.into(),
    };
    let r = client
        .post(format!("{base}/api/v1/register"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("max_ad_hoc_nodes"));
    // A new machine booting still gets its node; an operator's registration too.
    let r = client
        .get(format!("{base}/ipxe?mac=52-54-00-00-07-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    register_admin(&server.ops, &req, &server.admin_token()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_is_for_known_nodes_within_their_suite_and_is_cut_when_the_run_closes() {
    let server = Server::start("bounds-bandwidth", Config::default()).await;
    let client = reqwest::Client::new();
    let base = &server.base;
    let download = |bytes: u64| format!("{base}/bandwidth/download?bytes={bytes}");
    // An ad-hoc run, even one whose suite measures against the collector: refused.
    let ad_hoc = register(&client, base, 1, NIC_SUITE).await;
    let r = client
        .get(download(1000))
        .bearer_auth(&ad_hoc.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("is ad hoc"));
    // A known node's run whose suite does not measure against the collector: refused.
    let admin = server.admin_token();
    let known = |n: u8, suite: &str| {
        let req = kiln_protocol::wire::RegisterRequest {
            identity: identity(n),
            hostname: None,
            suite_text: suite.into(),
        };
        let (ops, admin) = (server.ops.clone(), admin.clone());
        async move { register_admin(&ops, &req, &admin).await }
    };
    let plain = known(2, SUITE).await;
    let r = client
        .get(download(1000))
        .bearer_auth(&plain.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("no NIC step"));
    // One that does: more than its step could move at line rate in its 3 s is refused.
    let run = known(3, NIC_SUITE).await;
    let r = client
        .get(download(3 * 12_500_000_000 + 1))
        .bearer_auth(&run.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // A stream as long as it may be is cut when the run closes.
    let r = client
        .get(download(3 * 12_500_000_000))
        .bearer_auth(&run.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    let reader = tokio::spawn(async move {
        let mut r = r;
        let mut got = 0u64;
        loop {
            match r.chunk().await {
                Ok(Some(c)) => got += c.len() as u64,
                Ok(None) => return (got, true),
                Err(_) => return (got, false),
            }
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let closed = post_events(&client, base, &run, full_run()).await;
    assert_eq!(closed.status(), 200);
    let (got, whole) = reader.await.unwrap();
    assert!(
        !whole && got < 3 * 12_500_000_000,
        "{got} bytes, whole: {whole}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // And a stream of a run left open is cut at its deadline (the step's timeout).
    let open = known(4, NIC_SUITE).await;
    let started = std::time::Instant::now();
    let r = client
        .get(download(3 * 12_500_000_000))
        .bearer_auth(&open.token)
        .send()
        .await
        .unwrap();
    let mut r = r;
    let whole = loop {
        match r.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    assert!(!whole);
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(2500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_starts_at_most_its_runs_per_day_by_registration_or_by_boot() {
    let config = Config {
        runs_per_node_per_day: 2,
        default_suite: "plain".into(),
        ..Config::default()
    };
    let server = Server::start("bounds-runs-per-day", config).await;
    std::fs::write(server.data.join("suites/plain.yaml"), SUITE).unwrap();
    let client = reqwest::Client::new();
    let base = &server.base;
    let admin = server.admin_token();
    // An operator's registrations of one known node.
    let req = kiln_protocol::wire::RegisterRequest {
        identity: identity(1),
        hostname: None,
        suite_text: SUITE.into(),
    };
    for _ in 0..2 {
        register_admin(&server.ops, &req, &admin).await;
    }
    let r = server
        .ops
        .post("/api/v1/register")
        .bearer_auth(&admin)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("runs_per_node_per_day is 2")
    );
    // A node booted into verification again and again: held, saying why.
    let mac = "52-54-00-00-08-01";
    let rearm = || async {
        let r = server
            .ops
            .post("/api/v1/nodes/mode")
            .bearer_auth(&admin)
            .json(
                &serde_json::json!({ "select": { "mac": "52:54:00:00:08:01" }, "mode": "verify" }),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    for _ in 0..2 {
        let script = get_text(&client, &format!("{base}/ipxe?mac={mac}")).await;
        assert!(script.contains("kiln.token="), "{script}");
        rearm().await;
    }
    let script = get_text(&client, &format!("{base}/ipxe?mac={mac}")).await;
    assert!(!script.contains("kiln.token="), "{script}");
    assert!(script.contains("runs_per_node_per_day is 2"), "{script}");
}

#[tokio::test(flavor = "multi_thread")]
async fn log_pages_refuse_hostile_limits_and_cursors() {
    let server = Server::start("bounds-log-pages", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 1, SUITE).await;
    post_events(
        &client,
        &server.base,
        &run,
        (1..=3).map(|s| line(s, 10)).collect(),
    )
    .await;
    for (query, status) in [
        ("limit=0", 400),
        ("limit=-5", 400),
        ("limit=1001", 400),
        ("limit=lots", 400),
        ("before=abc", 400),
        ("limit=1&extra=1", 400),
        ("before=-9223372036854775808", 200),
        ("limit=2&before=3", 200),
    ] {
        let r = server
            .ops
            .get(&format!("/api/v1/runs/{}/logs?{query}", run.run_id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{query}");
    }
    // The page before seq 3 holds 1 and 2, and says there may be more before 1.
    let r = server
        .ops
        .get(&format!(
            "/api/v1/runs/{}/logs?limit=2&before=3",
            run.run_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-kiln-before"], "1");
    let page: Vec<Value> = r.json().await.unwrap();
    assert_eq!(
        page.iter()
            .map(|l| l["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn a_management_certificate_without_its_key_or_unreadable_is_refused_at_start() {
    let dir = scratch("bounds-bad-cert");
    let garbage = dir.join("cert.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    for (cert, key, want) in [
        (Some(garbage.clone()), None, "cert and key go together"),
        (
            Some(garbage.clone()),
            Some(garbage.clone()),
            "no certificate in the file",
        ),
        (
            Some(dir.join("missing.pem")),
            Some(dir.join("missing.key")),
            "missing.pem",
        ),
    ] {
        let config = Config {
            management: kiln_collector::config::Management {
                cert,
                key,
                ..Default::default()
            },
            ..Config::default()
        };
        let err = match kiln_collector::server::Collector::open(config, &dir.join("data")) {
            Ok(_) => panic!("{want}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(want), "{want}: {err}");
    }
}
