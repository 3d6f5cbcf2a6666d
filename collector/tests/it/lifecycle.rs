//! The run lifecycle as a careful and as a hostile client sees it: every probe that once
//! turned a failed or unfinished run green, turned into the answer it must get now.

use std::time::Duration;

use kiln_collector::config::Config;
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{
    EventBody, Inventory, NodeIdentity, Outcome, RegisterRequest, RegisterResponse, StepReport,
};
use serde_json::Value;

use crate::common::*;

fn step(outcome: Outcome) -> EventBody {
    EventBody::StepFinished {
        report: StepReport {
            step: 0,
            name: "tool".into(),
            kind: "exec".into(),
            outcome,
            metrics: vec![],
            duration_ms: 1,
            attempts: vec![],
        },
    }
}

fn started() -> EventBody {
    EventBody::RunStarted {
        suite: "t".into(),
        steps: 1,
        agent: "test".into(),
    }
}

fn finished(verdict: Verdict) -> EventBody {
    EventBody::RunFinished { verdict }
}

/// Registers node-7's run: the operator's (known node) or, without the admin token, an
/// agent's own on the boot network (ad hoc).
async fn register_as(server: &Server, identity: NodeIdentity, admin: bool) -> RegisterResponse {
    let req = RegisterRequest {
        identity,
        hostname: Some("node-7".into()),
        suite_text: SUITE.into(),
    };
    if admin {
        register_admin(&server.ops, &req, &server.admin_token()).await
    } else {
        register_with(&reqwest::Client::new(), &server.base, &req).await
    }
}

async fn report(server: &Server, query: &str) -> Vec<Value> {
    serde_json::from_str(&server.ops.text(&format!("/api/v1/report?{query}")).await).unwrap()
}

/// The raw JSON of a run, to compare byte for byte.
async fn run_text(server: &Server, run_id: i64) -> String {
    server.ops.text(&format!("/api/v1/runs/{run_id}")).await
}

fn node7() -> NodeIdentity {
    NodeIdentity {
        macs: vec!["52:54:00:00:00:07".into()],
        uuid: None,
        serial: Some("SN7".into()),
    }
}

/// node-7 (rack R12) fails with a DIMM fault.
async fn failed_node7(client: &reqwest::Client, server: &Server) -> RegisterResponse {
    import_nodes(
        server,
        "mac,rack,slot,hostname\n52:54:00:00:00:07,R12,U07,node-7\n",
    )
    .await;
    let run = register_as(server, node7(), true).await;
    let fault = kiln_protocol::wire::Fault::new("memory.mismatch", "DIMM B2 bit flip");
    let events = vec![
        ev(1, started()),
        ev(
            2,
            step(Outcome::Fail {
                faults: vec![fault],
            }),
        ),
        ev(3, finished(Verdict::Fail)),
    ];
    assert_eq!(
        post_events(client, &server.base, &run, events)
            .await
            .status(),
        200
    );
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_pass_from_an_unauthenticated_registration_never_touches_the_failed_node() {
    let server = Server::start("forged-pass", Config::default()).await;
    let client = reqwest::Client::new();
    let failed = failed_node7(&client, &server).await;
    // No token: the same MAC and serial, a run that "passes".
    let forged = register_as(&server, node7(), false).await;
    assert_ne!(forged.node_id, failed.node_id);
    let events = vec![
        ev(1, started()),
        ev(2, step(Outcome::Pass)),
        ev(3, finished(Verdict::Pass)),
    ];
    post_events(&client, &server.base, &forged, events).await;

    let rows = report(&server, "rack=R12").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["node_id"], failed.node_id);
    assert_eq!(rows[0]["verdict"], "fail");
    assert_eq!(rows[0]["hostname"], "node-7");
    assert!(rows[0]["faults"].to_string().contains("DIMM B2 bit flip"));
    // The forged run sits on a node of its own, marked ad hoc, owning no MAC.
    let all = report(&server, "").await;
    let ad_hoc: Vec<&Value> = all.iter().filter(|r| r["ad_hoc"] == true).collect();
    assert_eq!(ad_hoc.len(), 1);
    assert_eq!(ad_hoc[0]["node_id"], forged.node_id);
    // Each row has its own run's faults, none of another's.
    assert_eq!(
        ad_hoc[0]["faults"],
        serde_json::json!([
            "unattested: no console capture is configured for this node, so no console vouches that it ran these steps"
        ])
    );
    assert_eq!(ad_hoc[0]["verdict"], "unattested");
    assert!(ad_hoc[0]["rack"].is_null());
    // With the admin token, the lookup rule finds the known node again.
    let admin = register_as(&server, node7(), true).await;
    assert_eq!(admin.node_id, failed.node_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_without_its_step_results_is_never_a_pass() {
    let server = Server::start("zero-steps", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 1, SUITE).await;
    let events = vec![ev(1, started()), ev(2, finished(Verdict::Pass))];
    post_events(&client, &server.base, &run, events).await;
    let detail = server.ops.run(run.run_id).await;
    assert_eq!(detail["verdict"], "incomplete", "{detail}");
    assert_eq!(detail["agent_verdict"], "pass");
    assert_eq!(
        detail["faults"][0],
        "agent reported pass, the collector computed incomplete; step 'tool' has no result"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_run_refuses_its_old_token_and_changes_nothing() {
    let server = Server::start("closed-run", Config::default()).await;
    let client = reqwest::Client::new();
    let run = failed_node7(&client, &server).await;
    let before = run_text(&server, run.run_id).await;
    assert!(before.contains("\"verdict\":\"fail\""), "{before}");

    let rewrite = vec![ev(4, step(Outcome::Pass)), ev(5, finished(Verdict::Pass))];
    let r = post_events(&client, &server.base, &run, rewrite).await;
    assert_eq!(r.status(), 409);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("is finished (verdict fail); it accepts nothing more")
    );
    let r = client
        .put(format!(
            "{}/api/v1/runs/{}/inventory",
            server.base, run.run_id
        ))
        .bearer_auth(&run.token)
        .json(&Inventory::default())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = client
        .get(format!("{}/api/v1/runs/{}/plan", server.base, run.run_id))
        .bearer_auth(&run.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(run_text(&server, run.run_id).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verdict_waits_for_a_missing_step_result_that_arrives_late() {
    let server = Server::start("out-of-order", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 1, SUITE).await;
    // run_finished (seq 3) arrives in a batch before the one with the step result (seq 2).
    post_events(&client, &server.base, &run, vec![ev(1, started())]).await;
    let r = post_events(
        &client,
        &server.base,
        &run,
        vec![ev(3, finished(Verdict::Pass))],
    )
    .await;
    let ack: Value = r.json().await.unwrap();
    assert_eq!(ack["acked"], 1);
    let detail = server.ops.run(run.run_id).await;
    assert!(detail["verdict"].is_null(), "{detail}");
    assert_eq!(detail["stage"], "linux");
    // The gap is filled: now, and only now, the verdict.
    let r = post_events(
        &client,
        &server.base,
        &run,
        vec![ev(2, step(Outcome::Pass))],
    )
    .await;
    let ack: Value = r.json().await.unwrap();
    assert_eq!(ack["acked"], 3);
    let detail = server.ops.run(run.run_id).await;
    assert_eq!(detail["verdict"], "unattested", "{detail}");
    assert_eq!(
        detail["faults"],
        serde_json::json!([
            "unattested: no console capture is configured for this node, so no console vouches that it ran these steps"
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disagreement_with_the_agent_shows_in_report_page_and_junit() {
    let server = Server::start("disagreement", Config::default()).await;
    let client = reqwest::Client::new();
    let run = register(&client, &server.base, 1, SUITE).await;
    post_events(
        &client,
        &server.base,
        &run,
        vec![ev(1, started()), ev(2, finished(Verdict::Pass))],
    )
    .await;
    let want = "agent reported pass, the collector computed incomplete";
    let rows = report(&server, "").await;
    assert!(rows[0]["faults"][0].as_str().unwrap().starts_with(want));
    let csv = server.ops.text("/api/v1/report?format=csv").await;
    assert!(csv.contains(want), "{csv}");
    let page = server.ops.text(&format!("/runs/{}", run.run_id)).await;
    assert!(page.contains(want), "{page}");
    let junit = server
        .ops
        .text(&format!("/api/v1/runs/{}/junit.xml", run.run_id))
        .await;
    assert!(
        junit.contains("<property name=\"verdict\" value=\"incomplete\"/>"),
        "{junit}"
    );
    assert!(
        junit.contains(&format!("type=\"collector.finding\" message=\"{want}")),
        "{junit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_never_moves_a_mac_or_renames_a_known_node_without_the_admin_token() {
    let server = Server::start("no-takeover", Config::default()).await;
    let client = reqwest::Client::new();
    let known = register_as(&server, node7(), true).await;
    let mut other = node7();
    other.serial = Some("SN-other".into());
    let forged = register_as(&server, other, false).await;
    assert_ne!(forged.node_id, known.node_id);
    let rows = report(&server, "").await;
    let known_row = rows.iter().find(|r| r["node_id"] == known.node_id).unwrap();
    assert_eq!(known_row["macs"], "52:54:00:00:00:07");
    assert_eq!(known_row["serial"], "SN7");
    assert_eq!(known_row["ad_hoc"], false);
    // A wrong token is refused rather than treated as none.
    let r = client
        .post(format!("{}/api/v1/register", server.base))
        .bearer_auth("not-the-admin-token")
        .json(&RegisterRequest {
            identity: node7(),
            hostname: None,
            suite_text: SUITE.into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// A console that accepts connections and keeps count of how many are open at once.
struct Console {
    addr: String,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Console {
    async fn start() -> Console {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (o, m) = (open.clone(), most.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    // memtest86+ says nothing yet; hold until the capture hangs up.
                    let mut buf = [0u8; 64];
                    while tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
                        .await
                        .is_ok_and(|n| n > 0)
                    {}
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Console { addr, open, most }
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn wait_open(&self, want: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.open() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{} console connection(s) open, expected {want}",
                self.open()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_captures_never_run_for_one_node() {
    let console = Console::start().await;
    let access: Vec<kiln_collector::config::NodeAccess> = serde_yaml::from_str(&format!(
        "- mac: \"52:54:00:00:00:01\"\n  console: {{tcp: \"{}\"}}\n",
        console.addr
    ))
    .unwrap();
    let config = Config {
        default_suite: "with-memtest".into(),
        nodes: access,
        ..Config::default()
    };
    let server = Server::start("one-capture", config).await;
    std::fs::write(
        server.data.join("suites/with-memtest.yaml"),
        "suite: m\ndescription: d\nmemtest: {passes: 1}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n",
    )
    .unwrap();
    let base = server.base.clone();
    let ipxe = || {
        let base = base.clone();
        async move {
            get_text(
                &reqwest::Client::new(),
                &format!("{base}/ipxe?mac=52-54-00-00-00-01"),
            )
            .await
        }
    };
    assert!(ipxe().await.contains("memtest86+"));
    console.wait_open(1).await;
    // The node reboots in the middle of memtest86+: run 1 fails and its capture hangs up.
    assert!(ipxe().await.contains("verification fail"));
    console.wait_open(0).await;
    // The operator re-arms it; run 2's memtest gets the only capture.
    let r = server
        .ops
        .post("/api/v1/nodes/mode")
        .bearer_auth(server.admin_token())
        .json(&serde_json::json!({ "select": { "node": 1 }, "mode": "verify" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(ipxe().await.contains("run 2: memtest86+"));
    console.wait_open(1).await;
    // An operator's re-arm in the middle of run 2 ends its capture too.
    let r = server
        .ops
        .post("/api/v1/nodes/mode")
        .bearer_auth(server.admin_token())
        .json(&serde_json::json!({ "select": { "node": 1 }, "mode": "hold" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    console.wait_open(0).await;
    assert_eq!(console.most.load(std::sync::atomic::Ordering::SeqCst), 1);
    let run2 = server.ops.run(2).await;
    assert_eq!(run2["verdict"], "incomplete", "{run2}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bootstrap_token_used_twice_fails_the_run_as_a_security_event() {
    let config = Config {
        default_suite: "plain".into(),
        ..Config::default()
    };
    let server = Server::start("bootstrap-twice", config).await;
    std::fs::write(server.data.join("suites/plain.yaml"), SUITE).unwrap();
    let client = reqwest::Client::new();
    let script = get_text(
        &client,
        &format!("{}/ipxe?mac=52-54-00-00-00-01", server.base),
    )
    .await;
    let bootstrap = script.split("kiln.token=").nth(1).unwrap()[..64].to_owned();
    let exchange = || {
        client
            .post(format!("{}/api/v1/runs/1/session", server.base))
            .bearer_auth(&bootstrap)
            .send()
    };
    // Without any token: 401, and nothing is used up.
    let r = client
        .post(format!("{}/api/v1/runs/1/session", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("bootstrap token"));
    let first = exchange().await.unwrap();
    assert_eq!(first.status(), 201);
    let session: kiln_protocol::wire::SessionResponse = first.json().await.unwrap();
    // A child process that read /proc/cmdline tries the same token.
    let second = exchange().await.unwrap();
    assert_eq!(second.status(), 409);
    assert!(
        second
            .text()
            .await
            .unwrap()
            .contains("bootstrap token was already exchanged")
    );
    let detail = server.ops.run(1).await;
    assert_eq!(detail["verdict"], "fail", "{detail}");
    assert!(
        detail["faults"]
            .to_string()
            .contains("security: the bootstrap token was used twice"),
        "{detail}"
    );
    // The agent's own session is closed with the run.
    let r = client
        .get(format!("{}/api/v1/runs/1/plan", server.base))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn destroying_disks_on_network_boot_needs_the_operators_consent_which_is_recorded() {
    let config = Config {
        default_suite: "wipe".into(),
        ..Config::default()
    };
    let server = Server::start("consent", config).await;
    std::fs::write(
        server.data.join("suites/wipe.yaml"),
        "suite: wipe\ndescription: d\nsteps:\n  - name: wipe\n    disk:\n      target: {path: /dev/vdb}\n      destructive: true\n      size: 1MiB\n",
    )
    .unwrap();
    let client = reqwest::Client::new();
    let admin = server.admin_token();
    // Boots the node, exchanges its bootstrap token, returns the plan's consent flag.
    let boot_plan = || async {
        let script = get_text(
            &client,
            &format!("{}/ipxe?mac=52-54-00-00-00-0a", server.base),
        )
        .await;
        let run: i64 = script
            .split("kiln.run=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let bootstrap = script.split("kiln.token=").nth(1).unwrap()[..64].to_owned();
        let session: kiln_protocol::wire::SessionResponse = client
            .post(format!("{}/api/v1/runs/{run}/session", server.base))
            .bearer_auth(&bootstrap)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let plan: kiln_protocol::wire::RunPlan = client
            .get(format!("{}/api/v1/runs/{run}/plan", server.base))
            .bearer_auth(&session.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        plan.allow_destructive
    };
    let set = |body: Value| {
        let ops = server.ops.clone();
        let admin = admin.clone();
        async move {
            let r = ops
                .post("/api/v1/nodes/destructive")
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    let rearm = || async {
        let r = server
            .ops
            .post("/api/v1/nodes/mode")
            .bearer_auth(&admin)
            .json(&serde_json::json!({ "select": { "node": 1 }, "mode": "verify" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    // An unknown machine PXE-boots: the suite says destructive, the operator has not.
    assert!(!boot_plan().await);
    set(serde_json::json!({ "select": { "node": 1 }, "allow": true })).await;
    rearm().await;
    assert!(boot_plan().await);
    set(serde_json::json!({ "select": { "node": 1 }, "allow": false })).await;
    rearm().await;
    assert!(!boot_plan().await);
    // Without the admin token nobody consents.
    let r = server
        .ops
        .post("/api/v1/nodes/destructive")
        .json(&serde_json::json!({ "select": { "node": 1 }, "allow": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // `all: false` names no node: refused with the reason.
    let r = server
        .ops
        .post("/api/v1/nodes/destructive")
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "select": { "all": false }, "allow": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("selects no node"));
    // The node's page shows both changes, with who made them.
    let page = server.ops.text("/nodes/1").await;
    assert!(page.contains("destructive disk steps allowed"), "{page}");
    assert!(page.contains("destructive disk steps revoked"));
    assert!(page.contains("admin token "));
}
