//! Which node a request is about: one rule, used by network boot and by registration.
//!
//! The rule: the SMBIOS UUID first (the board's own identity), then any MAC (NIC swaps keep
//! the history through the UUID; a board without a UUID is known by its NICs), then the serial
//! (a node imported or seen only by its serial). Ad-hoc nodes — created by unauthenticated
//! registration — are never found by it: they can only ever be themselves.

use crate::store::sql::{Connection, OptionalExtension, params};
use kiln_protocol::wire::NodeIdentity;

use crate::store::{StoreError, now_ms};

/// How far a request may go in claiming identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A node network-booting (anyone on the boot network, as far as the collector knows):
    /// found by the rule, or registered with what it claims; it never adds a MAC, UUID or
    /// serial to a known node (that is the operator's, by `kiln nodes import`).
    Boot,
    /// An operator (admin token): found by the rule, or registered; a MAC another node had
    /// moves to this one (the NIC moved with it).
    Admin,
}

/// Every node one of `identity`'s identifiers names on its own (placeholders name none): the
/// UUID's, each MAC's, and the serial's when exactly one node has it (a serial is not unique).
/// A request whose identifiers name two nodes is claiming one of them falsely.
pub fn named(
    tx: &Connection,
    identity: &NodeIdentity,
) -> Result<std::collections::BTreeSet<i64>, StoreError> {
    let identity = identity.clone().without_placeholders();
    let mut nodes = std::collections::BTreeSet::new();
    if let Some(uuid) = &identity.uuid {
        nodes.extend(
            tx.query_row(
                "SELECT id FROM nodes WHERE uuid = ?1 AND ad_hoc = 0",
                [uuid],
                |r| r.get::<i64>(0),
            )
            .optional()?,
        );
    }
    for mac in &identity.macs {
        nodes.extend(
            tx.query_row(
                "SELECT m.node_id FROM node_macs m JOIN nodes n ON n.id = m.node_id WHERE m.mac = ?1 AND n.ad_hoc = 0",
                [mac],
                |r| r.get::<i64>(0),
            )
            .optional()?,
        );
    }
    if let Some(serial) = &identity.serial {
        let by_serial: Vec<i64> = tx
            .prepare_cached("SELECT id FROM nodes WHERE serial = ?1 AND ad_hoc = 0 LIMIT 2")?
            .query_map([serial], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if let [one] = by_serial[..] {
            nodes.insert(one);
        }
    }
    Ok(nodes)
}

/// The node `identity` names by the lookup rule, if any.
pub fn find(tx: &Connection, identity: &NodeIdentity) -> Result<Option<i64>, StoreError> {
    let identity = &identity.clone().without_placeholders();
    if let Some(uuid) = &identity.uuid {
        let found = tx
            .query_row(
                "SELECT id FROM nodes WHERE uuid = ?1 AND ad_hoc = 0",
                [uuid],
                |r| r.get(0),
            )
            .optional()?;
        if found.is_some() {
            return Ok(found);
        }
    }
    for mac in &identity.macs {
        let found = tx
            .query_row(
                "SELECT m.node_id FROM node_macs m JOIN nodes n ON n.id = m.node_id WHERE m.mac = ?1 AND n.ad_hoc = 0",
                [mac],
                |r| r.get(0),
            )
            .optional()?;
        if found.is_some() {
            return Ok(found);
        }
    }
    if let Some(serial) = identity.serial.as_deref().filter(|s| !s.is_empty()) {
        let found = tx
            .query_row(
                "SELECT id FROM nodes WHERE serial = ?1 AND ad_hoc = 0 ORDER BY id LIMIT 1",
                [serial],
                |r| r.get(0),
            )
            .optional()?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Finds the node by the rule or registers it; returns its id and whether it is new. Records
/// the identity fields the node did not have, as `claim` allows.
pub fn find_or_register(
    tx: &Connection,
    identity: &NodeIdentity,
    hostname: Option<&str>,
    claim: Claim,
) -> Result<(i64, bool), StoreError> {
    let now = now_ms();
    let identity = &identity.clone().without_placeholders();
    let (id, new) = match find(tx, identity)? {
        Some(id) if claim == Claim::Boot => {
            tx.execute(
                "UPDATE nodes SET last_seen_ms = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            return Ok((id, false));
        }
        Some(id) => {
            // A UUID already on another node stays there (UNIQUE); only a node without one
            // takes it.
            let uuid_free = match &identity.uuid {
                Some(uuid) => tx
                    .query_row("SELECT 1 FROM nodes WHERE uuid = ?1", [uuid], |_| Ok(()))
                    .optional()?
                    .is_none(),
                None => false,
            };
            tx.execute(
                "UPDATE nodes SET last_seen_ms = ?2,
                    uuid = COALESCE(uuid, CASE WHEN ?6 THEN ?3 END),
                    serial = COALESCE(serial, ?4), hostname = COALESCE(?5, hostname)
                 WHERE id = ?1",
                params![id, now, identity.uuid, identity.serial, hostname, uuid_free],
            )?;
            (id, false)
        }
        None => {
            let id = tx.query_row(
                "INSERT INTO nodes (uuid, serial, hostname, created_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?4) RETURNING id",
                params![identity.uuid, identity.serial, hostname, now],
                |r| r.get(0),
            )?;
            (id, true)
        }
    };
    for mac in &identity.macs {
        match claim {
            Claim::Boot => tx.execute(
                "INSERT INTO node_macs (mac, node_id) VALUES (?1, ?2) ON CONFLICT(mac) DO NOTHING",
                params![mac, id],
            )?,
            Claim::Admin => tx.execute(
                "INSERT INTO node_macs (mac, node_id) VALUES (?1, ?2) ON CONFLICT(mac) DO UPDATE SET node_id = ?2",
                params![mac, id],
            )?,
        };
    }
    Ok((id, new))
}

/// Registers a new ad-hoc node for an unauthenticated registration: it owns no MAC and no
/// UUID (those belong to the nodes the rule finds), keeps what it claimed for display, and is
/// marked ad hoc wherever it is shown.
pub fn register_ad_hoc(
    tx: &Connection,
    identity: &NodeIdentity,
    hostname: Option<&str>,
) -> Result<i64, StoreError> {
    let claimed = serde_json::to_string(identity).map_err(|source| StoreError::Corrupt {
        what: "identity",
        source,
    })?;
    Ok(tx.query_row(
        "INSERT INTO nodes (serial, hostname, created_ms, last_seen_ms, ad_hoc, claimed) VALUES (?1, ?2, ?3, ?3, 1, ?4) RETURNING id",
        params![identity.serial, hostname, now_ms(), claimed],
        |r| r.get(0),
    )?)
}
