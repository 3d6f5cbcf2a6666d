//! The same statements against SQLite and a throwaway PostgreSQL cluster must read the same;
//! hostile values and statements fail naming what and where.

use super::pg::{numeric, translate};
use super::*;
use crate::lab::postgres::{Cluster, USER};

/// Each engine with a table in that engine's dialect; the statements after it are shared.
fn engines(dir: &std::path::Path) -> (Cluster, Vec<Connection<'static>>) {
    let cluster = Cluster::start(dir).unwrap();
    let sqlite = Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap());
    sqlite
        .execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, r REAL, s TEXT, b BLOB, UNIQUE (s))",
        )
        .unwrap();
    let pg = Connection::postgres(&cluster.url(USER)).unwrap();
    pg.execute_batch(
        "DROP TABLE IF EXISTS t;
         CREATE TABLE t (id BIGSERIAL PRIMARY KEY, n BIGINT, r DOUBLE PRECISION, s TEXT, b BYTEA, UNIQUE (s))",
    )
    .unwrap();
    (cluster, vec![sqlite, pg])
}

#[test]
fn both_engines_read_the_same_rows_from_the_same_statements() {
    let dir = std::env::temp_dir().join(format!("kiln-sql-parity-{}", std::process::id()));
    let (cluster, conns) = engines(&dir);
    let mut seen = Vec::new();
    for c in &conns {
        let id: i64 = c
            .query_row(
                "INSERT INTO t (n, r, s, b) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                params![7i64, 2.5f64, "seven", vec![0u8, 255]],
                |r| r.get(0),
            )
            .unwrap();
        // A conflict changes nothing and says so.
        let n = c
            .execute(
                "INSERT INTO t (n, s) VALUES (?1, ?2) ON CONFLICT (s) DO NOTHING",
                params![8i64, "seven"],
            )
            .unwrap();
        assert_eq!(n, 0);
        c.execute(
            "INSERT INTO t (n, r, s, b) VALUES (?1, ?2, ?3, ?4)",
            params![Some(35i64), None::<f64>, None::<String>, None::<Vec<u8>>],
        )
        .unwrap();
        // Booleans from comparisons, whole sums, an average, nulls, text and bytes.
        let mut row = c
            .query_row(
                "SELECT CAST(sum(n) AS BIGINT), avg(r), max(s), count(*), sum(n) FROM t WHERE n >= ?1",
                params![0i64],
                |r| Ok(r.clone()),
            )
            .unwrap();
        let first = c
            .query_row(
                "SELECT id = ?1, id <> ?1, b FROM t WHERE s = 'seven'",
                params![id],
                |r| Ok(r.clone()),
            )
            .unwrap();
        row.0.extend(first.0);
        seen.push(row);
        let missing = c
            .query_opt("SELECT n FROM t WHERE s = ?1", params!["nine"], |r| {
                r.get::<i64>(0)
            })
            .unwrap();
        assert_eq!(missing, None);
        assert!(matches!(
            c.query_row("SELECT n FROM t WHERE s = ?", params!["nine"], |r| r
                .get::<i64>(0)),
            Err(SqlError::NoRows)
        ));
        let flags: Vec<bool> = c
            .query_map("SELECT n IS NULL FROM t ORDER BY id", params![], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(flags, [false, false]);
    }
    assert_eq!(seen[0], seen[1], "SQLite and PostgreSQL read differently");
    assert_eq!(
        seen[0],
        Row(vec![
            Value::Int(42),
            Value::Real(2.5),
            Value::Text("seven".into()),
            Value::Int(2),
            Value::Int(42),
            Value::Int(1),
            Value::Int(0),
            Value::Blob(vec![0, 255]),
        ])
    );
    drop(conns);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn savepoints_nest_and_roll_back_alike_on_both_engines() {
    let dir = std::env::temp_dir().join(format!("kiln-sql-savepoints-{}", std::process::id()));
    let (cluster, conns) = engines(&dir);
    for c in &conns {
        let tx = c.savepoint().unwrap();
        tx.execute("INSERT INTO t (n) VALUES (1)", params![])
            .unwrap();
        {
            let inner = tx.savepoint().unwrap();
            inner
                .execute("INSERT INTO t (n) VALUES (2)", params![])
                .unwrap();
            // Dropped without commit: rolled back, the outer transaction goes on.
        }
        {
            let inner = tx.savepoint().unwrap();
            inner
                .execute("INSERT INTO t (n) VALUES (3)", params![])
                .unwrap();
            inner.commit().unwrap();
        }
        tx.commit().unwrap();
        {
            let dropped = c.savepoint().unwrap();
            dropped
                .execute("INSERT INTO t (n) VALUES (4)", params![])
                .unwrap();
        }
        let ns: Vec<i64> = c
            .query_map("SELECT n FROM t ORDER BY n", params![], |r| r.get(0))
            .unwrap();
        assert_eq!(ns, [1, 3], "{:?}", c.kind());
    }
    drop(conns);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// On PostgreSQL, transaction control waits to go with the next statement: a savepoint that
/// saw none sends nothing, one rolled back after a failed statement lets the rest commit, and a
/// transaction a failed statement aborted (no savepoint) is never reported committed.
#[test]
fn deferred_savepoints_behave_and_an_aborted_transaction_never_commits() {
    let dir = std::env::temp_dir().join(format!("kiln-sql-deferred-{}", std::process::id()));
    let (cluster, conns) = engines(&dir);
    for c in &conns {
        {
            let tx = c.savepoint().unwrap();
            tx.savepoint().unwrap().commit().unwrap();
            drop(tx.savepoint().unwrap());
            let outer = tx.savepoint().unwrap();
            let inner = outer.savepoint().unwrap();
            inner
                .execute("INSERT INTO t (n) VALUES (10)", params![])
                .unwrap();
            inner.commit().unwrap();
            outer.commit().unwrap();
            {
                let failed = tx.savepoint().unwrap();
                let err = failed
                    .execute("INSERT INTO no_such_table VALUES (1)", params![])
                    .unwrap_err();
                assert!(err.to_string().contains("no_such_table"), "{err}");
            }
            tx.execute("INSERT INTO t (n) VALUES (11)", params![])
                .unwrap();
            tx.commit().unwrap();
        }
        if c.kind() == EngineKind::Postgres {
            let tx = c.savepoint().unwrap();
            tx.execute("INSERT INTO t (n) VALUES (12)", params![])
                .unwrap();
            assert!(
                tx.execute("INSERT INTO no_such_table VALUES (1)", params![])
                    .is_err()
            );
            let err = tx.commit().unwrap_err();
            assert!(err.to_string().contains("aborted"), "{err}");
        }
        // The connection goes on, outside any transaction.
        c.execute("INSERT INTO t (n) VALUES (13)", params![])
            .unwrap();
        let ns: Vec<i64> = c
            .query_map("SELECT n FROM t ORDER BY n", params![], |r| r.get(0))
            .unwrap();
        assert_eq!(ns, [10, 11, 13], "{:?}", c.kind());
    }
    drop(conns);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_values_and_statements_fail_naming_what_and_where() {
    let dir = std::env::temp_dir().join(format!("kiln-sql-hostile-{}", std::process::id()));
    let (cluster, conns) = engines(&dir);
    for c in &conns {
        // A statement the engine refuses names itself.
        let err = c
            .execute("INSERT INTO nowhere VALUES (?1)", params![1i64])
            .unwrap_err()
            .to_string();
        assert!(err.contains("INSERT INTO nowhere"), "{err}");
        // And says what the engine said: the server's own message and code on PostgreSQL.
        assert!(
            err.contains("no such table: nowhere")
                || err.contains("relation \"nowhere\" does not exist (42P01)"),
            "{err}"
        );
        // Text where a number is read, a number past its type, a boolean that is not 0 or 1.
        c.execute("INSERT INTO t (n, s) VALUES (?1, ?2)", params![5i64, "x"])
            .unwrap();
        let err = c
            .query_row("SELECT s FROM t", params![], |r| r.get::<i64>(0))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "column 0 holds text, expected an integer that fits i64"
        );
        let err = c
            .query_row("SELECT n FROM t", params![], |r| r.get::<bool>(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("other than 0 and 1"), "{err}");
        // Quotes and question marks in a value are data, never SQL.
        c.execute(
            "INSERT INTO t (s) VALUES (?1)",
            params!["'); DROP TABLE t; -- ?2"],
        )
        .unwrap();
        let s: String = c
            .query_row("SELECT s FROM t WHERE s LIKE '%DROP%'", params![], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(s, "'); DROP TABLE t; -- ?2");
    }
    // PostgreSQL types its parameters: an integer past a 32-bit column is refused, not cut.
    let pg = &conns[1];
    pg.execute_batch("CREATE TABLE small (n INTEGER)").unwrap();
    let err = pg
        .execute("INSERT INTO small VALUES (?1)", params![1i64 << 40])
        .unwrap_err();
    assert!(format!("{err:#}").contains("INSERT INTO small"), "{err:#}");
    drop(conns);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lists_bind_as_arrays_on_postgresql_and_are_refused_by_sqlite() {
    let dir = std::env::temp_dir().join(format!("kiln-sql-lists-{}", std::process::id()));
    let (cluster, conns) = engines(&dir);
    let (sqlite, pg) = (&conns[0], &conns[1]);
    // What an array literal or a JSON document would have to quote is plain data here.
    let texts = vec![
        "plain",
        "{\"a\": [1, 2]}",
        "comma, brace } quote \" backslash \\ NULL",
        "",
        "ünïcødé ✓",
        "'); DROP TABLE t; -- ?2",
    ];
    let ns: Vec<i64> = vec![i64::MIN, -1, 0, 1, i64::MAX, 42];
    let maybe: Vec<Option<i64>> = vec![Some(1), None, Some(-3), None, Some(5), Some(6)];
    let stored = pg
        .execute(
            "INSERT INTO t (n, r, s)
             SELECT * FROM unnest(CAST(?1 AS BIGINT[]), CAST(?2 AS BIGINT[]), CAST(?3 AS TEXT[]))",
            params![ns, maybe, texts],
        )
        .unwrap();
    assert_eq!(stored, 6);
    let rows: Vec<(i64, Option<f64>, String)> = pg
        .query_map("SELECT n, r, s FROM t ORDER BY id", params![], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let want: Vec<(i64, Option<f64>, String)> = (0..6)
        .map(|i| (ns[i], maybe[i].map(|m| m as f64), texts[i].to_owned()))
        .collect();
    assert_eq!(rows, want);
    // An empty list is an empty array, and `= ANY` of it matches nothing.
    let none: Vec<i64> = Vec::new();
    let n: i64 = pg
        .query_row(
            "SELECT count(*) FROM t WHERE n = ANY(CAST(?1 AS BIGINT[]))",
            params![none],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
    // A list where the server wants another type is refused, naming the statement.
    let err = pg
        .execute(
            "INSERT INTO t (s) SELECT unnest(CAST(?1 AS TEXT[]))",
            params![ns],
        )
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("a list of integers"), "{err}");
    assert!(err.contains("INSERT INTO t (s)"), "{err}");
    // SQLite has no arrays: a list is refused before anything is stored.
    let err = sqlite
        .execute("INSERT INTO t (n) VALUES (?1)", params![ns])
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("a list of integers binds on PostgreSQL only"),
        "{err}"
    );
    let n: i64 = sqlite
        .query_row("SELECT count(*) FROM t", params![], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    drop(conns);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parameters_are_renumbered_outside_quotes_only() {
    assert_eq!(
        translate("SELECT ?1, ?2 FROM t WHERE a = ?1"),
        "SELECT $1, $2 FROM t WHERE a = $1"
    );
    assert_eq!(translate("VALUES (?, ?, ?)"), "VALUES ($1, $2, $3)");
    assert_eq!(
        translate("SELECT '?1', \"c?\" , ?3 , 'it''s ?'"),
        "SELECT '?1', \"c?\" , $3 , 'it''s ?'"
    );
}

#[test]
fn numerics_read_as_whole_numbers_when_they_are() {
    let numeric_of = |weight: i16, sign: u16, scale: u16, digits: &[u16]| {
        let mut raw = Vec::new();
        for w in [digits.len() as u16, weight as u16, sign, scale]
            .into_iter()
            .chain(digits.iter().copied())
        {
            raw.extend(w.to_be_bytes());
        }
        numeric(&raw).unwrap()
    };
    // 42, 123456789, -7, 0, 1.5
    assert_eq!(numeric_of(0, 0, 0, &[42]), Value::Int(42));
    assert_eq!(
        numeric_of(2, 0, 0, &[1, 2345, 6789]),
        Value::Int(123_456_789)
    );
    assert_eq!(numeric_of(0, 0x4000, 0, &[7]), Value::Int(-7));
    assert_eq!(numeric_of(0, 0, 0, &[]), Value::Int(0));
    assert_eq!(numeric_of(0, 0, 1, &[1, 5000]), Value::Real(1.5));
    // Past i64: a float, never a wrapped integer.
    assert!(
        matches!(numeric_of(5, 0, 0, &[9999, 9999, 9999, 9999, 9999, 9999]), Value::Real(r) if r > 9e23)
    );
    // Hostile: a header longer than the bytes, a digit past 9999, an unknown sign.
    assert!(numeric(&[0, 3, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    assert!(numeric(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]).is_err());
    assert!(numeric(&[0, 0, 0, 0, 0x12, 0x34, 0, 0]).is_err());
    assert!(numeric(&[0, 1]).is_err());
}
