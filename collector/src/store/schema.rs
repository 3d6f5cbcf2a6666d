//! Connection settings and versioned migrations. Each migration runs once, in a transaction,
//! and bumps `PRAGMA user_version`; a database newer than this binary is refused.

use rusqlite::Connection;

/// Migrations in order; index + 1 is the schema version they bring the database to. They are
/// history: a database once migrated never sees one again, so their text never changes. The
/// `CHECK` lists in migration 1 are the database's own guard on the lifecycle's enums; a test
/// keeps the two in agreement.
/// The schema version this kiln brings a database to (PostgreSQL's is the same,
/// [`super::pg_schema::VERSION`]).
pub const VERSION: usize = MIGRATIONS.len();

const MIGRATIONS: &[&str] = &[
    // 1: nodes, their MACs, suites by content, runs, stages, events, steps.
    "
    CREATE TABLE nodes (
        id INTEGER PRIMARY KEY,
        uuid TEXT UNIQUE,
        serial TEXT,
        hostname TEXT,
        rack TEXT,
        slot TEXT,
        mode TEXT NOT NULL DEFAULT 'verify' CHECK (mode IN ('verify', 'local', 'hold')),
        suite TEXT,
        created_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL
    );
    CREATE INDEX nodes_rack ON nodes(rack);
    CREATE INDEX nodes_serial ON nodes(serial);
    CREATE TABLE node_macs (
        mac TEXT PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE
    );
    CREATE TABLE rack_suites (
        rack TEXT PRIMARY KEY,
        suite TEXT NOT NULL
    );
    CREATE TABLE suites (
        sha256 TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        text TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        suite_sha256 TEXT NOT NULL REFERENCES suites(sha256),
        suite_name TEXT NOT NULL,
        image_digest TEXT,
        token_hash TEXT NOT NULL,
        stage TEXT NOT NULL,
        verdict TEXT,
        verdict_reason TEXT,
        allow_destructive INTEGER NOT NULL DEFAULT 0,
        heartbeat_secs INTEGER NOT NULL,
        acked_seq INTEGER NOT NULL DEFAULT 0,
        progress TEXT,
        inventory TEXT,
        expect TEXT,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        last_seen_ms INTEGER NOT NULL
    );
    CREATE INDEX runs_node ON runs(node_id, id);
    CREATE INDEX runs_open ON runs(verdict) WHERE verdict IS NULL;
    CREATE TABLE stages (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        name TEXT NOT NULL CHECK (name IN ('memtest', 'linux')),
        state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done')),
        verdict TEXT,
        detail TEXT,
        started_ms INTEGER,
        finished_ms INTEGER,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE events (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        step INTEGER,
        body TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        outcome TEXT NOT NULL,
        report TEXT NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    ",
    // 2: when an operator (or the unknown-node policy) last armed a node for verification.
    "ALTER TABLE nodes ADD COLUMN armed_ms INTEGER;",
    // 3: what memtest86+ showed: the reading, the final screen, the raw console bytes.
    "CREATE TABLE memtest_results (
        run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        pass INTEGER NOT NULL,
        detail TEXT NOT NULL,
        reading TEXT,
        screen TEXT NOT NULL,
        raw BLOB NOT NULL,
        secs INTEGER NOT NULL,
        finished_ms INTEGER NOT NULL
    );",
    // 4: the collector computes verdicts itself: the agent's verdict kept beside it, the
    // collector's own findings, when the agent started; ad-hoc nodes (unauthenticated
    // registration) kept apart from known ones; MACs found by node.
    "ALTER TABLE runs ADD COLUMN agent_verdict TEXT;
     ALTER TABLE runs ADD COLUMN findings TEXT;
     ALTER TABLE runs ADD COLUMN agent_started_ms INTEGER;
     ALTER TABLE nodes ADD COLUMN ad_hoc INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN claimed TEXT;
     CREATE INDEX node_macs_node ON node_macs(node_id);",
    // 5: `armed_ms` means "a new run is asked for" until a run starts (which clears it),
    // instead of being compared with run start times (equal within one millisecond).
    "UPDATE nodes SET armed_ms = NULL
       WHERE armed_ms <= (SELECT max(started_ms) FROM runs WHERE runs.node_id = nodes.id);",
    // 6: the token on a kernel command line is a one-time bootstrap, exchanged for the
    // session token `token_hash` then holds.
    "ALTER TABLE runs ADD COLUMN bootstrap_hash TEXT;
     ALTER TABLE runs ADD COLUMN bootstrap_used_ms INTEGER;
     CREATE INDEX runs_open_token ON runs(token_hash) WHERE verdict IS NULL;",
    // 7: the sequence number of the agent's final event, so each batch need not look for it.
    "ALTER TABLE runs ADD COLUMN final_seq INTEGER;
     UPDATE runs SET final_seq = (SELECT min(seq) FROM events e WHERE e.run_id = runs.id AND e.kind = 'run_finished');",
    // 8: consent to destroy a node's disks is the operator's, and every grant and revocation
    // is kept in the node's history with when and by whom.
    "ALTER TABLE nodes ADD COLUMN allow_destructive INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE node_history (
        node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        at_ms INTEGER NOT NULL,
        what TEXT NOT NULL,
        who TEXT NOT NULL
     );
     CREATE INDEX node_history_node ON node_history(node_id, at_ms);",
    // 9: pages list nodes in rack/slot order straight from an index (a page of the dashboard
    // reads its rows, not every node, then sorts), and a node's MACs come sorted from theirs.
    "DROP INDEX nodes_rack;
     CREATE INDEX nodes_place ON nodes(rack, slot);
     DROP INDEX node_macs_node;
     CREATE INDEX node_macs_node ON node_macs(node_id, mac);",
    // 10: the last of the node's serial console through the Linux stage, read for a panic or
    // a machine check when the run ends by lost contact or an unexpected reboot.
    "ALTER TABLE runs ADD COLUMN console_tail BLOB;",
    // 11: nodes belong to a batch (a purchase order, a delivery), which managers ask about.
    "ALTER TABLE nodes ADD COLUMN batch TEXT;
     CREATE INDEX nodes_batch ON nodes(batch, rack, slot);",
    // 12: waivers: a node's fault code that may ship anyway, with why, who and until when;
    // never deleted, revoked at most once. Raw results never change.
    "CREATE TABLE waivers (
        id INTEGER PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        code TEXT NOT NULL,
        reason TEXT NOT NULL,
        ticket TEXT,
        created_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        expires_ms INTEGER,
        revoked_ms INTEGER,
        revoked_by TEXT
     );
     CREATE INDEX waivers_node ON waivers(node_id, code);",
    // 13: provenance: what a verdict was reached with — the collector's and the agent's
    // versions and the digests of every artifact the node booted.
    "ALTER TABLE runs ADD COLUMN collector_version TEXT;
     ALTER TABLE runs ADD COLUMN agent_version TEXT;
     ALTER TABLE runs ADD COLUMN artifacts TEXT;",
    // 14: each node's latest run, kept by a trigger on every new run (runs are never deleted
    // but with their node), so pages join it directly instead of finding the greatest run id
    // node by node: that search was a fifth of the report's SQL at 10,000 nodes.
    "ALTER TABLE nodes ADD COLUMN latest_run INTEGER;
     UPDATE nodes SET latest_run = (SELECT max(id) FROM runs WHERE node_id = nodes.id);
     CREATE TRIGGER runs_latest AFTER INSERT ON runs BEGIN
        UPDATE nodes SET latest_run = NEW.id
         WHERE id = NEW.node_id AND (latest_run IS NULL OR latest_run < NEW.id);
     END;",
    // 15: the failed steps and stages by run, indexed alone: a report reads the failures of
    // every listed run, and through the primary keys it read every step of every run to find
    // the few that failed. The `WHERE` clauses are the queries' own, word for word (a partial
    // index serves only a query whose terms imply it).
    "CREATE INDEX steps_failed ON steps(run_id, step) WHERE outcome IN ('fail', 'error');
     CREATE INDEX stages_failed ON stages(run_id) WHERE verdict = 'fail' AND detail IS NOT NULL;",
    // 16: the reports' clock: a number that every change to what a report shows moves on, in
    // the transaction that makes the change (by the triggers [`watch_reports`] makes), so a report
    // built in a snapshot at one reading of it holds for any snapshot at the same one; and one
    // that only live progress moves.
    "CREATE TABLE report_clock (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        rev INTEGER NOT NULL,
        progress_rev INTEGER NOT NULL
     );
     INSERT INTO report_clock (id, rev, progress_rev) VALUES (1, 0, 0);",
    // 17: what makes a run believable: where and when its Linux stage was handed out and its
    // bootstrap exchanged, whether the node's console is read and the proof expected on it,
    // when it showed; when the collector received each step's result and the agent's final
    // event (its own clock against the suite's durations).
    "ALTER TABLE runs ADD COLUMN linux_served_ms INTEGER;
     ALTER TABLE runs ADD COLUMN linux_source TEXT;
     ALTER TABLE runs ADD COLUMN session_source TEXT;
     ALTER TABLE runs ADD COLUMN console_watched INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN attest_proof TEXT;
     ALTER TABLE runs ADD COLUMN attested_ms INTEGER;
     ALTER TABLE runs ADD COLUMN final_ms INTEGER;
     ALTER TABLE steps ADD COLUMN received_ms INTEGER;",
    // 18: a waiver belongs to the run it was granted on (the node's next run is judged
    // afresh); those kept from before go to the node's latest run, which they were about.
    "ALTER TABLE waivers ADD COLUMN run_id INTEGER;
     UPDATE waivers SET run_id = (SELECT latest_run FROM nodes WHERE nodes.id = waivers.node_id);",
    // 19: what a run has sent, against the bounds it was started with (an ad-hoc run's are
    // far lower); unbounded for runs from before.
    "ALTER TABLE runs ADD COLUMN events_stored INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN max_events INTEGER;
     ALTER TABLE runs ADD COLUMN max_log_bytes INTEGER;",
    // 20: the site's attestation rule a run was started under (`optional`: unattested may ship).
    "ALTER TABLE runs ADD COLUMN attestation_optional INTEGER NOT NULL DEFAULT 0;",
    // 21: where a run's payload came from: bytes and pieces by source (node 0: the collector).
    "CREATE TABLE payload_sources (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        source_node INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        pieces INTEGER NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        PRIMARY KEY (run_id, source_node)
     ) WITHOUT ROWID;",
    // 22: pieces that failed their hash or broke off, by source; a run's payload tally (JSON,
    // written once, when its last piece is verified).
    "ALTER TABLE payload_sources ADD COLUMN corrupt INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE payload_sources ADD COLUMN broken INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN payload TEXT;",
    // 23: the site's cabling map: each node's interface and the switch port it goes to.
    "CREATE TABLE cabling (
        node_id INTEGER NOT NULL REFERENCES nodes(id),
        interface TEXT NOT NULL,
        switch TEXT NOT NULL,
        port TEXT NOT NULL,
        PRIMARY KEY (node_id, interface)
     ) WITHOUT ROWID;
     CREATE INDEX cabling_port ON cabling(switch, port);",
    // 24: each end's figures of each pair of a `target: peer` step (partner NULL: no partner
    // came within the step's pair_timeout), and whether they met the step's thresholds.
    "CREATE TABLE pair_results (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        pair INTEGER NOT NULL,
        partner_node INTEGER,
        partner_name TEXT,
        download_mbps REAL,
        upload_mbps REAL,
        mbps REAL,
        met INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (run_id, step, pair)
     ) WITHOUT ROWID;",
    // 25: a run's power cycles, one row each: where it stands, when its power action went
    // out and by when it must have reported, and what its boot reported.
    "CREATE TABLE power_cycles (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        cycle INTEGER NOT NULL,
        count INTEGER NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        deadline_ms INTEGER,
        powered_ms INTEGER,
        served_ms INTEGER,
        reported_ms INTEGER,
        attested_ms INTEGER,
        boot_id TEXT,
        inventory TEXT,
        PRIMARY KEY (run_id, cycle)
     ) WITHOUT ROWID;
     CREATE INDEX power_cycles_state ON power_cycles(state);
     CREATE TABLE stages_with_cycles (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        name TEXT NOT NULL CHECK (name IN ('memtest', 'linux', 'cycles')),
        state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done')),
        verdict TEXT,
        detail TEXT,
        started_ms INTEGER,
        finished_ms INTEGER,
        PRIMARY KEY (run_id, name)
     );
     INSERT INTO stages_with_cycles SELECT run_id, name, state, verdict, detail, started_ms, finished_ms FROM stages;
     DROP TABLE stages;
     ALTER TABLE stages_with_cycles RENAME TO stages;
     CREATE INDEX stages_failed ON stages(run_id) WHERE verdict = 'fail' AND detail IS NOT NULL;",
    // 26: a node re-armed once, automatically, after a memtest stage lost its reader (the
    // collector died): the run it repeats, on the node until its next run starts, then on
    // that run — so a repeat is never repeated.
    "ALTER TABLE nodes ADD COLUMN rearm_of INTEGER;
     ALTER TABLE runs ADD COLUMN rearm_of INTEGER;",
    // 27: the collectors and their heartbeats, and the leases on work one collector does at
    // a time, with every epoch kept (the same text on PostgreSQL).
    super::leases::SCHEMA,
    // 28: a node's history in the order it was written, on both engines (SQLite's rowid
    // was that order, and PostgreSQL has none): a key of its own, the rowid carried over.
    "CREATE TABLE node_history_keyed (
        seq INTEGER PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        at_ms INTEGER NOT NULL,
        what TEXT NOT NULL,
        who TEXT NOT NULL
     );
     INSERT INTO node_history_keyed (seq, node_id, at_ms, what, who)
       SELECT rowid, node_id, at_ms, what, who FROM node_history;
     DROP TABLE node_history;
     ALTER TABLE node_history_keyed RENAME TO node_history;
     CREATE INDEX node_history_node ON node_history(node_id, at_ms);",
    // 29: nothing here. PostgreSQL's events lose their foreign key to the run (a query per
    // event there); SQLite checks it in process, and dropping it would copy the whole table.
    "SELECT 1;",
    // 30: the pairing of `target: peer` steps kept in the database, so that every collector
    // sharing it pairs the same nodes: each step's scheduler, and each node's bandwidth
    // server's address.
    "CREATE TABLE pair_steps (
        id INTEGER PRIMARY KEY,
        suite_sha256 TEXT NOT NULL,
        step INTEGER NOT NULL,
        state TEXT NOT NULL,
        UNIQUE (suite_sha256, step)
     );
     CREATE TABLE pair_addrs (
        node_id INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
        addr TEXT NOT NULL
     );",
    // 31: nothing here. PostgreSQL's runs keep room on each page for the next version of
    // their rows (every batch updates its run's).
    "SELECT 1;",
];

/// The tables a report reads, each with the columns whose update changes nothing a report
/// shows (so that it leaves the reports' clock alone): the ones every event batch, heartbeat
/// and console line touch. Any other column, a column added later included, moves the clock
/// — a report rebuilt for nothing costs time, a stale one could show a pass that no longer
/// holds. A test reads, with SQLite's authorizer, every column a report's statements read and
/// checks that each is watched here.
pub const REPORT_TABLES: &[(&str, &[&str])] = &[
    ("nodes", &["last_seen_ms"]),
    ("node_macs", &[]),
    (
        "runs",
        &[
            "last_seen_ms",
            "acked_seq",
            "console_tail",
            "inventory",
            "events_stored",
            "log_bytes",
        ],
    ),
    ("steps", &[]),
    ("stages", &[]),
    ("waivers", &[]),
    ("power_cycles", &[]),
    // Who reads each console (the dashboard shows it): taken, taken over; a renewal alone
    // moves nothing.
    ("leases", &["expires_ms"]),
];

/// The column that moves only the progress clock (`report_clock.progress_rev`): a running
/// step's live progress, which every batch of a busy agent changes and no verdict, fault or
/// waiver depends on — a kept report may show it a little late (see `api::report_cache`).
pub const REPORT_PROGRESS: (&str, &str) = ("runs", "progress");

/// Of `table`'s `columns`, those whose update moves the reports' clock, and the one that moves
/// the progress clock instead; an `unseen` column the table lacks is an error (a rename the
/// list missed would otherwise watch it silently).
pub(super) fn watched_columns<'c>(
    table: &str,
    unseen: &[&str],
    columns: &'c [String],
) -> anyhow::Result<(Vec<&'c str>, Option<&'static str>)> {
    if let Some(missing) = unseen.iter().find(|c| !columns.iter().any(|n| n == *c)) {
        anyhow::bail!(
            "the reports' clock leaves {table}.{missing} unwatched, but {table} has no such column"
        );
    }
    let progress = (table == REPORT_PROGRESS.0).then_some(REPORT_PROGRESS.1);
    let watched = columns
        .iter()
        .map(String::as_str)
        .filter(|c| !unseen.contains(c) && Some(*c) != progress)
        .collect();
    Ok((watched, progress))
}

/// (Re)creates the triggers that move the reports' clock: on every insert and delete into
/// [`REPORT_TABLES`] and every update of a column not listed there as unseen, but for
/// [`REPORT_PROGRESS`], which moves the progress clock. Made anew at each start from the
/// tables as they are then, so a column a later migration adds is watched without anyone
/// remembering to; not a migration, since migrations never change.
pub fn watch_reports(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    let old: Vec<String> = tx
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE 'report\\_clock\\_%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for name in old {
        tx.execute_batch(&format!("DROP TRIGGER \"{name}\";"))?;
    }
    const TICK: &str = "BEGIN UPDATE report_clock SET rev = rev + 1 WHERE id = 1; END;";
    for (table, unseen) in REPORT_TABLES {
        let columns: Vec<String> = tx
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let (watched, progress) = watched_columns(table, unseen, &columns)?;
        if let Some(column) = progress {
            tx.execute_batch(&format!(
                "CREATE TRIGGER report_clock_{table}_progress AFTER UPDATE OF {column} ON {table}
                 BEGIN UPDATE report_clock SET progress_rev = progress_rev + 1 WHERE id = 1; END;"
            ))?;
        }
        tx.execute_batch(&format!(
            "CREATE TRIGGER report_clock_{table}_insert AFTER INSERT ON {table} {TICK}
             CREATE TRIGGER report_clock_{table}_delete AFTER DELETE ON {table} {TICK}
             CREATE TRIGGER report_clock_{table}_update AFTER UPDATE OF {} ON {table} {TICK}",
            watched.join(", ")
        ))?;
    }
    tx.commit()?;
    Ok(())
}

/// WAL for concurrent readers and crash safety, foreign keys on, a busy timeout.
pub fn configure(conn: &Connection) -> anyhow::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed transaction survives power loss too, not only a killed process. The
    // cost (an fsync per commit) is shared by every write of a group commit.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // 8 MiB of page cache: SQLite walks the whole cache's hash at the end of each write
    // transaction (pager_end_transaction → pcache1Truncate; perf put 24 % of the writer's
    // time there with 64 MiB), while the pages it would keep are in the OS's cache anyway.
    // The WAL is folded into the file in larger, rarer checkpoints.
    conn.pragma_update(None, "cache_size", -8192)?;
    conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
    // After a burst, the WAL file is cut back to 64 MiB when it starts over.
    conn.pragma_update(None, "journal_size_limit", 67_108_864)?;
    Ok(())
}

/// Brings the schema up to date.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > VERSION {
        anyhow::bail!(
            "the database is at schema version {version}, newer than this kiln ({VERSION}); refusing to touch it"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|e| anyhow::anyhow!("migration {} failed: {e}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    watch_reports(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Mode, Sql, Stage, StageState};

    #[test]
    fn the_schema_accepts_exactly_the_lifecycle_states() {
        let mut raw = Connection::open_in_memory().unwrap();
        configure(&raw).unwrap();
        migrate(&mut raw).unwrap();
        let conn = crate::store::sql::Connection::over(&raw);
        conn.execute_batch(
            "INSERT INTO suites VALUES ('s', 'n', 't', 0);
             INSERT INTO nodes (id, created_ms, last_seen_ms) VALUES (1, 0, 0);
             INSERT INTO runs (id, node_id, suite_sha256, suite_name, token_hash, stage, heartbeat_secs, started_ms, last_seen_ms)
               VALUES (1, 1, 's', 'n', 'h', 'x', 1, 0, 0);",
        )
        .unwrap();
        for mode in Mode::ALL {
            conn.execute("UPDATE nodes SET mode = ?1", [Sql(*mode)])
                .unwrap();
        }
        assert!(
            conn.execute("UPDATE nodes SET mode = 'verified'", [])
                .is_err()
        );
        for stage in Stage::ALL {
            for state in StageState::ALL {
                conn.execute(
                    "INSERT OR REPLACE INTO stages (run_id, name, state) VALUES (1, ?1, ?2)",
                    crate::store::sql::params![stage, state],
                )
                .unwrap();
            }
        }
        assert!(
            conn.execute(
                "INSERT INTO stages (run_id, name, state) VALUES (1, 'bios', ?1)",
                [StageState::Pending]
            )
            .is_err()
        );
        assert!(
            conn.execute(
                "INSERT OR REPLACE INTO stages (run_id, name, state) VALUES (1, ?1, 'paused')",
                [Stage::Linux]
            )
            .is_err()
        );
    }

    #[test]
    fn migrations_apply_once_and_newer_databases_are_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        configure(&conn).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(
            migrate(&mut conn)
                .unwrap_err()
                .to_string()
                .contains("newer than this kiln")
        );
    }

    #[test]
    fn each_node_knows_its_latest_run_from_the_migration_on_and_after_every_new_run() {
        let mut conn = Connection::open_in_memory().unwrap();
        configure(&conn).unwrap();
        // A database from before the column, with runs in it.
        let before = MIGRATIONS
            .iter()
            .position(|m| m.contains("ADD COLUMN latest_run"))
            .unwrap();
        for sql in &MIGRATIONS[..before] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", before).unwrap();
        let run = |conn: &Connection, id: i64, node: i64| {
            conn.execute(
                "INSERT INTO runs (id, node_id, suite_sha256, suite_name, token_hash, stage, heartbeat_secs, started_ms, last_seen_ms)
                 VALUES (?1, ?2, 's', 'n', 'h', 'x', 1, 0, 0)",
                [id, node],
            )
            .unwrap();
        };
        conn.execute_batch(
            "INSERT INTO suites VALUES ('s', 'n', 't', 0);
             INSERT INTO nodes (id, created_ms, last_seen_ms) VALUES (1, 0, 0), (2, 0, 0), (3, 0, 0);",
        )
        .unwrap();
        run(&conn, 1, 1);
        run(&conn, 2, 2);
        run(&conn, 3, 1);
        migrate(&mut conn).unwrap();
        let latest = |conn: &Connection, node: i64| -> Option<i64> {
            conn.query_row("SELECT latest_run FROM nodes WHERE id = ?1", [node], |r| {
                r.get(0)
            })
            .unwrap()
        };
        assert_eq!(
            [latest(&conn, 1), latest(&conn, 2), latest(&conn, 3)],
            [Some(3), Some(2), None]
        );
        run(&conn, 4, 3);
        run(&conn, 5, 2);
        assert_eq!(
            [latest(&conn, 1), latest(&conn, 2), latest(&conn, 3)],
            [Some(3), Some(5), Some(4)]
        );
    }
}
