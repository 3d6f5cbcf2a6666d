//! Files a run leaves behind: the JSON report (the [`RunReport`] as is) and JUnit XML, one
//! test case per step, for CI systems and test dashboards.

use std::fmt::Write;

use kiln_protocol::wire::Outcome;

use crate::runner::RunReport;

/// The JSON report.
pub fn json(report: &RunReport) -> String {
    let mut text = serde_json::to_string_pretty(report).unwrap_or_default();
    text.push('\n');
    text
}

/// The JUnit XML report: a `testsuite` named after the suite, a `testcase` per step (and one
/// for `expect:`), with `failure`, `error` and `skipped` children as the outcomes say.
pub fn junit(report: &RunReport) -> String {
    struct Case<'a> {
        name: &'a str,
        class: String,
        secs: f64,
        outcome: &'a Outcome,
        metrics: String,
    }
    let mut cases = Vec::new();
    if let Some(outcome) = &report.expect {
        cases.push(Case {
            name: "expect",
            class: format!("{}.inventory", report.suite),
            secs: 0.0,
            outcome,
            metrics: String::new(),
        });
    }
    for s in &report.steps {
        let metrics = s
            .metrics
            .iter()
            .map(|m| {
                format!("{} = {} {}", m.name, m.value, m.unit)
                    .trim_end()
                    .to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n");
        cases.push(Case {
            name: &s.name,
            class: format!("{}.{}", report.suite, s.kind),
            secs: s.duration_ms as f64 / 1000.0,
            outcome: &s.outcome,
            metrics,
        });
    }
    let count = |f: fn(&Outcome) -> bool| cases.iter().filter(|c| f(c.outcome)).count();
    let failures = count(|o| matches!(o, Outcome::Fail { .. }));
    let errors = count(|o| matches!(o, Outcome::Error { .. }));
    let skipped = count(|o| matches!(o, Outcome::Skip { .. }));
    let secs = report.duration_ms as f64 / 1000.0;
    let timestamp = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(report.started_ms),
    );
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"kiln\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{secs:.3}\">",
        cases.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{secs:.3}\" timestamp=\"{timestamp}\" hostname=\"{}\">",
        escape(&report.suite),
        cases.len(),
        escape(report.host.as_deref().unwrap_or("unknown"))
    );
    let _ = writeln!(x, "    <properties>");
    let _ = writeln!(
        x,
        "      <property name=\"verdict\" value=\"{}\"/>",
        report.verdict.name()
    );
    let _ = writeln!(
        x,
        "      <property name=\"agent\" value=\"{}\"/>",
        escape(&report.agent)
    );
    if let Some(serial) = &report.inventory.system.serial {
        let _ = writeln!(
            x,
            "      <property name=\"serial\" value=\"{}\"/>",
            escape(serial)
        );
    }
    let _ = writeln!(x, "    </properties>");
    for case in &cases {
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
            escape(case.name),
            escape(&case.class),
            case.secs
        );
        let body = match case.outcome {
            Outcome::Pass => String::new(),
            Outcome::Degraded { reasons } => format!(
                "      <system-err>{}</system-err>\n",
                escape(&format!("degraded: {}", reasons.join("; ")))
            ),
            Outcome::Fail { faults } => faults
                .iter()
                .map(|f| {
                    format!(
                        "      <failure type=\"{}\" message=\"{}\">{}</failure>\n",
                        escape(&f.code),
                        escape(&f.message),
                        escape(&format!("{:?}", f.details))
                    )
                })
                .collect(),
            Outcome::Skip { reason } => {
                format!("      <skipped message=\"{}\"/>\n", escape(reason))
            }
            Outcome::Error { message } => {
                format!("      <error message=\"{}\"/>\n", escape(message))
            }
        };
        let out = if case.metrics.is_empty() {
            String::new()
        } else {
            format!("      <system-out>{}</system-out>\n", escape(&case.metrics))
        };
        if body.is_empty() && out.is_empty() {
            x.push_str("/>\n");
        } else {
            let _ = write!(x, ">\n{body}{out}    </testcase>\n");
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// Escapes text for XML attributes and content; drops characters XML 1.0 cannot hold.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_control_characters() {
        assert_eq!(escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
