//! A batch as an XLSX workbook, for managers who live in spreadsheets: a summary sheet (yield,
//! the failure paretos, stage times), one row per node, one row per fault of a failed node.
//! Exact values, as stored; every node-supplied string is written as text (never a formula)
//! with its control characters shown, not obeyed.

use kiln_protocol::api::{BatchSummary, ReportRow};
use kiln_protocol::bounds::visible;
use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};

/// The workbook's bytes.
pub fn batch_workbook(summary: &BatchSummary, rows: &[ReportRow]) -> Result<Vec<u8>, XlsxError> {
    let bold = Format::new().set_bold();
    let mut book = Workbook::new();
    summary_sheet(book.add_worksheet().set_name("Summary")?, summary, &bold)?;
    nodes_sheet(book.add_worksheet().set_name("Nodes")?, rows, &bold)?;
    faults_sheet(book.add_worksheet().set_name("Faults")?, rows, &bold)?;
    book.save_to_buffer()
}

fn header(
    sheet: &mut Worksheet,
    row: u32,
    titles: &[&str],
    bold: &Format,
) -> Result<(), XlsxError> {
    for (col, title) in titles.iter().enumerate() {
        sheet.write_string_with_format(row, col as u16, *title, bold)?;
    }
    Ok(())
}

/// Most characters a spreadsheet cell holds (Excel's limit; past it the workbook is refused).
const MAX_CELL: usize = 32_767;

fn text(sheet: &mut Worksheet, row: u32, col: u16, value: &str) -> Result<(), XlsxError> {
    let shown = visible(value);
    if shown.chars().count() <= MAX_CELL {
        sheet.write_string(row, col, shown)?;
    } else {
        let cut: String = shown.chars().take(MAX_CELL - 16).collect();
        sheet.write_string(row, col, format!("{cut} … (cut)"))?;
    }
    Ok(())
}

/// `items` joined by `; ` as far as one cell holds them, then "… and N more" (the faults
/// sheet keeps every one on a row of its own).
fn cell_list(items: &[String]) -> String {
    // Room kept for the note, whatever N is.
    const NOTE: usize = 32;
    let mut out = String::new();
    let mut chars = 0;
    for (i, item) in items.iter().enumerate() {
        let item = visible(item);
        let sep = if i == 0 { "" } else { "; " };
        let len = sep.len() + item.chars().count();
        if chars + len > MAX_CELL - NOTE {
            out.push_str(&format!("{sep}… and {} more", items.len() - i));
            return out;
        }
        out.push_str(sep);
        out.push_str(&item);
        chars += len;
    }
    out
}

fn summary_sheet(sheet: &mut Worksheet, s: &BatchSummary, bold: &Format) -> Result<(), XlsxError> {
    let y = &s.yield_;
    sheet.write_string_with_format(0, 0, "batch", bold)?;
    text(sheet, 0, 1, &s.batch)?;
    let counts = [
        ("nodes", y.nodes),
        ("pass", y.pass),
        ("degraded", y.degraded),
        ("pass (waived)", y.waived),
        ("fail", y.fail),
        ("running", y.running),
        ("not started", y.not_started),
        // Last, so the rows before keep the places sheets that read them by position expect.
        ("unattested (attestation optional)", y.unattested),
    ];
    for (i, (name, n)) in counts.iter().enumerate() {
        sheet.write_string(1 + i as u32, 0, *name)?;
        sheet.write_number(1 + i as u32, 1, *n as f64)?;
    }
    let mut row = 1 + counts.len() as u32;
    sheet.write_string(row, 0, "yield %")?;
    if let Some(pct) = y.pass_pct() {
        sheet.write_number(row, 1, pct)?;
    }
    row += 2;
    for (title, bars) in [
        ("fault code", &s.pareto_codes),
        ("component", &s.pareto_components),
    ] {
        header(sheet, row, &[title, "failed nodes"], bold)?;
        row += 1;
        for bar in bars {
            text(sheet, row, 0, &bar.key)?;
            sheet.write_number(row, 1, bar.nodes as f64)?;
            row += 1;
        }
        row += 1;
    }
    header(sheet, row, &["stage", "runs", "mean s", "longest s"], bold)?;
    row += 1;
    for st in &s.stages {
        sheet.write_string(row, 0, &st.stage)?;
        sheet.write_number(row, 1, st.runs as f64)?;
        sheet.write_number(row, 2, st.mean_s)?;
        sheet.write_number(row, 3, st.max_s)?;
        row += 1;
    }
    sheet.set_column_width(0, 32)?;
    Ok(())
}

fn nodes_sheet(sheet: &mut Worksheet, rows: &[ReportRow], bold: &Format) -> Result<(), XlsxError> {
    header(
        sheet,
        0,
        &[
            "node", "hostname", "rack", "slot", "serial", "macs", "suite", "run", "stage",
            "verdict", "started", "finished", "faults",
        ],
        bold,
    )?;
    for (i, r) in rows.iter().enumerate() {
        let row = 1 + i as u32;
        sheet.write_number(row, 0, r.node_id as f64)?;
        for (col, value) in [
            (1, r.hostname.as_deref()),
            (2, r.rack.as_deref()),
            (3, r.slot.as_deref()),
            (4, r.serial.as_deref()),
            (5, Some(r.macs.as_str())),
            (6, r.suite.as_deref()),
        ] {
            text(sheet, row, col, value.unwrap_or(""))?;
        }
        if let Some(run) = r.run_id {
            sheet.write_number(row, 7, run as f64)?;
        }
        if let Some(stage) = r.stage {
            sheet.write_string(row, 8, stage.name())?;
        }
        sheet.write_string(row, 9, r.verdict_text())?;
        for (col, ms) in [(10, r.started_ms), (11, r.finished_ms)] {
            if let Some(ms) = ms {
                sheet.write_string(row, col, kiln_protocol::junit::rfc3339(ms.max(0) as u64))?;
            }
        }
        sheet.write_string(row, 12, cell_list(&r.faults))?;
    }
    sheet.autofilter(0, 0, rows.len() as u32, 12)?;
    sheet.set_freeze_panes(1, 0)?;
    Ok(())
}

fn faults_sheet(sheet: &mut Worksheet, rows: &[ReportRow], bold: &Format) -> Result<(), XlsxError> {
    header(
        sheet,
        0,
        &[
            "node", "hostname", "rack", "slot", "serial", "verdict", "fault",
        ],
        bold,
    )?;
    let mut row = 1;
    for r in rows
        .iter()
        .filter(|r| r.verdict.is_some_and(|v| !v.is_good()))
    {
        for fault in &r.faults {
            sheet.write_number(row, 0, r.node_id as f64)?;
            for (col, value) in [
                (1, r.hostname.as_deref()),
                (2, r.rack.as_deref()),
                (3, r.slot.as_deref()),
                (4, r.serial.as_deref()),
            ] {
                text(sheet, row, col, value.unwrap_or(""))?;
            }
            sheet.write_string(row, 5, r.verdict_text())?;
            text(sheet, row, 6, fault)?;
            row += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{Data, Reader};
    use kiln_protocol::api::{Mode, Yield};
    use kiln_protocol::verdict::Verdict;

    /// A failed node's row with `faults`, and the one-node batch it makes.
    fn failed(
        hostname: &str,
        rack: Option<&str>,
        faults: Vec<String>,
    ) -> (BatchSummary, ReportRow) {
        let row = ReportRow {
            hostname: Some(hostname.into()),
            rack: rack.map(str::to_owned),
            batch: Some("B".into()),
            run_id: Some(1),
            verdict: Some(Verdict::Fail),
            faults,
            ..ReportRow::new(1, Mode::Verify)
        };
        let summary = BatchSummary {
            batch: "B".into(),
            yield_: Yield {
                nodes: 1,
                fail: 1,
                ..Yield::default()
            },
            pareto_codes: vec![],
            pareto_components: vec![],
            stages: vec![],
            failed: vec![],
            payload: vec![],
        };
        (summary, row)
    }

    fn open(bytes: Vec<u8>) -> calamine::Xlsx<std::io::Cursor<Vec<u8>>> {
        calamine::open_workbook_from_rs(std::io::Cursor::new(bytes)).unwrap()
    }

    #[test]
    fn node_strings_are_text_not_formulas_and_show_their_control_characters() {
        let (summary, row) = failed(
            "=HYPERLINK(\"http://x\")",
            Some("R1\u{1b}[2J"),
            vec!["DIMM B2".into()],
        );
        let mut book = open(batch_workbook(&summary, &[row]).unwrap());
        let nodes = book.worksheet_range("Nodes").unwrap();
        assert_eq!(
            nodes.get_value((1, 1)),
            Some(&Data::String("=HYPERLINK(\"http://x\")".into()))
        );
        assert_eq!(
            nodes.get_value((1, 2)),
            Some(&Data::String("R1\\x1b[2J".into()))
        );
        let formulas = book.worksheet_formula("Nodes").unwrap();
        assert!(formulas.used_cells().all(|(_, _, f)| f.is_empty()));
    }

    #[test]
    fn a_node_with_500_faults_makes_a_workbook_that_opens_with_every_fault_on_its_sheet() {
        let faults: Vec<String> = (0..500)
            .map(|i| format!("disk-{i}: sector {i} unreadable {}", "x".repeat(180)))
            .collect();
        let (summary, row) = failed("r12-u07", None, faults.clone());
        let mut book = open(batch_workbook(&summary, &[row]).unwrap());
        let nodes = book.worksheet_range("Nodes").unwrap();
        let Some(Data::String(cell)) = nodes.get_value((1, 12)) else {
            panic!("no faults cell")
        };
        assert!(cell.chars().count() <= MAX_CELL, "{}", cell.len());
        assert!(cell.starts_with(&faults[0]), "{cell}");
        let shown = cell.split("; ").count() - 1;
        assert!(
            cell.ends_with(&format!("… and {} more", 500 - shown)),
            "{}",
            &cell[cell.len() - 40..]
        );
        let sheet = book.worksheet_range("Faults").unwrap();
        assert_eq!(sheet.height(), 501);
        assert_eq!(
            sheet.get_value((500, 6)),
            Some(&Data::String(faults[499].clone()))
        );
    }
}
