//! The `kiln-agent` binary as a QA engineer runs it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../tests/src/paths.rs"]
mod paths;
use paths::{repo, scratch as scratch_dir};

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

fn write_suite(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn run_passes_writes_both_reports_and_exits_0() {
    let dir = scratch_dir("run-pass");
    // The other tests load the same two cores: the per-core spread may be anything here (a
    // wrong answer would still fail the step), and this test is about reports and exit codes.
    let suite = write_suite(
        &dir,
        "pass.yaml",
        &format!(
            "suite: mini\ndescription: d\nsteps:\n  - name: mem\n    memory: {{size: 16MiB}}\n  - name: load\n    cpu: {{duration: 1s, workloads: [integer], degraded: {{max_core_spread_pct: 100}}}}\n  - name: file\n    disk: {{dir: {}, size: 4MiB}}\n  - name: tool\n    exec: {{argv: [true]}}\n",
            dir.display()
        ),
    );
    let (report, junit) = (dir.join("r.json"), dir.join("r.xml"));
    let out = agent(&[
        "run",
        suite.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verdict: pass"), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["verdict"], "pass");
    assert_eq!(json["steps"].as_array().unwrap().len(), 4);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testsuite name=\"mini\" tests=\"4\" failures=\"0\" errors=\"0\""),
        "{xml}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn exec_steps_never_see_the_agents_kiln_variables() {
    let dir = scratch_dir("exec-env");
    let suite = write_suite(
        &dir,
        "env.yaml",
        "suite: env\ndescription: d\nsteps:\n  - name: no-secrets\n    exec:\n      argv: [sh, -c, 'test -z \"$KILN_TOKEN$KILN_URL$KILN_RUN\" && test -n \"$KILN_METRICS\" && test \"$MINE\" = kept']\n      env: {MINE: kept}\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(["run", suite.to_str().unwrap()])
        .env("KILN_TOKEN", "0123456789abcdef")
        .env("KILN_URL", "http://127.0.0.1:9")
        .env("KILN_RUN", "7")
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_hardware_fault_exits_1_and_a_refused_suite_exits_2() {
    let dir = scratch_dir("run-fail");
    let fail = write_suite(
        &dir,
        "fail.yaml",
        "suite: f\ndescription: d\nexpect:\n  cpu: {min_logical: 4096}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n",
    );
    let out = agent(&["run", fail.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("expected ≥ 4096 logical CPUs"), "{stdout}");
    let out = agent(&["run", "tests/bad-suites/two-check-kinds.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn nic_throughput_against_serve_bandwidth_on_loopback() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args([
            "serve-bandwidth",
            "--listen",
            "127.0.0.1:0",
            "--seconds",
            "60",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line.split_whitespace().last().unwrap().to_owned();
    let dir = scratch_dir("nic");
    let suite = write_suite(
        &dir,
        "nic.yaml",
        &format!(
            "suite: n\ndescription: d\nsteps:\n  - name: net\n    nic: {{interfaces: [lo], link: false, target: \"{url}\", duration: 1s, min_mbps: 1}}\n"
        ),
    );
    let report = dir.join("r.json");
    let out = agent(&[
        "run",
        suite.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let metrics = json["steps"][0]["metrics"].as_array().unwrap();
    let mbps = metrics.iter().find(|m| m["name"] == "mbps").unwrap()["value"]
        .as_f64()
        .unwrap();
    assert!(mbps > 1.0, "{mbps}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A loop device over a file in the scratch directory; detached on drop.
struct Loop {
    device: String,
    backing: PathBuf,
}

impl Loop {
    fn new(dir: &Path, mib: u64) -> Loop {
        let backing = dir.join("disk.img");
        let file = std::fs::File::create(&backing).unwrap();
        file.set_len(mib << 20).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            device: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            backing,
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.device).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

fn digest(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn a_destructive_step_refuses_a_mounted_device_and_writes_a_free_one() {
    let dir = scratch_dir("destructive");
    let lo = Loop::new(&dir, 64);
    let suite = write_suite(
        &dir,
        "wipe.yaml",
        &format!(
            "suite: w\ndescription: d\nsteps:\n  - name: wipe\n    disk: {{target: {{path: {}}}, destructive: true, size: 16MiB}}\n",
            lo.device
        ),
    );
    // Free and blank, but without the operator's consent: refused, nothing written.
    let before = digest(&lo.backing);
    let out = agent(&["run", suite.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--allow-destructive"));
    assert_eq!(
        digest(&lo.backing),
        before,
        "refused step wrote to the device"
    );

    // With a filesystem mounted from it: refused even with consent, nothing written.
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", &lo.device])
            .status()
            .unwrap()
            .success()
    );
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    assert!(
        Command::new("mount")
            .arg(&lo.device)
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(mnt.join("keep.txt"), "still here").unwrap();
    let out = agent(&["run", suite.to_str().unwrap(), "--allow-destructive"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(&format!("refused: {}: is mounted", lo.device)),
        "{stdout}"
    );
    // The filesystem itself changes on mount and unmount, so check it survived intact rather
    // than byte for byte: a write of the test pattern would have wiped its superblock.
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n", &lo.device])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "filesystem damaged: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    assert!(
        Command::new("mount")
            .arg(&lo.device)
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("keep.txt")).unwrap(),
        "still here"
    );
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    let before = digest(&lo.backing);

    // Unmounted, but a whole-device ext4 is still data: refused, naming what was found, and
    // nothing written.
    let out = agent(&["run", suite.to_str().unwrap(), "--allow-destructive"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("holds an ext2/3/4 filesystem (signature at byte 1080)"),
        "{stdout}"
    );
    assert_eq!(digest(&lo.backing), before, "a refused step wrote");

    // The suite says to wipe signatures: written and verified.
    let wipe = write_suite(
        &dir,
        "wipe-signatures.yaml",
        &format!(
            "suite: w\ndescription: d\nsteps:\n  - name: wipe\n    disk: {{target: {{path: {}}}, destructive: true, wipe_signatures: true, size: 16MiB}}\n",
            lo.device
        ),
    );
    let out = agent(&["run", wipe.to_str().unwrap(), "--allow-destructive"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(
        digest(&lo.backing),
        before,
        "the allowed step did not write"
    );
    drop(lo);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failing_step_is_retested_and_called_intermittent_or_hard() {
    let dir = scratch_dir("retest");
    let marker = dir.join("failed-once");
    let _ = std::fs::remove_file(&marker);
    // `flaky` fails its first attempt only; `broken` fails every one.
    let suite = write_suite(
        &dir,
        "retest.yaml",
        &format!(
            "suite: retest\ndescription: d\nretest: {{attempts: 3}}\nsteps:\n  - name: flaky\n    exec: {{argv: [sh, -c, 'if [ -e {m} ]; then exit 0; fi; touch {m}; exit 3']}}\n  - name: broken\n    exec: {{argv: ['false']}}\n    retest: {{attempts: 2, intermittent: degraded}}\n",
            m = marker.display()
        ),
    );
    let report = dir.join("r.json");
    let out = agent(&[
        "run",
        suite.to_str().unwrap(),
        "--plain",
        "--report",
        report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let steps = json["steps"].as_array().unwrap();
    let first_fault = |s: &serde_json::Value| s["outcome"]["faults"][0]["message"].clone();
    assert_eq!(steps[0]["attempts"].as_array().unwrap().len(), 3, "{json}");
    assert!(
        first_fault(&steps[0])
            .as_str()
            .unwrap()
            .starts_with("failed 1 of 3 attempts (intermittent)"),
        "{json}"
    );
    assert_eq!(steps[1]["attempts"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(
        steps[1]["outcome"]["faults"][0]["code"], "retest.hard",
        "{json}"
    );
    assert!(stdout.contains("retest 2 of 3"), "{stdout}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn fetch_payload_refuses_a_rate_that_is_no_rate_and_a_missing_token() {
    let fetch = |extra: &[&str], token: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-agent"));
        cmd.args([
            "fetch-payload",
            "--collector",
            "http://127.0.0.1:9",
            "--run",
            "1",
        ])
        .args(extra)
        .env_remove("KILN_SESSION_TOKEN");
        if token {
            cmd.args(["--token", "t"]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (extra, token, said) in [
        (&["--mbps", "0"][..], true, "--mbps must be a rate above 0"),
        (
            &["--mbps", "NaN"][..],
            true,
            "--mbps must be a rate above 0",
        ),
        (&[][..], false, "no session token"),
        // A collector that is not there: a harness error that names it, not a hang.
        (&[][..], true, "127.0.0.1:9"),
    ] {
        let (code, stderr) = fetch(extra, token);
        assert_eq!(code, Some(2), "{extra:?}");
        assert!(stderr.contains(said), "{extra:?}: {stderr}");
    }
}

#[test]
fn inspect_listens_for_lldp_only_when_asked_and_only_within_its_bounds() {
    for (args, says) in [
        (vec!["inspect", "--lldp", "0"], "not in 1..=300"),
        (vec!["inspect", "--lldp", "301"], "not in 1..=300"),
        (vec!["inspect", "--lldp", "soon"], "invalid digit"),
    ] {
        let out = agent(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Asked: the inventory says it listened (this host's NICs have no switch to hear).
    let out = agent(&["inspect", "--lldp", "1"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inventory"]["lldp_listened_s"], 1);
    let out = agent(&["inspect"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["inventory"].get("lldp_listened_s").is_none());
}
