//! JUnit XML for a run: a `testsuite` named after the suite, one `testcase` per step (and
//! one for `expect:`), with `failure`, `error` and `skipped` children as the outcomes say.
//! Rendered the same by the agent (`--junit`) and the collector (`/runs/N/junit.xml`).

use std::fmt::Write;

use crate::verdict::Verdict;
use crate::wire::{Outcome, StepReport};

/// What a JUnit report is made from.
#[derive(Debug, Clone, Copy)]
pub struct JunitRun<'a> {
    /// Suite name.
    pub suite: &'a str,
    /// Host name or node label.
    pub host: Option<&'a str>,
    /// Node serial, when known.
    pub serial: Option<&'a str>,
    /// Agent version, when known.
    pub agent: Option<&'a str>,
    /// Start, ms since the Unix epoch.
    pub started_ms: u64,
    /// Run time, ms.
    pub duration_ms: u64,
    /// Verdict.
    pub verdict: Verdict,
    /// `expect:` outcome.
    pub expect: Option<&'a Outcome>,
    /// Steps that ran.
    pub steps: &'a [StepReport],
    /// The collector's own findings on the run (a planned step without a result, the agent
    /// disagreeing with the stored results): one failing `collector` testcase when any.
    pub findings: &'a [String],
    /// Further properties of the run (its provenance: digests, versions, consents).
    pub properties: &'a [(String, String)],
}

/// Renders the report.
pub fn render(run: &JunitRun<'_>) -> String {
    struct Case<'a> {
        name: &'a str,
        class: String,
        secs: f64,
        outcome: &'a Outcome,
        metrics: String,
    }
    let mut cases = Vec::new();
    let collector = Outcome::Fail {
        faults: run
            .findings
            .iter()
            .map(|f| crate::wire::Fault::new("collector.finding", f.as_str()))
            .collect(),
    };
    if !run.findings.is_empty() {
        cases.push(Case {
            name: "collector",
            class: format!("{}.verdict", run.suite),
            secs: 0.0,
            outcome: &collector,
            metrics: String::new(),
        });
    }
    if let Some(outcome) = run.expect {
        cases.push(Case {
            name: "expect",
            class: format!("{}.inventory", run.suite),
            secs: 0.0,
            outcome,
            metrics: String::new(),
        });
    }
    for s in run.steps {
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
            class: format!("{}.{}", run.suite, s.kind),
            secs: s.duration_ms as f64 / 1000.0,
            outcome: &s.outcome,
            metrics,
        });
    }
    let count = |f: fn(&Outcome) -> bool| cases.iter().filter(|c| f(c.outcome)).count();
    let failures = count(|o| matches!(o, Outcome::Fail { .. }));
    let errors = count(|o| matches!(o, Outcome::Error { .. }));
    let skipped = count(|o| matches!(o, Outcome::Skip { .. }));
    let secs = run.duration_ms as f64 / 1000.0;
    let timestamp = rfc3339(run.started_ms);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"kiln\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{secs:.3}\">",
        cases.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{secs:.3}\" timestamp=\"{timestamp}\" hostname=\"{}\">",
        escape(run.suite),
        cases.len(),
        escape(run.host.unwrap_or("unknown"))
    );
    properties(&mut x, run);
    for case in &cases {
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
            escape(case.name),
            escape(&case.class),
            case.secs
        );
        let body = case_body(case.outcome);
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

/// A test case's body for its outcome: nothing for a pass, a failure per fault, a skip or an
/// error, the reasons a degraded step gave.
fn case_body(outcome: &Outcome) -> String {
    match outcome {
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
    }
}

/// The run's properties: verdict, agent version, serial, then the caller's (provenance).
fn properties(x: &mut String, run: &JunitRun<'_>) {
    let _ = writeln!(x, "    <properties>");
    let _ = writeln!(
        x,
        "      <property name=\"verdict\" value=\"{}\"/>",
        run.verdict.name()
    );
    if let Some(agent) = run.agent {
        let _ = writeln!(
            x,
            "      <property name=\"agent\" value=\"{}\"/>",
            escape(agent)
        );
    }
    if let Some(serial) = run.serial {
        let _ = writeln!(
            x,
            "      <property name=\"serial\" value=\"{}\"/>",
            escape(serial)
        );
    }
    for (name, value) in run.properties {
        let _ = writeln!(
            x,
            "      <property name=\"{}\" value=\"{}\"/>",
            escape(name),
            escape(value)
        );
    }
    let _ = writeln!(x, "    </properties>");
}

/// `YYYY-MM-DDTHH:MM:SSZ` for milliseconds since the Unix epoch (civil-from-days, UTC).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_640_946_000), "2026-11-25T21:09:06Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn failures_errors_and_skips_are_counted() {
        use crate::wire::Fault;
        let steps = vec![
            StepReport {
                step: 0,
                name: "a".into(),
                kind: "memory".into(),
                outcome: Outcome::Pass,
                metrics: vec![],
                duration_ms: 10,
                attempts: vec![],
            },
            StepReport {
                step: 1,
                name: "b<".into(),
                kind: "cpu".into(),
                outcome: Outcome::Fail {
                    faults: vec![Fault::new("cpu.mismatch", "CPU 3 \"wrong\"")],
                },
                metrics: vec![],
                duration_ms: 10,
                attempts: vec![],
            },
            StepReport {
                step: 2,
                name: "c".into(),
                kind: "disk".into(),
                outcome: Outcome::Skip {
                    reason: "none".into(),
                },
                metrics: vec![],
                duration_ms: 0,
                attempts: vec![],
            },
        ];
        let xml = render(&JunitRun {
            suite: "s",
            host: None,
            serial: None,
            agent: None,
            started_ms: 0,
            duration_ms: 20,
            verdict: Verdict::Fail,
            expect: None,
            steps: &steps,
            findings: &[],
            properties: &[],
        });
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""),
            "{xml}"
        );
        assert!(!xml.contains("collector"), "{xml}");
        let findings = ["agent reported pass, the collector computed incomplete".to_owned()];
        let xml = render(&JunitRun {
            suite: "s",
            host: None,
            serial: None,
            agent: None,
            started_ms: 0,
            duration_ms: 20,
            verdict: Verdict::Incomplete,
            expect: None,
            steps: &steps,
            findings: &findings,
            properties: &[("sha256:vmlinuz".to_owned(), "ab<cd".to_owned())],
        });
        assert!(xml.contains("tests=\"4\" failures=\"2\""), "{xml}");
        assert!(
            xml.contains("<property name=\"sha256:vmlinuz\" value=\"ab&lt;cd\"/>"),
            "{xml}"
        );
        assert!(
            xml.contains("<failure type=\"collector.finding\" message=\"agent reported pass, the collector computed incomplete\""),
            "{xml}"
        );
        assert!(
            xml.contains("<testcase name=\"b&lt;\" classname=\"s.cpu\""),
            "{xml}"
        );
        assert!(xml.contains("message=\"CPU 3 &quot;wrong&quot;\""), "{xml}");
    }
}
