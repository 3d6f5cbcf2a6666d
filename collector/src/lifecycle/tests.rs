//! The lifecycle's transitions, each against a real SQLite database.

use super::*;
use crate::memtest::capture::Finding;
use crate::store::test_connection;

const MEMTEST_SUITE: &str = "suite: m\ndescription: d\nmemtest: {passes: 1}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n";

pub(super) fn identity(mac: Option<&str>, serial: Option<&str>) -> NodeIdentity {
    NodeIdentity {
        macs: mac.map(str::to_owned).into_iter().collect(),
        uuid: None,
        serial: serial.map(str::to_owned),
    }
}

pub(super) fn request(identity: NodeIdentity) -> BootRequest {
    BootRequest {
        identity,
        unknown_mode: Mode::Verify,
        default_suite: "m".into(),
        suite: Some(SuiteFile {
            name: "m".into(),
            text: Ok(MEMTEST_SUITE.into()),
        }),
        bootstrap_hash: "h1".into(),
        heartbeat_secs: 60,
        image_digest: None,
        artifacts: Some(r#"{"initramfs.img":"bb","vmlinuz":"aa"}"#.into()),
        max_unknown_nodes: 100,
        source: Some("10.0.0.1".into()),
        bounds: crate::config::RunBounds::known(),
        attestation: kiln_protocol::attest::Attestation::Required,
        runs_per_day: 50,
    }
}

/// A session exchange from the node's own address.
pub(super) fn session(source: &str) -> SessionRequest {
    SessionRequest {
        source: Some(source.into()),
        attest_key: "key".into(),
    }
}

/// A suite without memtest: the first boot hands out Linux.
fn linux_only() -> SuiteFile {
    SuiteFile {
        name: "m".into(),
        text: Ok(
            "suite: m\ndescription: d\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n".into(),
        ),
    }
}

pub(super) fn script(conn: &Connection, req: &BootRequest) -> (Script, Ended) {
    match boot(conn, req).unwrap() {
        (BootDecision::Script { script, .. }, ended) => (script, ended),
        (other, _) => panic!("{other:?}"),
    }
}

/// Boots the node into a new run's memtest stage; returns the run.
fn start_memtest(conn: &Connection, req: &BootRequest) -> i64 {
    match script(conn, req).0 {
        Script::Memtest { run_id, .. } => run_id,
        other => panic!("expected memtest, got {other:?}"),
    }
}

fn finding(pass: bool) -> Finding {
    Finding {
        pass,
        detail: if pass { "1 pass, 0 errors" } else { "errors" }.into(),
        reading: None,
        screen: String::new(),
        raw: Vec::new(),
        secs: 1,
    }
}

pub(super) fn run_state(
    conn: &Connection,
    run_id: i64,
) -> (RunStage, Option<Verdict>, Option<String>) {
    row(
        conn,
        "SELECT stage, verdict, progress FROM runs WHERE id = ?1",
        [run_id],
        |r| {
            Ok((
                r.get::<Sql<RunStage>>(0)?.0,
                r.get::<Option<Sql<Verdict>>>(1)?.map(|v| v.0),
                r.get(2)?,
            ))
        },
    )
    .unwrap()
}

/// A run in its Linux stage, and the console of a node that died of a fatal machine check
/// (QEMU 7.2, captured).
fn linux_run_and_fatal_mce_console() -> (crate::store::sql::Connection<'static>, i64, Vec<u8>) {
    let mce = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/console/qemu-7.2-fatal-mce.log"),
    )
    .unwrap();
    let conn = test_connection();
    let mut req = request(identity(Some("52:54:00:00:00:01"), None));
    req.suite = Some(linux_only());
    let (Script::Linux { run_id }, _) = script(&conn, &req) else {
        panic!("expected linux")
    };
    (conn, run_id, mce)
}

#[test]
fn a_kernel_panic_on_the_console_fails_the_run_at_once_and_only_once() {
    let (conn, run_id, mce) = linux_run_and_fatal_mce_console();
    let ended = kernel_panicked(&conn, run_id, &mce).unwrap();
    assert_eq!(ended.0, vec![(run_id, Stage::Linux)]);
    let (_, verdict, _) = run_state(&conn, run_id);
    assert_eq!(verdict, Some(Verdict::Fail));
    let (reason, tail): (String, Vec<u8>) = conn
        .query_row(
            "SELECT verdict_reason, console_tail FROM runs WHERE id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        reason,
        "the node's kernel panicked; the console shows machine check on CPU 0, bank 9, status 0xbd000000000000c0, address 0x2000000 (Uncorrected error without MCA Recovery); kernel panic: Fatal local machine check"
    );
    assert_eq!(tail, mce);
    // A closed run is not closed again, nor its reason rewritten.
    assert!(
        kernel_panicked(&conn, run_id, b"Kernel panic - not syncing: other")
            .unwrap()
            .0
            .is_empty()
    );
    let again: String = conn
        .query_row(
            "SELECT verdict_reason FROM runs WHERE id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(again, reason);
}

#[test]
fn lost_contact_and_an_unexpected_reboot_say_what_the_console_showed() {
    let (conn, run_id, mce) = linux_run_and_fatal_mce_console();
    console_tail(&conn, run_id, &mce).unwrap();
    let (lost, _) = lost_contact(&conn, now_ms() + 3_600_000).unwrap();
    assert_eq!(lost, vec![run_id]);
    let (_, verdict, _) = run_state(&conn, run_id);
    assert_eq!(verdict, Some(Verdict::Fail));
    let reason: String = conn
        .query_row(
            "SELECT verdict_reason FROM runs WHERE id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        reason,
        "lost contact: no word from the agent for over 60s; the console shows machine check on CPU 0, bank 9, status 0xbd000000000000c0, address 0x2000000 (Uncorrected error without MCA Recovery); kernel panic: Fatal local machine check"
    );
    // A closed run's tail is not written over.
    console_tail(&conn, run_id, b"later").unwrap();
    let kept: Vec<u8> = conn
        .query_row(
            "SELECT console_tail FROM runs WHERE id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, mce);

    // The node's next run dies mid-stage and the node reboots.
    let mut req = request(identity(Some("52:54:00:00:00:01"), None));
    req.suite = Some(linux_only());
    req.bootstrap_hash = "h2".into();
    let _ = set_mode(&conn, &Selector::All(true), Mode::Verify).unwrap();
    let (Script::Linux { run_id: second }, _) = script(&conn, &req) else {
        panic!("expected a second linux run")
    };
    console_tail(
        &conn,
        second,
        b"[ 5.0] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n",
    )
    .unwrap();
    // A reboot comes after the node's POST, not moments later as iPXE retrying would.
    conn.execute(
        "UPDATE runs SET linux_served_ms = linux_served_ms - 60000 WHERE id = ?1",
        [second],
    )
    .unwrap();
    let _ = script(&conn, &req);
    let reason: String = conn
        .query_row(
            "SELECT detail FROM stages WHERE run_id = ?1 AND name = 'linux'",
            [second],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        reason.starts_with("unexpected reboot")
            && reason.ends_with("the console shows kernel panic: VFS: Unable to mount root fs"),
        "{reason}"
    );
}

#[test]
fn a_boot_asks_for_the_suite_file_before_it_changes_anything() {
    let conn = test_connection();
    let mut req = request(identity(Some("52:54:00:00:00:01"), None));
    req.suite = None;
    let (decision, _) = boot(&conn, &req).unwrap();
    assert_eq!(decision, BootDecision::NeedSuite("m".into()));
    let runs: i64 = conn
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 0);
}

#[test]
fn a_bootstrap_token_used_twice_fails_the_run() {
    let conn = test_connection();
    let mut req = request(identity(Some("52:54:00:00:00:01"), None));
    req.suite = Some(linux_only());
    let (Script::Linux { run_id }, _) = script(&conn, &req) else {
        panic!("expected linux")
    };
    assert_eq!(
        exchange(&conn, run_id, "h1", "s1", &session("10.0.0.1"))
            .unwrap()
            .0,
        Exchange::Issued
    );
    assert_eq!(
        exchange(&conn, run_id, "h1", "s2", &session("10.0.0.1"))
            .unwrap()
            .0,
        Exchange::Reused
    );
    assert_eq!(
        access(&conn, run_id, "s1").unwrap(),
        RunAccess::Closed(Verdict::Fail)
    );
    assert_eq!(access(&conn, run_id, "s2").unwrap(), RunAccess::Denied);
    let reason: String = conn
        .query_row(
            "SELECT verdict_reason FROM runs WHERE id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        reason.contains("bootstrap token was used twice"),
        "{reason}"
    );
}

#[test]
fn a_stale_capture_finding_is_dropped_and_ends_nothing() {
    let conn = test_connection();
    let req = request(identity(Some("52:54:00:00:00:01"), None));
    let run_id = start_memtest(&conn, &req);
    // The node reboots in the middle of memtest86+: the stage fails and its capture stops.
    let (done, ended) = script(&conn, &req);
    assert_eq!(
        done,
        Script::Done {
            run_id,
            verdict: Some(Verdict::Fail)
        }
    );
    assert!(ended.0.contains(&(run_id, Stage::Memtest)));
    // The old capture's late "pass" changes nothing and may not reset the node.
    let (applied, ended) = memtest_finished(&conn, run_id, &finding(true)).unwrap();
    assert_eq!(applied, Applied::Stale);
    assert!(ended.0.is_empty());
    assert_eq!(run_state(&conn, run_id).1, Some(Verdict::Fail));
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM memtest_results", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 0);
}

#[test]
fn progress_belongs_to_its_stage() {
    let conn = test_connection();
    let req = request(identity(Some("52:54:00:00:00:01"), None));
    let run_id = start_memtest(&conn, &req);
    let reading = Progress {
        step: 0,
        name: "memtest86+".into(),
        fraction: 0.99,
        status: Some("pass 1 test #9".into()),
    };
    memtest_progress(&conn, run_id, &reading).unwrap();
    assert!(run_state(&conn, run_id).2.unwrap().contains("test #9"));
    let (applied, _) = memtest_finished(&conn, run_id, &finding(true)).unwrap();
    assert_eq!(applied, Applied::Yes);
    // Linux is booting: memtest's reading is gone, and a late one is not written.
    assert_eq!(run_state(&conn, run_id), (RunStage::Linux, None, None));
    memtest_progress(&conn, run_id, &reading).unwrap();
    assert_eq!(run_state(&conn, run_id).2, None);
    // The node reboots into Linux and gets the image with this boot's token.
    assert_eq!(script(&conn, &req).0, Script::Linux { run_id });
    // What the run was reached with is kept: the artifacts' digests, the collector's version.
    let detail = crate::store::queries::run_detail(&conn, run_id)
        .unwrap()
        .unwrap();
    let artifacts: Vec<(&str, &str)> = detail
        .provenance
        .artifacts
        .iter()
        .map(|(f, d)| (f.as_str(), d.as_str()))
        .collect();
    assert_eq!(artifacts, [("initramfs.img", "bb"), ("vmlinuz", "aa")]);
    assert_eq!(
        detail.provenance.collector_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_node_known_only_by_its_serial_keeps_its_mode() {
    let conn = test_connection();
    let req = request(identity(None, Some("SN-9")));
    let (decision, _) = boot(&conn, &req).unwrap();
    let BootDecision::Script { node_id, .. } = decision else {
        panic!()
    };
    let (_, ended) = set_mode(&conn, &Selector::Node(node_id), Mode::Hold).unwrap();
    // The open run ended with the operator's reason.
    assert!(ended.0.contains(&(1, Stage::Memtest)), "{ended:?}");
    let reason: String = conn
        .query_row("SELECT verdict_reason FROM runs WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        reason,
        "the operator set the node's mode to hold before the run finished"
    );
    let (decision, _) = boot(&conn, &req).unwrap();
    assert_eq!(
        decision,
        BootDecision::Script {
            node_id,
            serial: Some("SN-9".into()),
            script: Script::Hold("mode hold".into())
        }
    );
    let nodes: i64 = conn
        .query_row("SELECT count(*) FROM nodes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(nodes, 1);
}

#[test]
fn an_operator_re_arm_ends_the_open_run_as_incomplete() {
    let conn = test_connection();
    let req = request(identity(Some("52:54:00:00:00:01"), None));
    let run_id = start_memtest(&conn, &req);
    let (n, ended) = set_mode(&conn, &Selector::All(true), Mode::Verify).unwrap();
    assert_eq!(n, 1);
    assert!(ended.0.contains(&(run_id, Stage::Memtest)));
    assert_eq!(run_state(&conn, run_id).1, Some(Verdict::Incomplete));
    // `all: false` selects nothing.
    let (n, _) = set_mode(&conn, &Selector::All(false), Mode::Hold).unwrap();
    assert_eq!(n, 0);
    // The next boot starts a new run.
    let next = start_memtest(&conn, &req);
    assert_ne!(next, run_id);
}

#[test]
fn the_linux_stage_is_handed_out_once_per_boot() {
    let conn = test_connection();
    let mut req = request(identity(Some("52:54:00:00:00:01"), None));
    req.suite = Some(linux_only());
    let (Script::Linux { run_id }, _) = script(&conn, &req) else {
        panic!("expected linux")
    };
    // The bootstrap token is no session token, and is good for one exchange.
    assert_eq!(access(&conn, run_id, "h1").unwrap(), RunAccess::Denied);
    assert_eq!(
        exchange(&conn, run_id, "h2", "s1", &session("10.0.0.1"))
            .unwrap()
            .0,
        Exchange::Denied
    );
    assert_eq!(
        exchange(&conn, run_id, "h1", "s1", &session("10.0.0.1"))
            .unwrap()
            .0,
        Exchange::Issued
    );
    assert_eq!(access(&conn, run_id, "s1").unwrap(), RunAccess::Open);
    req.bootstrap_hash = "h2".into();
    let (again, _) = script(&conn, &req);
    assert_eq!(
        again,
        Script::Done {
            run_id,
            verdict: Some(Verdict::Fail)
        }
    );
    assert_eq!(access(&conn, run_id, "h2").unwrap(), RunAccess::Denied);
    assert_eq!(
        access(&conn, run_id, "s1").unwrap(),
        RunAccess::Closed(Verdict::Fail)
    );
}

/// A batch with a run's whole story: started, its one step passed, finished.
pub(super) fn whole_run() -> EventBatch {
    use kiln_protocol::wire::{Event, Outcome, StepReport};
    let ev = |seq, body| Event {
        seq,
        at_ms: 1,
        body,
    };
    EventBatch {
        events: vec![
            ev(
                1,
                EventBody::RunStarted {
                    suite: "m".into(),
                    steps: 1,
                    agent: "test".into(),
                },
            ),
            ev(
                2,
                EventBody::StepFinished {
                    report: StepReport {
                        step: 0,
                        name: "tool".into(),
                        kind: "exec".into(),
                        outcome: Outcome::Pass,
                        metrics: vec![],
                        duration_ms: 1,
                        attempts: vec![],
                    },
                },
            ),
            ev(
                3,
                EventBody::RunFinished {
                    verdict: Verdict::Pass,
                },
            ),
        ],
    }
}

/// A node booted into a new run's Linux stage (no memtest): the connection, its request,
/// the run.
fn linux_stage() -> (Connection<'static>, BootRequest, i64) {
    let conn = test_connection();
    let mut req = request(identity(Some("52:54:00:00:00:01"), None));
    req.suite = Some(linux_only());
    let (Script::Linux { run_id }, _) = script(&conn, &req) else {
        panic!("expected linux")
    };
    (conn, req, run_id)
}

#[test]
fn after_memtest_a_second_source_asking_for_linux_fails_the_run_as_a_security_event() {
    let conn = test_connection();
    let node = request(identity(Some("52:54:00:00:00:01"), None));
    let run_id = start_memtest(&conn, &node);
    let (applied, _) = memtest_finished(&conn, run_id, &finding(true)).unwrap();
    assert_eq!(applied, Applied::Yes);
    // The attacker asks first, after memtest86+ passed, and exchanges the token.
    let mut attacker = node.clone();
    attacker.source = Some("10.0.0.66".into());
    assert_eq!(script(&conn, &attacker).0, Script::Linux { run_id });
    let from_attacker = session("10.0.0.66");
    assert_eq!(
        exchange(&conn, run_id, "h1", "s1", &from_attacker)
            .unwrap()
            .0,
        Exchange::Issued
    );
    // The real node's request fails the run, naming both.
    let mut real = node.clone();
    real.bootstrap_hash = "h2".into();
    let (answer, ended) = script(&conn, &real);
    assert_eq!(
        answer,
        Script::Done {
            run_id,
            verdict: Some(Verdict::Fail)
        }
    );
    assert!(ended.0.contains(&(run_id, Stage::Linux)));
    let detail: String = conn
        .query_row(
            "SELECT detail FROM stages WHERE run_id = ?1 AND name = 'linux'",
            [run_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        detail,
        "security: the linux stage was asked for a second time in this boot: handed out to 10.0.0.66, asked again from 10.0.0.1 after its token was exchanged"
    );
}

#[test]
fn ipxe_retrying_from_the_same_address_before_the_exchange_gets_the_stage_again_with_a_new_token() {
    let (conn, mut req, run_id) = linux_stage();
    req.bootstrap_hash = "h2".into();
    assert_eq!(script(&conn, &req).0, Script::Linux { run_id });
    // The first answer's token is dead; the second's works.
    assert_eq!(
        exchange(&conn, run_id, "h1", "s1", &session("10.0.0.1"))
            .unwrap()
            .0,
        Exchange::Denied
    );
    assert_eq!(
        exchange(&conn, run_id, "h2", "s1", &session("10.0.0.1"))
            .unwrap()
            .0,
        Exchange::Issued
    );
    // A session used from another address fails the run.
    let (ingested, _) = ingest(&conn, run_id, "s1", Some("10.0.0.9"), &whole_run()).unwrap();
    assert_eq!(ingested, Ingested::Closed(Verdict::Fail));
    let reason: String = conn
        .query_row(
            "SELECT verdict_reason FROM runs WHERE id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        reason,
        "security: the run's session was opened from 10.0.0.1 and used again from 10.0.0.9"
    );
}

#[test]
fn a_read_console_that_never_shows_the_attestation_makes_the_run_an_error_after_the_grace() {
    let (conn, _, run_id) = linux_stage();
    attest::console_watched(&conn, run_id).unwrap();
    let _ = exchange(&conn, run_id, "h1", "s1", &session("10.0.0.1")).unwrap();
    let (ingested, _) = ingest(&conn, run_id, "s1", Some("10.0.0.1"), &whole_run()).unwrap();
    assert!(matches!(ingested, Ingested::Acked { acked: 3, .. }));
    // Every event is in, but the console has not vouched: the run waits.
    assert_eq!(run_state(&conn, run_id).1, None);
    let now = now_ms();
    let (lost, _) = lost_contact(&conn, now + attest::GRACE_MS / 2).unwrap();
    assert!(lost.is_empty());
    assert_eq!(run_state(&conn, run_id).1, None);
    // Past the grace (the agent silent longer than its heartbeat too): an error that says
    // why, not lost contact.
    let _ = lost_contact(&conn, now + attest::GRACE_MS + 120_000).unwrap();
    assert_eq!(run_state(&conn, run_id).1, Some(Verdict::Error));
    let findings: String = conn
        .query_row("SELECT findings FROM runs WHERE id = ?1", [run_id], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        findings.contains(
            "security: the node's console is read, but it never showed this run's attestation"
        ),
        "{findings}"
    );
}

#[test]
fn a_restart_leaves_the_stages_another_live_collector_reads_and_ends_its_own_leases() {
    use crate::store::leases::{self, Acquired};
    let conn = test_connection();
    let first = start_memtest(&conn, &request(identity(Some("52:54:00:00:00:01"), None)));
    let second = start_memtest(&conn, &request(identity(Some("52:54:00:00:00:02"), None)));
    let node_of = |run: i64| -> i64 {
        conn.query_row("SELECT node_id FROM runs WHERE id = ?1", [run], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let now = crate::store::now_ms();
    // This collector read the first node's console before it died; another live one reads
    // the second's.
    let mine = format!("console:{}", node_of(first));
    let theirs = format!("console:{}", node_of(second));
    assert!(matches!(
        leases::acquire(&conn, &mine, "a:1", now),
        Ok(Acquired::New(1))
    ));
    assert!(matches!(
        leases::acquire(&conn, &theirs, "b:1", now),
        Ok(Acquired::New(1))
    ));
    let restarted = collector_started(&conn, "a:1").unwrap();
    assert_eq!(restarted.memtests, [first]);
    assert_eq!(
        run_state(&conn, second).1,
        None,
        "another collector's stage was failed"
    );
    let held: Vec<(String, String)> = leases::held(&conn)
        .unwrap()
        .into_iter()
        .map(|(r, o, _, _)| (r, o))
        .collect();
    assert_eq!(held, [(theirs, "b:1".to_owned())]);
}

#[test]
fn a_memtest_stage_whose_reader_died_is_repeated_once_and_never_passes() {
    let conn = test_connection();
    let node = request(identity(Some("52:54:00:00:00:01"), None));
    let first = start_memtest(&conn, &node);
    read_under_lease(&conn, first, "a:1");
    // The collector dies and comes back: the stage fails, and the node is armed again.
    let restarted = collector_started(&conn, "a:1").unwrap();
    assert_eq!(restarted.memtests, [first]);
    assert_eq!(restarted.rearmed.len(), 1);
    let (_, verdict, _) = run_state(&conn, first);
    assert_eq!(verdict, Some(Verdict::Fail));
    let detail: String = conn
        .query_row(
            "SELECT detail FROM stages WHERE run_id = ?1 AND name = 'memtest'",
            [first],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        detail.ends_with("the node is re-armed once and runs again"),
        "{detail}"
    );
    // Its next boot starts the repeat, which says what it repeats.
    let second = start_memtest(&conn, &node);
    assert_ne!(second, first);
    let repeats: Option<i64> = conn
        .query_row("SELECT rearm_of FROM runs WHERE id = ?1", [second], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(repeats, Some(first));
    read_under_lease(&conn, second, "a:1");
    // The collector dies again during the repeat: failed, and not repeated again.
    let restarted = collector_started(&conn, "a:1").unwrap();
    assert_eq!(restarted.memtests, [second]);
    assert!(restarted.rearmed.is_empty());
    let detail: String = conn
        .query_row(
            "SELECT detail FROM stages WHERE run_id = ?1 AND name = 'memtest'",
            [second],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        detail.contains(&format!("already repeated run {first}")),
        "{detail}"
    );
    // Not armed: its next boot shows the verdict, no third run.
    assert!(matches!(script(&conn, &node).0, Script::Done { run_id, .. } if run_id == second));
    // An operator's own arm is a fresh run, not a repeat.
    let _ = set_mode(
        &conn,
        &Selector::Mac("52:54:00:00:00:01".into()),
        Mode::Verify,
    )
    .unwrap();
    let third = start_memtest(&conn, &node);
    let repeats: Option<i64> = conn
        .query_row("SELECT rearm_of FROM runs WHERE id = ?1", [third], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(repeats, None);
}

/// Collector `owner` reads `run`'s console under its lease, as the one that hands a node its
/// memtest stage does within moments.
fn read_under_lease(conn: &Connection, run: i64, owner: &str) {
    let node: i64 = conn
        .query_row("SELECT node_id FROM runs WHERE id = ?1", [run], |r| {
            r.get(0)
        })
        .unwrap();
    let now = crate::store::now_ms();
    let resource = format!("console:{node}");
    let _ = crate::store::leases::acquire(conn, &resource, owner, now).unwrap();
}

/// Another collector handed the node its stage a moment ago and has not leased its console
/// yet: a collector starting up now leaves it alone (the lease rounds judge it after the
/// grace); once the grace is over with still nobody reading, the stage fails as a lost reader.
#[test]
fn a_restart_leaves_a_stage_just_handed_out_and_fails_one_nobody_read_past_the_grace() {
    use crate::store::leases::UNLEASED_GRACE_MS;
    let conn = test_connection();
    let run = start_memtest(&conn, &request(identity(Some("52:54:00:00:00:01"), None)));
    let restarted = collector_started(&conn, "b:1").unwrap();
    assert!(restarted.memtests.is_empty(), "{restarted:?}");
    assert!(restarted.rearmed.is_empty(), "{restarted:?}");
    assert_eq!(
        run_state(&conn, run).1,
        None,
        "a stage just handed out was failed"
    );
    let past = crate::store::now_ms() - UNLEASED_GRACE_MS - 1_000;
    let _ = conn
        .execute(
            "UPDATE stages SET started_ms = ?2 WHERE run_id = ?1 AND name = 'memtest'",
            params![run, past],
        )
        .unwrap();
    let restarted = collector_started(&conn, "b:1").unwrap();
    assert_eq!(restarted.memtests, [run]);
    assert_eq!(restarted.rearmed.len(), 1);
    assert_eq!(run_state(&conn, run).1, Some(Verdict::Fail));
}

/// A takeover that comes after the reader's own verdict (the lease changed hands a moment
/// late) leaves the run alone: its memtest86+ passed, Linux comes next, nothing is re-armed.
#[test]
fn a_reader_lost_after_its_verdict_came_in_changes_nothing() {
    let conn = test_connection();
    let run = start_memtest(&conn, &request(identity(Some("52:54:00:00:00:01"), None)));
    let _ = memtest_finished(&conn, run, &finding(true)).unwrap();
    let before = run_state(&conn, run);
    assert_eq!(before.1, None, "the run is open");
    let cause = "the collector reading its console stopped renewing its lease";
    assert_eq!(reader_lost(&conn, run, cause).unwrap(), None);
    assert_eq!(run_state(&conn, run), before);
    let rearmed: Option<i64> = conn
        .query_row(
            "SELECT n.rearm_of FROM nodes n JOIN runs r ON r.node_id = n.id WHERE r.id = ?1",
            [run],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rearmed, None);
}
