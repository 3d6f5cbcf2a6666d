//! The `kiln-agent` binary as a QA engineer runs it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

#[test]
fn check_uses_the_same_loader_as_kiln() {
    let out = agent(&["check", "suites/lab.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("suites/lab.yaml: ok: suite \"lab\"")
    );
    let out = agent(&["check", "tests/bad-suites/two-check-kinds.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(
            "tests/bad-suites/two-check-kinds.yaml:6:5: steps[0].cpu: a step with 2 check kinds"
        ),
        "{stderr}"
    );
}

#[test]
fn help_documents_the_exit_codes() {
    let out = agent(&["--help"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("Exit codes: 0 all steps pass (or degraded); 1 hardware fault"),
        "{stdout}"
    );
}
