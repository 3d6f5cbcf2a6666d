//! Files a run leaves behind: the JSON report (the [`RunReport`] as is) and JUnit XML (see
//! [`kiln_protocol::junit`]).

use kiln_protocol::junit::{JunitRun, render};

use crate::runner::RunReport;

/// The JSON report.
pub fn json(report: &RunReport) -> String {
    let mut text = serde_json::to_string_pretty(report).unwrap_or_default();
    text.push('\n');
    text
}

/// The JUnit XML report.
pub fn junit(report: &RunReport) -> String {
    let kernel: Vec<(String, String)> = report
        .inventory
        .kernel
        .iter()
        .map(|k| ("kernel".to_owned(), k.clone()))
        .collect();
    render(&JunitRun {
        suite: &report.suite,
        host: report.host.as_deref(),
        serial: report.inventory.system.serial.as_deref(),
        agent: Some(&report.agent),
        started_ms: report.started_ms,
        duration_ms: report.duration_ms,
        verdict: report.verdict,
        expect: report.expect.as_ref(),
        steps: &report.steps,
        findings: &[],
        properties: &kernel,
    })
}
