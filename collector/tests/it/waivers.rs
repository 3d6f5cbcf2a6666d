//! Waivers: an operator's word that a node may ship with one fault of one run — what they
//! change in every report, what they may never cover, and their log.

use std::process::Command;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_waived_fault_shows_as_pass_waived_everywhere_and_the_log_keeps_who_and_why() {
    // A network-booted run its console vouched for: only such a run's faults can all be
    // waived (an unattested one stays failed, whatever is waived).
    let console = ConsoleServer::start().await;
    let config = kiln_collector::config::Config {
        default_suite: "plain".into(),
        nodes: consoles(&[("52:54:00:00:00:01", &console)]),
        ..kiln_collector::config::Config::default()
    };
    let server = Server::start("waivers", config).await;
    std::fs::write(server.data.join("suites/plain.yaml"), SUITE).unwrap();
    let client = reqwest::Client::new();
    let admin = server.admin_token();
    let events = failed_run("fan.speed", "fan 3 at 900 rpm");
    let run = attested_run(
        &client,
        &server.base,
        &server.ops,
        "52-54-00-00-00-01",
        &console,
        events,
    )
    .await;
    assert_eq!(run["verdict"], "fail", "{run}");
    let node = run["node_id"].as_i64().unwrap();
    let run_id = run["run_id"].as_i64().unwrap();
    let (ops, token) = (server.ops.clone(), admin.clone());
    let kiln = move |args: Vec<String>| {
        let (ops, token) = (ops.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args(&args)
                .args(ops.flags())
                .env("KILN_ADMIN_TOKEN", token)
                .output()
                .unwrap()
        })
    };
    let row = |ops: Ops| async move {
        let rows: Vec<kiln_protocol::api::ReportRow> = ops
            .get("/api/v1/report")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        rows.into_iter().next().unwrap()
    };
    // Before: a plain failure, kiln report exits 1.
    let before = kiln(vec!["report".into()]).await.unwrap();
    assert_eq!(before.status.code(), Some(1));

    // A waiver needs a reason and a node that exists; without the admin token, 401.
    let waive = |body: serde_json::Value, token: Option<String>| {
        let mut r = server.ops.post("/api/v1/waivers").json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = waive(
        serde_json::json!({"node": node, "code": "fan.speed", "reason": " "}),
        Some(admin.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("a waiver says why"));
    let r = waive(
        serde_json::json!({"node": node, "code": "run.incomplete", "reason": "r"}),
        Some(admin.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("cannot be waived"));
    let r = waive(
        serde_json::json!({"node": 999, "code": "fan.speed", "reason": "r"}),
        Some(admin.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let r = waive(
        serde_json::json!({"node": node, "code": "fan.speed", "reason": "r"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);

    // Waived from the command line: every export says pass (1 waived), the raw verdict stays.
    let out = kiln(vec![
        "waive".into(),
        "--node".into(),
        node.to_string(),
        "--fault".into(),
        "fan.speed".into(),
        "--reason".into(),
        "vendor confirms fan 3 is a spare".into(),
        "--ticket".into(),
        "RMA-77".into(),
        "--expires".into(),
        "30d".into(),
    ])
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = row(server.ops.clone()).await;
    assert_eq!(
        r.verdict,
        Some(kiln_protocol::verdict::Verdict::Fail),
        "raw results never change"
    );
    assert_eq!(r.verdict_text(), "pass (1 waived)");
    assert!(!r.failed());
    let table = kiln(vec!["report".into()]).await.unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(0), "{text}");
    assert!(text.contains("pass (1 waived)"), "{text}");
    let csv = server.ops.text("/api/v1/report?format=csv").await;
    assert!(csv.contains(",pass (1 waived),"), "{csv}");
    let page = server.ops.text("/").await;
    assert!(
        page.contains("pass (1 waived)") && !page.contains(">pass</span>"),
        "{page}"
    );
    let junit = server
        .ops
        .text(&format!("/api/v1/runs/{}/junit.xml", run_id))
        .await;
    assert!(
        junit.contains("<property name=\"verdict_shown\" value=\"pass (1 waived)\"/>")
            && junit.contains("<property name=\"waived\" value=\"fan.speed\"/>"),
        "{junit}"
    );

    // The log keeps why, the ticket and who; the node's history says so too.
    let log = kiln(vec!["waivers".into(), "--node".into(), node.to_string()])
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(
        log.contains("fan.speed")
            && log.contains("active")
            && log.contains("admin token ")
            && log.contains("vendor confirms fan 3 is a spare (ticket RMA-77)"),
        "{log}"
    );
    // The header, its dashed line, then the waiver.
    let id: i64 = log
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // Revoked: the failure is back, the waiver stays in the log as revoked; twice is a 409.
    let out = kiln(vec!["waive".into(), "--revoke".into(), id.to_string()])
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = row(server.ops.clone()).await;
    assert_eq!(r.verdict_text(), "fail");
    assert!(r.failed());
    let again = server
        .ops
        .post(&format!("/api/v1/waivers/{id}/revoke"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let waivers: Vec<kiln_protocol::api::Waiver> = server.ops.json("/api/v1/waivers").await;
    assert_eq!(waivers.len(), 1);
    assert!(!waivers[0].active && waivers[0].revoked_by.is_some());
    // A code the run does not have is refused with the ones it has; catch-alls and the
    // collector's own findings are refused whatever the run has, by the CLI before it asks.
    let r = waive(
        serde_json::json!({"node": node, "code": "psu.redundancy", "reason": "r"}),
        Some(admin.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let why = r.text().await.unwrap();
    assert!(
        why.contains(&format!(
            "run {run_id} of node {node} has no fault psu.redundancy; its codes: fan.speed"
        )),
        "{why}"
    );
    for code in ["linux.fail", "*", "RUN.lost_contact", "run.unattested"] {
        let r = waive(
            serde_json::json!({"node": node, "code": code, "reason": "r"}),
            Some(admin.clone()),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 400, "{code}");
    }
    let out = kiln(vec![
        "waive".into(),
        "--node".into(),
        node.to_string(),
        "--fault".into(),
        "linux.fail".into(),
        "--reason".into(),
        "r".into(),
    ])
    .await
    .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("linux.fail is a stage's catch-all") && said.contains("cannot be waived"),
        "{said}"
    );
    assert_eq!(row(server.ops.clone()).await.verdict_text(), "fail");
}
