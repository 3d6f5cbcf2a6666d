//! What an operator changes on nodes: their mode (verify, local, hold) and their consent to
//! destructive disk steps on network boot.

use super::{
    Connection, Ended, Mode, Selector, Sql, StoreError, Verdict, close_run, exec, now_ms, params,
    select_sql,
};

/// An operator sets the mode of the selected nodes. A node's open run ends as incomplete (the
/// operator interrupted it); setting `verify` arms the nodes for a new run at their next boot.
/// Returns how many nodes, and the stages it ended.
pub fn set_mode(
    conn: &Connection,
    selector: &Selector,
    mode: Mode,
) -> Result<(usize, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let (clause, value) = select_sql(selector);
    let nodes: Vec<i64> = {
        let mut stmt = tx.prepare(&format!("SELECT id FROM nodes WHERE {clause}"))?;
        stmt.query_map(params![value], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut ended = Ended::default();
    let now = now_ms();
    for node_id in &nodes {
        let open: Vec<i64> = {
            let mut stmt =
                tx.prepare_cached("SELECT id FROM runs WHERE node_id = ?1 AND verdict IS NULL")?;
            stmt.query_map([node_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        for run_id in open {
            ended.extend(close_run(
                &tx,
                run_id,
                Verdict::Incomplete,
                &format!("the operator set the node's mode to {mode} before the run finished"),
            )?);
        }
        exec(
            &tx,
            "UPDATE nodes SET mode = ?2, armed_ms = CASE WHEN ?2 = ?4 THEN CAST(?3 AS BIGINT) ELSE armed_ms END, rearm_of = NULL WHERE id = ?1",
            params![node_id, Sql(mode), now, Sql(Mode::Verify)],
        )?;
    }
    tx.commit()?;
    Ok((nodes.len(), ended))
}

/// An operator allows (or revokes) destructive disk steps on the selected nodes; each change is
/// written to the node's history with when and `who`. Returns how many nodes.
pub fn set_destructive(
    conn: &Connection,
    selector: &Selector,
    allow: bool,
    who: &str,
) -> Result<usize, StoreError> {
    let tx = conn.savepoint()?;
    let (clause, value) = select_sql(selector);
    let nodes: Vec<i64> = {
        let mut stmt = tx.prepare(&format!("SELECT id FROM nodes WHERE {clause}"))?;
        stmt.query_map(params![value], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let what = if allow {
        "destructive disk steps allowed"
    } else {
        "destructive disk steps revoked"
    };
    let now = now_ms();
    for node_id in &nodes {
        exec(
            &tx,
            "UPDATE nodes SET allow_destructive = ?2 WHERE id = ?1",
            params![node_id, allow],
        )?;
        exec(
            &tx,
            "INSERT INTO node_history (node_id, at_ms, what, who) VALUES (?1, ?2, ?3, ?4)",
            params![node_id, now, what, who],
        )?;
    }
    tx.commit()?;
    Ok(nodes.len())
}
