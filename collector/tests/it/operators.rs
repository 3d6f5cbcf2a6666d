//! Operators at the command line: labels, modes, suites, reports.

use std::process::Command;

use serde_json::Value;

use crate::common::*;

#[test]
fn operators_label_and_set_modes_from_the_command_line() {
    let data = scratch("nodes-cli");
    let port = free_port();
    let server = spawn_kiln(&data, port);
    let csv = data.join("nodes.csv");
    std::fs::write(&csv, "mac,rack,slot,hostname\n52:54:00:aa:00:01,R12,U01,r12-u01\n52:54:00:aa:00:02,R12,U02,r12-u02\n52:54:00:aa:00:03,R13,U01,r13-u01\n").unwrap();
    let token = data.join("admin.token");
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .args(server.ops.flags())
            .output()
            .unwrap()
    };
    let out = kiln(&[
        "nodes",
        "import",
        csv.to_str().unwrap(),
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
        .args(["nodes", "mode", "local", "--all"])
        .args(server.ops.flags())
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
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1: 2 fields"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = kiln(&["report", "--rack", "R12", "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["mode"] == "hold"));
    // Consent to destroy disks, per rack, from the command line.
    let out = kiln(&[
        "nodes",
        "allow-destructive",
        "--rack",
        "R12",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 node(s): destructive disk steps allowed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = kiln(&["report", "--format", "json"]);
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

/// What the batch test keeps of each run.
struct RunIds {
    node_id: i64,
    run_id: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_assigned_and_reported_with_its_yield_and_failures() {
    // Four network-booted nodes, each with its console read (so that a pass is a pass).
    let mut servers = Vec::new();
    for _ in 1..=4u8 {
        servers.push(ConsoleServer::start().await);
    }
    let macs: Vec<String> = (1..=4u8)
        .map(|n| format!("52:54:00:00:00:{n:02x}"))
        .collect();
    let access: Vec<(&str, &ConsoleServer)> = macs
        .iter()
        .map(String::as_str)
        .zip(servers.iter())
        .collect();
    let config = kiln_collector::config::Config {
        default_suite: "plain".into(),
        nodes: consoles(&access),
        ..kiln_collector::config::Config::default()
    };
    let server = Server::start("batch", config).await;
    std::fs::write(server.data.join("suites/plain.yaml"), SUITE).unwrap();
    let client = reqwest::Client::new();
    let admin = server.admin_token();
    // Three nodes run: two pass, one fails; a fourth (another delivery) fails too.
    let mut runs = Vec::new();
    let finished = (1..=4u8).map(|n| {
        let events = if n == 3 || n == 4 {
            failed_run("exec.exit", "tool exited with 3")
        } else {
            full_run()
        };
        let (client, base, ops) = (client.clone(), server.base.clone(), server.ops.clone());
        let (mac, console) = (
            macs[n as usize - 1].replace(':', "-"),
            &servers[n as usize - 1],
        );
        async move { attested_run(&client, &base, &ops, &mac, console, events).await }
    });
    for run in futures_util::future::join_all(finished).await {
        assert!(!run["verdict"].is_null(), "{run}");
        runs.push(RunIds {
            node_id: run["node_id"].as_i64().unwrap(),
            run_id: run["run_id"].as_i64().unwrap(),
        });
    }
    let put = |node: i64, batch: &str| {
        server
            .ops
            .post("/api/v1/nodes/batch")
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
    let r = server
        .ops
        .post("/api/v1/nodes/batch")
        .json(&serde_json::json!({"select": {"node": runs[0].node_id}, "batch": "X"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let summary: kiln_protocol::api::BatchSummary =
        server.ops.json("/api/v1/batches/PO-1187").await;
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
    let missing = server.ops.get("/api/v1/batches/PO-0").send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // The command line: a summary for people, exit 1 since a node failed; CSV of its nodes.
    let ops = server.ops.clone();
    let out = tokio::task::spawn_blocking(move || {
        let report = |format: &str| {
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args(["report", "--batch", "PO-1187", "--format", format])
                .args(ops.flags())
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
        text.contains("batch PO-1187: 3 node(s) — 2 pass, 0 degraded, 0 pass (waived), 1 fail")
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

    // The workbook, written by the command line and read back by another library.
    let book_path = server.data.join("po-1187.xlsx");
    let (ops, path) = (server.ops.clone(), book_path.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["report", "--batch", "PO-1187", "--format", "xlsx", "--out"])
            .arg(&path)
            .args(ops.flags())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use calamine::Reader;
    let mut book: calamine::Xlsx<_> = calamine::open_workbook(&book_path).expect("an XLSX file");
    assert_eq!(book.sheet_names(), ["Summary", "Nodes", "Faults"]);
    let summary = book.worksheet_range("Summary").unwrap();
    let cell = |r: &calamine::Range<calamine::Data>, row: u32, col: u32| {
        r.get_value((row, col))
            .cloned()
            .unwrap_or(calamine::Data::Empty)
    };
    assert_eq!(
        cell(&summary, 0, 1),
        calamine::Data::String("PO-1187".into())
    );
    assert_eq!(cell(&summary, 1, 0), calamine::Data::String("nodes".into()));
    assert_eq!(cell(&summary, 1, 1), calamine::Data::Float(3.0));
    assert_eq!(cell(&summary, 5, 0), calamine::Data::String("fail".into()));
    assert_eq!(cell(&summary, 5, 1), calamine::Data::Float(1.0));
    let nodes = book.worksheet_range("Nodes").unwrap();
    assert_eq!(nodes.height(), 4, "a header and one row per node");
    let faults = book.worksheet_range("Faults").unwrap();
    assert_eq!(faults.height(), 2, "a header and the one fault");
    assert!(
        matches!(cell(&faults, 1, 6), calamine::Data::String(f) if f.contains("tool exited with 3"))
    );

    // The failed node's RMA evidence: one ZIP, from the command line.
    let zip_path = server.data.join("evidence.zip");
    let (ops, path, failed) = (server.ops.clone(), zip_path.clone(), runs[2].node_id);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["report", "--evidence", &failed.to_string(), "--out"])
            .arg(&path)
            .args(ops.flags())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    let mut read = |name: &str| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut zip.by_name(name).unwrap(), &mut text).unwrap();
        text
    };
    let readme = read("README.txt");
    assert!(
        readme.contains("verdict:  fail") && readme.contains("suite_sha256: "),
        "{readme}"
    );
    let faults = read("faults.txt");
    assert!(
        faults.contains("tool: [exec.exit] tool exited with 3"),
        "{faults}"
    );
    let run: Value = serde_json::from_str(&read("run.json")).unwrap();
    assert_eq!(run["run_id"], runs[2].run_id);
    assert!(read("identity.txt").contains("no inventory"));
}

/// The report `server` serves now, JSON and CSV, and its dashboard, checked byte for byte
/// against ones built from its database at this moment, never kept; `what` names the moment.
/// Gives the JSON report.
async fn report_is_current(server: &Server, what: &str) -> String {
    let report = reports_are_current(server, what).await;
    let page = server.ops.text("/").await;
    let templates = kiln_collector::api::templates::Pages::new().unwrap();
    let built = server.with_sql(|db| {
        kiln_collector::api::pages::render_dashboard(db, &templates, None, None, 1).unwrap()
    });
    assert_eq!(
        page,
        String::from_utf8_lossy(&built),
        "{what}: the dashboard served is not the database's now"
    );
    report
}

/// [`report_is_current`] for the JSON and CSV report alone.
async fn reports_are_current(server: &Server, what: &str) -> String {
    let mut served = Vec::new();
    for format in kiln_protocol::api::ReportFormat::ALL.iter().copied() {
        let path = format!("/api/v1/report?format={format}");
        let body = server.ops.text(&path).await;
        let built = server.with_sql(|db| {
            kiln_collector::api::reports::render_report(
                db,
                &kiln_collector::store::queries::Filter::default(),
                format,
            )
            .unwrap()
        });
        assert_eq!(
            body,
            String::from_utf8_lossy(&built),
            "{what}: the report served is not the database's now"
        );
        served.push(String::from_utf8(built).unwrap());
    }
    served.swap_remove(0)
}

#[tokio::test]
async fn a_kept_report_or_dashboard_is_always_the_one_the_database_gives_now() {
    let server = Server::start("kept-report", kiln_collector::config::Config::default()).await;
    let client = reqwest::Client::new();
    let admin = server.admin_token();
    let clock = |server: &Server| -> i64 {
        server.with_sql(|db| {
            db.query_row("SELECT rev FROM report_clock", [], |r| r.get(0))
                .unwrap()
        })
    };
    report_is_current(&server, "no nodes").await;
    let one = register(&client, &server.base, 1, SUITE).await;
    report_is_current(&server, "registered").await;
    post_events(&client, &server.base, &one, full_run()).await;
    report_is_current(&server, "a run passed").await;

    // A second run in parts: a batch of log lines alone leaves the clock, and so the kept
    // report, as they were; the rest moves it.
    let two = register(&client, &server.base, 2, SUITE).await;
    let mut events = failed_run("fan.speed", "fan 3 at 900 rpm");
    let end = events.split_off(3);
    let logs = events.split_off(2);
    post_events(&client, &server.base, &two, events).await;
    let started = report_is_current(&server, "a run started").await;
    let before = clock(&server);
    let r = post_events(&client, &server.base, &two, logs).await;
    assert_eq!(r.status(), 200);
    assert_eq!(clock(&server), before, "log lines moved the reports' clock");
    assert_eq!(report_is_current(&server, "log lines").await, started);
    // Live progress alone: the kept report and page hold for the lag, showing the step as it
    // was; then the report has it put in, the same bytes a build gives (the CSV shows none).
    let page = server.ops.text("/").await;
    let progress = vec![ev(
        4,
        kiln_protocol::wire::EventBody::Progress {
            step: 0,
            fraction: 0.5,
            status: None,
        },
    )];
    let progress_clock = |server: &Server| -> i64 {
        server.with_sql(|db| {
            db.query_row("SELECT progress_rev FROM report_clock", [], |r| r.get(0))
                .unwrap()
        })
    };
    let moved = progress_clock(&server);
    assert_eq!(
        post_events(&client, &server.base, &two, progress)
            .await
            .status(),
        200
    );
    assert_eq!(clock(&server), before, "live progress moved the main clock");
    assert_eq!(progress_clock(&server), moved + 1);
    assert_eq!(
        server.ops.text("/api/v1/report").await,
        started,
        "a kept report was built again for progress"
    );
    assert_eq!(
        server.ops.text("/").await,
        page,
        "a kept dashboard page was built again for progress"
    );
    let lag = kiln_collector::api::report_cache::PROGRESS_LAG as u64;
    tokio::time::sleep(std::time::Duration::from_millis(lag)).await;
    let progressed = report_is_current(&server, "live progress").await;
    assert!(progressed.contains("\"fraction\":0.5"), "{progressed}");
    let without_progress = |report: &str| {
        let mut rows: Vec<serde_json::Value> = serde_json::from_str(report).unwrap();
        for row in &mut rows {
            row["progress"] = serde_json::Value::Null;
        }
        rows
    };
    assert_eq!(
        without_progress(&progressed),
        without_progress(&started),
        "more than the progress changed"
    );
    assert_ne!(progressed, started);
    let end: Vec<_> = end
        .into_iter()
        .map(|mut e| {
            e.seq += 1;
            e
        })
        .collect();
    post_events(&client, &server.base, &two, end).await;
    let failed = report_is_current(&server, "a run failed").await;
    assert_ne!(failed, started);

    // Waived, revoked, waived until a moment that comes while the report is kept.
    let waive = || {
        server
            .ops
            .post("/api/v1/waivers")
            .bearer_auth(&admin)
            .json(&serde_json::json!({"node": two.node_id, "code": "fan.speed", "reason": "spare"}))
            .send()
    };
    let waiver: kiln_protocol::api::Waiver = waive().await.unwrap().json().await.unwrap();
    let waived = report_is_current(&server, "waived").await;
    assert!(waived.contains("\"waiver\":{"), "{waived}");
    let r = server
        .ops
        .post(&format!("/api/v1/waivers/{}/revoke", waiver.id))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(report_is_current(&server, "revoked").await, failed);
    let waiver: kiln_protocol::api::Waiver = waive().await.unwrap().json().await.unwrap();
    let until = kiln_collector::store::now_ms() + 1_500;
    server.with_sql(|db| {
        db.execute(
            "UPDATE waivers SET expires_ms = ?2 WHERE id = ?1",
            [waiver.id, until],
        )
        .unwrap()
    });
    assert_eq!(
        report_is_current(&server, "waived until soon").await,
        waived
    );
    tokio::time::sleep(std::time::Duration::from_millis(
        (until - kiln_collector::store::now_ms()).max(0) as u64 + 100,
    ))
    .await;
    let before = clock(&server);
    assert_eq!(
        report_is_current(&server, "the waiver ran out").await,
        failed
    );
    assert_eq!(clock(&server), before, "only the time changed");

    // Labelled from an inventory file.
    import_nodes(
        &server,
        "mac,rack,slot,hostname\n52:54:00:00:00:01,R12,U07,node-7\n",
    )
    .await;
    let labelled = report_is_current(&server, "labelled").await;
    assert!(labelled.contains("\"rack\":\"R12\""), "{labelled}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_collector_heartbeats_into_the_database_and_lists_itself_for_readers_only() {
    let read = "r".repeat(40);
    let config = kiln_collector::config::Config {
        read_token: Some(read.clone()),
        ..kiln_collector::config::Config::default()
    };
    let server = Server::start("collectors", config).await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    // Without the read token: refused, nothing said.
    let r = server
        .ops
        .get(kiln_protocol::routes::COLLECTORS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let list = || async {
        let listed: Vec<kiln_protocol::api::CollectorState> = server
            .ops
            .get(kiln_protocol::routes::COLLECTORS)
            .bearer_auth(&read)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed
    };
    // The first heartbeat goes in at once; then every round.
    let started = std::time::Instant::now();
    let listed = loop {
        let listed = list().await;
        if !listed.is_empty() || started.elapsed() > std::time::Duration::from_secs(10) {
            break listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    let me = &listed[0];
    assert!(me.live, "{me:?}");
    assert!(me.id.ends_with(&format!(":{port}")), "{me:?}");
    assert_eq!(me.url, server.base);
    assert!(me.leases.is_empty(), "{me:?}");
    // The heartbeat moves on.
    let first = me.heartbeat_ms;
    tokio::time::sleep(kiln_collector::store::leases::ROUND * 2).await;
    let again = list().await;
    assert!(again[0].heartbeat_ms > first, "{again:?}");
}
