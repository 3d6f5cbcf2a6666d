//! What a verdict was reached with, so a report can be trusted months later: the suite's
//! digest (its text is kept under it), the digests of every artifact the node booted, the
//! collector's and the agent's versions, the node's kernel, and the operator's consent to
//! destructive steps with who gave it and when.

use std::collections::BTreeMap;

use super::{Connection, Serialize, StoreError, params};
use crate::store::sql::OptionalExtension;

/// A run's provenance.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Provenance {
    /// sha256 of the suite's text (kept in the database under it).
    pub suite_sha256: String,
    /// The suite's text, as the run was given it.
    pub suite_text: String,
    /// The collector that created the run.
    pub collector_version: Option<String>,
    /// The agent that ran the suite, as it said when it started.
    pub agent_version: Option<String>,
    /// The node's running kernel, from its inventory.
    pub kernel: Option<String>,
    /// sha256 of each boot artifact, by file name, when network-booted.
    pub artifacts: BTreeMap<String, String>,
    /// Destructive disk steps were allowed for the run.
    pub allow_destructive: bool,
    /// Who allowed them, and when (the node's history), when they were.
    pub consent: Option<String>,
    /// The random seeds the steps drew (memory patterns, disk blocks), by step: a run can be
    /// replayed with the same bits.
    pub seeds: BTreeMap<String, String>,
}

impl Provenance {
    /// As name/value pairs (JUnit properties), in a fixed order.
    pub fn properties(&self) -> Vec<(String, String)> {
        let mut out = vec![("suite_sha256".to_owned(), self.suite_sha256.clone())];
        for (name, value) in [
            ("collector_version", &self.collector_version),
            ("agent_version", &self.agent_version),
            ("kernel", &self.kernel),
        ] {
            if let Some(v) = value {
                out.push((name.to_owned(), v.clone()));
            }
        }
        for (file, sha) in &self.artifacts {
            out.push((format!("sha256:{file}"), sha.clone()));
        }
        for (step, seed) in &self.seeds {
            out.push((format!("seed:{step}"), seed.clone()));
        }
        out.push((
            "allow_destructive".to_owned(),
            self.allow_destructive.to_string(),
        ));
        if let Some(c) = &self.consent {
            out.push(("destructive_consent".to_owned(), c.clone()));
        }
        out
    }
}

/// The provenance of run `run_id` (which exists); `kernel` from its inventory.
pub fn provenance(
    conn: &Connection,
    run_id: i64,
    kernel: Option<String>,
) -> Result<Provenance, StoreError> {
    let (node, started, suite_sha256, collector_version, agent_version, artifacts, allow): (
        i64,
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
    ) = conn.query_row(
        "SELECT node_id, started_ms, suite_sha256, collector_version, agent_version, artifacts, allow_destructive FROM runs WHERE id = ?1",
        [run_id],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
    )?;
    let consent = if allow {
        conn.query_row(
            "SELECT who, at_ms FROM node_history WHERE node_id = ?1 AND at_ms <= ?2 AND what = 'destructive disk steps allowed' ORDER BY at_ms DESC LIMIT 1",
            params![node, started],
            |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
        )
        .optional()?
        .map(|(who, at)| {
            format!(
                "allowed by {who} at {}",
                kiln_protocol::junit::rfc3339(at.max(0) as u64)
            )
        })
    } else {
        None
    };
    let suite_text: String = conn
        .query_row(
            "SELECT text FROM suites WHERE sha256 = ?1",
            [&suite_sha256],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_default();
    Ok(Provenance {
        suite_text,
        seeds: seeds(conn, run_id)?,
        suite_sha256,
        collector_version,
        agent_version,
        kernel,
        artifacts: artifacts
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default(),
        allow_destructive: allow,
        consent,
    })
}

/// The seeds the agent's steps said they drew (`… seed 0x… …` in their log lines), by step
/// name.
fn seeds(conn: &Connection, run_id: i64) -> Result<BTreeMap<String, String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT coalesce(s.name, 'step ' || e.step), e.body FROM events e
         LEFT JOIN steps s ON s.run_id = e.run_id AND s.step = e.step
         WHERE e.run_id = ?1 AND e.kind = 'log' AND e.body LIKE '%seed 0x%' LIMIT 100",
    )?;
    let mut out = BTreeMap::new();
    for row in stmt.query_map([run_id], |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)))? {
        let (step, body) = row?;
        let line = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|b| b["line"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Some(seed) = line
            .split("seed ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_alphanumeric()).next())
            .filter(|s| s.starts_with("0x") && s.len() > 2)
        {
            out.insert(step, seed.to_owned());
        }
    }
    Ok(out)
}
