use super::*;
use kiln_protocol::wire::{Fault, Metric};

fn members(kinds: &[&str]) -> Vec<PlannedStep> {
    let steps: String = kinds
        .iter()
        .map(|k| {
            let body = match *k {
                "memory" => "memory: {size: 1MiB}",
                "cpu" => "cpu: {duration: 1s}",
                "disk" => "disk: {dir: /tmp, size: 1MiB}",
                _ => "exec: {argv: [true]}",
            };
            format!("        - name: {k}\n          {body}\n")
        })
        .collect();
    let text = format!(
        "suite: t\ndescription: group test\nsteps:\n  - name: g\n    parallel:\n      duration: 10s\n      steps:\n{steps}"
    );
    kiln_protocol::load("t.yaml", text.as_bytes())
        .unwrap()
        .steps
}

#[test]
fn memory_and_cpu_split_the_cpus_and_swap_at_half_time() {
    let m = members(&["memory", "cpu"]);
    let s = shares(CpuShare::Split, &m, &[0, 1, 2, 3]);
    assert_eq!(s[0], [Some(vec![0, 1]), Some(vec![2, 3])]);
    assert_eq!(s[1], [Some(vec![2, 3]), Some(vec![0, 1])]);
    // With a disk member, an eighth of the CPUs (at least one) kept for the kernel's I/O.
    let m = members(&["memory", "cpu", "disk"]);
    let s = shares(CpuShare::Split, &m, &[0, 1, 2, 3]);
    assert_eq!(s[0], [Some(vec![0, 1]), Some(vec![2])]);
    assert_eq!(s[1], [Some(vec![2]), Some(vec![0, 1])]);
    assert_eq!(s[2], [None, None], "the disk floats");
    let s = shares(CpuShare::Split, &m, &(0..64).collect::<Vec<_>>());
    assert_eq!(s[0][0].as_ref().map(Vec::len), Some(28));
    assert_eq!(s[1][0].as_ref().map(|c| (c[0], c.len())), Some((28, 28)));
    // Fewer than four CPUs: none kept; an odd count gives memory the larger half.
    let s = shares(CpuShare::Split, &m, &[0, 1, 2]);
    assert_eq!(s[0], [Some(vec![0, 1]), Some(vec![2])]);
    assert_eq!(
        describe(&m, &s),
        " (memory on CPUs 0,1, then 2; cpu on CPUs 2, then 0,1)"
    );
    // Nothing to split: one CPU, `shared`, or no cpu member.
    for (mode, m, cpus) in [
        (CpuShare::Split, members(&["memory", "cpu"]), vec![0]),
        (CpuShare::Shared, members(&["memory", "cpu"]), vec![0, 1]),
        (CpuShare::Split, members(&["memory", "disk"]), vec![0, 1]),
    ] {
        assert!(shares(mode, &m, &cpus).iter().all(|s| s == &[None, None]));
    }
}

#[test]
fn two_runs_merge_into_their_worst_and_every_fault() {
    let metric = |name: &str, value: f64, unit: &str| Metric {
        name: name.into(),
        value,
        unit: unit.into(),
    };
    let a = CheckOutput {
        faults: vec![Fault::new("disk.mismatch", "block 7")],
        metrics: vec![
            metric("write_mbps", 900.0, "MB/s"),
            metric("latency_p99_ms", 2.0, "ms"),
            metric("errors", 0.0, ""),
            metric("bytes", 10.0, "B"),
        ],
        skip: Some("a".into()),
        ..CheckOutput::default()
    };
    let b = CheckOutput {
        faults: vec![
            Fault::new("disk.mismatch", "block 7"),
            Fault::new("disk.mismatch", "block 9"),
        ],
        metrics: vec![
            metric("write_mbps", 700.0, "MB/s"),
            metric("latency_p99_ms", 5.0, "ms"),
            metric("errors", 3.0, ""),
            metric("bytes", 5.0, "B"),
        ],
        ..CheckOutput::default()
    };
    let m = merge(a, b);
    assert_eq!(m.faults.len(), 2);
    let values: Vec<f64> = m.metrics.iter().map(|m| m.value).collect();
    assert_eq!(values, [700.0, 5.0, 3.0, 15.0]);
    assert_eq!(m.skip, None, "one run measured: not a skip");
}
