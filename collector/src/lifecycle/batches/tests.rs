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

/// A throwaway cluster with kiln's schema, stopped and its directory removed at the end.
struct Scratch {
    cluster: Option<crate::lab::postgres::Cluster>,
    dir: std::path::PathBuf,
    url: String,
}

impl Scratch {
    fn start(name: &str) -> (Scratch, Connection<'static>) {
        let dir = std::env::temp_dir().join(format!("kiln-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cluster = crate::lab::postgres::Cluster::start(&dir).unwrap();
        let url = cluster.url(crate::lab::postgres::USER);
        let conn = Connection::postgres(&url).unwrap();
        crate::store::pg_schema::migrate(&conn).unwrap();
        let scratch = Scratch {
            cluster: Some(cluster),
            dir,
            url,
        };
        (scratch, conn)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.cluster.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn grouped_batches_answer_and_store_as_one_by_one() {
    let (_scratch, conn) = Scratch::start("batches");
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
}

/// Two writers at one run (two collectors, or two of one collector's ingest writers: an agent
/// whose resend went elsewhere): the second waits for the first's commit and goes on from
/// what it stored, whether its batch is plain (grouped) or goes through [`ingest`]. Without
/// the run's row locked, the second would read the run before the first's commit, find a gap
/// where the first's events are, and write back an acknowledgement that went backwards.
#[test]
fn a_second_writer_at_a_run_waits_for_the_first_and_goes_on_from_it() {
    let (scratch, conn) = Scratch::start("turns");
    let url = scratch.url.clone();
    let seqs = |from: u64, to: u64| (from..=to).collect::<Vec<u64>>();
    for (i, second_plain) in [true, false].into_iter().enumerate() {
        let run_id = linux_run(&conn, &format!("52:54:00:00:03:0{i}"), &format!("sT{i}"));
        let first = BatchIn {
            run_id,
            token_hash: format!("sT{i}"),
            source: Some("10.0.0.1".into()),
            batch: logs(&seqs(1, 20)),
        };
        let mut second = BatchIn {
            batch: logs(&seqs(21, 40)),
            ..first.clone()
        };
        if !second_plain {
            // Progress makes the batch more than log lines: it goes through `ingest`.
            second.batch.events[19].body = EventBody::Progress {
                step: 0,
                fraction: 0.5,
                status: None,
            };
        }
        let tx = conn.savepoint().unwrap();
        let answer = ingest_many(&tx, std::slice::from_ref(&first)).unwrap();
        assert!(
            matches!(answer[0], Ok((Ingested::Acked { acked: 20, .. }, _))),
            "{answer:?}"
        );
        let other = {
            let url = url.clone();
            std::thread::spawn(move || {
                let conn = Connection::postgres(&url).unwrap();
                let tx = conn.savepoint().unwrap();
                let answer = format!("{:?}", ingest_many(&tx, &[second]).unwrap());
                tx.commit().unwrap();
                answer
            })
        };
        // The second writer is waiting on a lock before the first commits.
        let watch = Connection::postgres(&url).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while watch
            .query_row(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                [],
                |r| r.get::<i64>(0),
            )
            .unwrap()
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the second writer never waited"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tx.commit().unwrap();
        let answer = other.join().unwrap();
        assert!(answer.contains("acked: 40, stored: 20"), "{answer}");
        let end = state(&conn, run_id);
        assert!(end.starts_with("(40, 40, "), "{end}");
    }
}

/// Events keep no foreign key on PostgreSQL (a query per row inserted): a run deleted by hand
/// still takes its events with it, and an event of no run is refused by nothing but the
/// ingest, which reads the run first.
#[test]
fn a_run_deleted_by_hand_takes_its_events_along() {
    let (_scratch, conn) = Scratch::start("gone");
    let runs: Vec<i64> = (0..2)
        .map(|i| linux_run(&conn, &format!("52:54:00:00:04:0{i}"), &format!("sG{i}")))
        .collect();
    for (i, &run_id) in runs.iter().enumerate() {
        let answer = ingest_many(
            &conn,
            &[BatchIn {
                run_id,
                token_hash: format!("sG{i}"),
                source: Some("10.0.0.1".into()),
                batch: logs(&[1, 2, 3]),
            }],
        )
        .unwrap();
        assert!(matches!(
            answer[0],
            Ok((Ingested::Acked { acked: 3, .. }, _))
        ));
    }
    let count = |run_id: i64| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM events WHERE run_id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .unwrap()
    };
    conn.execute("DELETE FROM runs WHERE id = ?1", [runs[0]])
        .unwrap();
    assert_eq!((count(runs[0]), count(runs[1])), (0, 3));
    // A batch for the run that is gone is denied, and stores nothing.
    let answer = ingest_many(
        &conn,
        &[BatchIn {
            run_id: runs[0],
            token_hash: "sG0".into(),
            source: Some("10.0.0.1".into()),
            batch: logs(&[4]),
        }],
    )
    .unwrap();
    assert!(matches!(answer[0], Ok((Ingested::Denied, _))), "{answer:?}");
    assert_eq!(count(runs[0]), 0);
}
