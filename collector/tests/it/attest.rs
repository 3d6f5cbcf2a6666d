//! Attested runs: a token taken off the boot network never makes a node pass. Each test plays
//! the node (its console through a console server, its agent through the API) and, where it
//! says so, an attacker on the boot network at another address.

use kiln_collector::config::Config;
use kiln_protocol::wire::{EventBody, StepReport};
use serde_json::Value;

use crate::common::*;

const MAC: &str = "52:54:00:00:00:01";
const MAC_IPXE: &str = "52-54-00-00-00-01";
/// One 60-second step, as the operator armed it.
const SOAK: &str =
    "suite: soak\ndescription: d\nsteps:\n  - name: soak\n    watch: {duration: 60s}\n";

async fn collector(name: &str, console: &ConsoleServer, suite: &str) -> Server {
    let config = Config {
        default_suite: "armed".into(),
        nodes: consoles(&[(MAC, console)]),
        ..Config::default()
    };
    let server = Server::start(name, config).await;
    std::fs::write(server.data.join("suites/armed.yaml"), suite).unwrap();
    server
}

/// A passing run of the 60-second `SOAK` suite, as a forger would post it.
fn soak_passed() -> Vec<kiln_protocol::wire::Event> {
    let mut events = full_run();
    for event in &mut events {
        match &mut event.body {
            EventBody::StepStarted { name, kind, .. } => {
                *name = "soak".into();
                *kind = "watch".into();
            }
            EventBody::StepFinished { report } => {
                *report = StepReport {
                    name: "soak".into(),
                    kind: "watch".into(),
                    duration_ms: 60_000,
                    ..report.clone()
                };
            }
            _ => {}
        }
    }
    events
}

fn faults(run: &Value) -> String {
    run["faults"].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_taken_off_the_boot_network_never_makes_the_node_pass() {
    let console = ConsoleServer::start().await;
    let server = collector("attest-forged", &console, SOAK).await;
    let base = server.base.clone();
    // The attacker asks first with the MAC printed on the chassis, opens the session, reads
    // the plan and posts a passing run a moment later.
    let attacker = client_from("127.0.0.2");
    let booted = boot_linux(&attacker, &base, MAC_IPXE).await;
    let (session, _line) = open_session(&attacker, &base, &booted).await;
    let plan = attacker
        .get(format!("{base}/api/v1/runs/{}/plan", booted.run_id))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap();
    assert_eq!(plan.status(), 200);
    let r = post_events(&attacker, &base, &session, soak_passed()).await;
    assert_eq!(r.status(), 200);
    // No pass: the node's console never showed the run's attestation, so the run waits for it.
    let run = server.ops.run(booted.run_id).await;
    assert!(run["verdict"].is_null(), "{run}");
    // The real node boots and asks for its script: the second request fails the run, and
    // its answer says so.
    let node = reqwest::Client::new();
    let script = get_text(&node, &format!("{base}/ipxe?mac={MAC_IPXE}")).await;
    assert!(script.contains("verification fail"), "{script}");
    assert!(script.contains("security"), "{script}");
    let run = server.ops.run(booted.run_id).await;
    assert_eq!(run["verdict"], "fail", "{run}");
    let why = faults(&run);
    assert!(
        why.contains("security: the linux stage was asked for a second time")
            && why.contains("handed out to 127.0.0.2, asked again from 127.0.0.1"),
        "{why}"
    );
    // Nothing the attacker can post changes it now.
    let r = post_events(&attacker, &base, &session, soak_passed()).await;
    assert_eq!(r.status(), 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_faster_than_the_work_is_implausible_even_when_attested() {
    let console = ConsoleServer::start().await;
    let server = collector("attest-clock", &console, SOAK).await;
    let client = reqwest::Client::new();
    let run = attested_run(
        &client,
        &server.base,
        &server.ops,
        MAC_IPXE,
        &console,
        soak_passed(),
    )
    .await;
    assert_eq!(run["verdict"], "error", "{run}");
    assert!(
        faults(&run).contains(
            "implausible: step 'soak' (with the steps before it) needs at least 60 s but was reported after"
        ),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_attested_on_its_own_console_passes_whichever_comes_first() {
    let console = ConsoleServer::start().await;
    let server = collector("attest-honest", &console, SUITE).await;
    let client = reqwest::Client::new();
    let run = attested_run(
        &client,
        &server.base,
        &server.ops,
        MAC_IPXE,
        &console,
        full_run(),
    )
    .await;
    assert_eq!(run["verdict"], "pass", "{run}");
    assert_eq!(run["faults"], serde_json::json!([]), "{run}");

    // Again, the final event before the console's line: the verdict waits for the line.
    let admin = server.admin_token();
    let rearm = server
        .ops
        .post("/api/v1/nodes/mode")
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "select": { "node": 1 }, "mode": "verify" }))
        .send()
        .await
        .unwrap();
    assert_eq!(rearm.status(), 200);
    let booted = boot_linux(&client, &server.base, MAC_IPXE).await;
    let (session, line) = open_session(&client, &server.base, &booted).await;
    tokio::time::sleep(kiln_protocol::attest::LEAST_BOOT).await;
    let r = post_events(&client, &server.base, &session, full_run()).await;
    assert_eq!(r.status(), 200);
    let open = server.ops.run(booted.run_id).await;
    assert!(open["verdict"].is_null(), "{open}");
    console.show(&format!("{line}\n")).await;
    let run = wait_verdict(&server.ops, booted.run_id).await;
    assert_eq!(run["verdict"], "pass", "{run}");
}

/// Two nodes, each with its console read, both booted into their Linux stage with their
/// sessions open.
struct TwoNodes {
    one: ConsoleServer,
    two: ConsoleServer,
    server: Server,
    first: Booted,
    second: Booted,
    /// The first node's attestation line.
    line: String,
}

impl TwoNodes {
    async fn boot(name: &str) -> TwoNodes {
        let (one, two) = (ConsoleServer::start().await, ConsoleServer::start().await);
        let config = Config {
            default_suite: "armed".into(),
            nodes: consoles(&[(MAC, &one), ("52:54:00:00:00:02", &two)]),
            ..Config::default()
        };
        let server = Server::start(name, config).await;
        std::fs::write(server.data.join("suites/armed.yaml"), SUITE).unwrap();
        let client = reqwest::Client::new();
        let first = boot_linux(&client, &server.base, MAC_IPXE).await;
        let (_, line) = open_session(&client, &server.base, &first).await;
        let second = boot_linux(&client, &server.base, "52-54-00-00-00-02").await;
        let _ = open_session(&client, &server.base, &second).await;
        TwoNodes {
            one,
            two,
            server,
            first,
            second,
            line,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_line_with_another_proof_fails_the_run_and_a_damaged_one_is_noise() {
    let two_nodes = TwoNodes::boot("attest-wrong").await;
    let (one, two, server) = (&two_nodes.one, &two_nodes.two, &two_nodes.server);
    let (first, second) = (&two_nodes.first, &two_nodes.second);
    // A line for run 1 with another proof on node 1's console.
    let forged = kiln_protocol::attest::line("not the key", first.run_id, first.node_id);
    one.show(&format!("{forged}\n")).await;
    let run = wait_verdict(&server.ops, first.run_id).await;
    assert_eq!(run["verdict"], "fail", "{run}");
    assert!(
        faults(&run).contains("security: node 1's console showed an attestation line for this run that its session did not issue"),
        "{run}"
    );
    // Damaged lines are serial noise, not claims: nothing changes.
    two.show("kiln-attest run=2 node=2 proof=zz\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let other = server.ops.run(second.run_id).await;
    assert!(other["verdict"].is_null(), "{other}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_line_on_another_nodes_console_fails_the_run_it_names() {
    let two_nodes = TwoNodes::boot("attest-elsewhere").await;
    let (two, server) = (&two_nodes.two, &two_nodes.server);
    let (first, second, line) = (&two_nodes.first, &two_nodes.second, &two_nodes.line);
    two.show(&format!("[   3.2] {line}\r\n")).await;
    let run = wait_verdict(&server.ops, first.run_id).await;
    assert_eq!(run["verdict"], "fail", "{run}");
    assert!(
        faults(&run).contains(&format!(
            "security: this run's attestation showed on the console of node 2 (run {}), not on node 1's own",
            second.run_id
        )),
        "{run}"
    );
    let other = server.ops.run(second.run_id).await;
    assert!(
        other["verdict"].is_null(),
        "node 2's own run is untouched: {other}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_memtest_passes_a_token_taken_off_the_boot_network_still_never_makes_a_pass() {
    let console = ConsoleServer::start().await;
    let suite = "suite: m\ndescription: d\nmemtest: {passes: 1}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n";
    let server = collector("attest-after-memtest", &console, suite).await;
    let base = server.base.clone();
    let node = reqwest::Client::new();
    // The node boots into memtest86+, whose console shows a whole passing pass.
    let script = get_text(&node, &format!("{base}/ipxe?mac={MAC_IPXE}")).await;
    assert!(script.contains("memtest86+"), "{script}");
    let transcript = std::fs::read(
        repo().join("tests/fixtures/memtest86plus-6.10/pass-64M-default-tests.serial"),
    )
    .unwrap();
    console.show(&String::from_utf8_lossy(&transcript)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let run = server.ops.run(1).await;
        let memtest = run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "memtest")
            .cloned()
            .unwrap();
        if memtest["verdict"] == "pass" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{run}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // While the node resets, the attacker asks for the Linux stage first and posts a pass.
    let attacker = client_from("127.0.0.2");
    let booted = boot_linux(&attacker, &base, MAC_IPXE).await;
    let (session, _) = open_session(&attacker, &base, &booted).await;
    let r = post_events(&attacker, &base, &session, full_run()).await;
    assert_eq!(r.status(), 200);
    assert!(server.ops.run(1).await["verdict"].is_null());
    // The real node's request fails the run and shows why.
    let script = get_text(&node, &format!("{base}/ipxe?mac={MAC_IPXE}")).await;
    assert!(
        script.contains("verification fail") && script.contains("security"),
        "{script}"
    );
    let run = server.ops.run(1).await;
    assert_eq!(run["verdict"], "fail", "{run}");
    assert!(
        faults(&run).contains("handed out to 127.0.0.2, asked again from 127.0.0.1"),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn under_attestation_optional_an_unattested_run_ships_and_still_says_so() {
    for (rule, exit) in [
        (kiln_protocol::attest::Attestation::Required, 1),
        (kiln_protocol::attest::Attestation::Optional, 0),
    ] {
        let config = Config {
            attestation: rule,
            ..Config::default()
        };
        let server = Server::start(&format!("attest-rule-{exit}"), config).await;
        let client = reqwest::Client::new();
        let run = register(&client, &server.base, 1, SUITE).await;
        post_events(&client, &server.base, &run, full_run()).await;
        let detail = server.ops.run(run.run_id).await;
        assert_eq!(detail["verdict"], "unattested", "{detail}");
        let ops = server.ops.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
                .arg("report")
                .args(ops.flags())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(exit), "{rule:?}: {table}");
        assert!(table.contains("unattested"), "{table}");
    }
}
