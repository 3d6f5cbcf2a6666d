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
