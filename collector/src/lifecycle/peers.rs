//! Which runs are a node's peers, read from the store: the latest finished runs of the other
//! nodes of its batch with the same product and CPU model. How it compares with them is
//! protocol's rule ([`kiln_protocol::verdict::peers`]).

use std::collections::BTreeMap;

use crate::store::sql::{Connection, OptionalExtension, params};
use kiln_protocol::verdict::peers::{Peers, compared};
use kiln_protocol::wire::{Inventory, StepReport};

use crate::store::StoreError;

/// The peers of run `run_id`: latest finished runs of the other nodes of its node's batch,
/// whose inventory names the same product and CPU model as this run's `inventory`.
pub fn read(
    tx: &Connection,
    run_id: i64,
    inventory: Option<&Inventory>,
) -> Result<Peers, StoreError> {
    let mut peers = Peers::default();
    let Some(inventory) = inventory else {
        return Ok(peers);
    };
    let node: Option<(i64, Option<String>)> = tx
        .query_row(
            "SELECT n.id, n.batch FROM runs r JOIN nodes n ON n.id = r.node_id WHERE r.id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((node, Some(batch))) = node else {
        return Ok(peers);
    };
    let mut stmt = tx.prepare_cached(
        "SELECT r.id, r.inventory, s.report FROM nodes n
         JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE node_id = n.id AND verdict IS NOT NULL)
         JOIN steps s ON s.run_id = r.id
         WHERE n.batch = ?1 AND n.id != ?2",
    )?;
    let rows = stmt.query_map(params![batch, node], |r| {
        Ok((
            r.get::<i64>(0)?,
            r.get::<Option<String>>(1)?,
            r.get::<String>(2)?,
        ))
    })?;
    let same = |other: &Inventory| {
        other.system.product == inventory.system.product && other.cpu.brand == inventory.cpu.brand
    };
    let mut kind: BTreeMap<i64, bool> = BTreeMap::new();
    for row in rows {
        let (run, inv, report) = row?;
        let is_peer = *kind.entry(run).or_insert_with(|| {
            inv.and_then(|i| serde_json::from_str::<Inventory>(&i).ok())
                .is_some_and(|i| same(&i))
        });
        if !is_peer {
            continue;
        }
        let Ok(report) = serde_json::from_str::<StepReport>(&report) else {
            continue;
        };
        for m in report.metrics {
            if compared(&m.unit) && m.value.is_finite() {
                peers
                    .values
                    .entry((report.name.clone(), m.name))
                    .or_default()
                    .push(m.value);
            }
        }
    }
    Ok(peers)
}
