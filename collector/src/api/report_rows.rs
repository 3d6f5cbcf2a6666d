//! A JSON report's rows kept apart from their live progress (what `report_cache` keeps):
//! each row encoded once without its `progress`, the report made again from them with the
//! progress read anew.

use crate::store::StoreError;
use crate::store::queries::{self, Filter, NodeRow};

/// The JSON report, and its rows apart from their live progress.
pub fn render_json(
    conn: &crate::store::sql::Connection,
    filter: &Filter,
) -> Result<(Vec<u8>, ReportRows), StoreError> {
    let mut rows = ReportRows {
        heads: Vec::with_capacity(1 << 20),
        ..ReportRows::default()
    };
    let mut progress = Vec::new();
    queries::each_node_row(conn, filter, |mut row| {
        let live = row.progress.take();
        rows.push(&row)?;
        progress.push((row.run_id, live));
        Ok(())
    })?;
    let body = rows
        .body(&progress)
        .ok_or_else(|| StoreError::Invariant("a report's rows changed while built"))??;
    Ok((body, rows))
}

fn encode(source: serde_json::Error) -> StoreError {
    StoreError::Encode {
        what: "the report",
        source,
    }
}

/// A JSON report's rows without their live progress: each row's JSON without its `progress`
/// member and closing brace, one after the other, and where each ends. With the progress of the
/// same rows read again, they make the report those rows give with it — no row read,
/// converted or encoded again but its progress (see `report_cache`).
#[derive(Default)]
pub struct ReportRows {
    heads: Vec<u8>,
    /// Each row's run, and where its head ends in `heads`.
    ends: Vec<(Option<i64>, usize)>,
}

impl ReportRows {
    /// Appends `row`'s head: the row without its `progress` member and without its closing
    /// brace, so that any progress can follow it. (Serialized whole, then that one member cut
    /// out: a JSON string cannot hold an unescaped quote, so `,"progress":null` occurs once,
    /// as the member, wherever the field is declared.)
    fn push(&mut self, row: &NodeRow) -> Result<(), StoreError> {
        let invariant = StoreError::Invariant("a report row's progress is not its one member");
        if row.progress.is_some() {
            return Err(invariant);
        }
        let start = self.heads.len();
        serde_json::to_writer(&mut self.heads, row).map_err(encode)?;
        const MEMBER: &[u8] = b",\"progress\":null";
        let written = &self.heads[start..];
        let mut at = written
            .windows(MEMBER.len())
            .enumerate()
            .filter(|(_, w)| *w == MEMBER);
        let (Some((cut, _)), None) = (at.next(), at.next()) else {
            return Err(invariant);
        };
        let cut = start + cut;
        self.heads.drain(cut..cut + MEMBER.len());
        // The closing brace; the progress member and a new brace follow in `body`.
        self.heads.pop();
        self.ends.push((row.run_id, self.heads.len()));
        Ok(())
    }

    /// The report with `progress` (each row's, with its run, in order), or `None` when those
    /// are not the rows' runs.
    pub fn body(&self, progress: &[queries::RowProgress]) -> Option<Result<Vec<u8>, StoreError>> {
        let same = progress.len() == self.ends.len()
            && progress
                .iter()
                .zip(&self.ends)
                .all(|((run, _), (row_run, _))| run == row_run);
        if !same {
            return None;
        }
        let mut out = Vec::with_capacity(self.heads.len() + 64 * self.ends.len() + 2);
        out.push(b'[');
        let mut start = 0;
        for ((_, live), &(_, end)) in progress.iter().zip(&self.ends) {
            if start > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.heads[start..end]);
            out.extend_from_slice(b",\"progress\":");
            start = end;
            if let Err(e) = serde_json::to_writer(&mut out, live) {
                return Some(Err(encode(e)));
            }
            out.push(b'}');
        }
        out.push(b']');
        Some(Ok(out))
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.heads.len() + self.ends.len() * std::mem::size_of::<(Option<i64>, usize)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_progress_put_in_are_the_rows_encoded_whole() {
        let row = |node_id, run_id| -> NodeRow {
            NodeRow {
                hostname: Some("n\"1".into()),
                rack: Some("R1".into()),
                run_id,
                suite: Some("s".into()),
                stage: Some(kiln_protocol::api::RunStage::Linux),
                faults: vec!["progress: 1".into()],
                started_ms: Some(1),
                waiver: Some(kiln_protocol::api::Waived {
                    codes: vec!["a".into()],
                    all: false,
                }),
                ..NodeRow::new(node_id, kiln_protocol::api::Mode::Verify)
            }
        };
        let mut rows = ReportRows::default();
        let (one, two) = (row(1, Some(7)), row(2, None));
        rows.push(&one).unwrap();
        rows.push(&two).unwrap();
        let live = queries::Progress {
            step: 2,
            name: "memory".into(),
            fraction: 0.25,
            status: Some("8 GB/s".into()),
        };
        let body = rows
            .body(&[(Some(7), Some(live.clone())), (None, None)])
            .unwrap()
            .unwrap();
        let whole = vec![
            NodeRow {
                progress: Some(live),
                ..one.clone()
            },
            two,
        ];
        assert_eq!(body, serde_json::to_vec(&whole).unwrap());
        // Other runs, or another number of rows: not these rows.
        assert!(rows.body(&[(Some(8), None), (None, None)]).is_none());
        assert!(rows.body(&[(Some(7), None)]).is_none());
        // A row that still has its progress has no head.
        assert!(rows.push(&whole[0]).is_err());
    }
}
