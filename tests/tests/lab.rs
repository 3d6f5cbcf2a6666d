//! The lab end to end (`kiln lab up`, in process): two QEMU nodes under TCG through
//! memtest86+ (test #10 deselected) and the RAM image. Node A runs the lab suite and must
//! pass; node B's suite expects 64 CPUs and must fail with exactly that fault. Checked from
//! the collector's SQLite file and the lab's JSON report. Bounded: the lab gives up after 14
//! minutes and stops every VM it started.

use std::time::Duration;

use kiln_collector::lab::{LabOptions, up};
use kiln_tests::{image_dir, repo, scratch};

#[test]
fn two_lab_nodes_pass_and_fail_through_memtest_and_linux() {
    let image = image_dir();
    assert!(
        image.join("memtest86+x64.bin").exists(),
        "no image in {}: `kiln image build --out {}` (.ci/test does)",
        image.display(),
        image.display()
    );
    let dir = scratch("lab-e2e");
    let lab = std::fs::read_to_string(repo().join("suites/lab.yaml")).unwrap();
    let greedy = lab.replace(
        "  cpu:\n    min_logical: 1\n",
        "  cpu:\n    min_logical: 64\n",
    );
    assert_ne!(
        greedy, lab,
        "the lab suite's expect block changed; update this test"
    );
    std::fs::write(dir.join("needs-64-cpus.yaml"), greedy).unwrap();
    let opts = LabOptions {
        dir: dir.clone(),
        nodes: 2,
        suite: repo().join("suites/lab.yaml"),
        suite_for: vec![(2, dir.join("needs-64-cpus.yaml"))],
        mem_mib: 256,
        disk_mib: 1024,
        uefi: false,
        image: Some(image),
        accel: "tcg".into(),
        timeout: Duration::from_secs(14 * 60),
        bars: false,
    };
    let report = up(&opts).unwrap();

    let (a, b) = (&report.nodes[0], &report.nodes[1]);
    assert_eq!(a.verdict, "pass", "{a:?}");
    assert_eq!(a.memtest.as_deref(), Some("pass"));
    assert!(a.memtest_passes.unwrap_or(0) >= 1, "{a:?}");
    assert_eq!(a.steps, "4/4", "{a:?}");
    assert!(a.faults.is_empty(), "{a:?}");
    assert_eq!(b.verdict, "fail", "{b:?}");
    assert_eq!(b.memtest.as_deref(), Some("pass"));
    assert_eq!(
        b.faults,
        ["expect: expected ≥ 64 logical CPUs, found 1"],
        "{b:?}"
    );

    // The same from the JSON report on disk and the SQLite file.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        json["nodes"][1]["faults"][0],
        "expect: expected ≥ 64 logical CPUs, found 1"
    );
    let db = rusqlite::Connection::open(report.data.join("kiln.sqlite")).unwrap();
    let runs: i64 = db
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 2);
    for (run, verdict) in [(a.run_id.unwrap(), "pass"), (b.run_id.unwrap(), "fail")] {
        let stored: String = db
            .query_row("SELECT verdict FROM runs WHERE id = ?1", [run], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(stored, verdict);
        let stages: Vec<(String, String, String)> = db
            .prepare("SELECT name, state, verdict FROM stages WHERE run_id = ?1 ORDER BY name")
            .unwrap()
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            stages,
            [
                ("linux".into(), "done".into(), verdict.into()),
                ("memtest".into(), "done".into(), "pass".into())
            ]
        );
        let logs: i64 = db
            .query_row(
                "SELECT count(*) FROM events WHERE run_id = ?1 AND kind = 'log'",
                [run],
                |r| r.get(0),
            )
            .unwrap();
        assert!(logs > 0, "run {run} has no log lines");
        let reading: String = db
            .query_row(
                "SELECT reading FROM memtest_results WHERE run_id = ?1",
                [run],
                |r| r.get(0),
            )
            .unwrap();
        let reading: serde_json::Value = serde_json::from_str(&reading).unwrap();
        assert!(
            reading["passes"].as_u64().unwrap() >= 1 && reading["errors"] == 0,
            "{reading}"
        );
        // The console was followed into Linux: the RAM image's own first line is in the tail.
        let tail: Option<Vec<u8>> = db
            .query_row("SELECT console_tail FROM runs WHERE id = ?1", [run], |r| {
                r.get(0)
            })
            .unwrap();
        let tail = String::from_utf8_lossy(&tail.unwrap_or_default()).into_owned();
        assert!(
            tail.contains("kiln: RAM image up"),
            "run {run}: no Linux console in the tail ({} bytes)",
            tail.len()
        );
    }
    let fault_code: String = db
        .query_row(
            "SELECT expect FROM runs WHERE id = ?1",
            [b.run_id.unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        fault_code.contains("\"code\":\"expect.cpu.min_logical\""),
        "{fault_code}"
    );
    assert!(
        !dir.join("pids").exists(),
        "the lab left processes recorded"
    );
}
