//! The cycles stage against a real SQLite database: clean cycles pass, drift and boots kiln
//! did not cause fail, naming the cycle.

use super::*;
use crate::lifecycle::tests::{identity, request, run_state, script, session, whole_run};
use crate::lifecycle::{
    BootRequest, Exchange, RunStage, Script, SuiteFile, attest, exchange, ingest, lost_contact,
    plan, put_inventory,
};
use crate::store::test_connection;

/// What the run's cycles stage says.
fn cycles_detail(conn: &Connection, run_id: i64) -> String {
    conn.query_row(
        "SELECT detail FROM stages WHERE run_id = ?1 AND name = 'cycles'",
        [run_id],
        |r| r.get(0),
    )
    .unwrap()
}

/// A node with one disk, as a boot of it reports itself.
fn inventory_with(boot_id: &str, disk: bool) -> Inventory {
    let mut inv = Inventory {
        boot_id: Some(boot_id.into()),
        ..Default::default()
    };
    inv.cpu.logical = 4;
    if disk {
        inv.disks = vec![kiln_protocol::wire::DiskInfo {
            name: "sdb".into(),
            serial: Some("KILNSCSI01".into()),
            size_bytes: 64 << 20,
            ..Default::default()
        }];
    }
    inv
}

/// The node's console shows the attestation of the run's current session.
fn console_shows(conn: &Connection, run_id: i64) -> Ended {
    let node: i64 = conn
        .query_row("SELECT node_id FROM runs WHERE id = ?1", [run_id], |r| {
            r.get(0)
        })
        .unwrap();
    let claim = kiln_protocol::attest::Claim {
        run: run_id,
        node,
        proof: kiln_protocol::attest::proof("key", run_id, node),
    };
    let (attested, ended) = attest::attestation(conn, run_id, &claim).unwrap();
    assert_eq!(attested, attest::Attested::Yes);
    ended
}

/// A run of a suite with `cycles` power cycles whose Linux stage passed, attested by the
/// read console: the connection, its boot request, the run.
fn cycles_run(cycles: &str) -> (Connection<'static>, BootRequest, i64) {
    let conn = test_connection();
    let mut req = request(identity(Some("52:54:00:00:00:01"), None));
    req.suite = Some(SuiteFile {
        name: "m".into(),
        text: Ok(format!(
            "suite: m\ndescription: d\ncycles: {cycles}\nsteps:\n  - name: tool\n    exec: {{argv: [true]}}\n"
        )),
    });
    let (Script::Linux { run_id }, _) = script(&conn, &req) else {
        panic!("expected linux")
    };
    attest::console_watched(&conn, run_id).unwrap();
    let _ = exchange(&conn, run_id, "h1", "s1", &session("10.0.0.1")).unwrap();
    // The Linux boot stays up for the collector to cycle it.
    let plan = plan(&conn, run_id).unwrap().unwrap();
    assert_eq!(plan.after, kiln_protocol::wire::After::Hold);
    assert_eq!(plan.cycle, None);
    assert!(put_inventory(&conn, run_id, &inventory_with("b0", true)).unwrap());
    // The boot took its time, as a real one does.
    conn.execute(
        "UPDATE runs SET linux_served_ms = linux_served_ms - 60000, bootstrap_used_ms = bootstrap_used_ms - 60000 WHERE id = ?1",
        [run_id],
    )
    .unwrap();
    let _ = ingest(&conn, run_id, "s1", Some("10.0.0.1"), &whole_run()).unwrap();
    let ended = console_shows(&conn, run_id);
    // The console tail goes on through the cycles.
    let linux: (String, Option<String>) = conn
        .query_row(
            "SELECT verdict, detail FROM stages WHERE run_id = ?1 AND name = 'linux'",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(linux.0, "pass", "{linux:?}");
    assert!(ended.0.is_empty(), "{ended:?}");
    assert_eq!(run_state(&conn, run_id).0, RunStage::Cycles);
    (conn, req, run_id)
}

/// Cycle `k`: the power action goes out, the node boots, its agent exchanges its token and
/// reports `inventory`, and (when `vouched`) its console shows the attestation.
fn cycle(
    conn: &Connection,
    req: &mut BootRequest,
    run_id: i64,
    k: u32,
    inventory: &Inventory,
) -> Reported {
    let due = take_due(conn, now_ms()).unwrap();
    assert_eq!(due.len(), 1, "cycle {k}: {due:?}");
    assert_eq!((due[0].run_id, due[0].cycle), (run_id, k));
    req.bootstrap_hash = format!("boot{k}");
    assert_eq!(script(conn, req).0, Script::Linux { run_id });
    let token = format!("session{k}");
    let (exchanged, _) = exchange(
        conn,
        run_id,
        &req.bootstrap_hash,
        &token,
        &session("10.0.0.1"),
    )
    .unwrap();
    assert_eq!(exchanged, Exchange::Issued);
    let plan = plan(conn, run_id).unwrap().unwrap();
    assert_eq!(plan.cycle.map(|c| c.cycle), Some(k));
    let (reported, _) = report(conn, run_id, k, inventory).unwrap();
    if reported == Reported::Stored && run_state(conn, run_id).1.is_none() {
        // Nothing is judged before the console vouched for this boot.
        assert_eq!(
            state_of(conn, run_id, k),
            Some(crate::store::states::CycleState::Reported)
        );
        let _ = console_shows(conn, run_id);
    }
    reported
}

#[test]
fn three_clean_power_cycles_pass_each_a_new_boot_and_the_last_powers_off() {
    let (conn, mut req, run_id) = cycles_run("{count: 3, kind: cold}");
    for k in 1..=3 {
        let reported = cycle(
            &conn,
            &mut req,
            run_id,
            k,
            &inventory_with(&format!("b{k}"), true),
        );
        assert_eq!(reported, Reported::Stored);
        if k < 3 {
            assert_eq!(run_state(&conn, run_id).1, None);
        }
    }
    let detail = cycles_detail(&conn, run_id);
    assert_eq!(
        detail,
        "3 cold power cycle(s), each a new boot that found the first boot's hardware"
    );
    assert_eq!(run_state(&conn, run_id).1, Some(Verdict::Pass));
    let ids: Vec<String> = conn
        .prepare("SELECT boot_id FROM power_cycles WHERE run_id = ?1 ORDER BY cycle")
        .unwrap()
        .query_map([run_id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids, ["b1", "b2", "b3"]);
}

#[test]
fn a_disk_gone_in_cycle_two_fails_naming_the_cycle_and_the_serial() {
    let (conn, mut req, run_id) = cycles_run("{count: 3, kind: warm}");
    cycle(&conn, &mut req, run_id, 1, &inventory_with("b1", true));
    cycle(&conn, &mut req, run_id, 2, &inventory_with("b2", false));
    let (_, verdict, _) = run_state(&conn, run_id);
    assert_eq!(verdict, Some(Verdict::Fail));
    let detail = cycles_detail(&conn, run_id);
    assert_eq!(
        detail,
        "cycle 2: disk KILNSCSI01 is gone (was 64MiB as sdb)"
    );
    // Nothing more is owed.
    assert!(take_due(&conn, now_ms()).unwrap().is_empty());
}

#[test]
fn boots_kiln_did_not_cause_and_reports_out_of_turn_never_pass() {
    // A boot before the power action went out.
    let (conn, mut req, run_id) = cycles_run("{count: 2, kind: warm}");
    req.bootstrap_hash = "early".into();
    let (answer, _) = script(&conn, &req);
    assert_eq!(
        answer,
        Script::Done {
            run_id,
            verdict: Some(Verdict::Fail)
        }
    );
    let (_, _, reason) = run_state(&conn, run_id);
    let detail = cycles_detail(&conn, run_id);
    assert!(
        detail.starts_with("cycle 1: unexpected reboot"),
        "{detail} {reason:?}"
    );

    // A report for another cycle, or the same boot id again, or a second report.
    let (conn, mut req, run_id) = cycles_run("{count: 2, kind: warm}");
    let _ = take_due(&conn, now_ms()).unwrap();
    req.bootstrap_hash = "boot1".into();
    assert_eq!(script(&conn, &req).0, Script::Linux { run_id });
    let _ = exchange(&conn, run_id, "boot1", "session1", &session("10.0.0.1")).unwrap();
    let (wrong, _) = report(&conn, run_id, 2, &inventory_with("b1", true)).unwrap();
    assert!(
        matches!(wrong, Reported::Refused(ref why) if why.contains("cycle 2's inventory is not expected")),
        "{wrong:?}"
    );
    let (first, _) = report(&conn, run_id, 1, &inventory_with("b1", true)).unwrap();
    assert_eq!(first, Reported::Stored);
    let (other, _) = report(&conn, run_id, 1, &inventory_with("b9", true)).unwrap();
    assert!(matches!(other, Reported::Refused(_)));
    // The agent's retry of the same report is no second report.
    let (retry, _) = report(&conn, run_id, 1, &inventory_with("b1", true)).unwrap();
    assert_eq!(retry, Reported::Stored);
    let _ = console_shows(&conn, run_id);
    // Cycle 1's boot id again: the node never rebooted.
    cycle(&conn, &mut req, run_id, 2, &inventory_with("b1", true));
    let (_, verdict, _) = run_state(&conn, run_id);
    assert_eq!(verdict, Some(Verdict::Fail));
    let detail = cycles_detail(&conn, run_id);
    assert_eq!(
        detail,
        "cycle 2: boot id b1 is cycle 1's: the node did not boot again"
    );

    // A node that never comes back fails by its deadline, naming the cycle.
    let (conn, _, run_id) = cycles_run("{count: 2, kind: cold, boot_timeout: 1m}");
    let now = now_ms();
    let _ = take_due(&conn, now).unwrap();
    let _ = lost_contact(&conn, now + 30_000).unwrap();
    assert_eq!(run_state(&conn, run_id).1, None);
    let _ = lost_contact(&conn, now + 61_000).unwrap();
    assert_eq!(run_state(&conn, run_id).1, Some(Verdict::Fail));
    let detail = cycles_detail(&conn, run_id);
    assert!(
        detail.starts_with(
            "cycle 1: the node never asked for its boot script within 61s of its cold power cycle"
        ),
        "{detail}"
    );

    // A power driver that fails.
    let (conn, _, run_id) = cycles_run("{count: 1, kind: warm}");
    let _ = take_due(&conn, now_ms()).unwrap();
    let _ = power_failed(&conn, run_id, 1, "qmp power driver: no answer").unwrap();
    assert_eq!(run_state(&conn, run_id).1, Some(Verdict::Fail));
}
