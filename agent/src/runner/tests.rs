use super::*;
use std::sync::Mutex;

#[derive(Default)]
struct Recorder(Mutex<Vec<EventBody>>);

impl EventSink for Recorder {
    fn emit(&self, body: EventBody) {
        self.0.lock().unwrap().push(body);
    }
}

fn plan(steps: &str) -> Plan {
    let text = format!("suite: t\ndescription: runner test\nsteps:\n{steps}");
    kiln_protocol::load("t.yaml", text.as_bytes()).unwrap()
}

fn exec(name: &str, argv: &str, extra: &str) -> String {
    format!("  - name: {name}\n{extra}    exec: {{argv: {argv}}}\n")
}

#[test]
fn a_skipped_check_with_a_threshold_it_needed_fails_unless_optional() {
    let skipped = || CheckOutput {
        skip: Some("no physical network interfaces on this node".into()),
        ..CheckOutput::default()
    };
    let sink: Arc<dyn EventSink> = Arc::new(Recorder::default());
    let nic = |extra: &str| {
        plan(&format!("  - name: nic\n    nic: {{link: true{extra}}}\n"))
            .steps
            .remove(0)
    };
    // No threshold: a skip, said as such.
    let (o, _) = finish(&nic(""), skipped(), vec![], &sink);
    assert!(matches!(o, Outcome::Skip { .. }), "{o:?}");
    // `max_errors` asked for and nothing measured: never a pass.
    let (o, _) = finish(&nic(", max_errors: 0"), skipped(), vec![], &sink);
    let Outcome::Fail { faults } = o else {
        panic!("an unmeasured threshold passed as a skip: {o:?}")
    };
    assert_eq!(faults[0].code, "threshold.max_errors.unmeasured");
    // Marked optional: a skip again.
    let mut step = nic(", max_errors: 0");
    step.optional = vec!["max_errors".into()];
    let (o, _) = finish(&step, skipped(), vec![], &sink);
    assert!(matches!(o, Outcome::Skip { .. }), "{o:?}");
}

#[test]
fn outcomes_combine_into_the_verdict_and_every_event_is_emitted() {
    let plan = plan(&(exec("ok", "[true]", "") + &exec("bad", "[false]", "")));
    let sink = Arc::new(Recorder::default());
    let report = run(
        &plan,
        &RunOptions::default(),
        &Interrupt::new(),
        sink.clone(),
    );
    assert_eq!(report.steps[0].outcome, Outcome::Pass);
    let Outcome::Fail { faults } = &report.steps[1].outcome else {
        panic!("{:?}", report.steps[1])
    };
    assert_eq!(faults[0].code, "exec.exit_code");
    assert_eq!(report.verdict, Verdict::Fail);
    let events = sink.0.lock().unwrap();
    assert!(matches!(
        events.first(),
        Some(EventBody::RunStarted { steps: 2, .. })
    ));
    assert!(matches!(
        events.last(),
        Some(EventBody::RunFinished {
            verdict: Verdict::Fail
        })
    ));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, EventBody::StepFinished { .. }))
            .count(),
        2
    );
}

#[test]
fn a_step_past_its_timeout_is_killed_and_reported_as_an_error() {
    let plan = plan(&exec("slow", "[sleep, '30']", "    timeout: 1s\n"));
    let started = Instant::now();
    let report = run(
        &plan,
        &RunOptions::default(),
        &Interrupt::new(),
        Arc::new(Recorder::default()),
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the sleep was not killed"
    );
    assert_eq!(
        report.steps[0].outcome,
        Outcome::Error {
            message: "timed out after 1s".into()
        }
    );
    assert_eq!(report.verdict, Verdict::Error);
}

#[test]
fn an_interrupt_stops_the_run_and_still_yields_a_report() {
    let plan = plan(&(exec("first", "[sleep, '30']", "") + &exec("second", "[true]", "")));
    let interrupt = Interrupt::new();
    let trigger = interrupt.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        trigger.trigger();
    });
    let report = run(
        &plan,
        &RunOptions::default(),
        &interrupt,
        Arc::new(Recorder::default()),
    );
    assert!(report.interrupted);
    assert_eq!(report.steps.len(), 1, "the second step must not start");
    assert_eq!(
        report.steps[0].outcome,
        Outcome::Error {
            message: "interrupted by the operator".into()
        }
    );
    assert_eq!(report.verdict, Verdict::Error);
}

#[test]
fn expect_mismatch_fails_the_run_with_that_fault() {
    let text = "suite: t\ndescription: d\nexpect:\n  cpu: {min_logical: 4096}\nsteps:\n  - name: ok\n    exec: {argv: [true]}\n";
    let plan = kiln_protocol::load("t.yaml", text.as_bytes()).unwrap();
    let report = run(
        &plan,
        &RunOptions::default(),
        &Interrupt::new(),
        Arc::new(Recorder::default()),
    );
    let Some(Outcome::Fail { faults }) = &report.expect else {
        panic!("{:?}", report.expect)
    };
    assert_eq!(faults[0].code, "expect.cpu.min_logical");
    assert_eq!(report.verdict, Verdict::Fail);
}

#[test]
fn exec_metrics_meet_their_thresholds() {
    let steps = r#"  - name: tool
    exec:
      argv:
        - sh
        - -c
        - "echo '{\"score\": 42}' > \"$KILN_METRICS\""
      metrics: {score: {min: 50}}
"#;
    let report = run(
        &plan(steps),
        &RunOptions::default(),
        &Interrupt::new(),
        Arc::new(Recorder::default()),
    );
    let Outcome::Fail { faults } = &report.steps[0].outcome else {
        panic!("{:?}", report.steps[0])
    };
    assert_eq!(
        faults[0].message,
        "score 42 is below the minimum 50 (score.min)"
    );
}

#[test]
fn a_group_runs_its_members_together_until_its_end_and_each_keeps_its_outcome() {
    let dir = std::env::temp_dir().join(format!("kiln-group-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let count = |name: &str| dir.join(format!("{name}.count"));
    let member = |name: &str, tail: &str| {
        format!(
            "        - name: {name}\n          exec: {{argv: [sh, -c, \"echo x >> {}; sleep 0.3{tail}\"]}}\n",
            count(name).display()
        )
    };
    let plan = plan(&format!(
        "  - name: together\n    parallel:\n      duration: 2s\n      steps:\n{}{}{}",
        member("a", ""),
        member("b", "; exit 3"),
        exec("after", "[true]", "")
    ));
    assert_eq!(plan.steps.len(), 3);
    let sink = Arc::new(Recorder::default());
    let report = run(
        &plan,
        &RunOptions::default(),
        &Interrupt::new(),
        sink.clone(),
    );
    let outcomes: Vec<&str> = report.steps.iter().map(|s| s.outcome.name()).collect();
    assert_eq!(outcomes, ["pass", "fail", "pass"]);
    assert_eq!(report.verdict, Verdict::Fail);
    // Run again back to back until the group's two seconds had passed.
    for name in ["a", "b"] {
        let runs = std::fs::read_to_string(count(name))
            .unwrap()
            .lines()
            .count();
        assert!(runs >= 4, "{name} ran {runs} times");
    }
    assert!(report.steps[0].duration_ms >= 2000, "{:?}", report.steps[0]);
    // Together: both announced before either finished.
    let events = sink.0.lock().unwrap();
    let order: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            EventBody::StepStarted { name, .. } => Some(format!("start {name}")),
            EventBody::StepFinished { report } => Some(format!("end {}", report.name)),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "start a",
            "start b",
            "end a",
            "end b",
            "start after",
            "end after"
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
