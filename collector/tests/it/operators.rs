//! Operators at the command line: labels, modes, suites, reports.

use std::process::Command;

use serde_json::Value;

use crate::common::*;

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
    // Consent to destroy disks, per rack, from the command line.
    let out = kiln(&[
        "nodes",
        "allow-destructive",
        "--rack",
        "R12",
        "--server",
        &base,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 node(s): destructive disk steps allowed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = kiln(&["report", "--server", &base, "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&report.stdout).unwrap();
    let allowed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["allow_destructive"] == true)
        .collect();
    assert_eq!(allowed.len(), 2);
    assert!(allowed.iter().all(|r| r["rack"] == "R12"));
}

#[test]
fn each_request_is_logged_in_a_span_naming_its_route_and_run() {
    let data = scratch("request-spans");
    let port = free_port();
    let server = spawn_kiln(&data, port);
    let base = format!("http://127.0.0.1:{port}");
    // A run's plan without its token: refused, and logged with the run it was about.
    let (status, _) = raw_get(&base, "/api/v1/runs/4242/plan", "");
    assert!(status.contains("401"), "{status}");
    drop(server);
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("request refused"))
        .unwrap_or_else(|| panic!("no refused request in the log:\n{log}"));
    assert!(line.contains("route=/api/v1/runs/{id}/plan"), "{line}");
    assert!(line.contains("run=4242"), "{line}");
    assert!(line.contains("status=401"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_assigned_and_reported_with_its_yield_and_failures() {
    let server = Server::start("batch", kiln_collector::config::Config::default()).await;
    let client = reqwest::Client::new();
    let admin = server.admin_token();
    // Three nodes run: two pass, one fails; a fourth (another delivery) fails too.
    let mut runs = Vec::new();
    for n in 1..=4u8 {
        let run = register(&client, &server.base, n, SUITE).await;
        let mut events = full_run();
        if n == 3 || n == 4 {
            events[3] = ev(
                4,
                kiln_protocol::wire::EventBody::StepFinished {
                    report: kiln_protocol::wire::StepReport {
                        step: 0,
                        name: "tool".into(),
                        kind: "exec".into(),
                        outcome: kiln_protocol::wire::Outcome::Fail {
                            faults: vec![kiln_protocol::wire::Fault::new(
                                "exec.exit",
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
                kiln_protocol::wire::EventBody::RunFinished {
                    verdict: kiln_protocol::verdict::Verdict::Fail,
                },
            );
        }
        assert_eq!(
            post_events(&client, &server.base, &run, events)
                .await
                .status(),
            200
        );
        runs.push(run);
    }
    let put = |node: i64, batch: &str| {
        client
            .post(format!("{}/api/v1/nodes/batch", server.base))
            .bearer_auth(&admin)
            .json(&kiln_protocol::api::BatchRequest {
                select: kiln_protocol::api::Selector::Node(node),
                batch: Some(batch.into()),
            })
            .send()
    };
    for run in &runs[..3] {
        assert_eq!(put(run.node_id, "PO-1187").await.unwrap().status(), 200);
    }
    assert_eq!(put(runs[3].node_id, "PO-2000").await.unwrap().status(), 200);
    // Without the admin token: refused.
    let r = client
        .post(format!("{}/api/v1/nodes/batch", server.base))
        .json(&serde_json::json!({"select": {"node": runs[0].node_id}, "batch": "X"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let summary: kiln_protocol::api::BatchSummary = client
        .get(format!("{}/api/v1/batches/PO-1187", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            summary.yield_.nodes,
            summary.yield_.pass,
            summary.yield_.fail
        ),
        (3, 2, 1)
    );
    assert_eq!(summary.pareto_codes[0].key, "exec.exit");
    assert_eq!(summary.pareto_codes[0].nodes, 1);
    assert_eq!(summary.failed[0].node_id, runs[2].node_id);
    assert!(
        summary.failed[0].reason.contains("tool exited with 3"),
        "{summary:?}"
    );
    let missing = client
        .get(format!("{}/api/v1/batches/PO-0", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The command line: a summary for people, exit 1 since a node failed; CSV of its nodes.
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        let report = |format: &str| {
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args([
                    "report", "--batch", "PO-1187", "--format", format, "--server", &base,
                ])
                .output()
                .unwrap()
        };
        (report("table"), report("csv"))
    })
    .await
    .unwrap();
    let (table, csv) = out;
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(1), "{text}");
    assert!(
        text.contains("batch PO-1187: 3 node(s) — 2 pass, 0 degraded, 1 fail")
            && text.contains("yield 66.7 %")
            && text.contains("exec.exit")
            && text.contains("tool exited with 3"),
        "{text}"
    );
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.lines().skip(1).all(|l| l.contains(",PO-1187,")),
        "{csv}"
    );
}
