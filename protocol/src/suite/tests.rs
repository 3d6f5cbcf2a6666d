//! The suite model's words, and each check kind's rules as a whole suite meets them: through
//! the loader, which these tests may use and the kinds' own file may not (it sits below it).

use super::*;

#[test]
fn pattern_and_workload_names_are_serdes() {
    for p in Pattern::ALL {
        assert_eq!(serde_json::to_value(p).unwrap(), p.name(), "{p:?}");
    }
    for w in Workload::ALL {
        assert_eq!(serde_json::to_value(w).unwrap(), w.name(), "{w:?}");
    }
}

const WATCH: &str = "suite: soak\ndescription: Idle after the load.\nsteps:\n  - name: cool down\n    watch: {duration: DURATION, max_temp_c: 85}\n";

#[test]
fn a_watch_step_is_planned_with_its_duration_and_threshold() {
    let plan = crate::load("soak.yaml", WATCH.replace("DURATION", "10m").as_bytes())
        .expect("a valid watch suite");
    let step = &plan.steps[0];
    assert_eq!(step.check.kind(), "watch");
    assert_eq!(
        step.check.own_duration(),
        Some(std::time::Duration::from_secs(600))
    );
    // Ten minutes plus half again.
    assert_eq!(step.timeout, std::time::Duration::from_secs(900));
    let limits = step.check.pass_limits();
    assert_eq!(limits.len(), 1);
    assert_eq!(limits[0].0, "max_temp_c");
}

#[test]
fn a_watch_of_no_time_is_refused_where_it_is_written() {
    let err = crate::load("soak.yaml", WATCH.replace("DURATION", "0s").as_bytes())
        .expect_err("a zero watch");
    let text = err.to_string();
    assert!(text.contains("soak.yaml:5:"), "{text}");
    assert!(
        text.contains("steps[0].watch.duration: invalid duration \"0s\""),
        "{text}"
    );
}

#[test]
fn retest_and_peer_rules_out_of_range_are_refused_where_written() {
    let suite = "suite: s\ndescription: d\nretest: {attempts: 1}\ncompare_peers: {min_peers: 1, max_below_median_pct: 150}\nsteps:\n  - name: w\n    watch: {duration: 1s}\n    retest: {attempts: 99}\n";
    let text = crate::load("s.yaml", suite.as_bytes())
        .expect_err("out of range")
        .to_string();
    for wanted in [
        "retest.attempts: 1 attempts; expected 2 to 10",
        "steps[0].retest.attempts: 99 attempts; expected 2 to 10",
        "compare_peers.min_peers: 1 peers; expected at least 2",
        "compare_peers.max_below_median_pct: 150%",
    ] {
        assert!(text.contains(wanted), "{wanted}: {text}");
    }
    let typo = "suite: s\ndescription: d\nretest: {attempt: 3}\nsteps:\n  - name: w\n    watch: {duration: 1s}\n";
    let text = crate::load("s.yaml", typo.as_bytes())
        .expect_err("typo")
        .to_string();
    assert!(
        text.contains("s.yaml:3:") && text.contains("unknown field"),
        "{text}"
    );
}

#[test]
fn a_group_is_planned_as_consecutive_members_stretched_to_its_duration() {
    let text = "suite: g\ndescription: Group.\nretest: {attempts: 2}\nsteps:\n  - name: first\n    exec: {argv: [true]}\n  - name: together\n    parallel:\n      duration: 1h\n      steps:\n        - name: mem\n          memory: {size: 10%, duration: 1m}\n        - name: cpu\n          cpu: {duration: 1m}\n        - name: disk\n          timeout: 5m\n          disk: {dir: /tmp, size: 1GiB}\n  - name: last\n    exec: {argv: [true]}\n";
    let plan = crate::load("g.yaml", text.as_bytes()).expect("a valid group");
    let names: Vec<(usize, &str)> = plan
        .steps
        .iter()
        .map(|s| (s.index, s.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (0, "first"),
            (1, "mem"),
            (2, "cpu"),
            (3, "disk"),
            (4, "last")
        ]
    );
    let hour = std::time::Duration::from_secs(3600);
    let g = plan.steps[2].group.as_ref().expect("a member");
    assert_eq!(
        (g.name.as_str(), g.first, g.members, g.duration),
        ("together", 1, 3, hour)
    );
    assert_eq!(g.cpus, CpuShare::Split);
    assert!(plan.steps[0].group.is_none() && plan.steps[4].group.is_none());
    // Memory and cpu run for the group's hour; the disk keeps its own run, repeated.
    assert_eq!(plan.steps[1].check.own_duration(), Some(hour));
    assert_eq!(plan.steps[2].check.own_duration(), Some(hour));
    assert!(!plan.steps[3].check.stretches());
    // Each member's timeout: the hour plus one run's margin (the disk's written 5m).
    assert_eq!(
        plan.steps[3].timeout,
        hour + std::time::Duration::from_secs(300)
    );
    // The suite's retest is not a member's; a lone step keeps it.
    assert!(plan.steps[1].retest.is_none());
    assert!(plan.steps[0].retest.is_some());
    // The budget counts the group once, at its longest member.
    let longest = plan.steps[1..4].iter().map(|s| s.timeout).max().unwrap();
    assert_eq!(
        plan.steps_budget(),
        plan.steps[0].timeout + longest + plan.steps[4].timeout
    );
    assert!(
        plan.summary()
            .contains("(exec, together: memory+cpu+disk, exec)"),
        "{}",
        plan.summary()
    );
}
