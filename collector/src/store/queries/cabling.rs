//! The site's cabling map: which switch port each node's interface is cabled to. Imported
//! whole (one file is the map; nothing of a bad file is kept), read for a node's verdict
//! together with the other nodes' lines for the ports its cables landed on.

use kiln_protocol::verdict::cabling::{Cable, Elsewhere};

use super::{Connection, OptionalExtension, StoreError, params};

/// One line of a map file: the node (host name or one of its MACs) and its cable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    /// Line number in the file, for messages.
    pub line: usize,
    /// Host name, or a MAC of the node.
    pub node: String,
    /// The cable.
    pub cable: Cable,
}

/// Replaces the map with `lines`, or keeps the old one and says every line that names no
/// node (or one ambiguously) and every port given twice. Returns the cables stored.
pub fn import_cabling(
    conn: &Connection,
    lines: &[MapLine],
) -> Result<Result<usize, String>, StoreError> {
    let tx = conn.savepoint()?;
    let mut problems = Vec::new();
    let mut resolved = Vec::new();
    for l in lines {
        match node_named(&tx, &l.node)? {
            Ok(id) => resolved.push((id, l)),
            Err(why) => problems.push(format!("line {}: {why}", l.line)),
        }
    }
    let mut seen: std::collections::HashMap<(String, String), usize> = Default::default();
    let mut ends: std::collections::HashMap<(i64, String), usize> = Default::default();
    for (id, l) in &resolved {
        let port = (l.cable.switch.to_lowercase(), l.cable.port.to_lowercase());
        if let Some(first) = seen.insert(port, l.line) {
            problems.push(format!(
                "line {}: {} {} is cabled on line {first} already",
                l.line, l.cable.switch, l.cable.port
            ));
        }
        if let Some(first) = ends.insert((*id, l.cable.interface.to_lowercase()), l.line) {
            problems.push(format!(
                "line {}: {} {} is mapped on line {first} already",
                l.line, l.node, l.cable.interface
            ));
        }
    }
    if !problems.is_empty() {
        return Ok(Err(problems.join("\n")));
    }
    tx.execute("DELETE FROM cabling", [])?;
    for (id, l) in &resolved {
        tx.execute(
            "INSERT INTO cabling (node_id, interface, switch, port) VALUES (?1, ?2, ?3, ?4)",
            params![id, l.cable.interface, l.cable.switch, l.cable.port],
        )?;
    }
    tx.commit()?;
    Ok(Ok(resolved.len()))
}

/// The node a map line names: by host name, else by one of its MACs.
fn node_named(conn: &Connection, name: &str) -> Result<Result<i64, String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id FROM nodes WHERE hostname = ?1 LIMIT 2")?;
    let ids: Vec<i64> = stmt
        .query_map([name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(match ids.as_slice() {
        [id] => Ok(*id),
        [_, _, ..] => Err(format!("two nodes are called {name}; name it by a MAC")),
        [] => conn
            .query_row(
                "SELECT node_id FROM node_macs WHERE mac = ?1",
                [name.to_lowercase()],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| {
                format!("no node is called {name} or has that MAC (import the nodes first)")
            }),
    })
}

/// Node `node_id`'s lines of the map.
pub fn cables_of(conn: &Connection, node_id: i64) -> Result<Vec<Cable>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT interface, switch, port FROM cabling WHERE node_id = ?1 ORDER BY interface",
    )?;
    let cables = stmt
        .query_map([node_id], |r| {
            Ok(Cable {
                interface: r.get(0)?,
                switch: r.get(1)?,
                port: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(cables)
}

/// The whole map, in node and interface order: (node label, cable).
pub fn cabling_map(conn: &Connection) -> Result<Vec<(String, Cable)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT coalesce(n.hostname, 'node ' || n.id), c.interface, c.switch, c.port
         FROM cabling c JOIN nodes n ON n.id = c.node_id
         ORDER BY n.rack, n.slot, n.id, c.interface",
    )?;
    let map = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                Cable {
                    interface: r.get(1)?,
                    switch: r.get(2)?,
                    port: r.get(3)?,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(map)
}

/// Other nodes' lines for the ports `heard` (switch, port) — where this node's cables landed —
/// each with what that node's interface heard in its latest run.
pub fn elsewhere(
    conn: &Connection,
    node_id: i64,
    heard: &[(String, String)],
) -> Result<Vec<Elsewhere>, StoreError> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT c.node_id, coalesce(n.hostname, 'node ' || n.id), c.interface, c.switch, c.port, r.inventory
         FROM cabling c JOIN nodes n ON n.id = c.node_id LEFT JOIN runs r ON r.id = n.latest_run
         WHERE lower(c.switch) = lower(?1) AND lower(c.port) = lower(?2) AND c.node_id != ?3",
    )?;
    for (switch, port) in heard {
        let rows = stmt.query_map(params![switch, port, node_id], |r| {
            Ok((
                r.get::<String>(1)?,
                Cable {
                    interface: r.get(2)?,
                    switch: r.get(3)?,
                    port: r.get(4)?,
                },
                r.get::<Option<String>>(5)?,
            ))
        })?;
        for row in rows {
            let (node, cable, inventory) = row?;
            let heard = inventory
                .and_then(|t| serde_json::from_str::<kiln_protocol::wire::Inventory>(&t).ok())
                .and_then(|inv| {
                    let nic = inv.nics.into_iter().find(|n| {
                        n.name == cable.interface
                            || n.mac.eq_ignore_ascii_case(&cable.interface)
                            || n.pci.as_deref() == Some(cable.interface.as_str())
                    })?;
                    let l = nic.lldp?;
                    Some((l.switch().to_owned(), l.port_id))
                });
            out.push(Elsewhere { node, cable, heard });
        }
    }
    Ok(out)
}

/// Whether node `node_id` has any line in the map (its agent then listens for LLDP).
pub fn has_cabling(conn: &Connection, node_id: i64) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM cabling WHERE node_id = ?1 LIMIT 1",
            [node_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}
