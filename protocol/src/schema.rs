//! The JSON Schema of the suite language, generated from the same types serde reads, so
//! editors complete and check fields with the doc comments as help.

use crate::suite::Suite;

/// The schema document, pretty-printed with a trailing newline (as committed in
/// `suites/schema.json`).
pub fn suite_schema_json() -> String {
    let schema = schemars::schema_for!(Suite);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
