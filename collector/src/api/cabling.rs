//! The site's cabling map: `POST /api/v1/cabling` (admin, a CSV of
//! `node,interface,switch,port`) replaces it whole, or keeps the old one and names every bad
//! line; `GET` lists it.

use axum::extract::State;
use kiln_protocol::api::CableLine;
use kiln_protocol::verdict::cabling::Cable;

use super::{Admin, ApiError, AppState, Reader};
use crate::store::queries::{self, MapLine};

/// Most lines one map may carry.
const MAX_LINES: usize = 200_000;

/// Parses `node,interface,switch,port` lines (a header line and `#` comments allowed);
/// every bad line is named.
pub fn parse_map(text: &str) -> Result<Vec<MapLine>, String> {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for (i, fields) in super::operator::csv_rows(text, "node,") {
        let [node, interface, switch, port] = fields.as_slice() else {
            problems.push(format!(
                "line {}: {} fields; expected node,interface,switch,port",
                i + 1,
                fields.len()
            ));
            continue;
        };
        let mut ok = true;
        for (name, value) in [
            ("node", node),
            ("interface", interface),
            ("switch", switch),
            ("port", port),
        ] {
            let checked = if value.is_empty() {
                Err(format!("{name} is empty"))
            } else {
                kiln_protocol::wire::check_field(name, value)
            };
            if let Err(e) = checked {
                problems.push(format!("line {}: {e}", i + 1));
                ok = false;
            }
        }
        if ok {
            lines.push(MapLine {
                line: i + 1,
                node: node.to_string(),
                cable: Cable {
                    interface: interface.to_string(),
                    switch: switch.to_string(),
                    port: port.to_string(),
                },
            });
        }
        if lines.len() > MAX_LINES {
            problems.push(format!("more than {MAX_LINES} lines in one map"));
            break;
        }
    }
    if problems.is_empty() {
        Ok(lines)
    } else {
        Err(problems.join("\n"))
    }
}

/// `POST /api/v1/cabling`: the map replaced; how many cables it holds now.
pub(super) async fn import(
    State(state): State<AppState>,
    _admin: Admin,
    body: String,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let lines =
        parse_map(&body).map_err(|e| ApiError::BadRequest(format!("nothing imported:\n{e}")))?;
    let stored = state
        .db
        .call(move |c| queries::import_cabling(c, &lines))
        .await?
        .map_err(|e| ApiError::BadRequest(format!("nothing imported:\n{e}")))?;
    Ok(axum::Json(serde_json::json!({ "cables": stored })))
}

/// `GET /api/v1/cabling`: the map.
pub(super) async fn list(
    State(state): State<AppState>,
    _reader: Reader,
) -> Result<axum::Json<Vec<CableLine>>, ApiError> {
    let map = state.db.read(queries::cabling_map).await?;
    Ok(axum::Json(
        map.into_iter()
            .map(|(node, c)| CableLine {
                node,
                interface: c.interface,
                switch: c.switch,
                port: c.port,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_parses_and_every_bad_line_is_named() {
        let map = parse_map(
            "node,interface,switch,port\n# rack 12\nR12U08,eth1,leaf-r12-a,Ethernet1/7\n52:54:00:aa:00:01 , eth0 , leaf-r12-b , Ethernet1/7\n",
        )
        .unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map[0].line, 3);
        assert_eq!(map[1].cable.port, "Ethernet1/7");
        let err = parse_map(
            "R1,eth0,leaf\nR2,,leaf,E1\nR3,eth0,leaf\u{1b}[2J,E1\nR4,eth0,leaf,E1,extra\n",
        )
        .unwrap_err();
        assert_eq!(err.lines().count(), 4, "{err}");
        assert!(err.contains("line 1: 3 fields"), "{err}");
        assert!(err.contains("line 2: interface is empty"), "{err}");
        assert!(err.contains("line 3:"), "{err}");
        assert!(err.contains("line 4: 5 fields"), "{err}");
    }
}
