//! Reports and pages: what managers see, escaped, and the dashboard in headless Chromium.

use std::path::Path;
use std::process::Command;

use kiln_collector::config::Config;
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{EventBody, RegisterRequest};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn pages_and_reports_show_nodes_and_escape_what_nodes_send() {
    let server = Server::start("pages", Config::default()).await;
    let client = reqwest::Client::new();
    let req = RegisterRequest {
        identity: identity(3),
        hostname: Some("<script>alert(1)</script>".into()),
        suite_text: SUITE.into(),
    };
    let run = register_with(&client, &server.base, &req).await;
    let events = failed_run("exec.exit_code", "tool exited with 3");
    post_events(&client, &server.base, &run, events).await;
    let page = server.ops.text("/").await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;"),
        "hostname not escaped"
    );
    assert!(!page.contains("<script>alert(1)"));
    assert!(page.contains("tool: tool exited with 3"));
    let csv = server
        .ops
        .text("/api/v1/report?format=csv&verdict=fail")
        .await;
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.contains(",fail,tool: tool exited with 3"), "{csv}");
    let none = server
        .ops
        .text("/api/v1/report?format=csv&verdict=pass")
        .await;
    assert_eq!(none.lines().count(), 1);
    // A hostname that reads backwards or hides a character is refused; one that a
    // spreadsheet would compute after its leading space is defused in the CSV.
    for hostile in ["r12-u07\u{202E}70u", "r12\u{200B}u07", "a\u{2028}b"] {
        let req = RegisterRequest {
            identity: identity(4),
            hostname: Some(hostile.into()),
            suite_text: SUITE.into(),
        };
        let r = client
            .post(format!("{}/api/v1/register", server.base))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{hostile:?}");
        assert!(r.text().await.unwrap().contains("invisible character"));
    }
    let formula = RegisterRequest {
        identity: identity(5),
        hostname: Some(" =2+3".into()),
        suite_text: SUITE.into(),
    };
    register_with(&client, &server.base, &formula).await;
    let csv = server.ops.text("/api/v1/report?format=csv").await;
    assert!(csv.contains(",' =2+3,"), "{csv}");
    assert!(!csv.contains(", =2+3,"), "{csv}");
    let bad = server
        .ops
        .get("/api/v1/report?since=soon")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let (status, why) = server.ops_get("/api/v1/report?format=xml").await;
    assert_eq!(status, 400);
    assert!(
        why.contains("unknown variant `xml`, expected `json` or `csv`"),
        "{why}"
    );
    let junit = server
        .ops
        .text(&format!("/api/v1/runs/{}/junit.xml", run.run_id))
        .await;
    assert!(junit.contains("failures=\"1\""), "{junit}");
    // Provenance travels with the verdict: the suite's digest, the collector and the agent.
    for property in [
        "<property name=\"suite_sha256\" value=\"",
        &format!(
            "<property name=\"collector_version\" value=\"{}\"/>",
            env!("CARGO_PKG_VERSION")
        ),
        "<property name=\"agent_version\" value=\"test\"/>",
        "<property name=\"allow_destructive\" value=\"false\"/>",
    ] {
        assert!(junit.contains(property), "{property}: {junit}");
    }
    let run_page = server.ops.text(&format!("/runs/{}", run.run_id)).await;
    assert!(run_page.contains("tool exited with 3"));
    assert!(run_page.contains("<h2>Provenance</h2>"), "{run_page}");
    assert!(run_page.contains("the suite as run"), "{run_page}");
    let metrics = server.ops.text("/metrics").await;
    let line = |prefix: &str, needle: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {prefix}…{needle} in\n{metrics}"))
            .to_owned()
    };
    // The run failed: one run with that verdict, its events stored and acknowledged, the
    // agent's routes counted by their template, never by the client's path.
    assert!(
        line("kiln_runs{", "verdict=\"fail\"").ends_with(" 1"),
        "{metrics}"
    );
    assert!(!line("kiln_events_stored_total", "").ends_with(" 0"));
    assert!(!line("kiln_event_ack_duration_seconds_count", "").ends_with(" 0"));
    line(
        "kiln_http_requests_total{",
        "route=\"/api/v1/runs/{id}/events\",method=\"POST\",status=\"200\"",
    );
    assert!(
        !metrics.contains(&format!("/runs/{}/", run.run_id)),
        "{metrics}"
    );
    // Clean by Prometheus's own checker (exit 0, nothing printed).
    let mut check = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?} {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Prometheus asks for OpenMetrics and gets it.
    let open = server
        .ops
        .get("/metrics")
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        open.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(open.text().await.unwrap().ends_with("# EOF\n"));
}

/// Runs Debian's headless Chromium against `url`: the DOM after load, and a screenshot.
/// What Chromium is told to trust of the collector's self-signed certificate: the SHA-256
/// of its public key (SubjectPublicKeyInfo), in base64 — that key and no other.
fn spki_pin(data: &Path) -> String {
    use sha2::Digest;
    let key = std::fs::read_to_string(data.join("tls/key.pem")).unwrap();
    let spki =
        rcgen::PublicKeyData::subject_public_key_info(&rcgen::KeyPair::from_pem(&key).unwrap());
    let digest = sha2::Sha256::digest(spki);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in digest.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

/// Loads `path` from `server`'s management listener in headless Chromium, trusting that
/// collector's key alone: the DOM, and a screenshot.
fn chromium_page(server: &Server, path: &str, screenshot: &Path) -> String {
    chromium(
        &format!("{}{path}", server.ops.url),
        &spki_pin(&server.data),
        screenshot,
    )
}

fn chromium(url: &str, spki: &str, screenshot: &Path) -> String {
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
            .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
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
    let run = register_with(&client, &server.base, &req).await;
    let mut events = full_run();
    events[4] = ev(
        5,
        EventBody::RunFinished {
            verdict: Verdict::Fail,
        },
    );
    post_events(&client, &server.base, &run, events).await;
    let shot = server.data.join("dashboard.png");
    let dom = tokio::task::block_in_place(|| chromium_page(&server, "/", &shot));
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

#[tokio::test(flavor = "multi_thread")]
async fn pages_take_the_read_token_from_a_login_cookie_and_short_tokens_are_refused() {
    let read = "r".repeat(40);
    let config = Config {
        read_token: Some(read.clone()),
        ..Config::default()
    };
    let server = Server::start("read-token", config).await;
    let get = |path: String, cookie: Option<String>| {
        let mut r = server.ops.get(&path);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };
    assert_eq!(get("/".into(), None).await.unwrap().status(), 401);
    assert_eq!(get("/?token=".into(), None).await.unwrap().status(), 401);
    assert_eq!(
        get("/login?token=wrong".into(), None)
            .await
            .unwrap()
            .status(),
        403
    );
    let login = get(format!("/login?token={read}"), None).await.unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Secure;"),
        "{cookie}"
    );
    // The cookie holds a session id, never the token; it expires.
    assert!(
        !cookie.contains(&read) && cookie.contains("Max-Age=43200"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    assert!(pair.starts_with("kiln_session="), "{pair}");
    assert_eq!(
        get("/".into(), Some(pair.clone())).await.unwrap().status(),
        200
    );
    // A forged id opens nothing; `/logout` ends the session and clears the cookie.
    let forged = format!("kiln_session={}", "0".repeat(64));
    assert_eq!(get("/".into(), Some(forged)).await.unwrap().status(), 401);
    let out = get("/logout".into(), Some(pair.clone())).await.unwrap();
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(get("/".into(), Some(pair)).await.unwrap().status(), 401);
    // The scheme is case-insensitive.
    let r = server
        .ops
        .get("/api/v1/report")
        .header("authorization", format!("bearer {read}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A configured token shorter than 32 characters is refused at start, with the remedy.
    let short = Config {
        admin_token: Some("change-me".into()),
        ..Config::default()
    };
    let err = kiln_collector::server::Collector::open(short, &scratch("short-admin"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("at least 32") && err.contains("openssl rand -hex 32"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_pages_through_many_nodes() {
    let server = Server::start("dashboard-pages", Config::default()).await;
    let mut csv = String::from("mac,rack,slot,hostname\n");
    for i in 0..450u32 {
        csv.push_str(&format!(
            "52:54:00:aa:{:02x}:{:02x},R1,U{i:03},host-{i:03}\n",
            i >> 8,
            i & 255
        ));
    }
    import_nodes(&server, &csv).await;
    let page = |n: u32| {
        let ops = server.ops.clone();
        async move { ops.text(&format!("/?page={n}")).await }
    };
    let first = page(1).await;
    assert_eq!(first.matches("<tr data-node=").count(), 200);
    assert!(
        first.contains("<b>450</b>nodes"),
        "the counts cover every node"
    );
    assert!(first.contains("Nodes 1–200") && first.contains("?page=2"));
    assert!(!first.contains("previous"));
    let last = page(3).await;
    assert_eq!(last.matches("<tr data-node=").count(), 50);
    assert!(last.contains("Nodes 401–450") && last.contains("?page=2"));
    assert!(!last.contains("next →"));
    assert!(last.contains("host-449") && !last.contains("host-000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_page_lists_every_dimm_slot_and_every_source_the_node_lacked() {
    use kiln_protocol::wire::{Dimm, Inventory, MemoryInfo, SystemInfo};
    let server = Server::start("inventory-page", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 4, SUITE).await;
    let inventory = Inventory {
        system: SystemInfo {
            board_serial: Some("BB-0001".into()),
            chassis_asset_tag: Some("ASSET-CH".into()),
            ..Default::default()
        },
        memory: MemoryInfo {
            total_bytes: 32 << 30,
            dimms: Some(vec![
                Dimm {
                    locator: "DIMM_A1".into(),
                    bank: Some("P0_Node0_Channel0".into()),
                    size_bytes: Some(32 << 30),
                    part: Some("M393A4K40DB3-CWE".into()),
                    ..Default::default()
                },
                Dimm {
                    locator: "DIMM_B2".into(),
                    ..Default::default()
                },
            ]),
        },
        pcie: vec![kiln_protocol::wire::PcieLink {
            address: "0000:5e:00.0".into(),
            class: "0200".into(),
            driver: Some("mlx5_core".into()),
            current_width: Some(8),
            max_width: Some(16),
            current_speed_gts: Some(8.0),
            max_speed_gts: Some(16.0),
            ..Default::default()
        }],
        absent: vec!["SMART on /dev/sda: <no SG_IO>".into()],
        ..Default::default()
    };
    let r = client
        .put(format!(
            "{}/api/v1/runs/{}/inventory",
            server.base, run.run_id
        ))
        .bearer_auth(&run.token)
        .json(&inventory)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let page = server.ops.text(&format!("/runs/{}", run.run_id)).await;
    for want in [
        "serial BB-0001",
        "asset ASSET-CH",
        "DIMM_A1 (P0_Node0_Channel0): 32.0 GiB",
        "M393A4K40DB3-CWE",
        "DIMM_B2: empty",
        "Not offered by this node",
        "0000:5e:00.0 class 0200 mlx5_core: x8 of x16, 8.0 of 16.0 GT/s",
        "narrow",
        // Node-supplied text stays text.
        "SMART on &#x2f;dev&#x2f;sda: &lt;no SG_IO&gt;",
    ] {
        assert!(
            page.contains(want),
            "{want:?} missing from the run page:\n{page}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_page_draws_its_racks_with_each_node_where_it_sits() {
    let server = Server::start("batch-page", Config::default()).await;
    let client = reqwest::Client::new();
    let admin = server.admin_token();
    // Labelled nodes in two racks of one batch: one fails, one passes, one never ran.
    let csv = "mac,rack,slot,hostname,batch\n52:54:00:00:00:01,R12,U07,r12-u07,PO-1187\n52:54:00:00:00:02,R12,U08,r12-u08,PO-1187\n52:54:00:00:00:03,R13,U01,r13-u01,PO-1187\n";
    import_nodes(&server, csv).await;
    for (n, verdict) in [(1u8, Verdict::Fail), (2, Verdict::Pass)] {
        let req = RegisterRequest {
            identity: identity(n),
            hostname: None,
            suite_text: SUITE.into(),
        };
        let run = register_admin(&server.ops, &req, &admin).await;
        let mut events = full_run();
        if let EventBody::StepFinished { report } = &mut events[3].body {
            report.metrics.push(kiln_protocol::wire::Metric {
                name: "write_mbps".into(),
                value: 900.0 + f64::from(n) * 100.0,
                unit: "MB/s".into(),
            });
        }
        events[4] = ev(5, EventBody::RunFinished { verdict });
        post_events(&client, &server.base, &run, events).await;
    }
    let shot = server.data.join("batch.png");
    let dom = tokio::task::block_in_place(|| chromium_page(&server, "/batches/PO-1187", &shot));
    // Two racks drawn; each node a linked box colored by its state.
    assert_eq!(dom.matches("<svg class=\"rack\"").count(), 2, "{dom}");
    // Node 2's run passed every step as an ad-hoc run: no console vouches for it.
    for (node, state) in [(1, "fail"), (2, "unattested"), (3, "none")] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\" data-state=\"{state}\"")),
            "node {node} {state}: {dom}"
        );
    }
    assert!(dom.contains("r12-u07"), "{dom}");
    // The batch's throughput drawn as a histogram (two runs, 1.00 to 1.10 GB/s).
    assert!(
        dom.contains("<svg class=\"histogram\" data-metric=\"tool.write_mbps\""),
        "{dom}"
    );
    assert!(
        dom.contains("1.00 GB/s") && dom.contains("1.10 GB/s"),
        "{dom}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    // The dashboard links the batch; an unknown batch is a 404.
    let page = server.ops.text("/").await;
    assert!(page.contains("href=\"/batches/PO-1187\""), "{page}");
    let missing = server.ops.get("/batches/PO-0").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // Kept for a look: target/test-scratch/batch-page-*/batch.png
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_page_draws_each_bmc_sensor_over_the_run_escaped() {
    use kiln_protocol::sensors::{SensorClass, SensorReading};
    let server = Server::start("sensors-page", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 9, SUITE).await;
    let sweep = |value: f64| EventBody::Sensors {
        step: Some(0),
        readings: vec![SensorReading {
            name: "<b>FAN1</b>".into(),
            class: SensorClass::Fan,
            value,
            low: Some(1000.0),
            high: None,
        }],
    };
    let mut events = full_run();
    events.insert(2, ev(0, sweep(4800.0)));
    events.insert(3, ev(0, sweep(0.0)));
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = i as u64 + 1;
        e.at_ms = 1000 * i as u64;
    }
    let r = post_events(&client, &server.base, &run, events).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let page = server.ops.text(&format!("/runs/{}", run.run_id)).await;
    assert!(page.contains("<h2>BMC sensors</h2>"), "{page}");
    assert!(
        page.contains(r#"<svg class="sensor" data-sensor="&lt;b&gt;FAN1&lt;&#x2f;b&gt;""#)
            && !page.contains("<b>FAN1</b>"),
        "the sensor's name is escaped: {page}"
    );
    assert!(
        page.contains("0 to 4800 RPM; critical below 1000 RPM"),
        "{page}"
    );
    // The agent passed the step its fan stopped in: the collector, from what it stored, does not.
    let detail = server.ops.run(run.run_id).await;
    assert_eq!(detail["verdict"], "error", "{detail}");
    assert!(
        detail.to_string().contains(
            "step 'tool' reported pass, but a BMC reading stored during it says: BMC sensor <b>FAN1</b>: 0 RPM, at or below its lower critical threshold 1000 RPM"
        ),
        "{detail}"
    );
    // A sensor reading no number could be is refused with the batch, nothing stored.
    let run = register(&client, &server.base, 10, SUITE).await;
    let bad = EventBody::Sensors {
        step: None,
        readings: vec![SensorReading {
            name: "FAN1".into(),
            class: SensorClass::Fan,
            value: 1e300,
            low: None,
            high: None,
        }],
    };
    let r = post_events(&client, &server.base, &run, vec![ev(1, bad)]).await;
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("not a number a sensor gives")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_page_lists_each_power_cycle_with_its_boot_escaped() {
    let server = Server::start("cycles-page", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 9, SUITE).await;
    // What the cycles stage stores; a boot id is the node's word, so it is escaped.
    let cycles = format!(
        "INSERT INTO power_cycles (run_id, cycle, count, kind, state, powered_ms, served_ms, reported_ms, attested_ms, boot_id)
           VALUES ({0}, 1, 2, 'cold', 'reported', 1000, 9500, 19000, 18000, 'c9eb8bb8-122f'),
                  ({0}, 2, 2, 'cold', 'booting', 30000, 38000, NULL, NULL, '<script>x</script>');",
        run.run_id
    );
    server.with_sql(|db| db.execute_batch(&cycles).unwrap());
    let page = server.ops.text(&format!("/runs/{}", run.run_id)).await;
    assert!(page.contains("<h2>Power cycles</h2>"), "{page}");
    assert!(
        page.contains("<td>1</td><td>cold</td><td>reported</td><td><code>c9eb8bb8-122f</code></td><td>8.5 s</td><td>9.5 s</td><td>attested</td>"),
        "{page}"
    );
    assert!(
        page.contains("<td>2</td><td>cold</td><td>booting</td>")
            && !page.contains("<script>x</script>"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_names_the_collector_reading_each_console_escaped() {
    let server = Server::start("console-readers", Config::default()).await;
    let client = reqwest::Client::new();
    let one = register(&client, &server.base, 1, SUITE).await;
    let two = register(&client, &server.base, 2, SUITE).await;
    let now = kiln_collector::store::now_ms();
    // Node 1's console is read under a live lease by a collector whose id is hostile; node 2's
    // lease ran out (its reader died), so nobody reads it now.
    let leases = format!(
        "INSERT INTO leases (resource, owner, epoch, acquired_ms, expires_ms) VALUES
           ('console:{}', '<b>east</b>:8080', 1, {now}, {}),
           ('console:{}', 'west:8080', 1, 0, 1);",
        one.node_id,
        now + 60_000,
        two.node_id
    );
    server.with_sql(|db| db.execute_batch(&leases).unwrap());
    let page = server.ops.text("/").await;
    assert!(
        page.contains(
            "<th title=\"the collector that reads the node's serial console now\">Console</th>"
        ),
        "{page}"
    );
    assert!(
        page.contains("<code>&lt;b&gt;east&lt;&#x2f;b&gt;:8080</code>")
            || page.contains("<code>&lt;b&gt;east&lt;/b&gt;:8080</code>"),
        "{page}"
    );
    assert!(
        !page.contains("<b>east</b>") && !page.contains("west:8080"),
        "{page}"
    );
}
