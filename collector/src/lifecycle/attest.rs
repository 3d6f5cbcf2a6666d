//! The node's own console vouching for its run: whether the console is read, the attestation
//! line the agent writes there once its session is open, and what a wrong line means.
//!
//! A run whose node's console is read passes only once that console has shown the proof the
//! run's session exchange made possible ([`kiln_protocol::attest`]); a line for this run with
//! another proof, or this run's line on another node's console, fails it as a security event.
//! A run whose console is not read can at best be `unattested`.

use super::verdict::{Waiting, finish_linux_when};
use super::{Connection, Ended, StoreError, Verdict, close_run, exec, now_ms, params, row};
use crate::store::sql::OptionalExtension;

use kiln_protocol::attest::Claim;

/// How long after the agent's final event a read console may take to show the attestation
/// before the run is finished without it (the line was written long before; this covers a
/// console reconnecting, never a step's worth of work).
pub const GRACE_MS: i64 = 20_000;

/// Records that the node's console is read through the Linux stage just handed out for
/// `run_id` (before anyone has the stage's token): from now on the run passes only attested.
pub fn console_watched(conn: &Connection, run_id: i64) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE runs SET console_watched = 1 WHERE id = ?1 AND verdict IS NULL",
        [run_id],
    )?;
    Ok(())
}

/// What an attestation line on a console did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// The run's own line, with the right proof, on its own node's console.
    Yes,
    /// A line that is not the run's proof, or another run's line: a run failed (named).
    Security(i64),
    /// The line names a run that is closed or unknown, or another open run of the same node:
    /// nothing changed.
    Ignored,
}

/// The console of `console_run`'s node showed `claim`. One transaction.
pub fn attestation(
    conn: &Connection,
    console_run: i64,
    claim: &Claim,
) -> Result<(Attested, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let console_node: Option<i64> = row(
        &tx,
        "SELECT node_id FROM runs WHERE id = ?1",
        [console_run],
        |r| r.get(0),
    )
    .optional()?;
    /// What a line's run is, as stored.
    struct Claimed {
        node: i64,
        expected: Option<String>,
        open: bool,
        final_seq: Option<i64>,
        acked: i64,
    }
    let claimed = row(
        &tx,
        "SELECT node_id, attest_proof, verdict IS NULL, final_seq, acked_seq FROM runs WHERE id = ?1",
        [claim.run],
        |r| {
            Ok(Claimed {
                node: r.get(0)?,
                expected: r.get(1)?,
                open: r.get(2)?,
                final_seq: r.get(3)?,
                acked: r.get(4)?,
            })
        },
    )
    .optional()?;
    let (
        Some(console_node),
        Some(Claimed {
            node,
            expected,
            open: true,
            final_seq,
            acked,
        }),
    ) = (console_node, claimed)
    else {
        return Ok((Attested::Ignored, Ended::default()));
    };
    let reason = if claim.run == console_run {
        let proven = claim.node == node
            && expected
                .as_deref()
                .is_some_and(|e| crate::tokens::equal(e, &claim.proof));
        if proven {
            exec(
                &tx,
                "UPDATE runs SET attested_ms = COALESCE(attested_ms, ?2) WHERE id = ?1",
                params![claim.run, now_ms()],
            )?;
            let in_cycles: bool = row(
                &tx,
                "SELECT stage = ?2 FROM runs WHERE id = ?1",
                params![
                    claim.run,
                    crate::store::states::Sql(crate::store::states::RunStage::Cycles)
                ],
                |r| r.get(0),
            )?;
            // The final event may have come first: the verdict waited for this line.
            let ended = if in_cycles {
                super::cycles::attested(&tx, claim.run)?
            } else if final_seq.is_some_and(|f| f <= acked) {
                finish_linux_when(&tx, claim.run, Waiting::No)?
            } else {
                Ended::default()
            };
            tx.commit()?;
            return Ok((Attested::Yes, ended));
        }
        format!(
            "security: node {console_node}'s console showed an attestation line for this run that its session did not issue (another party holds the run's tokens, or the line was forged)"
        )
    } else if node == console_node {
        return Ok((Attested::Ignored, Ended::default()));
    } else {
        format!(
            "security: this run's attestation showed on the console of node {console_node} (run {console_run}), not on node {node}'s own: the agent ran on another machine"
        )
    };
    let ended = close_run(&tx, claim.run, Verdict::Fail, &reason)?;
    tx.commit()?;
    Ok((Attested::Security(claim.run), ended))
}

/// Finishes the runs whose final event has been stored for longer than [`GRACE_MS`] while
/// their read console never showed the attestation: never a pass.
pub(super) fn give_up_waiting(tx: &Connection, now: i64) -> Result<Ended, StoreError> {
    let waiting: Vec<i64> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id FROM runs WHERE verdict IS NULL AND console_watched = 1 AND attested_ms IS NULL
               AND final_seq <= acked_seq AND final_ms < ?1",
        )?;
        stmt.query_map([now - GRACE_MS], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut ended = Ended::default();
    for run_id in waiting {
        ended.extend(finish_linux_when(tx, run_id, Waiting::No)?);
    }
    Ok(ended)
}
