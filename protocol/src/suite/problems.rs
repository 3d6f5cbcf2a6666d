//! Problems found in a suite after parsing, each at its document path: the sink every rule
//! writes to — the plan's cross-field rules ([`crate::plan`]) and each check kind's own
//! ([`super::CheckSpec::validate`]).

/// A problem found after parsing, at a document path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Document path, e.g. `steps[2].disk.min_read_mbps`.
    pub path: String,
    /// What is wrong, and what was expected.
    pub message: String,
}

/// The problems found so far; each check kind adds its own through
/// [`CheckSpec::validate`](crate::suite::CheckSpec::validate).
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    /// A problem at `path`: what is wrong, and what was expected.
    pub fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether none was found.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every problem found, in order.
    pub fn into_list(self) -> Vec<Problem> {
        self.list
    }

    /// A problem at `path` unless `pattern` compiles as a regular expression.
    pub fn regex(&mut self, path: String, pattern: &str) {
        if let Err(err) = regex_lite::Regex::new(pattern) {
            self.problem(
                path,
                format!("invalid regular expression {pattern:?}: {err}"),
            );
        }
    }
}
