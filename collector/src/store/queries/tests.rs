//! The statements against a real SQLite database.

use super::*;

/// The query plan's lines for `sql`.
fn plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
    stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn pages_scan_the_nodes_once_and_search_everything_else_by_index() {
    let conn = crate::store::test_connection();
    for sql in [NODE_ROWS_SQL, TALLY_SQL] {
        let lines = plan(&conn, sql);
        let scans: Vec<&String> = lines.iter().filter(|l| l.starts_with("SCAN")).collect();
        // The node list itself, and the few MACs one node's subquery produced.
        assert!(
            scans
                .iter()
                .all(|l| l.starts_with("SCAN n") || l.starts_with("SCAN (subquery")),
            "a full scan besides the node list: {lines:#?}"
        );
    }
    // The node list comes in rack/slot order from its index, and each node's MACs in order
    // from theirs: a page of the dashboard reads its rows, not every node, and sorts nothing.
    let lines = plan(&conn, NODE_ROWS_SQL);
    assert!(
        lines.iter().all(|l| !l.contains("TEMP B-TREE")),
        "{lines:#?}"
    );
    // The failures of every listed run: one search per run id, no scan of a table.
    for sql in [FAILED_STEPS_SQL, FAILED_STAGES_SQL] {
        let lines = plan(&conn, sql);
        assert!(
            lines
                .iter()
                .all(|l| !l.starts_with("SCAN") || l.starts_with("SCAN json_each")),
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
