//! The one suite loader both binaries use: bytes in, a checked [`Plan`] or every problem out,
//! each as `FILE:LINE:COLUMN: PATH: what is wrong; what was expected`.
//!
//! Order matters for safety: the size limit first, then the event-level index (which refuses
//! alias bombs without expanding them), and only then serde_yaml and the plan rules.

use std::fmt;
use std::io::Read;

use crate::locate::{DocumentIndex, Position};
use crate::plan::{Plan, validate};
use crate::suite::Suite;

/// Largest suite file accepted.
pub const MAX_SUITE_BYTES: usize = 1 << 20;

/// One problem in a suite file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// Document path (`steps[2].disk.min_read_mbps`); empty for the document as a whole.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Diagnostic {
    fn at(at: Position, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            line: at.line,
            column: at.column,
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why a suite was refused. Nothing of a refused suite is used.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// The file could not be read.
    #[error("{file}: cannot read the suite")]
    Read {
        /// The file as named by the caller.
        file: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The suite was read and is wrong; every problem found is listed.
    #[error("{}", Rendered(file, diagnostics))]
    Invalid {
        /// The file as named by the caller.
        file: String,
        /// Every problem, in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

impl SuiteError {
    /// The located problems (empty for a read failure).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            SuiteError::Read { .. } => &[],
            SuiteError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

struct Rendered<'a>(&'a str, &'a [Diagnostic]);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.0, d.line, d.column)?;
            if !d.path.is_empty() {
                write!(f, "{}: ", d.path)?;
            }
            f.write_str(&d.message)?;
        }
        Ok(())
    }
}

/// Reads at most [`MAX_SUITE_BYTES`] + 1 bytes from `reader` and loads them, so an oversized
/// or endless input is refused without being read whole.
pub fn load_reader(file: &str, reader: impl Read) -> Result<Plan, SuiteError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_SUITE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SuiteError::Read {
            file: file.to_owned(),
            source,
        })?;
    load(file, &bytes)
}

/// Loads a suite from its bytes; `file` names it in messages.
pub fn load(file: &str, bytes: &[u8]) -> Result<Plan, SuiteError> {
    let invalid = |diagnostics: Vec<Diagnostic>| SuiteError::Invalid {
        file: file.to_owned(),
        diagnostics,
    };
    let top = Position { line: 1, column: 1 };
    if bytes.len() > MAX_SUITE_BYTES {
        return Err(invalid(vec![Diagnostic::at(
            top,
            "",
            format!("the file is over {MAX_SUITE_BYTES} bytes; expected a suite of at most 1 MiB"),
        )]));
    }
    let text = std::str::from_utf8(bytes).map_err(|err| {
        let at = position_of_offset(bytes, err.valid_up_to());
        invalid(vec![Diagnostic::at(
            at,
            "",
            "the file is not UTF-8 text; expected a UTF-8 YAML file",
        )])
    })?;
    let index = DocumentIndex::build(text)
        .map_err(|err| invalid(vec![Diagnostic::at(err.at, "", err.message)]))?;
    let suite: Suite =
        serde_yaml::from_str(text).map_err(|err| invalid(vec![serde_diagnostic(&err)]))?;
    validate(suite).map_err(|problems| {
        let mut diagnostics: Vec<Diagnostic> = problems
            .into_iter()
            .map(|p| Diagnostic::at(index.position(&p.path), p.path, p.message))
            .collect();
        diagnostics.sort_by_key(|d| (d.line, d.column));
        invalid(diagnostics)
    })
}

fn position_of_offset(bytes: &[u8], offset: usize) -> Position {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Position { line, column }
}

/// Splits serde_yaml's `"PATH: MESSAGE at line L column C"` into its parts and writes field
/// names in double quotes, as the rest of kiln's messages do.
fn serde_diagnostic(err: &serde_yaml::Error) -> Diagnostic {
    let mut text = err.to_string();
    let at = match err.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(cut) = text.find(&suffix) {
                text.replace_range(cut..cut + suffix.len(), "");
            }
            Position {
                line: loc.line(),
                column: loc.column(),
            }
        }
        None => Position { line: 1, column: 1 },
    };
    let (path, message) = match text.split_once(": ") {
        Some((path, message)) if looks_like_path(path) => (path.to_owned(), message.to_owned()),
        _ => (String::new(), text),
    };
    Diagnostic::at(at, path, message.replace('`', "\""))
}

fn looks_like_path(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with(['.', '['])
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-[]?".contains(c))
}
