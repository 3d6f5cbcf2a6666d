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

async fn stored_events(client: &reqwest::Client, base: &str, run_id: i64) -> usize {
    let logs: Vec<Value> = client
        .get(format!("{base}/api/v1/runs/{run_id}/logs"))
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
    assert_eq!(stored_events(&client, base, run.run_id).await, 8);
    let detail = run_json(&client, base, run.run_id).await;
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
    assert_eq!(stored_events(&client, base, run.run_id).await, 1);

    // A known node's run (the admin's registration) has the known bounds.
    let req = kiln_protocol::wire::RegisterRequest {
        identity: identity(3),
        hostname: None,
        suite_text: SUITE.into(),
    };
    let run = register_with(&client, base, &req, Some(&server.admin_token())).await;
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
    register_with(&client, base, &req, Some(&server.admin_token())).await;
}
