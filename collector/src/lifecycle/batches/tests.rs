//! [`ingest_many`] against [`ingest`] on a real PostgreSQL: the same batches, one by one to
//! some runs and grouped to their twins, must give the same answers and leave the same rows —
//! resent, overlapping, out of order, twice in a batch, twice in a group, with a stranger's
//! token, from another address, past a bound, with progress.

use super::*;
use crate::lifecycle::tests::{identity, request, script, session};
use crate::lifecycle::{Script, attest, exchange};
use crate::store::sql::Connection;
use kiln_protocol::wire::{Event, LogLevel};

fn linux_run(conn: &Connection, mac: &str, token: &str) -> i64 {
    let mut req = request(identity(Some(mac), None));
    req.suite = Some(crate::lifecycle::SuiteFile {
        name: "m".into(),
        text: Ok(
            "suite: m\ndescription: d\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n".into(),
        ),
    });
    let (Script::Linux { run_id }, _) = script(conn, &req) else {
        panic!("expected the Linux stage")
    };
    attest::console_watched(conn, run_id).unwrap();
    let _ = exchange(conn, run_id, "h1", token, &session("10.0.0.1")).unwrap();
    run_id
}

fn logs(seqs: &[u64]) -> EventBatch {
    EventBatch {
        events: seqs
            .iter()
            .map(|&seq| Event {
                seq,
                at_ms: seq * 10,
                body: EventBody::Log {
                    step: Some(0),
                    level: LogLevel::Info,
                    line: format!("line {seq}"),
                },
            })
            .collect(),
    }
}

/// What a run's row and events say.
fn state(conn: &Connection, run_id: i64) -> String {
    let row: (i64, i64, i64, Option<String>, Option<String>) = conn
        .query_row(
            "SELECT acked_seq, events_stored, log_bytes, progress, verdict FROM runs WHERE id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    let events: Vec<(i64, String)> = conn
        .query_map(
            "SELECT seq, body FROM events WHERE run_id = ?1 ORDER BY seq",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    format!("{row:?} {events:?}")
}

#[test]
fn grouped_batches_answer_and_store_as_one_by_one() {
    let dir = std::env::temp_dir().join(format!("kiln-pg-batches-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = crate::lab::postgres::Cluster::start(&dir).unwrap();
    let conn = Connection::postgres(&cluster.url(crate::lab::postgres::USER)).unwrap();
    crate::store::pg_schema::migrate(&conn).unwrap();
    let one: Vec<i64> = (0..2)
        .map(|i| linux_run(&conn, &format!("52:54:00:00:01:0{i}"), &format!("sA{i}")))
        .collect();
    let grouped: Vec<i64> = (0..2)
        .map(|i| linux_run(&conn, &format!("52:54:00:00:02:0{i}"), &format!("sB{i}")))
        .collect();
    let progress = EventBatch {
        events: vec![Event {
            seq: 13,
            at_ms: 130,
            body: EventBody::Progress {
                step: 0,
                fraction: 0.5,
                status: None,
            },
        }],
    };
    // (run, the run's token or a stranger's, from the node's address, the batch)
    type Step = Vec<(usize, bool, &'static str, EventBatch)>;
    let steps: Vec<Step> = vec![
        vec![
            (0, true, "10.0.0.1", logs(&[1, 2, 3, 4, 5])),
            (1, true, "10.0.0.1", logs(&[1, 2, 3])),
        ],
        vec![
            (0, true, "10.0.0.1", logs(&[3, 4, 5, 6, 7, 8])),
            (1, true, "10.0.0.1", logs(&[5, 6])),
        ],
        vec![
            (0, true, "10.0.0.1", logs(&[10, 11, 11, 12])),
            (0, true, "10.0.0.1", logs(&[9])),
            (1, false, "10.0.0.1", logs(&[4])),
        ],
        vec![
            (1, true, "10.0.0.1", logs(&[4])),
            (0, true, "10.0.0.1", progress),
        ],
        vec![
            (1, true, "10.0.0.9", logs(&[7])),
            (0, true, "10.0.0.1", logs(&[14])),
        ],
        vec![
            (1, true, "10.0.0.1", logs(&[8])),
            (0, true, "10.0.0.1", logs(&[15, 16, 17])),
        ],
    ];
    for (k, step) in steps.into_iter().enumerate() {
        if k == 5 {
            // One more event may be stored, not three: the bound is in reach.
            conn.execute(
                "UPDATE runs SET max_events = events_stored + 1 WHERE id IN (?1, ?2)",
                [one[0], grouped[0]],
            )
            .unwrap();
        }
        let token = |side: &str, run: usize, right: bool| match right {
            true => format!("{side}{run}"),
            false => "a stranger's".to_owned(),
        };
        let alone: Vec<String> = step
            .iter()
            .map(|(run, right, from, batch)| {
                let answer = ingest(
                    &conn,
                    one[*run],
                    &token("sA", *run, *right),
                    Some(from),
                    batch,
                );
                format!("{:?}", answer.map(|a| a.0))
            })
            .collect();
        let batches: Vec<BatchIn> = step
            .iter()
            .map(|(run, right, from, batch)| BatchIn {
                run_id: grouped[*run],
                token_hash: token("sB", *run, *right),
                source: Some((*from).into()),
                batch: batch.clone(),
            })
            .collect();
        let together: Vec<String> = ingest_many(&conn, &batches)
            .unwrap()
            .into_iter()
            .map(|answer| format!("{:?}", answer.map(|a| a.0)))
            .collect();
        assert_eq!(alone, together, "step {k}");
        for run in 0..2 {
            assert_eq!(
                state(&conn, one[run]),
                state(&conn, grouped[run]),
                "step {k}, run {run}"
            );
        }
    }
    // The scenario reached what it meant to: a gap filled, a stranger refused, a second
    // address and a bound each ending a run.
    let end = state(&conn, grouped[0]);
    assert!(end.starts_with("(14, 14, "), "{end}");
    assert!(end.contains("Some(\"error\")"), "{end}");
    assert!(state(&conn, grouped[1]).contains("Some(\"fail\")"));
    drop(conn);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
