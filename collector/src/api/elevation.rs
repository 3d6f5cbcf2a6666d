//! Racks at a glance: where each node of a rack sits (its U, read from its slot label), as a
//! layout the batch page draws as SVG — one box per node, colored by the state of its latest
//! run, linked to the node. Node strings are escaped by the template, never trusted here.

use std::collections::BTreeMap;

use kiln_protocol::api::ReportRow;
use serde::Serialize;

/// Height of one U in the drawing, in pixels.
pub const U_PX: u32 = 16;
/// The smallest rack drawn (a full-height rack).
const MIN_UNITS: u32 = 42;
/// The tallest rack drawn: a slot claiming more is not placed.
const MAX_UNITS: u32 = 64;

/// A rack, drawn.
#[derive(Debug, Serialize)]
pub struct Rack {
    /// Its name.
    pub name: String,
    /// Its height in U.
    pub units: u32,
    /// Its drawing's height in pixels.
    pub height_px: u32,
    /// The nodes at their place.
    pub boxes: Vec<NodeBox>,
    /// Nodes of the rack whose slot names no U: listed beside it.
    pub unplaced: Vec<NodeBox>,
}

/// A node in its rack.
#[derive(Debug, Serialize)]
pub struct NodeBox {
    /// Node id (the link).
    pub node_id: i64,
    /// Host name, or `node N`.
    pub label: String,
    /// `pass`, `degraded`, `fail`, `error`, `incomplete`, `running` or `none`.
    pub state: &'static str,
    /// The run's stage, when it has one.
    pub stage: Option<&'static str>,
    /// Its U (1 at the bottom).
    pub unit: u32,
    /// Top of its box in the drawing.
    pub y: u32,
}

/// The U a slot label names: its first number (`U07`, `7`, `slot 12`), when it fits a rack.
pub fn unit(slot: &str) -> Option<u32> {
    let digits: String = slot
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|u| (1..=MAX_UNITS).contains(u))
}

/// The racks of `rows`, by name; nodes without a rack are left out.
pub fn racks(rows: &[ReportRow]) -> Vec<Rack> {
    let mut by_rack: BTreeMap<&str, Vec<&ReportRow>> = BTreeMap::new();
    for row in rows {
        if let Some(rack) = row.rack.as_deref() {
            by_rack.entry(rack).or_default().push(row);
        }
    }
    by_rack
        .into_iter()
        .map(|(name, nodes)| {
            let units = nodes
                .iter()
                .filter_map(|n| n.slot.as_deref().and_then(unit))
                .max()
                .unwrap_or(0)
                .max(MIN_UNITS);
            let (mut boxes, mut unplaced) = (Vec::new(), Vec::new());
            for n in nodes {
                let placed = n.slot.as_deref().and_then(unit);
                let b = NodeBox {
                    node_id: n.node_id,
                    label: n
                        .hostname
                        .clone()
                        .unwrap_or_else(|| format!("node {}", n.node_id)),
                    state: state(n),
                    stage: n.stage.filter(|_| n.verdict.is_none()).map(|s| s.name()),
                    unit: placed.unwrap_or(0),
                    y: placed.map_or(0, |u| (units - u) * U_PX),
                };
                match placed {
                    Some(_) => boxes.push(b),
                    None => unplaced.push(b),
                }
            }
            Rack {
                name: name.to_owned(),
                units,
                height_px: units * U_PX,
                boxes,
                unplaced,
            }
        })
        .collect()
}

/// The color class of a node: its verdict, `running`, or `none`.
fn state(row: &ReportRow) -> &'static str {
    match (row.verdict, row.run_id) {
        (Some(v), _) => v.name(),
        (None, Some(_)) => "running",
        (None, None) => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::api::{Mode, RunStage};
    use kiln_protocol::verdict::Verdict;

    fn row(id: i64, rack: &str, slot: &str, verdict: Option<Verdict>, run: bool) -> ReportRow {
        ReportRow {
            hostname: Some(format!("n{id}")),
            rack: Some(rack.into()),
            slot: Some(slot.into()),
            run_id: run.then_some(id),
            stage: run.then_some(RunStage::Linux),
            verdict,
            ..ReportRow::new(id, Mode::Verify)
        }
    }

    #[test]
    fn slots_name_their_unit_and_nodes_sit_where_their_slot_says() {
        assert_eq!(unit("U07"), Some(7));
        assert_eq!(unit("slot 12"), Some(12));
        assert_eq!(unit("42"), Some(42));
        assert_eq!(unit("front"), None);
        assert_eq!(unit("U0"), None);
        assert_eq!(unit("U999"), None);
        let racks = racks(&[
            row(1, "R12", "U01", Some(Verdict::Pass), true),
            row(2, "R12", "U44", None, true),
            row(3, "R12", "spare", None, false),
            row(4, "R13", "U02", Some(Verdict::Fail), true),
        ]);
        assert_eq!(racks.len(), 2);
        let r12 = &racks[0];
        // Taller than 42U because a node sits at U44; U1 at the bottom.
        assert_eq!((r12.name.as_str(), r12.units), ("R12", 44));
        assert_eq!(r12.boxes[0].y, 43 * U_PX);
        assert_eq!(r12.boxes[1].y, 0);
        assert_eq!(
            (r12.boxes[0].state, r12.boxes[1].state, r12.boxes[1].stage),
            ("pass", "running", Some("linux"))
        );
        assert_eq!(r12.unplaced.len(), 1);
        assert_eq!(r12.unplaced[0].state, "none");
        assert_eq!((racks[1].units, racks[1].boxes[0].state), (42, "fail"));
    }
}
