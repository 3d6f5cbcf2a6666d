//! The suite language end to end: shipped suites, committed schema and the field reference in docs/suites.md,
//! and one refused suite per rule, each with its exact location and message.

use std::path::Path;
use std::time::Duration;

use kiln_protocol::{MAX_SUITE_BYTES, SuiteError, load};

use kiln_tests::repo;

fn load_path(path: &Path) -> Result<kiln_protocol::Plan, SuiteError> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    load(&name, &std::fs::read(path).unwrap())
}

/// Rewrites a generated file when KILN_BLESS=1, else asserts it is current.
fn assert_current(path: &Path, generated: &str) {
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        committed == generated,
        "{} is stale; run `KILN_BLESS=1 cargo nextest run -p kiln-tests` and commit it",
        path.display()
    );
}

#[test]
fn every_shipped_suite_loads_and_points_editors_at_the_schema() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("suites")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=./schema.json\n"),
            "{} lacks the schema modeline",
            path.display()
        );
        if let Err(err) = load_path(&path) {
            panic!("{err}");
        }
    }
    assert!(seen >= 4, "expected the four shipped suites, saw {seen}");
}

#[test]
fn smoke_suite_fits_three_minutes_and_touches_nothing_destructively() {
    let plan = load_path(&repo().join("suites/smoke.yaml")).unwrap();
    assert!(
        plan.budget() <= Duration::from_secs(180),
        "budget {:?}",
        plan.budget()
    );
    assert!(plan.memtest.is_none());
    for step in &plan.steps {
        if let kiln_protocol::Check::Disk(disk) = &step.check {
            assert!(
                !disk.destructive && disk.target.is_none(),
                "{} is destructive",
                step.name
            );
        }
    }
}

#[test]
fn lab_suite_runs_memtest_and_a_destructive_scratch_disk() {
    let plan = load_path(&repo().join("suites/lab.yaml")).unwrap();
    let memtest = plan.memtest.as_ref().expect("lab runs memtest");
    assert_eq!(memtest.skip_tests, vec![10]);
    assert!(
        plan.steps
            .iter()
            .any(|s| matches!(&s.check, kiln_protocol::Check::Disk(d) if d.destructive))
    );
}

#[test]
fn committed_schema_is_current() {
    assert_current(
        &repo().join("suites/schema.json"),
        &kiln_protocol::schema::suite_schema_json(),
    );
}

#[test]
fn readme_field_reference_is_current() {
    const START: &str =
        "<!-- suite-reference:start (generated from the suite types; KILN_BLESS=1 refreshes) -->\n";
    const END: &str = "<!-- suite-reference:end -->";
    let path = repo().join("docs/suites.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = readme
        .split_once(START)
        .expect("docs/suites.md lacks the reference start marker");
    let (_, tail) = rest
        .split_once(END)
        .expect("docs/suites.md lacks the reference end marker");
    let generated = format!(
        "{head}{START}{}{END}{tail}",
        kiln_protocol::schema::reference_markdown()
    );
    assert_current(&path, &generated);
}

/// One refused suite per rule: file in tests/bad-suites, then `LINE:COL: PATH: MESSAGE` (a
/// prefix of the message; the rest lists what was expected).
const BAD_SUITES: &[(&str, &str)] = &[
    (
        "cycles-boot-timeout-short.yaml",
        "6:3: cycles.boot_timeout: 10s; expected 1m to 2h",
    ),
    (
        "cycles-count-zero.yaml",
        "4:3: cycles.count: 0 cycles; expected 1 to 100",
    ),
    (
        "cycles-kind-unknown.yaml",
        "5:9: cycles.kind: unknown variant \"lukewarm\", expected \"warm\" or \"cold\"",
    ),
    (
        "parallel-inside-parallel.yaml",
        "11:11: steps[0].parallel.steps[1].parallel: a group inside a group",
    ),
    (
        "parallel-member-name-taken.yaml",
        r#"12:11: steps[1].parallel.steps[1].name: duplicate step name "cpu" (steps[0] has it)"#,
    ),
    (
        "parallel-member-retest.yaml",
        "10:11: steps[0].parallel.steps[0].retest: a member of a group is not retested on its own",
    ),
    (
        "parallel-one-member.yaml",
        "7:7: steps[0].parallel.steps: 1 step(s); expected at least 2",
    ),
    (
        "parallel-two-memory-members.yaml",
        "11:11: steps[0].parallel.steps[1].memory: a second memory member",
    ),
    (
        "parallel-unknown-cpu-share.yaml",
        r#"7:13: steps[0].parallel.cpus: unknown variant "half", expected "split" or "shared""#,
    ),
    (
        "parallel-with-a-check-kind.yaml",
        "5:5: steps[0].exec: a parallel group with a check kind; a step is one or the other",
    ),
    (
        "sensors-limit-out-of-range.yaml",
        "5:3: sensors.max_inlet_c: 350; expected -40 to 150",
    ),
    (
        "sensors-unknown-limit.yaml",
        r#"4:3: sensors: unknown field "min_fan_rpms", expected one of "interval""#,
    ),
    (
        "sensors-interval-too-long.yaml",
        "4:3: sensors.interval: 2m; expected 1s to 60s",
    ),
    (
        "unknown-field-memory.yaml",
        r#"7:7: steps[0].memory: unknown field "pattens", expected one of "size", "passes""#,
    ),
    (
        "unknown-field-top.yaml",
        r#"3:1: unknown field "stpes", expected one of "suite", "description""#,
    ),
    (
        "unknown-field-expect-cpu.yaml",
        r#"5:5: expect.cpu: unknown field "min_logicals", expected one of "model", "min_logical", "flags""#,
    ),
    (
        "unknown-field-expect-lldp.yaml",
        r#"5:5: expect.lldp: unknown field "vlans", expected one of "optional", "vlan", "min_mtu""#,
    ),
    (
        "expect-lldp-vlan-out-of-range.yaml",
        r#"5:11: expect.lldp.vlan: invalid value: integer "70000", expected u16"#,
    ),
    (
        "nic-peer-unknown-policy.yaml",
        r#"7:13: steps[0].nic.peer: unknown variant "same-row", expected "same-rack" or "other-rack""#,
    ),
    (
        "nic-fallback-on-a-peer.yaml",
        "7:7: steps[0].nic.fallback: \"peer\"; expected `collector` or an http:// URL (a node with no partner cannot fall back on a peer)",
    ),
    (
        "nic-pair-timeout-without-peer.yaml",
        "7:7: steps[0].nic.pair_timeout: pair_timeout without `target: peer`; it says how this node is paired",
    ),
    (
        "disk-target-unknown-key.yaml",
        r#"7:15: steps[0].disk.target: unknown field "device", expected one of "path", "glob", "model""#,
    ),
    (
        "unknown-pattern.yaml",
        r#"6:32: steps[0].memory.patterns[1]: unknown variant "zigzag", expected one of "own-address""#,
    ),
    (
        "unknown-report-mode.yaml",
        r#"4:16: memtest.report_mode: unknown variant "verbose", expected one of "address", "summary", "badram""#,
    ),
    (
        "wrong-type-passes.yaml",
        r#"6:15: steps[0].memory.passes: invalid type: string "two", expected u32"#,
    ),
    (
        "wrong-type-steps.yaml",
        "4:3: steps: invalid type: map, expected a sequence",
    ),
    (
        "wrong-type-threshold.yaml",
        r#"7:22: steps[0].disk.min_read_mbps: invalid type: string "fast", expected f64"#,
    ),
    (
        "bad-unit-duration.yaml",
        r#"6:17: steps[0].cpu.duration: invalid duration "10 parsecs": expected a positive duration with a unit"#,
    ),
    (
        "duration-without-unit.yaml",
        r#"5:14: steps[0].timeout: invalid type: integer "90", expected a positive duration with a unit"#,
    ),
    (
        "bad-unit-size.yaml",
        r#"6:13: steps[0].memory.size: invalid size "12XB": expected a positive size like 512MiB"#,
    ),
    (
        "zero-size.yaml",
        r#"7:13: steps[0].disk.size: invalid size "0MiB": expected a positive size"#,
    ),
    (
        "negative-size.yaml",
        r#"5:16: expect.memory.min_total: invalid size "-1GiB": expected a positive size with a unit"#,
    ),
    (
        "percent-over-100.yaml",
        r#"6:13: steps[0].memory.size: invalid percentage "120%": expected a share above 0% and at most 100%"#,
    ),
    (
        "pct-threshold-over-100.yaml",
        "7:7: steps[0].cpu.max_core_spread_pct: 150% is over 100%; expected a percentage from 0 to 100",
    ),
    (
        "negative-threshold.yaml",
        "6:7: steps[0].memory.min_gbps: threshold -3 is not a number of zero or more",
    ),
    (
        "empty-steps.yaml",
        "3:1: steps: no steps; expected at least one step",
    ),
    ("missing-steps.yaml", r#"1:1: missing field "steps""#),
    (
        "empty-description.yaml",
        "2:1: description: the description is empty; expected a sentence",
    ),
    (
        "duplicate-step-names.yaml",
        r#"8:5: steps[2].name: duplicate step name "mem" (steps[0] has it); expected unique names"#,
    ),
    (
        "bad-step-name.yaml",
        r#"4:5: steps[0].name: "mem; rm -rf /" has characters outside letters, digits"#,
    ),
    (
        "two-check-kinds.yaml",
        "6:5: steps[0].cpu: a step with 2 check kinds (memory, cpu); expected exactly one per step",
    ),
    (
        "no-check-kind.yaml",
        "6:5: steps[1]: no check kind; expected exactly one of memory, cpu, disk, nic, exec",
    ),
    (
        "timeout-shorter-than-duration.yaml",
        "5:5: steps[0].timeout: timeout 30s is shorter than the step's own duration 2m; expected at least 2m",
    ),
    (
        "degraded-looser-than-pass.yaml",
        "9:9: steps[0].disk.degraded.min_read_mbps: degraded threshold 100 is looser than the pass threshold 400; expected at least 400",
    ),
    (
        "expect-pcie-bad-class.yaml",
        r#"5:7: expect.pcie[0].class: "ethernet" is not a class code prefix; expected hex digits like 02, 0200 or 0302"#,
    ),
    (
        "expect-pcie-selects-nothing.yaml",
        "5:7: expect.pcie[0]: selects no devices; expected `class`, `driver` or both",
    ),
    (
        "optional-not-a-threshold.yaml",
        r#"8:16: steps[0].optional[0]: "max_temp_cc" is not a threshold of this step; expected one of the thresholds this step sets: max_temp_c"#,
    ),
    (
        "bad-regex.yaml",
        r#"5:5: expect.cpu.model: invalid regular expression "EPYC ([0-9""#,
    ),
    (
        "disk-target-not-destructive.yaml",
        "6:7: steps[0].disk.target: raw devices are overwritten and their data lost; expected `destructive: true`",
    ),
    (
        "disk-neither-dir-nor-target.yaml",
        "5:5: steps[0].disk: neither `dir` nor `target`; expected `dir`",
    ),
    (
        "disk-block-size-unaligned.yaml",
        "7:7: steps[0].disk.block_size: block size 1000B is not a multiple of 4KiB up to 64MiB",
    ),
    (
        "memtest-unknown-test.yaml",
        "4:20: memtest.skip_tests[1]: test #11 does not exist; expected a test number from 0 to 10",
    ),
    (
        "memtest-stall-longer-than-timeout.yaml",
        "5:3: memtest.stall_timeout: stall timeout 1h is longer than the stage timeout 30m; expected at most 30m",
    ),
    (
        "exec-empty-argv.yaml",
        "6:7: steps[0].exec.argv: an empty command; expected the program and its arguments",
    ),
    (
        "disk-queue-depth-zero.yaml",
        "7:7: steps[0].disk.queue_depth: queue depth 0 is out of range; expected 1 to 256 I/Os in flight",
    ),
    (
        "nic-too-many-streams.yaml",
        "7:7: steps[0].nic.streams: 65 streams; expected 1 to 64",
    ),
    (
        "nic-streams-without-target.yaml",
        "6:7: steps[0].nic.streams: streams without a `target`",
    ),
    (
        "nic-throughput-without-target.yaml",
        "6:7: steps[0].nic.min_mbps: a throughput threshold without a `target`",
    ),
    ("malformed-yaml.yaml", "5:11: malformed YAML: "),
    (
        "alias-bomb.yaml",
        "6:35: aliases here expand the document past 100000 nodes (an alias bomb?)",
    ),
];

#[test]
fn every_bad_suite_is_refused_with_its_location_and_message() {
    let dir = repo().join("tests/bad-suites");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let listed: Vec<&str> = BAD_SUITES.iter().map(|(f, _)| *f).collect();
    for file in &files {
        assert!(
            listed.contains(&file.as_str()),
            "{file} has no expectation in BAD_SUITES"
        );
    }
    for (file, expected) in BAD_SUITES {
        let err = match load_path(&dir.join(file)) {
            Ok(_) => panic!("{file} was accepted"),
            Err(err) => err.to_string(),
        };
        let want = format!("{file}:{expected}");
        assert!(
            err.starts_with(&want),
            "{file}:\n  got:  {err}\n  want: {want}…"
        );
    }
}

#[test]
fn a_bad_suite_reports_every_problem_at_once() {
    let text = "suite: x\ndescription: d\nsteps:\n  - name: a\n    cpu: {duration: 1m}\n    timeout: 10s\n  - name: a\n    memory: {passes: 0}\n";
    let err = load("many.yaml", text.as_bytes()).unwrap_err();
    let lines: Vec<&str> = err.diagnostics().iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        lines,
        [
            "steps[0].timeout",
            "steps[1].name",
            "steps[1].memory.passes"
        ]
    );
}

#[test]
fn a_suite_over_one_mebibyte_is_refused_unread() {
    let mut text =
        String::from("suite: big\ndescription: d\nsteps:\n  - name: a\n    memory: {}\n");
    text.push_str(&format!("# {}\n", "x".repeat(MAX_SUITE_BYTES)));
    let err = load("big.yaml", text.as_bytes()).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "big.yaml:1:1: the file is over 1048576 bytes; expected a suite of at most 1 MiB"
        ),
        "{err}"
    );
    // The reader path stops after the limit instead of reading an endless input.
    let endless = std::io::repeat(b'#');
    let err = kiln_protocol::load_reader("endless.yaml", endless)
        .unwrap_err()
        .to_string();
    assert!(err.contains("over 1048576 bytes"), "{err}");
}

#[test]
fn a_suite_that_is_not_utf8_names_the_line() {
    let err = load("latin1.yaml", b"suite: x\ndescription: caf\xe9\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "latin1.yaml:2:17: the file is not UTF-8 text; expected a UTF-8 YAML file"
    );
}

#[test]
fn billion_laughs_is_refused_not_expanded() {
    // Expanding it would take hours and gigabytes; nextest's terminate-after bounds this test,
    // and `cargo bench -p kiln-protocol` times the refusal.
    let text = std::fs::read(repo().join("tests/bad-suites/alias-bomb.yaml")).unwrap();
    let err = load("bomb.yaml", &text).unwrap_err().to_string();
    assert!(err.contains("alias bomb"), "{err}");
}
