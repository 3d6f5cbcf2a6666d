//! Events on their way into PostgreSQL as the columns of their table, each bound as one
//! array in the server's binary form: many batches' events in one statement, with nothing
//! quoted on the way and nothing parsed on arrival (a JSON text cost the server a parse of
//! every row, and the collector a document to build; see docs/benchmarks.md).

use super::{Connection, StoreError};
use crate::store::sql::params;

/// Most events stored earlier above the acknowledgement one batch reads on PostgreSQL: an
/// agent that sends far ahead of a gap does not make every batch read all it sent. Fewer
/// read acknowledge less, never more; the next batch goes on from there.
const ABOVE_READ: i64 = 1000;

/// Events as the columns of their table, each bound as one array ([`EventColumns::store`]).
#[derive(Debug, Default)]
pub(super) struct EventColumns {
    run_ids: Vec<i64>,
    seqs: Vec<i64>,
    at_ms: Vec<i64>,
    kinds: Vec<&'static str>,
    steps: Vec<Option<i64>>,
    bodies: Vec<String>,
}

impl EventColumns {
    /// Room for `n` events.
    pub(super) fn with_capacity(n: usize) -> EventColumns {
        EventColumns {
            run_ids: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            at_ms: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            steps: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
        }
    }

    /// Adds `events` of run `run_id`.
    pub(super) fn push(
        &mut self,
        run_id: i64,
        events: &[kiln_protocol::wire::Event],
    ) -> Result<(), serde_json::Error> {
        for e in events {
            self.bodies.push(serde_json::to_string(&e.body)?);
            self.run_ids.push(run_id);
            self.seqs.push(e.seq as i64);
            self.at_ms.push(e.at_ms as i64);
            self.kinds.push(e.body.kind());
            self.steps.push(e.body.step().map(i64::from));
        }
        Ok(())
    }

    /// Stores the events on PostgreSQL, each sequence number of a run once, in one statement
    /// that also reads what runs `ran` had stored above their acknowledgements `acked`
    /// before it (at most [`ABOVE_READ`] each): `(run, seq, stored now)`. The outer SELECT
    /// does not see the rows its WITH inserts (one snapshot), so the two halves never name a
    /// sequence number twice.
    pub(super) fn store(
        &self,
        tx: &Connection,
        ran: &[i64],
        acked: &[i64],
    ) -> Result<Vec<(i64, i64, bool)>, StoreError> {
        let bodies: Vec<&str> = self.bodies.iter().map(String::as_str).collect();
        Ok(tx.query_map(
            "WITH stored AS (
               INSERT INTO events (run_id, seq, at_ms, kind, step, body)
               SELECT * FROM unnest(CAST(?1 AS BIGINT[]), CAST(?2 AS BIGINT[]),
                 CAST(?3 AS BIGINT[]), CAST(?4 AS TEXT[]), CAST(?5 AS BIGINT[]),
                 CAST(?6 AS TEXT[]))
               ON CONFLICT DO NOTHING RETURNING run_id, seq),
             r AS (SELECT * FROM unnest(CAST(?7 AS BIGINT[]), CAST(?8 AS BIGINT[]))
                     AS r(run_id, acked))
             SELECT run_id, seq, 1 FROM stored
             UNION ALL
             SELECT r.run_id, o.seq, 0 FROM r CROSS JOIN LATERAL
               (SELECT seq FROM events
                 WHERE events.run_id = r.run_id AND events.seq > r.acked
                 ORDER BY seq LIMIT ?9) AS o",
            params![
                self.run_ids,
                self.seqs,
                self.at_ms,
                self.kinds,
                self.steps,
                bodies,
                ran,
                acked,
                ABOVE_READ
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get::<i64>(2)? == 1)),
        )?)
    }
}
