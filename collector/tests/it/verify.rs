//! `kiln verify` and `kiln watch` against a real collector: the nodes armed, each power-cycled
//! once through its driver (a fake QMP socket; `manual` power listed with what to do), the
//! exit code by verdict, and Ctrl-C leaving the nodes running.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_collector::config::Config;
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{EventBody, RegisterRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::*;

/// A QMP socket that answers every command and counts the resets.
fn fake_qmp(path: &std::path::Path) -> Arc<AtomicUsize> {
    let resets = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let counted = resets.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"{\"QMP\": {\"version\": {}}}\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("system_reset") {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = write.write_all(b"{\"return\": {}}\n").await;
                }
            });
        }
    });
    resets
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_arms_resets_each_node_once_waits_for_every_verdict_and_ctrl_c_leaves_them_running()
{
    let dir = scratch("verify-qmp");
    let socket = dir.join("qmp.sock");
    let resets = fake_qmp(&socket);
    let config: Config = serde_yaml::from_str(&format!(
        "nodes:\n  - {{mac: '52:54:00:00:00:01', power: {{qmp: {}}}}}\n  - {{mac: '52:54:00:00:00:02', power: {{manual: true}}}}\n",
        socket.display()
    ))
    .unwrap();
    let server = Server::start("verify", config).await;
    let client = reqwest::Client::new();
    let admin = server.admin_token();
    import_nodes(
        &server,
        "52:54:00:00:00:01,R12,U01,r12-u01\n52:54:00:00:00:02,R12,U02,r12-u02\n",
    )
    .await;
    let kiln = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args)
            .args(server.ops.flags())
            .env("KILN_ADMIN_TOKEN", &admin)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };

    // Ctrl-C while watching: the nodes keep running, and it says how to watch again.
    let watch = kiln(&["watch", "--rack", "R12"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SAFETY: a plain signal to the child this test started.
    unsafe { libc::kill(watch.id() as libc::pid_t, libc::SIGINT) };
    let out = tokio::task::spawn_blocking(move || watch.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Watch again with: kiln watch --rack R12"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Verify: armed, one reset through QMP for the first node, what to do for the second.
    let verify = kiln(&["verify", "--rack", "R12", "--timeout", "60s"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while resets.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no reset through QMP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The nodes boot and report: the first passes, the second fails.
    for (n, verdict) in [(1u8, Verdict::Pass), (2, Verdict::Fail)] {
        let req = RegisterRequest {
            identity: identity(n),
            hostname: None,
            suite_text: SUITE.into(),
        };
        let run = register_admin(&server.ops, &req, &admin).await;
        let mut events = full_run();
        events[4] = ev(5, EventBody::RunFinished { verdict });
        post_events(&client, &server.base, &run, events).await;
    }
    let out = tokio::task::spawn_blocking(move || verify.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a node failed: {stdout}");
    assert!(stdout.contains("reset through qmp"), "{stdout}");
    assert!(
        stdout.contains("manual power: reset it by hand now"),
        "{stdout}"
    );
    assert!(
        stdout.contains("r12-u01") && stdout.contains("pass"),
        "{stdout}"
    );
    assert_eq!(
        resets.load(Ordering::SeqCst),
        1,
        "one reset per node with a driver"
    );
    let nodes: serde_json::Value = server.ops.json("/api/v1/nodes").await;
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["mode"] == "verify"),
        "armed: {nodes}"
    );
}
