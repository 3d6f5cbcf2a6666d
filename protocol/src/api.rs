//! The bodies operators send and get back on the collector's `/api/v1/nodes/*` routes, typed
//! once for the collector (which reads them) and `kiln nodes` (which writes them).

use serde::{Deserialize, Serialize};

/// Which nodes an operator command addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Selector {
    /// Every node in a rack.
    Rack(String),
    /// The node with this MAC.
    Mac(String),
    /// One node by id.
    Node(i64),
    /// Every node (`false` selects none: an empty selection is refused).
    All(bool),
}

/// Body of `POST /api/v1/nodes/mode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    /// The nodes.
    pub select: Selector,
    /// `verify`, `local` or `hold`.
    pub mode: String,
}

/// Body of `POST /api/v1/nodes/destructive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestructiveRequest {
    /// The nodes.
    pub select: Selector,
    /// Consent given (`true`) or revoked.
    pub allow: bool,
}

/// Body of `POST /api/v1/nodes/suite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteRequest {
    /// The nodes.
    pub select: Selector,
    /// The suite's name (a file in the collector's `DATA/suites/`).
    pub suite: String,
}

/// Answer of the mode, destructive and suite calls: how many nodes changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesChanged {
    /// Nodes selected and changed.
    pub nodes: usize,
}

/// Answer of `POST /api/v1/nodes/import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// Known nodes whose labels changed.
    pub updated: usize,
    /// Nodes created from the file.
    pub created: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_operators_wrote_them() {
        let r: ModeRequest =
            serde_json::from_str(r#"{"select":{"rack":"R12"},"mode":"hold"}"#).unwrap();
        assert_eq!(r.select, Selector::Rack("R12".into()));
        let d: DestructiveRequest =
            serde_json::from_str(r#"{"select":{"mac":"52:54:00:aa:00:01"},"allow":false}"#)
                .unwrap();
        assert_eq!(d.select, Selector::Mac("52:54:00:aa:00:01".into()));
        let s = SuiteRequest {
            select: Selector::All(true),
            suite: "burn-in".into(),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"select":{"all":true},"suite":"burn-in"}"#
        );
        // Unknown fields and two selectors at once are refused.
        assert!(
            serde_json::from_str::<ModeRequest>(r#"{"select":{"all":true},"mode":"hold","x":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Selector>(r#"{"rack":"R1","node":2}"#).is_err());
    }
}
