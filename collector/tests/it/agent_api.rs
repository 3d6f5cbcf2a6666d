//! The agent protocol over real HTTP: idempotent ingest and contiguous acks, token rules,
//! limits and messages, heartbeat loss, a collector killed mid-run, a real agent end to end.

use std::time::{Duration, Instant};

use kiln_collector::config::Config;
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{
    Event, EventBatch, EventBody, LogLevel, NodeIdentity, Outcome, RegisterRequest, StepReport,
};
use serde_json::Value;

use crate::common::*;

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
    let detail = server.ops.run(run.run_id).await;
    // Every step passed, but an ad-hoc run has no console to vouch for it.
    assert_eq!(detail["verdict"], "unattested");
    assert_eq!(detail["log_lines"], 1);
    assert_eq!(detail["steps"].as_array().unwrap().len(), 1);
    // Once the run has its verdict it is closed, even to its own agent's retries.
    let r = post_events(&client, &server.base, &run, full_run()).await;
    assert_eq!(r.status(), 409);
    assert_eq!(server.ops.run(run.run_id).await, detail);

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
    let r = server
        .ops
        .post("/api/v1/nodes/mode")
        .json(&mode)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = server
        .ops
        .post("/api/v1/nodes/mode")
        .bearer_auth(&a.token)
        .json(&mode)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = server
        .ops
        .post("/api/v1/nodes/mode")
        .bearer_auth(server.admin_token())
        .json(&mode)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let nodes: Value = server.ops.json("/api/v1/nodes").await;
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
    // A fresh connection per request: the server may close one after refusing a body it did
    // not read (413), and a pooled connection would then fail the next request.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
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

    // A refused body says where in it the problem is.
    let r = send(
        r#"{"events": [{"seq": 1, "at_ms": 0, "body": {"type": "log", "level": "info", "line": "ok"}},
                       {"seq": 2, "at_ms": "soon", "body": {"type": "log", "level": "info", "line": "x"}}]}"#
            .into(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("events[1].at_ms"), "{msg}");

    // A body that is not declared JSON is refused before it is read.
    let r = client
        .post(&url)
        .bearer_auth(&run.token)
        .header("content-type", "text/plain")
        .body(r#"{"events": []}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Content-Type: application/json")
    );

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
    // The collector answers 413 once it has read its limit, and closes: the rest of the body
    // may still be on its way, and then the client sees the connection cut instead of the
    // answer (a socket closed with unread data is reset). Either way the body was refused.
    match send(huge).await {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            assert!(r.text().await.unwrap().contains("over the limit"));
        }
        Err(e) => {
            let cut = format!("{e:?}");
            assert!(
                cut.contains("BrokenPipe") || cut.contains("ConnectionReset"),
                "{cut}"
            );
        }
    }

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
        let detail = server.ops.run(run.run_id).await;
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
    let before = server.ops.run(run.run_id).await;
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
    assert_eq!(server.ops.run(run.run_id).await, before);
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
        bases: kiln_agent::collector::Bases::new(&base).unwrap(),
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
            attempts: vec![],
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
    let detail = rt.block_on(server.ops.run(run.run_id));
    assert_eq!(detail["log_lines"], lines);
    assert_eq!(detail["verdict"], "unattested");
    // One answer is at most a page; the whole log comes page by page, backwards.
    let too_many = rt.block_on(async {
        server
            .ops
            .get(&format!("/api/v1/runs/{}/logs?limit=100000", run.run_id))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(too_many.status(), 400);
    let logs: Vec<Value> = rt.block_on(async {
        let mut all: Vec<Value> = Vec::new();
        let mut before = String::new();
        loop {
            let r = server
                .ops
                .get(&format!(
                    "/api/v1/runs/{}/logs?limit=700{before}",
                    run.run_id
                ))
                .send()
                .await
                .unwrap();
            let next = r
                .headers()
                .get("x-kiln-before")
                .map(|v| v.to_str().unwrap().to_owned());
            let mut page: Vec<Value> = r.json().await.unwrap();
            assert!(page.len() <= 700);
            page.append(&mut all);
            all = page;
            match next {
                Some(seq) => before = format!("&before={seq}"),
                None => return all,
            }
        }
    });
    let seqs: Vec<i64> = logs.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (2..2 + lines as i64).collect::<Vec<_>>(),
        "log sequence has gaps or duplicates"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bandwidth_endpoints_serve_only_an_open_runs_agent() {
    let server = Server::start("bandwidth", Config::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/bandwidth/download?bytes=1000", server.base);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(&url)
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let run = register_admin(
        &server.ops,
        &RegisterRequest {
            identity: identity(1),
            hostname: None,
            suite_text: NIC_SUITE.into(),
        },
        &server.admin_token(),
    )
    .await;
    let r = client
        .get(&url)
        .bearer_auth(&run.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    let r = client
        .post(format!("{}/bandwidth/upload", server.base))
        .bearer_auth(&run.token)
        .body(vec![0u8; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["bytes"], 5000);
    // Past the collector's request-body limit: an upload is counted, not kept, so none applies.
    let r = client
        .post(format!("{}/bandwidth/upload", server.base))
        .bearer_auth(&run.token)
        .body(vec![0u8; 5 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["bytes"], 5 << 20);
    // The NIC check's way: upgraded to a raw stream, both ways, two streams, through the
    // collector's own connection handling; without the token, the 401 and its reason.
    use kiln_agent::bandwidth::{Way, measure};
    let short = std::time::Duration::from_millis(200);
    for way in [Way::Download, Way::Upload] {
        let streams = measure(way, &server.base, Some(&run.token), short, 2)
            .await
            .unwrap();
        assert_eq!(streams.0.len(), 2);
        assert!(
            streams.0.iter().all(|s| s.bytes > 0),
            "{way:?}: {streams:?}"
        );
        let err = measure(way, &server.base, None, short, 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("401") && err.contains("session token"),
            "{err}"
        );
    }
    // Once the run is over its token moves nothing.
    post_events(&client, &server.base, &run, full_run()).await;
    let r = client
        .get(&url)
        .bearer_auth(&run.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn sequence_numbers_past_i64_and_an_empty_selection_are_refused() {
    let server = Server::start("hostile-numbers", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 1, SUITE).await;
    for seqs in [[u64::MAX, 0], [1 << 63, (1 << 63) + 1]] {
        let events = seqs.iter().map(|s| log(*s)).collect();
        let r = post_events(&client, &server.base, &run, events).await;
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("sequence number"));
    }
    let r = server
        .ops
        .post("/api/v1/nodes/mode")
        .bearer_auth(server.admin_token())
        .json(&serde_json::json!({ "select": { "all": false }, "mode": "hold" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("selects no node"));
    let rows: Vec<Value> = server.ops.json("/api/v1/report").await;
    assert_eq!(rows[0]["mode"], "verify");
}

#[test]
fn an_over_long_line_and_too_many_metrics_are_clamped_by_the_agent_and_the_run_still_reports() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start("clamped", Config::default()));
    let client = reqwest::Client::new();
    let run = rt.block_on(register(&client, &server.base, 1, SUITE));
    let reporter = kiln_agent::reporter::Reporter::start(kiln_agent::reporter::Target {
        bases: kiln_agent::collector::Bases::new(&server.base).unwrap(),
        run_id: run.run_id,
        token: run.token.clone(),
        heartbeat: Duration::from_secs(60),
    })
    .unwrap();
    use kiln_agent::runner::EventSink;
    reporter.emit(EventBody::RunStarted {
        suite: "t".into(),
        steps: 1,
        agent: "test".into(),
    });
    // What a vendor tool can print: one 20 KB line with terminal escapes, 300 metrics.
    reporter.emit(EventBody::Log {
        step: Some(0),
        level: LogLevel::Info,
        line: format!("\u{1b}]52;c;ZXZpbA==\u{7}{}", "x".repeat(20_000)),
    });
    reporter.emit(EventBody::StepFinished {
        report: StepReport {
            step: 0,
            name: "tool".into(),
            kind: "exec".into(),
            outcome: Outcome::Pass,
            metrics: (0..300)
                .map(|i| kiln_protocol::wire::Metric {
                    name: format!("m{i}"),
                    value: 1.0,
                    unit: String::new(),
                })
                .collect(),
            duration_ms: 1,
            attempts: vec![],
        },
    });
    reporter.emit(EventBody::RunFinished {
        verdict: Verdict::Pass,
    });
    assert_eq!(reporter.flush(Duration::from_secs(30)), 0);
    let detail = rt.block_on(server.ops.run(run.run_id));
    // The step's report arrived; the dropped metrics are a fault, not a lost run.
    assert_eq!(detail["verdict"], "fail", "{detail}");
    assert!(
        detail["faults"]
            .to_string()
            .contains("44 over the limit of 256"),
        "{detail}"
    );
    let logs: Vec<Value> = rt.block_on(async {
        server
            .ops
            .json(&format!("/api/v1/runs/{}/logs", run.run_id))
            .await
    });
    let line = logs[0]["body"]["line"].as_str().unwrap();
    assert!(
        line.ends_with("bytes cut]") && !line.contains('\u{1b}'),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cycle_report_route_refuses_hostile_and_out_of_turn_requests_with_reasons() {
    let server = Server::start("cycles-route", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 1, SUITE).await;
    let url = |cycle: &str| format!("{}/api/v1/runs/{}/cycles/{cycle}", server.base, run.run_id);
    let inventory = serde_json::to_value(kiln_protocol::wire::Inventory::default()).unwrap();
    let put = |url: String, token: &str, body: String| {
        client
            .put(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Without the run's token nothing is read, not even the cycle number.
    let r = put(url("1"), &"0".repeat(64), inventory.to_string())
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 401 | 403), "{}", r.status());
    for bad in ["abc", "-1", "99999999999", "1.5"] {
        let r = put(url(bad), &run.token, inventory.to_string())
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "cycle {bad:?}");
    }
    for body in ["{", "[]", "{\"boot_id\": 7}"] {
        let r = put(url("1"), &run.token, body.into()).await.unwrap();
        assert!(r.status().is_client_error(), "{body}: {}", r.status());
    }
    // A run without power cycles has none to report: refused, with why, and nothing changed.
    let r = put(url("1"), &run.token, inventory.to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let why = r.text().await.unwrap();
    assert!(why.contains("no power cycle under way"), "{why}");
    let detail = server.ops.run(run.run_id).await;
    assert_eq!(detail["verdict"], Value::Null);
}
