//! Storing agents' events durably, the way the collector's writer does (group commit: many
//! agents' batches in one transaction, acknowledged only after it commits), on each engine
//! and each way of writing them, side by side in one run:
//!
//! - SQLite, rusqlite directly: the collector's path today (WAL, `synchronous=FULL`, one
//!   prepared `INSERT OR IGNORE` per event);
//! - SQLite through `store::sql`, the engine-neutral layer (same statement, values converted);
//! - PostgreSQL through `store::sql`, one prepared insert per event;
//! - PostgreSQL, one `INSERT … SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING` per group;
//! - PostgreSQL, binary `COPY` into a temporary table, then one `INSERT … SELECT … ON
//!   CONFLICT DO NOTHING` per group (a retried batch is stored once: COPY alone would fail).
//!
//! PostgreSQL is a throwaway cluster of the bench's own (fsync and `synchronous_commit` on),
//! on a Unix socket. Each line prints events/s and the ratio to SQLite direct. Settings:
//! `KILN_SQL_EVENTS` (total, default 200,000), `KILN_SQL_BATCH` (events per agent batch,
//! default 20), `KILN_SQL_GROUP` (batches per commit, default 256).

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use kiln_collector::lab::postgres::{Cluster, Sizing, USER};
use kiln_collector::store::sql::{Connection, params};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One event as an agent sends it: run, sequence number, time, kind, step, a JSON body.
struct Event {
    run: i64,
    seq: i64,
    at: i64,
    kind: &'static str,
    step: Option<i64>,
    body: String,
}

fn events(total: usize, batch: usize) -> Vec<Vec<Event>> {
    (0..total.div_ceil(batch))
        .map(|b| {
            (0..batch)
                .map(|i| Event {
                    run: (b % 10_000) as i64 + 1,
                    seq: (b / 10_000 * batch + i) as i64 + 1,
                    at: (b * batch + i) as i64,
                    kind: "log",
                    step: Some(3),
                    body: format!(
                        r#"{{"type":"log","step":3,"level":"info","line":"memory: pass {} of 4, 12.4 GB/s, 0 errors, batch {b}"}}"#,
                        i % 4 + 1
                    ),
                })
                .collect()
        })
        .collect()
}

/// Stores every group through `store`, one transaction each; returns events/s.
fn timed(groups: &[&[Vec<Event>]], mut store: impl FnMut(&[Vec<Event>])) -> f64 {
    let n: usize = groups
        .iter()
        .map(|g| g.iter().map(Vec::len).sum::<usize>())
        .sum();
    let started = Instant::now();
    for group in groups {
        store(group);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

const SQLITE_TABLE: &str = "CREATE TABLE events (
    run_id INTEGER NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL, kind TEXT NOT NULL,
    step INTEGER, body TEXT NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID";
const INSERT: &str = "INSERT INTO events (run_id, seq, at_ms, kind, step, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING";

fn sqlite(dir: &std::path::Path, name: &str) -> rusqlite::Connection {
    let path = dir.join(format!("{name}.sqlite"));
    let _ = std::fs::remove_file(&path);
    let c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.pragma_update(None, "cache_size", -8192).unwrap();
    c.execute_batch(SQLITE_TABLE).unwrap();
    c
}

fn postgres(cluster: &Cluster) -> Connection<'static> {
    let c = Connection::postgres(&cluster.url(USER)).unwrap();
    c.execute_batch("DROP TABLE IF EXISTS events").unwrap();
    c.execute_batch(
        "CREATE TABLE events (run_id BIGINT NOT NULL, seq BIGINT NOT NULL, at_ms BIGINT NOT NULL,
           kind TEXT NOT NULL, step BIGINT, body TEXT NOT NULL, PRIMARY KEY (run_id, seq))",
    )
    .unwrap();
    c
}

fn main() {
    let total = setting("KILN_SQL_EVENTS", 200_000);
    let batch = setting("KILN_SQL_BATCH", 20);
    let group = setting("KILN_SQL_GROUP", 256);
    let dir = std::env::temp_dir().join(format!("kiln-sql-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let all = events(total, batch);
    let groups: Vec<&[Vec<Event>]> = all.chunks(group).collect();
    println!(
        "{total} events in batches of {batch}, {group} batches ({} events) per commit; durable commits on both engines",
        batch * group
    );
    let mut rows: Vec<(&str, f64)> = Vec::new();

    let mut direct = sqlite(&dir, "direct");
    rows.push((
        "SQLite, rusqlite directly (the collector today)",
        timed(&groups, |g| {
            let tx = direct.transaction().unwrap();
            {
                let mut stmt = tx.prepare_cached(INSERT).unwrap();
                for e in g.iter().flatten() {
                    stmt.execute(rusqlite::params![
                        e.run, e.seq, e.at, e.kind, e.step, e.body
                    ])
                    .unwrap();
                }
            }
            tx.commit().unwrap();
        }),
    ));

    let layered = Connection::sqlite(sqlite(&dir, "layer"));
    rows.push((
        "SQLite through store::sql",
        timed(&groups, |g| {
            let tx = layered.savepoint().unwrap();
            for e in g.iter().flatten() {
                tx.execute(INSERT, params![e.run, e.seq, e.at, e.kind, e.step, e.body])
                    .unwrap();
            }
            tx.commit().unwrap();
        }),
    ));

    let cluster = Cluster::start_sized(&dir.join("pg"), Sizing::Site).unwrap();
    let pg = postgres(&cluster);
    rows.push((
        "PostgreSQL through store::sql, an insert per event",
        timed(&groups, |g| {
            let tx = pg.savepoint().unwrap();
            for e in g.iter().flatten() {
                tx.execute(INSERT, params![e.run, e.seq, e.at, e.kind, e.step, e.body])
                    .unwrap();
            }
            tx.commit().unwrap();
        }),
    ));
    drop(pg);

    let mut client = postgres::Client::connect(&cluster.url(USER), postgres::NoTls).unwrap();
    postgres(&cluster);
    let unnest = client
        .prepare(
            "INSERT INTO events (run_id, seq, at_ms, kind, step, body)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::text[])
             ON CONFLICT DO NOTHING",
        )
        .unwrap();
    rows.push((
        "PostgreSQL, one unnest insert per commit",
        timed(&groups, |g| {
            let mut tx = client.transaction().unwrap();
            let es: Vec<&Event> = g.iter().flatten().collect();
            let run: Vec<i64> = es.iter().map(|e| e.run).collect();
            let seq: Vec<i64> = es.iter().map(|e| e.seq).collect();
            let at: Vec<i64> = es.iter().map(|e| e.at).collect();
            let kind: Vec<&str> = es.iter().map(|e| e.kind).collect();
            let step: Vec<Option<i64>> = es.iter().map(|e| e.step).collect();
            let body: Vec<&str> = es.iter().map(|e| e.body.as_str()).collect();
            tx.execute(&unnest, &[&run, &seq, &at, &kind, &step, &body])
                .unwrap();
            tx.commit().unwrap();
        }),
    ));

    postgres(&cluster);
    rows.push((
        "PostgreSQL, binary COPY to a temporary table, then one insert",
        timed(&groups, |g| {
            use postgres::binary_copy::BinaryCopyInWriter;
            use postgres::types::Type;
            let mut tx = client.transaction().unwrap();
            tx.batch_execute(
                "CREATE TEMPORARY TABLE incoming (run_id BIGINT, seq BIGINT, at_ms BIGINT, kind TEXT, step BIGINT, body TEXT) ON COMMIT DROP",
            )
            .unwrap();
            let sink = tx
                .copy_in("COPY incoming FROM STDIN (FORMAT binary)")
                .unwrap();
            let types = [Type::INT8, Type::INT8, Type::INT8, Type::TEXT, Type::INT8, Type::TEXT];
            let mut writer = BinaryCopyInWriter::new(sink, &types);
            for e in g.iter().flatten() {
                writer
                    .write(&[&e.run, &e.seq, &e.at, &e.kind, &e.step, &e.body])
                    .unwrap();
            }
            writer.finish().unwrap();
            tx.batch_execute("INSERT INTO events SELECT * FROM incoming ON CONFLICT DO NOTHING")
                .unwrap();
            tx.commit().unwrap();
        }),
    ));
    let stored: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored as usize, all.iter().map(Vec::len).sum::<usize>());
    drop(client);
    drop(cluster);

    let base = rows[0].1;
    for (what, rate) in &rows {
        println!("{what:<64} {rate:>10.0} events/s  {:>5.2}x", rate / base);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
