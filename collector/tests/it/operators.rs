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
