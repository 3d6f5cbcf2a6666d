//! The statements against a real SQLite database.

use super::nodes::{NODE_PROGRESS_SQL, NODE_ROWS_SQL, ROWS_AT_ONCE, TALLY_SQL};
use super::runs::{FAILED_STAGES_SQL, FAILED_STEPS_SQL};
use super::waivers::waived;
use super::*;

/// The query plan's lines for `sql`.
fn plan(conn: &Connection, sql: &str) -> Vec<String> {
    let conn = conn.as_sqlite().unwrap();
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
    stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn the_failures_statements_spell_the_stored_names() {
    use kiln_protocol::api::Word;
    let fail = Outcome::Fail { faults: vec![] }.name();
    let error = Outcome::Error {
        message: String::new(),
    }
    .name();
    assert!(FAILED_STEPS_SQL.contains(&format!("s.outcome IN ('{fail}', '{error}')")));
    assert!(FAILED_STAGES_SQL.contains(&format!("s.verdict = '{}'", Verdict::Fail.word())));
}

#[test]
fn pages_scan_the_nodes_once_and_search_everything_else_by_index() {
    let conn = crate::store::test_connection();
    for sql in [NODE_ROWS_SQL, NODE_PROGRESS_SQL, TALLY_SQL] {
        let lines = plan(&conn, sql);
        let scans: Vec<&String> = lines.iter().filter(|l| l.starts_with("SCAN")).collect();
        // The node list itself, and the few MACs one node's subquery (`m`) produced.
        assert!(
            scans
                .iter()
                .all(|l| l.starts_with("SCAN n") || *l == "SCAN m"),
            "a full scan besides the node list: {lines:#?}"
        );
    }
    // The node list comes in rack/slot order from its index, and each node's MACs in order
    // from theirs: a page of the dashboard reads its rows, not every node, and sorts nothing.
    for sql in [NODE_ROWS_SQL, NODE_PROGRESS_SQL] {
        let lines = plan(&conn, sql);
        assert!(
            lines.iter().all(|l| !l.contains("TEMP B-TREE")),
            "{lines:#?}"
        );
    }
    // The failures of every listed run: one search per run id in the index of failed rows
    // alone, no scan of a table, no reading of the steps that passed.
    for (sql, index) in [
        (FAILED_STEPS_SQL, "steps_failed"),
        (FAILED_STAGES_SQL, "stages_failed"),
    ] {
        let lines = plan(&conn, sql);
        assert!(
            lines
                .iter()
                .all(|l| !l.starts_with("SCAN") || l.starts_with("SCAN ids VIRTUAL TABLE")),
            "{sql}: {lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains(&format!("INDEX {index} "))),
            "{sql}: {lines:#?}"
        );
    }
    for sql in [
        "SELECT node_id FROM node_macs WHERE mac = ?1",
        "SELECT mac FROM node_macs WHERE node_id = ?1",
        "SELECT id FROM runs WHERE token_hash = ?1 AND verdict IS NULL",
        "SELECT report FROM steps WHERE run_id = ?1 ORDER BY step",
        "SELECT seq FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
        "SELECT id FROM nodes WHERE serial = ?1 AND ad_hoc = 0 ORDER BY id LIMIT 1",
    ] {
        let lines = plan(&conn, sql);
        assert!(
            lines.iter().all(|l| !l.starts_with("SCAN")),
            "{sql}: {lines:#?}"
        );
    }
}

/// A batch seeded straight into the tables: node `n` in `batch` at `rack/slot`, with a run
/// when `verdict` is given (`Some(None)`: running).
fn seed_node(conn: &Connection, n: i64, batch: &str, verdict: Option<Option<Verdict>>) {
    conn.execute(
        "INSERT INTO nodes (id, rack, slot, hostname, batch, created_ms, last_seen_ms) VALUES (?1, 'R1', ?2, ?3, ?4, 0, 0)",
        params![n, format!("U{n:02}"), format!("n{n}"), batch],
    )
    .unwrap();
    if let Some(verdict) = verdict {
        conn.execute(
            "INSERT OR IGNORE INTO suites (sha256, name, text, created_ms) VALUES ('s', 'burn-in', '', 0)",
            [],
        )
        .unwrap();
        conn.execute(
            // Attested by their consoles, as network-booted runs on read consoles are.
            "INSERT INTO runs (id, node_id, suite_sha256, suite_name, token_hash, stage, verdict, heartbeat_secs, started_ms, last_seen_ms, console_watched, attested_ms)
             VALUES (?1, ?1, 's', 'burn-in', 'h', ?2, ?3, 60, 0, 0, 1, 0)",
            params![
                n,
                Sql(if verdict.is_some() { RunStage::Done } else { RunStage::Linux }),
                verdict.map(Sql)
            ],
        )
        .unwrap();
    }
}

fn seed_step(conn: &Connection, run: i64, step: u32, kind: &str, outcome: Outcome) {
    let report = StepReport {
        step,
        name: format!("{kind}-{step}"),
        kind: kind.into(),
        outcome: outcome.clone(),
        metrics: vec![],
        duration_ms: 1,
        attempts: vec![],
    };
    conn.execute(
        "INSERT INTO steps (run_id, step, name, kind, outcome, report) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![run, step, report.name, kind, outcome.name(), serde_json::to_string(&report).unwrap()],
    )
    .unwrap();
}

fn seed_stage(conn: &Connection, run: i64, stage: &str, secs: i64, failed: Option<&str>) {
    conn.execute(
        "INSERT INTO stages (run_id, name, state, verdict, detail, started_ms, finished_ms) VALUES (?1, ?2, 'done', ?3, ?4, 1000, ?5)",
        params![
            run,
            stage,
            Sql(if failed.is_some() { Verdict::Fail } else { Verdict::Pass }),
            failed,
            1000 + secs * 1000
        ],
    )
    .unwrap();
}

#[test]
fn a_batch_tells_its_yield_its_failure_pareto_its_slowest_stage_and_its_failed_nodes() {
    use kiln_protocol::wire::Fault;
    let conn = crate::store::test_connection();
    let fail = |codes: &[&str]| Outcome::Fail {
        faults: codes
            .iter()
            .map(|c| Fault::new(*c, format!("{c} seen")))
            .collect(),
    };
    seed_node(&conn, 1, "PO-1187", Some(Some(Verdict::Pass)));
    seed_stage(&conn, 1, "linux", 100, None);
    seed_node(&conn, 2, "PO-1187", Some(Some(Verdict::Degraded)));
    seed_node(&conn, 3, "PO-1187", Some(Some(Verdict::Fail)));
    seed_step(&conn, 3, 0, "memory", fail(&["memory.mismatch"]));
    seed_stage(&conn, 3, "linux", 200, None);
    conn.execute(
        "UPDATE runs SET expect = ?2 WHERE id = ?1",
        params![
            3,
            serde_json::to_string(&fail(&["expect.memory.dimms"])).unwrap()
        ],
    )
    .unwrap();
    seed_node(&conn, 4, "PO-1187", Some(Some(Verdict::Fail)));
    seed_step(&conn, 4, 0, "cpu", Outcome::Pass);
    seed_step(
        &conn,
        4,
        1,
        "memory",
        fail(&["memory.mismatch", "memory.mismatch"]),
    );
    seed_node(&conn, 5, "PO-1187", Some(Some(Verdict::Fail)));
    seed_stage(&conn, 5, "memtest", 300, Some("memtest86+: 3 errors"));
    seed_node(&conn, 6, "PO-1187", Some(None));
    seed_node(&conn, 7, "PO-1187", None);
    // Another delivery: not counted.
    seed_node(&conn, 8, "PO-2000", Some(Some(Verdict::Fail)));
    seed_step(&conn, 8, 0, "disk", fail(&["disk.verify"]));

    let s = batch_summary(&conn, "PO-1187").unwrap().expect("a batch");
    assert_eq!(
        s.yield_,
        kiln_protocol::api::Yield {
            nodes: 7,
            pass: 1,
            degraded: 1,
            waived: 0,
            unattested: 0,
            fail: 3,
            running: 1,
            not_started: 1,
        }
    );
    assert_eq!(s.yield_.pass_pct(), Some(40.0));
    let bars = |b: &[kiln_protocol::api::ParetoBar]| -> Vec<(String, usize)> {
        b.iter().map(|b| (b.key.clone(), b.nodes)).collect()
    };
    // A node counts once per code, however often its run shows it; ties by name.
    assert_eq!(
        bars(&s.pareto_codes),
        [
            ("memory.mismatch".to_owned(), 2),
            ("expect.memory.dimms".to_owned(), 1),
            ("memtest.fail".to_owned(), 1),
        ]
    );
    assert_eq!(
        bars(&s.pareto_components),
        [
            ("memory".to_owned(), 2),
            ("expect".to_owned(), 1),
            ("memtest".to_owned(), 1),
        ]
    );
    let stages: Vec<(&str, usize, f64)> = s
        .stages
        .iter()
        .map(|t| (t.stage.as_str(), t.runs, t.mean_s))
        .collect();
    assert_eq!(stages, [("memtest", 1, 300.0), ("linux", 2, 150.0)]);
    let failed: Vec<(i64, Verdict)> = s.failed.iter().map(|f| (f.node_id, f.verdict)).collect();
    assert_eq!(
        failed,
        [(3, Verdict::Fail), (4, Verdict::Fail), (5, Verdict::Fail)]
    );
    assert!(
        s.failed[0].reason.contains("expect.memory.dimms seen"),
        "{:?}",
        s.failed[0]
    );
    assert!(
        s.failed[2].reason.contains("memtest86+: 3 errors"),
        "{:?}",
        s.failed[2]
    );
    assert!(batch_summary(&conn, "PO-9999").unwrap().is_none());
}

#[test]
fn rows_completed_a_chunk_at_a_time_keep_each_nodes_own_faults_and_waiver() {
    use kiln_protocol::wire::Fault;
    let conn = crate::store::test_connection();
    // Three chunks and a part: every node's failures must land on its own row whichever chunk
    // it falls in, and its waiver with it.
    let n = (ROWS_AT_ONCE * 3 + 17) as i64;
    let fails = |i: i64| i % 7 == 0;
    let memtest_fails = |i: i64| i % 11 == 0;
    let waived = |i: i64| i % 49 == 0;
    for i in 1..=n {
        let verdict = if fails(i) || memtest_fails(i) {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
        seed_node(&conn, i, "PO-1", Some(Some(verdict)));
        seed_step(&conn, i, 0, "cpu", Outcome::Pass);
        if fails(i) {
            seed_step(
                &conn,
                i,
                1,
                "memory",
                Outcome::Fail {
                    faults: vec![Fault::new("memory.mismatch", format!("node {i} bit 3"))],
                },
            );
        }
        seed_stage(
            &conn,
            i,
            "memtest",
            1,
            memtest_fails(i)
                .then(|| format!("memtest86+: {i} errors"))
                .as_deref(),
        );
        if waived(i) {
            conn.execute(
                "INSERT INTO waivers (node_id, code, reason, created_ms, created_by, run_id) VALUES (?1, 'memory.mismatch', 'known DIMM', 0, 'qa', ?1)",
                [i],
            )
            .unwrap();
        }
    }
    let rows = node_rows(&conn, &Filter::default()).unwrap();
    assert_eq!(rows.len(), n as usize);
    let mut ids: Vec<i64> = rows.iter().map(|r| r.node_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>());
    for row in &rows {
        let i = row.node_id;
        let mut expected = Vec::new();
        if fails(i) {
            expected.push(format!("memory-1: node {i} bit 3"));
        }
        if memtest_fails(i) {
            expected.push(format!("memtest: memtest86+: {i} errors"));
        }
        assert_eq!(row.faults, expected, "node {i}");
        match &row.waiver {
            Some(w) => {
                assert!(waived(i), "node {i} has a waiver it was not given");
                assert_eq!(w.codes, ["memory.mismatch"]);
                // A failed memtest86+ stage is not covered by the waiver.
                assert_eq!(w.all, !memtest_fails(i), "node {i}");
            }
            None => assert!(!waived(i) || !fails(i), "node {i} lost its waiver"),
        }
    }
}

#[test]
fn every_column_a_report_or_the_dashboard_reads_moves_the_reports_clock_when_it_changes() {
    use kiln_protocol::wire::Fault;
    use std::sync::{Arc, Mutex};
    let conn = crate::store::test_connection();
    // Every part of a row present, so that every statement a report can run is prepared: a
    // failed step and stage, an active waiver, live progress, a node's MACs, an ad-hoc claim.
    seed_node(&conn, 1, "PO-1", Some(Some(Verdict::Fail)));
    seed_step(
        &conn,
        1,
        0,
        "memory",
        Outcome::Fail {
            faults: vec![Fault::new("memory.mismatch", "bit 3")],
        },
    );
    seed_stage(&conn, 1, "memtest", 1, Some("memtest86+: 2 errors"));
    conn.execute_batch(
        "INSERT INTO waivers (node_id, code, reason, created_ms, created_by, expires_ms, run_id) VALUES (1, 'memory.mismatch', 'known DIMM', 0, 'qa', 9999999999999, 1);
         INSERT INTO node_macs (mac, node_id) VALUES ('52:54:00:00:00:01', 1);
         UPDATE runs SET progress = '{}' WHERE id = 1;",
    )
    .unwrap();
    seed_node(&conn, 2, "PO-1", Some(None));
    conn.execute(
        "UPDATE nodes SET ad_hoc = 1, claimed = '{\"macs\":[\"52:54:00:00:00:02\"]}' WHERE id = 2",
        [],
    )
    .unwrap();
    let read = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let seen = read.clone();
    let raw = conn.as_sqlite().unwrap();
    raw.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
        if let rusqlite::hooks::AuthAction::Read {
            table_name,
            column_name,
        } = ctx.action
        {
            seen.lock()
                .unwrap()
                .insert((table_name.to_owned(), column_name.to_owned()));
        }
        rusqlite::hooks::Authorization::Allow
    }));
    for verdict in [None, Some("fail"), Some("running")] {
        let filter = Filter {
            rack: Some("R1".into()),
            batch: Some("PO-1".into()),
            verdict: verdict.map(str::to_owned),
            ..Filter::default()
        };
        let rows = node_rows(&conn, &filter).unwrap();
        assert!(!rows.is_empty(), "{verdict:?}");
        // A kept report's progress, read again for those rows.
        let progress = node_progress(&conn, &filter).unwrap();
        assert_eq!(
            progress.iter().map(|p| p.0).collect::<Vec<_>>(),
            rows.iter().map(|r| r.run_id).collect::<Vec<_>>()
        );
    }
    let rows = node_rows(&conn, &Filter::default()).unwrap();
    assert!(rows[0].waiver.is_some() && !rows[0].faults.is_empty());
    assert_eq!(rows[1].macs, "52:54:00:00:00:02");
    // And what the dashboard reads besides a page of those rows.
    assert_eq!(tally(&conn).unwrap().total, 2);
    assert_eq!(batches(&conn).unwrap(), [("PO-1".to_owned(), 2)]);
    report_clock(&conn).unwrap();
    next_waiver_expiry(&conn, 0).unwrap();
    raw.authorizer(None::<fn(rusqlite::hooks::AuthContext<'_>) -> rusqlite::hooks::Authorization>);
    let read = read.lock().unwrap();
    assert!(read.len() > 20, "the authorizer saw {read:?}");
    let tables = crate::store::schema::REPORT_TABLES;
    for (table, column) in read.iter() {
        // The clock itself, and the id lists the statements are given (`json_each(?1)`).
        if table == "report_clock" || table == "json_each" {
            continue;
        }
        let watched = tables
            .iter()
            .find(|(t, _)| t == table)
            .is_some_and(|(_, unseen)| !unseen.contains(&column.as_str()));
        assert!(
            watched,
            "a report reads {table}.{column}, which the reports' clock does not watch (schema::REPORT_TABLES)"
        );
    }
}

#[test]
fn what_reports_show_moves_the_clock_and_what_they_do_not_leaves_it() {
    let conn = crate::store::test_connection();
    seed_node(&conn, 1, "PO-1", Some(None));
    let rev = |conn: &Connection| report_clock(conn).unwrap().rev;
    let before = report_clock(&conn).unwrap();
    // What every event batch writes: a log line, the acked sequence, the heartbeat.
    conn.execute_batch(
        "INSERT INTO events (run_id, seq, at_ms, kind, step, body) VALUES (1, 1, 0, 'log', 0, '{}');
         UPDATE runs SET acked_seq = 1, last_seen_ms = 5 WHERE id = 1;
         UPDATE nodes SET last_seen_ms = 5 WHERE id = 1;",
    )
    .unwrap();
    assert_eq!(report_clock(&conn).unwrap(), before);
    // Live progress moves only its own clock.
    conn.execute("UPDATE runs SET progress = '{}' WHERE id = 1", [])
        .unwrap();
    let after = report_clock(&conn).unwrap();
    assert_eq!(
        (after.rev, after.progress),
        (before.rev, before.progress + 1)
    );
    for change in [
        "UPDATE runs SET stage = 'done', progress = NULL WHERE id = 1",
        "UPDATE runs SET verdict = 'fail' WHERE id = 1",
        "UPDATE nodes SET hostname = 'x' WHERE id = 1",
        "INSERT INTO node_macs (mac, node_id) VALUES ('m', 1)",
        "DELETE FROM node_macs WHERE mac = 'm'",
        "INSERT INTO waivers (node_id, code, reason, created_ms, created_by) VALUES (1, 'c', 'r', 0, 'qa')",
        "UPDATE waivers SET revoked_ms = 1",
    ] {
        let at = rev(&conn);
        conn.execute(change, []).unwrap();
        assert_eq!(rev(&conn), at + 1, "{change}");
    }
}

#[test]
fn a_waiver_holds_for_its_own_run_until_it_expires_by_a_clock_the_test_sets() {
    use kiln_protocol::wire::Fault;
    let conn = crate::store::test_connection();
    seed_node(&conn, 1, "PO-1", Some(Some(Verdict::Fail)));
    seed_step(
        &conn,
        1,
        0,
        "fan",
        Outcome::Fail {
            faults: vec![Fault::new("fan.speed", "fan 3 at 900 rpm")],
        },
    );
    let waive = |run: Option<i64>, expires: i64| {
        conn.execute(
            "INSERT INTO waivers (node_id, code, reason, created_ms, created_by, expires_ms, run_id) VALUES (1, 'fan.speed', 'r', 0, 'qa', ?1, ?2)",
            params![expires, run],
        )
        .unwrap();
    };
    // Granted on another run (or on none, before waivers named runs): no effect on this one.
    waive(Some(99), 10_000);
    waive(None, 10_000);
    assert!(waived(&conn, 5_000, &[(1, 1)]).unwrap().is_empty());
    // On this run: it covers every fault until it expires, and nothing after.
    waive(Some(1), 10_000);
    let w = waived(&conn, 9_999, &[(1, 1)]).unwrap();
    assert!(w[&1].all, "{w:?}");
    assert!(waived(&conn, 10_000, &[(1, 1)]).unwrap().is_empty());
    let log = read_waivers(&conn, Some(1), 10_001).unwrap();
    assert!(log.iter().all(|w| !w.active), "{log:?}");
    assert_eq!(log[0].run_id, Some(1));
}

/// The pairing kept in the database: two nodes asking (through any collector) are paired and
/// each told the other's address; a pair's end is stored once the pair holds that node, and
/// closes it on that side; what is not held stores nothing; a scheduler that does not decode
/// says so.
#[test]
fn pairing_in_the_database_pairs_stores_what_a_pair_holds_and_nothing_else() {
    use crate::pairing::{Answer, Policy, Settings};
    let conn = crate::store::test_connection();
    for n in 1..=3 {
        seed_node(&conn, n, "b", Some(None));
    }
    let settings = Settings {
        policy: Policy::SameRack,
        grace_ms: 0,
        pair_timeout_ms: 60_000,
        linger_ms: 60_000,
        stale_ms: 60_000,
    };
    let ask = |node: i64, now: u64| {
        let ask = PairAsk {
            run_id: node,
            node,
            rack: Some("R1"),
            suite: "s",
            step: 0,
            settings,
            addr: format!("10.0.0.{node}:9"),
        };
        ask_pair(&conn, &ask, now).unwrap()
    };
    assert_eq!(ask(1, 0).answer, Answer::Wait);
    let second = ask(2, 10);
    let Answer::Pair { pair, partner: 1 } = second.answer else {
        panic!("{second:?}")
    };
    assert_eq!(second.partner_addr.as_deref(), Some("10.0.0.1:9"));
    // The same pair for the first node, read back from the database.
    let first = ask(1, 20);
    assert_eq!(first.answer, Answer::Pair { pair, partner: 2 });
    assert_eq!(first.partner_addr.as_deref(), Some("10.0.0.2:9"));
    assert_eq!(pair_of(&conn, pair, 1).unwrap(), Some(("s".into(), 0, 2)));
    assert_eq!(pair_of(&conn, pair, 3).unwrap(), None);
    assert_eq!(pair_of(&conn, pair + 1, 1).unwrap(), None);
    assert_eq!(pair_of(&conn, 77 << 32 | 1, 1).unwrap(), None);
    let result = |step: u32, partner: i64| PairResult {
        step,
        pair,
        partner_node: Some(partner),
        partner_name: None,
        download_mbps: Some(900.0),
        upload_mbps: Some(900.0),
        mbps: Some(900.0),
        met: true,
        at_ms: 30,
    };
    // A node not in the pair, or the pair under another step: nothing stored.
    assert!(!finish_pair(&conn, 3, 3, &result(0, 1), 30).unwrap());
    assert!(!finish_pair(&conn, 1, 1, &result(1, 2), 30).unwrap());
    assert!(pair_results(&conn, 3).unwrap().is_empty());
    assert!(pair_results(&conn, 1).unwrap().is_empty());
    assert!(finish_pair(&conn, 1, 1, &result(0, 2), 30).unwrap());
    assert!(finish_pair(&conn, 2, 2, &result(0, 1), 40).unwrap());
    assert_eq!(pair_results(&conn, 1).unwrap(), vec![result(0, 2)]);
    // Closed: neither end is in it any more.
    assert_eq!(pair_of(&conn, pair, 1).unwrap(), None);
    assert!(!finish_pair(&conn, 2, 2, &result(0, 1), 50).unwrap());
    conn.execute("UPDATE pair_steps SET state = '{'", [])
        .unwrap();
    let err = pair_of(&conn, pair, 1).unwrap_err().to_string();
    assert!(err.contains("pairing scheduler"), "{err}");
}
