//! The memtest86+ screen, rebuilt from its serial output with a terminal emulator, and what
//! can be read off it: status, pass and error counts, the test in progress, progress,
//! elapsed time, and the error rows (address, summary and badram report modes).
//!
//! Landmarks of memtest86+ 6.x (rows from 1): row 2 `Pass NN%`, row 3 `Test NN%`, row 4
//! `Test #N  [name]`, row 8 `Time: H:MM:SS  Status: Testing|Pass|Failed!`, row 9
//! `Pass: N  Errors: N`, rows 11–24 the error area. The big PASS/FAIL banner is drawn on VGA
//! only, never on the serial port.

use serde::Serialize;

/// Screen size memtest86+ draws.
pub const ROWS: u16 = 25;
/// Screen width.
pub const COLS: u16 = 80;

/// The emulated screen.
pub struct MemtestScreen {
    parser: vt100::Parser,
}

impl Default for MemtestScreen {
    fn default() -> Self {
        Self {
            parser: vt100::Parser::new(ROWS, COLS, 0),
        }
    }
}

/// memtest86+'s status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Tests are running.
    Testing,
    /// A pass completed with no errors so far.
    Pass,
    /// Errors were found.
    Failed,
}

/// One row of the address-mode error table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorRow {
    /// CPU that found it.
    pub cpu: u32,
    /// Pass number.
    pub pass: u32,
    /// Test number.
    pub test: u32,
    /// Failing physical address (hex).
    pub address: String,
    /// The address in human form, e.g. `65MB`.
    pub address_human: String,
    /// Expected value (hex).
    pub expected: String,
    /// Value found (hex).
    pub found: String,
}

/// Everything read off the screen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// memtest86+ has drawn its screen (before that, the console shows firmware output).
    pub started: bool,
    /// Status line.
    pub status: Option<Status>,
    /// Completed passes.
    pub passes: Option<u32>,
    /// Errors counted.
    pub errors: Option<u64>,
    /// Progress of the current pass, percent.
    pub pass_pct: Option<u32>,
    /// Progress of the current test, percent.
    pub test_pct: Option<u32>,
    /// Current test number.
    pub test_number: Option<u32>,
    /// Current test name.
    pub test_name: Option<String>,
    /// Elapsed time, seconds.
    pub elapsed_secs: Option<u64>,
    /// Address-mode error rows.
    pub error_rows: Vec<ErrorRow>,
    /// Summary-mode lines (`Lowest Error Address: …`), as shown.
    pub summary: Vec<String>,
    /// Badram-mode lines (`badram=0x…,0x…`), as shown.
    pub badram: Vec<String>,
}

impl MemtestScreen {
    /// Feeds raw serial bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.process(bytes);
    }

    /// The screen as text: 25 lines, trailing spaces trimmed.
    pub fn text(&self) -> String {
        let rows: Vec<String> = self
            .parser
            .screen()
            .rows(0, COLS)
            .map(|r| r.trim_end().to_owned())
            .collect();
        let mut text = rows.join("\n");
        text.push('\n');
        text
    }

    /// Reads the results off the screen.
    pub fn read(&self) -> Reading {
        let rows: Vec<String> = self.parser.screen().rows(0, COLS).collect();
        let row = |n: usize| rows.get(n - 1).map(String::as_str).unwrap_or("");
        let started = row(1).contains("Memtest86+");
        let right = |n: usize| row(n).split_once('|').map(|(_, r)| r.trim()).unwrap_or("");
        let status = after(row(8), "Status:").and_then(|s| match s.split_whitespace().next()? {
            "Testing" => Some(Status::Testing),
            "Pass" => Some(Status::Pass),
            "Failed!" | "Failed" => Some(Status::Failed),
            _ => None,
        });
        let passes = after(row(9), "Pass:")
            .and_then(first_number)
            .map(|n| n as u32);
        let errors = after(row(9), "Errors:").and_then(first_number);
        let pass_pct = right(2).strip_prefix("Pass").and_then(percent);
        let test_pct = right(3).strip_prefix("Test").and_then(percent);
        let (test_number, test_name) = match right(4).strip_prefix("Test #") {
            Some(rest) => {
                let number = first_number(rest).map(|n| n as u32);
                let name = rest
                    .split_once('[')
                    .and_then(|(_, n)| n.rsplit_once(']'))
                    .map(|(n, _)| n.trim().to_owned());
                (number, name)
            }
            None => (None, None),
        };
        let elapsed_secs =
            after(row(8), "Time:").and_then(|t| parse_hms(t.split_whitespace().next()?));
        let mut error_rows = Vec::new();
        let mut summary = Vec::new();
        let mut badram = Vec::new();
        for line in rows.iter().skip(10).take(14) {
            let line = line.trim();
            if let Some(row) = parse_error_row(line) {
                error_rows.push(row);
            } else if line.starts_with("badram=") || line.starts_with("memmap=") {
                badram.push(line.to_owned());
            } else if [
                "Lowest Error",
                "Highest Error",
                "Bits in Error",
                "Max Contiguous",
                "Test  Errors",
                "Error Confidence",
            ]
            .iter()
            .any(|p| line.contains(p))
            {
                summary.push(line.to_owned());
            }
        }
        Reading {
            started,
            status,
            passes,
            errors,
            pass_pct,
            test_pct,
            test_number,
            test_name,
            elapsed_secs,
            error_rows,
            summary,
            badram,
        }
    }
}

/// The text after `label` in `line`.
fn after<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    line.split_once(label).map(|(_, r)| r.trim_start())
}

fn first_number(text: &str) -> Option<u64> {
    let digits: String = text
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn percent(text: &str) -> Option<u32> {
    let t = text.trim_start();
    let n = first_number(t)?;
    t[n.to_string().len()..]
        .starts_with('%')
        .then_some(n as u32)
}

fn parse_hms(text: &str) -> Option<u64> {
    let parts: Vec<u64> = text
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [h, m, s] => Some(h * 3600 + m * 60 + s),
        [m, s] => Some(m * 60 + s),
        _ => None,
    }
}

/// `  0      0    6   000004100000 (65MB)    0000000000000010  0000000000000012`
fn parse_error_row(line: &str) -> Option<ErrorRow> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [cpu, pass, test, address, human, expected, found] = fields.as_slice() else {
        return None;
    };
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    if !(hex(address)
        && hex(expected)
        && hex(found)
        && human.starts_with('(')
        && human.ends_with(')'))
    {
        return None;
    }
    Some(ErrorRow {
        cpu: cpu.parse().ok()?,
        pass: pass.parse().ok()?,
        test: test.parse().ok()?,
        address: address.to_string(),
        address_human: human.trim_matches(['(', ')']).to_owned(),
        expected: expected.to_string(),
        found: found.to_string(),
    })
}

/// Reads a whole transcript.
pub fn parse_transcript(bytes: &[u8]) -> (Reading, String) {
    let mut screen = MemtestScreen::default();
    screen.feed(bytes);
    (screen.read(), screen.text())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memtest::fixture;

    #[test]
    fn a_clean_pass_with_all_default_tests() {
        let (r, _) = parse_transcript(&fixture("pass-64M-default-tests.serial"));
        assert!(r.started);
        assert_eq!(r.status, Some(Status::Pass));
        assert_eq!(r.passes, Some(1));
        assert_eq!(r.errors, Some(0));
        assert!(r.error_rows.is_empty());
    }

    #[test]
    fn a_clean_pass_without_test_10() {
        // This capture ran on: its last screen shows a second pass completed, still clean.
        let (r, _) = parse_transcript(&fixture("pass-64M-without-test10.serial"));
        assert_eq!(r.status, Some(Status::Pass));
        assert_eq!(r.passes, Some(2));
        assert_eq!(r.errors, Some(0));
        assert!(r.error_rows.is_empty());
    }

    #[test]
    fn real_errors_in_address_mode_are_read_exactly() {
        let (r, text) = parse_transcript(&fixture("errors-reportmode-address.serial"));
        let want = String::from_utf8(fixture("errors-reportmode-address.screen.txt")).unwrap();
        let trim = |s: &str| {
            s.lines()
                .map(str::trim_end)
                .collect::<Vec<_>>()
                .join("\n")
                .trim_end()
                .to_owned()
        };
        assert_eq!(
            trim(&text),
            trim(&want),
            "the rendered screen differs from the fixture's"
        );
        assert_eq!(r.status, Some(Status::Failed));
        assert_eq!(r.passes, Some(0));
        assert_eq!(r.errors, Some(9));
        assert_eq!(r.pass_pct, Some(46));
        assert_eq!(r.test_pct, Some(86));
        assert_eq!(r.test_number, Some(6));
        assert_eq!(
            r.test_name.as_deref(),
            Some("Moving inversions, 64 bit pattern")
        );
        assert_eq!(r.elapsed_secs, Some(24));
        assert_eq!(r.error_rows.len(), 9);
        assert_eq!(
            r.error_rows[0],
            ErrorRow {
                cpu: 0,
                pass: 0,
                test: 6,
                address: "000004100000".into(),
                address_human: "65MB".into(),
                expected: "0000000000000010".into(),
                found: "0000000000000012".into()
            }
        );
        assert_eq!(r.error_rows[8].address, "000004300000");
        assert_eq!(r.error_rows[8].expected, "ffffffffffffdfff");
        assert_eq!(r.error_rows[8].found, "ffffffffffffdff7");
    }

    #[test]
    fn firmware_output_alone_is_not_a_started_memtest() {
        let (r, _) = parse_transcript(b"SeaBIOS (version 1.16)\r\niPXE starting\r\n");
        assert!(!r.started);
        assert_eq!(r.status, None);
        assert_eq!(r.passes, None);
    }

    #[test]
    fn summary_and_badram_lines_are_collected() {
        let mut s = MemtestScreen::default();
        s.feed(b"\x1b[2J\x1b[1;1H      Memtest86+ v6.10\x1b[8;1HCPU | Time:  0:01:00  Status: Failed!\x1b[9;1HX | Pass:  0  Errors: 3");
        s.feed(b"\x1b[12;1H  Lowest Error Address:  0x4100000\x1b[13;1H  Highest Error Address: 0x6300010\x1b[15;1Hbadram=0x4100000,0xfffffffffffff000");
        let r = s.read();
        assert_eq!(r.errors, Some(3));
        assert_eq!(r.summary.len(), 2);
        assert_eq!(r.badram, ["badram=0x4100000,0xfffffffffffff000"]);
    }

    proptest::proptest! {
        /// A console carries whatever the line carries: no byte sequence may upset the reader.
        #[test]
        fn any_console_bytes_are_read_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
            let mut s = MemtestScreen::default();
            s.feed(&bytes);
            let r = s.read();
            proptest::prop_assert!(r.error_rows.len() <= 14);
            proptest::prop_assert_eq!(s.text().lines().count(), ROWS as usize);
        }
    }
}
