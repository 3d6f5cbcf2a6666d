//! PostgreSQL's schema against SQLite's: the same tables, columns (each engine's type for
//! the same storage class), nullability, keys and indexes; a newer database refused;
//! collectors migrating at once; SQLite's trigger kept.

use std::collections::BTreeMap;

use super::*;
use crate::lab::postgres::{Cluster, USER};
use crate::store::sql::EngineKind;

fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kiln-pg-schema-{name}-{}", std::process::id()))
}

/// Each table's columns: name → (storage class, NOT NULL, part of the primary key).
type Tables = BTreeMap<String, BTreeMap<String, (String, bool, bool)>>;

fn sqlite_tables() -> (Tables, Vec<String>) {
    let conn = crate::store::test_connection();
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut tables = Tables::new();
    for t in names {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info(\"{t}\")"))
            .unwrap();
        let cols = stmt
            .query_map([], |r| {
                let ty: String = r.get(2)?;
                let class = match ty.as_str() {
                    "INTEGER" | "BIGINT" => "integer",
                    "TEXT" => "text",
                    "REAL" => "real",
                    "BLOB" => "blob",
                    other => panic!("{t}: type {other}"),
                };
                let pk: i64 = r.get(5)?;
                // A rowid key is NOT NULL in effect.
                let not_null: bool = r.get::<bool>(3)? || pk > 0;
                Ok((r.get::<String>(1)?, (class.to_owned(), not_null, pk > 0)))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.insert(t, cols);
    }
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (tables, indexes)
}

fn pg_tables(c: &Connection) -> (Tables, Vec<String>) {
    let mut tables = Tables::new();
    let rows = c
        .query(
            "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable = 'NO',
                    EXISTS (SELECT 1 FROM information_schema.key_column_usage k
                              JOIN information_schema.table_constraints tc
                                ON tc.constraint_name = k.constraint_name AND tc.constraint_type = 'PRIMARY KEY'
                             WHERE k.table_name = c.table_name AND k.column_name = c.column_name)
               FROM information_schema.columns c
              WHERE c.table_schema = 'public' AND c.table_name <> 'schema_version'",
            params![],
        )
        .unwrap();
    for r in rows {
        let (table, column, ty): (String, String, String) =
            (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap());
        let class = match ty.as_str() {
            "bigint" => "integer",
            "text" => "text",
            "double precision" => "real",
            "bytea" => "blob",
            other => panic!("{table}.{column}: type {other}"),
        };
        tables.entry(table).or_default().insert(
            column,
            (class.to_owned(), r.get(3).unwrap(), r.get(4).unwrap()),
        );
    }
    let indexes: Vec<String> = c
        .query_map(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key' ORDER BY indexname",
            params![],
            |r| r.get(0),
        )
        .unwrap();
    (tables, indexes)
}

#[test]
fn postgres_has_sqlites_schema_at_the_same_version() {
    assert_eq!(
        VERSION,
        crate::store::schema::VERSION,
        "a migration is missing on one side"
    );
    let dir = scratch("parity");
    let cluster = Cluster::start(&dir).unwrap();
    let c = Connection::postgres(&cluster.url(USER)).unwrap();
    assert_eq!(migrate(&c).unwrap(), 0);
    // Again: nothing to do.
    assert_eq!(migrate(&c).unwrap(), VERSION);
    let (sqlite, sqlite_indexes) = sqlite_tables();
    let (pg, pg_indexes) = pg_tables(&c);
    assert_eq!(
        sqlite.keys().collect::<Vec<_>>(),
        pg.keys().collect::<Vec<_>>(),
        "tables"
    );
    for (table, cols) in &sqlite {
        assert_eq!(cols, &pg[table], "{table}");
    }
    assert_eq!(sqlite_indexes, pg_indexes);
    // The lifecycle's words are the database's guard on both.
    c.execute_batch("INSERT INTO nodes (created_ms, last_seen_ms) VALUES (0, 0)")
        .unwrap();
    assert!(
        c.execute_batch("UPDATE nodes SET mode = 'verified'")
            .is_err()
    );
    // SQLite's trigger: each node knows its latest run.
    c.execute_batch(
        "INSERT INTO suites VALUES ('s', 'n', 't', 0);
         INSERT INTO runs (node_id, suite_sha256, suite_name, token_hash, stage, heartbeat_secs, started_ms, last_seen_ms)
           VALUES (1, 's', 'n', 'h', 'linux', 1, 0, 0), (1, 's', 'n', 'h2', 'linux', 1, 0, 0);",
    )
    .unwrap();
    let latest: i64 = c
        .query_row(
            "SELECT latest_run FROM nodes WHERE id = 1",
            params![],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(latest, 2);
    // Every batch updates its run: a group updates many runs in one transaction, and each
    // new version finds room on its row's page (fillfactor), so it is a heap-only update and
    // none of the runs' indexes grows. On full pages, they would move.
    c.execute_batch(
        "INSERT INTO runs (node_id, suite_sha256, suite_name, token_hash, stage, heartbeat_secs, started_ms, last_seen_ms)
           SELECT 1, 's', 'n', 'token ' || g, 'linux', 1, 0, 0 FROM generate_series(1, 300) g;
         CREATE TEMP TABLE pages AS SELECT id, (ctid::text::point)[0] AS page FROM runs;",
    )
    .unwrap();
    let filled: i64 = c
        .query_row("SELECT count(DISTINCT page) FROM pages", params![], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(filled > 4, "runs on {filled} pages: too few to fill one");
    c.execute_batch("UPDATE runs SET acked_seq = acked_seq + 20, last_seen_ms = 1")
        .unwrap();
    let moved: i64 = c
        .query_row(
            "SELECT count(*) FROM runs JOIN pages USING (id) WHERE (runs.ctid::text::point)[0] <> pages.page",
            params![],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(moved, 0, "runs moved to other pages when updated");
    drop(c);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_newer_database_is_refused_and_collectors_starting_together_migrate_once() {
    let dir = scratch("newer");
    let cluster = Cluster::start(&dir).unwrap();
    let url = cluster.url(USER);
    // Two collectors at once on an empty database: one builds it, the other finds it built.
    let found: Vec<usize> = std::thread::scope(|s| {
        let a = s.spawn(|| migrate(&Connection::postgres(&url).unwrap()).unwrap());
        let b = s.spawn(|| migrate(&Connection::postgres(&url).unwrap()).unwrap());
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let mut sorted = found.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [0, VERSION], "{found:?}");
    let c = Connection::postgres(&url).unwrap();
    c.execute(
        "UPDATE schema_version SET version = ?1",
        params![VERSION + 3],
    )
    .unwrap();
    let err = migrate(&c).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "the database is at schema version {}, newer than this kiln ({VERSION}); refusing to touch it",
            VERSION + 3
        )
    );
    let still: i64 = c
        .query_row("SELECT version FROM schema_version", params![], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(still as usize, VERSION + 3);
    drop(c);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_reports_clock_moves_alike_on_both_engines() {
    let dir = scratch("clock");
    let cluster = Cluster::start(&dir).unwrap();
    let pg = Connection::postgres(&cluster.url(USER)).unwrap();
    migrate(&pg).unwrap();
    // Started again: the triggers are made anew, not doubled.
    migrate(&pg).unwrap();
    let sqlite = crate::store::test_connection();
    let steps: [(&str, (i64, i64)); 7] = [
        (
            "INSERT INTO nodes (created_ms, last_seen_ms) VALUES (0, 0)",
            (1, 0),
        ),
        // Columns no report shows: nothing moves.
        ("UPDATE nodes SET last_seen_ms = 5 WHERE id = 1", (0, 0)),
        // Not a table a report reads.
        ("INSERT INTO suites VALUES ('s', 'n', 't', 0)", (0, 0)),
        (
            "INSERT INTO runs (node_id, suite_sha256, suite_name, token_hash, stage, heartbeat_secs, started_ms, last_seen_ms) VALUES (1, 's', 'n', 'h', 'linux', 1, 0, 0)",
            // The run, and the node's latest run its trigger sets: PostgreSQL moves each clock
            // once per transaction, at its commit, SQLite once per row.
            (2, 0),
        ),
        (
            "UPDATE runs SET progress = 'p', acked_seq = 3 WHERE id = 1",
            (0, 1),
        ),
        ("UPDATE runs SET verdict = 'pass' WHERE id = 1", (1, 0)),
        // A delete of nothing moves nothing.
        ("DELETE FROM waivers WHERE id = 99", (0, 0)),
    ];
    let clock = |c: &Connection| -> (i64, i64) {
        c.query_row(
            "SELECT rev, progress_rev FROM report_clock WHERE id = 1",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    for c in [&sqlite, &pg] {
        for (sql, (rev, progress)) in steps {
            let before = clock(c);
            c.execute_batch(sql).unwrap();
            let after = clock(c);
            let moved = (after.0 - before.0, after.1 - before.1);
            let want = match c.kind() {
                EngineKind::Sqlite => (rev, progress),
                EngineKind::Postgres => (rev.min(1), progress.min(1)),
            };
            assert_eq!(moved, want, "{:?}: {sql}", c.kind());
        }
    }
    // On PostgreSQL the clock's row is taken at the commit, last: while a writer's statements
    // run, another may lock it at once; the writer's changes move it once when it commits.
    let before = clock(&pg);
    pg.execute_batch(
        "BEGIN; UPDATE runs SET verdict = 'fail' WHERE id = 1; UPDATE runs SET progress = 'q' WHERE id = 1;
         INSERT INTO nodes (created_ms, last_seen_ms) VALUES (0, 0)",
    )
    .unwrap();
    let other = Connection::postgres(&cluster.url(USER)).unwrap();
    other
        .execute_batch("BEGIN; SELECT 1 FROM report_clock WHERE id = 1 FOR UPDATE NOWAIT; COMMIT")
        .expect("the clock was locked before the commit");
    assert_eq!(clock(&other), before, "moved before the commit");
    pg.execute_batch("COMMIT").unwrap();
    assert_eq!(clock(&other), (before.0 + 1, before.1 + 1));
    drop(other);
    drop(sqlite);
    drop(pg);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
