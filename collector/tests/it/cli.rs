//! The `kiln` binary as an operator runs it: exit codes, messages, printed schema.

use crate::common::repo;
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

#[test]
fn suite_check_accepts_every_shipped_suite() {
    let files: Vec<String> = ["smoke", "lab", "burn-in", "memory-only"]
        .iter()
        .map(|s| format!("suites/{s}.yaml"))
        .collect();
    let mut args = vec!["suite", "check"];
    args.extend(files.iter().map(String::as_str));
    let out = kiln(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(stdout.contains("suites/smoke.yaml: ok: suite \"smoke\" v1: 4 steps (memory, cpu, disk, nic), budget 2m40s"), "{stdout}");
}

#[test]
fn suite_check_names_a_typo_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("typo.yaml");
    std::fs::write(
        &file,
        "suite: t\ndescription: d\nsteps:\n  - name: ok\n    cpu: {}\n  - name: m\n    memory:\n      pattens: [random]\n",
    )
    .unwrap();
    let good = repo().join("suites/smoke.yaml");
    let out = kiln(&[
        "suite",
        "check",
        good.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let want = format!(
        "{}:8:7: steps[1].memory: unknown field \"pattens\", expected one of \"size\", \"passes\"",
        file.display()
    );
    assert!(stderr.starts_with(&want), "{stderr}");
    // The good file is still reported as good: one bad file does not hide the others.
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("smoke.yaml: ok")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn suite_check_of_a_missing_file_says_why() {
    let out = kiln(&["suite", "check", "no/such/suite.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        "no/such/suite.yaml: cannot read the suite: No such file or directory (os error 2)"
    );
}

#[test]
fn suite_schema_prints_the_committed_schema() {
    let out = kiln(&["suite", "schema"]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(repo().join("suites/schema.json")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn usage_errors_exit_2() {
    let out = kiln(&["suite", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let out = kiln(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

fn fixture(name: &str) -> String {
    repo()
        .join("tests/fixtures/memtest86plus-6.10")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn memtest_parse_reads_every_fixture_exactly() {
    let out = kiln(&[
        "memtest",
        "parse",
        &fixture("errors-reportmode-address.serial"),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "errors on screen make it exit 1"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["passes"], 0);
    assert_eq!(v["errors"], 9);
    assert_eq!(v["test_number"], 6);
    assert_eq!(v["error_rows"].as_array().unwrap().len(), 9);
    assert_eq!(v["error_rows"][3]["address"], "000006200010");
    assert_eq!(v["error_rows"][3]["found"], "0000000000000404");
    for (file, passes) in [
        ("pass-64M-default-tests.serial", 1),
        ("pass-64M-without-test10.serial", 2),
    ] {
        let out = kiln(&["memtest", "parse", &fixture(file), "--json"]);
        assert_eq!(out.status.code(), Some(0), "{file}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (
                v["status"].as_str(),
                v["passes"].as_i64(),
                v["errors"].as_i64()
            ),
            (Some("pass"), Some(passes), Some(0)),
            "{file}"
        );
    }
    let out = kiln(&["memtest", "parse", "Cargo.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no memtest86+ screen"));
}

#[test]
fn lab_profile_and_injection_typos_are_refused_before_anything_starts() {
    for (args, says) in [
        (
            vec!["lab", "up", "--profile", "rack"],
            "expected basic or server",
        ),
        (
            vec!["lab", "up", "--inject", "2:melt@memory"],
            "expected NODE:FAULT@STEP",
        ),
        (vec!["lab", "up", "--inject", "2:mce"], "during which step"),
        (
            vec!["lab", "up", "--network", "switch"],
            "expected user or bridge",
        ),
        (
            vec!["lab", "up", "--collectors", "0"],
            "--collectors 0: expected 1 to 4",
        ),
        (
            vec!["lab", "up", "--collectors", "9"],
            "--collectors 9: expected 1 to 4",
        ),
        (
            vec!["lab", "up", "--collectors", "-1"],
            "unexpected argument",
        ),
        (
            vec!["lab", "up", "--collectors", "2", "--kill-collector", "disk"],
            "--kill-collector \"disk\": expected memtest or linux",
        ),
        (
            vec!["lab", "up", "--kill-collector", "memtest"],
            "--kill-collector needs --collectors 2 or more",
        ),
        (vec!["lab", "up", "--payload-mib", "lots"], "invalid value"),
        (vec!["lab", "up", "--payload-mib", "5000"], "at most 4096"),
        (
            vec!["lab", "up", "--rogue-peer", "--payload-mib", "8"],
            "--network bridge --payload-mib N",
        ),
        (
            vec![
                "lab",
                "up",
                "--inject",
                "2:kill-peer",
                "--network",
                "bridge",
            ],
            "--network bridge --payload-mib N",
        ),
    ] {
        let out = kiln(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn cabling_import_names_a_file_it_cannot_read_before_asking_anyone() {
    let out = kiln(&[
        "cabling",
        "import",
        "/nonexistent/map.csv",
        "--server",
        "https://127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/map.csv: cannot read"),
        "{stderr}"
    );
}
