//! Waivers: an operator's word that a node may ship with a fault code — kept with the reason,
//! the ticket, who gave it, until when, and who revoked it. They change what reports show
//! (`pass (1 waived)`, never plain `pass`), never the stored results or verdicts.

use std::collections::{BTreeSet, HashMap};

use kiln_protocol::api::{Waived, Waiver};

use super::{Connection, StoreError, now_ms, params, runs};
use crate::store::sql::OptionalExtension;

/// Why a waiver was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotWaived {
    /// No such node.
    NoNode,
    /// The node has no such finished run (or none finished at all).
    NoRun,
    /// The run does not have the code: these are the ones it has (sorted).
    NotInRun {
        /// The run.
        run: i64,
        /// Its fault codes.
        codes: Vec<String>,
    },
}

/// Records a waiver of a code the run has, and its line in the node's history.
pub fn add_waiver(
    conn: &Connection,
    req: &kiln_protocol::api::WaiveRequest,
    expires_ms: i64,
    who: &str,
) -> Result<Result<Waiver, NotWaived>, StoreError> {
    let tx = conn.savepoint()?;
    let exists: Option<i64> = tx
        .query_row("SELECT id FROM nodes WHERE id = ?1", [req.node], |r| {
            r.get(0)
        })
        .optional()?;
    if exists.is_none() {
        return Ok(Err(NotWaived::NoNode));
    }
    let run: Option<i64> = tx
        .query_row(
            "SELECT id FROM runs WHERE node_id = ?1 AND verdict IS NOT NULL AND (CAST(?2 AS BIGINT) IS NULL OR id = ?2) ORDER BY id DESC LIMIT 1",
            params![req.node, req.run],
            |r| r.get(0),
        )
        .optional()?;
    let Some(run) = run else {
        return Ok(Err(NotWaived::NoRun));
    };
    let codes = runs::fault_codes(&tx, &[run])?
        .remove(&run)
        .unwrap_or_default();
    if !codes.contains(&req.code) {
        return Ok(Err(NotWaived::NotInRun {
            run,
            codes: codes.into_iter().collect(),
        }));
    }
    let now = now_ms();
    let id: i64 = tx.query_row(
        "INSERT INTO waivers (node_id, code, reason, ticket, created_ms, created_by, expires_ms, run_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        params![req.node, req.code, req.reason, req.ticket, now, who, expires_ms, run],
        |r| r.get(0),
    )?;
    let what = format!(
        "waiver #{id}: {} waived — {}{}",
        req.code,
        req.reason,
        req.ticket
            .as_deref()
            .map(|t| format!(" (ticket {t})"))
            .unwrap_or_default()
    );
    tx.execute(
        "INSERT INTO node_history (node_id, at_ms, what, who) VALUES (?1, ?2, ?3, ?4)",
        params![req.node, now, what, who],
    )?;
    let waiver = read_waivers(&tx, Some(req.node), now)?
        .into_iter()
        .find(|w| w.id == id)
        .ok_or(StoreError::Invariant(
            "the waiver just recorded is not in the log",
        ))?;
    tx.commit()?;
    Ok(Ok(waiver))
}

/// Revokes waiver `id` (once); `None` when there is no such waiver, `Some(false)` when it was
/// revoked already.
pub fn revoke_waiver(conn: &Connection, id: i64, who: &str) -> Result<Option<bool>, StoreError> {
    let tx = conn.savepoint()?;
    let found: Option<(i64, String, Option<i64>)> = tx
        .query_row(
            "SELECT node_id, code, revoked_ms FROM waivers WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((node, code, revoked)) = found else {
        return Ok(None);
    };
    if revoked.is_some() {
        return Ok(Some(false));
    }
    let now = now_ms();
    tx.execute(
        "UPDATE waivers SET revoked_ms = ?2, revoked_by = ?3 WHERE id = ?1",
        params![id, now, who],
    )?;
    tx.execute(
        "INSERT INTO node_history (node_id, at_ms, what, who) VALUES (?1, ?2, ?3, ?4)",
        params![node, now, format!("waiver #{id} for {code} revoked"), who],
    )?;
    tx.commit()?;
    Ok(Some(true))
}

/// The waiver log, newest first: every waiver, or one node's; `active` as of `now`.
pub fn read_waivers(
    conn: &Connection,
    node: Option<i64>,
    now: i64,
) -> Result<Vec<Waiver>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, node_id, code, reason, ticket, created_ms, created_by, expires_ms, revoked_ms, revoked_by, run_id
         FROM waivers WHERE CAST(?1 AS BIGINT) IS NULL OR node_id = ?1 ORDER BY id DESC LIMIT 10000",
    )?;
    let rows = stmt
        .query_map([node], |r| {
            let expires_ms: Option<i64> = r.get(7)?;
            let revoked_ms: Option<i64> = r.get(8)?;
            Ok(Waiver {
                id: r.get(0)?,
                node_id: r.get(1)?,
                code: r.get(2)?,
                reason: r.get(3)?,
                ticket: r.get(4)?,
                created_ms: r.get(5)?,
                created_by: r.get(6)?,
                expires_ms,
                revoked_ms,
                revoked_by: r.get(9)?,
                run_id: r.get(10)?,
                active: revoked_ms.is_none() && expires_ms.is_none_or(|e| e > now),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// For the failed runs of `rows` (node, run): the waived part of each, by node, as of `now`:
/// only the waivers granted on that very run, neither revoked nor expired, count.
pub(super) fn waived(
    conn: &Connection,
    now: i64,
    failed: &[(i64, i64)],
) -> Result<HashMap<i64, Waived>, StoreError> {
    let mut out = HashMap::new();
    if failed.is_empty() {
        return Ok(out);
    }
    let nodes =
        serde_json::Value::from(failed.iter().map(|(n, _)| *n).collect::<Vec<_>>()).to_string();
    let mut active: HashMap<i64, BTreeSet<String>> = HashMap::new();
    {
        let runs_of_nodes: HashMap<i64, i64> = failed.iter().copied().collect();
        let mut stmt = conn.prepare_cached(
            "SELECT node_id, code, run_id FROM waivers
             WHERE node_id IN (SELECT value FROM json_each(?1))
               AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?2)",
        )?;
        for row in stmt.query_map(params![nodes, now], |r| {
            Ok((
                r.get::<i64>(0)?,
                r.get::<String>(1)?,
                r.get::<Option<i64>>(2)?,
            ))
        })? {
            let (node, code, run) = row?;
            if run.is_some() && run == runs_of_nodes.get(&node).copied() {
                active.entry(node).or_default().insert(code);
            }
        }
    }
    if active.is_empty() {
        return Ok(out);
    }
    let runs: Vec<i64> = failed
        .iter()
        .filter(|(n, _)| active.contains_key(n))
        .map(|(_, r)| *r)
        .collect();
    let codes = runs::fault_codes(conn, &runs)?;
    // A run no console vouched for is never waived whole: its faults may be, its pass not.
    let attested: BTreeSet<i64> = {
        let ids = serde_json::Value::from(runs.clone()).to_string();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM runs WHERE id IN (SELECT value FROM json_each(?1)) AND attested_ms IS NOT NULL",
        )?;
        stmt.query_map([ids], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    for (node, run) in failed {
        let (Some(waivers), Some(codes)) = (active.get(node), codes.get(run)) else {
            continue;
        };
        // `run.*` codes are the collector's own (lost contact, a disagreement): never covered.
        let covered: Vec<String> = codes
            .intersection(waivers)
            .filter(|c| !c.starts_with("run."))
            .cloned()
            .collect();
        if !covered.is_empty() {
            out.insert(
                *node,
                Waived {
                    all: covered.len() == codes.len() && attested.contains(run),
                    codes: covered,
                },
            );
        }
    }
    Ok(out)
}
