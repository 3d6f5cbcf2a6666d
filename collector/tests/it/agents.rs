//! Real `kiln-agent` processes against a real `kiln serve`: what a QA engineer sees from a
//! host, and nodes compared with their peers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

#[test]
fn smoke_run_with_collector_shows_the_same_verdict_and_faults_in_report_and_page() {
    let agent = Path::new(env!("CARGO_BIN_EXE_kiln")).with_file_name("kiln-agent");
    assert!(
        agent.exists(),
        "{} is not built; run the workspace tests (cargo nextest run --workspace)",
        agent.display()
    );
    let data = scratch("e2e");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = spawn_kiln(&data, port);
    let suite = data.join("fails.yaml");
    std::fs::write(&suite, "suite: e2e\ndescription: d\nexpect:\n  cpu: {min_logical: 4096}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n").unwrap();
    let out = Command::new(&agent)
        .args([
            "run",
            suite.to_str().unwrap(),
            "--plain",
            "--collector",
            &base,
        ])
        .env("KILN_LOG", "info")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    // The agent's log tells the run's story by its run id: each step's start and end inside
    // the run's span and the step's.
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let finished = log
        .lines()
        .find(|l| l.contains("step finished"))
        .unwrap_or_else(|| panic!("no step finished in the agent's log:\n{log}"));
    assert!(
        finished.contains("run{run_id=1 suite=\"e2e\"}") && finished.contains("outcome=\"pass\""),
        "{finished}"
    );
    assert!(log.contains("step started"), "{log}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fault = printed
        .lines()
        .find_map(|l| l.split("expect: FAULT ").nth(1))
        .unwrap()
        .to_owned();
    assert!(
        fault.starts_with("expected ≥ 4096 logical CPUs, found"),
        "{fault}"
    );

    let report = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("report")
        .args(server.ops.flags())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&report.stdout);
    assert_eq!(
        report.status.code(),
        Some(1),
        "a failed node makes kiln report exit 1: {table}"
    );
    assert!(table.contains("fail") && table.contains(&fault), "{table}");
    let page = server.ops.blocking_text("/");
    assert!(
        page.contains(&fault) && page.contains("badge fail"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_slower_than_its_peers_comes_out_degraded_with_their_median() {
    let agent = Path::new(env!("CARGO_BIN_EXE_kiln")).with_file_name("kiln-agent");
    let data = scratch("peers");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = spawn_kiln(&data, port);
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    // One memory thread for 3 s; peers of five or more, 15 % below their median at most.
    let suite = data.join("peers.yaml");
    std::fs::write(&suite, "suite: peers\ndescription: d\ncompare_peers: {min_peers: 5, max_below_median_pct: 15}\nsteps:\n  - name: mem\n    memory: {size: 32MiB, threads: 1, duration: 3s, patterns: [own-address, solid-bits]}\n").unwrap();
    let get = |path: String| {
        let ops = server.ops.clone();
        async move {
            ops.get(&path)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    // Six agents on this host, one after another; each new node joins batch B while it runs
    // (the comparison is made when its run ends). The last one shares its CPU with three busy
    // loops: a quarter of a CPU at most, far below the others even when other tests load
    // the machine too.
    let mut busy: Vec<std::process::Child> = Vec::new();
    for n in 0..6 {
        let mut cmd = Command::new(if n == 5 {
            "taskset"
        } else {
            agent.to_str().unwrap()
        });
        if n == 5 {
            for _ in 0..3 {
                busy.push(
                    Command::new("taskset")
                        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
                        .spawn()
                        .unwrap(),
                );
            }
            cmd.args(["-c", "0", agent.to_str().unwrap()]);
        }
        let mut child = cmd
            .args([
                "run",
                suite.to_str().unwrap(),
                "--plain",
                "--collector",
                &base,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for row in get("/api/v1/report".into()).await.as_array().unwrap() {
                if row["batch"].is_null() {
                    let r = server
                        .ops
                        .post("/api/v1/nodes/batch")
                        .bearer_auth(&token)
                        .json(
                            &serde_json::json!({"select": {"node": row["node_id"]}, "batch": "B"}),
                        )
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "agent {n} did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for mut b in busy {
        let _ = b.kill();
        let _ = b.wait();
    }
    let rows = get("/api/v1/report".into()).await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 6, "six nodes: {rows:?}");
    let mut sorted: Vec<&Value> = rows.iter().collect();
    sorted.sort_by_key(|r| r["run_id"].as_i64());
    let mut gbps = Vec::new();
    for row in &sorted {
        let run = get(format!("/api/v1/runs/{}", row["run_id"])).await;
        // The seed each memory step drew is kept with the verdict: it can be replayed.
        assert!(
            run["provenance"]["seeds"]["mem"]
                .as_str()
                .is_some_and(|s| s.starts_with("0x")),
            "{}",
            run["provenance"]
        );
        gbps.push(
            run["steps"][0]["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "gbps")
                .unwrap()["value"]
                .as_f64()
                .unwrap(),
        );
    }
    let mut peers = gbps[..5].to_vec();
    peers.sort_by(f64::total_cmp);
    let median = peers[2];
    let slow = sorted[5];
    // Its run page places it among its peers; the batch page draws the batch's spread.
    let page = server.ops.text(&format!("/runs/{}", slow["run_id"])).await;
    assert!(
        page.contains("<svg class=\"peers\" data-metric=\"mem.gbps\"")
            && page.contains("of 5 peers")
            && page.contains("<svg class=\"over-time\" data-step=\"0\""),
        "{page}"
    );
    let batch = server.ops.text("/batches/B").await;
    assert!(
        batch.contains("<svg class=\"histogram\" data-metric=\"mem.gbps\"")
            && batch.contains("(6 runs,"),
        "{batch}"
    );
    let reason = slow["verdict_reason"].as_str().unwrap_or_default();
    // Degraded against its peers, and (an ad-hoc run) unattested: the worse word shows, the
    // peers' reason with it.
    assert_eq!(
        slow["verdict"], "unattested",
        "{slow} (peers {peers:?}, slow {})",
        gbps[5]
    );
    assert!(
        reason.contains(&format!(
            "below the median {} of 5 peers",
            kiln_protocol::readable::readable(median, "GB/s")
        )),
        "{reason} (peers {peers:?}, slow {})",
        gbps[5]
    );
}
