//! The JSON Schema of the suite language, generated from the same types serde reads, so
//! editors complete and check fields with the doc comments as help; and the field
//! reference, generated from that schema so the two cannot drift apart.

use serde_json::{Map, Value};

use crate::suite::Suite;

/// The schema document, pretty-printed with a trailing newline (as committed in
/// `suites/schema.json`).
pub fn suite_schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&suite_schema()).unwrap_or_default();
    text.push('\n');
    text
}

fn suite_schema() -> Value {
    schemars::schema_for!(Suite).to_value()
}

/// The order the reference lists definitions in: the document from the top down. Any
/// definition not named here follows, alphabetically, so a new type is never left out.
const ORDER: &[&str] = &[
    "Expect",
    "ExpectSystem",
    "ExpectCpu",
    "ExpectMemory",
    "ExpectDisks",
    "ExpectNics",
    "Memtest",
    "ReportMode",
    "Step",
    "MemoryCheck",
    "MemoryThresholds",
    "Pattern",
    "CpuCheck",
    "CpuThresholds",
    "Workload",
    "DiskCheck",
    "DiskTarget",
    "DiskThresholds",
    "NicCheck",
    "NicThresholds",
    "Direction",
    "ExecCheck",
    "MetricRange",
    "Duration",
    "Size",
    "SizeOrShare",
];

/// Markdown reference of every suite field, for `docs/suites.md` ("Writing suites").
pub fn reference_markdown() -> String {
    let schema = suite_schema();
    let empty = Map::new();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut out = String::new();
    section(&mut out, "Suite (top level)", &schema);
    let mut names: Vec<&str> = ORDER
        .iter()
        .copied()
        .filter(|n| defs.contains_key(*n))
        .collect();
    let mut rest: Vec<&str> = defs
        .keys()
        .map(String::as_str)
        .filter(|n| !ORDER.contains(n))
        .collect();
    rest.sort_unstable();
    names.extend(rest);
    for name in names {
        if let Some(def) = defs.get(name) {
            section(&mut out, name, def);
        }
    }
    out
}

fn section(out: &mut String, name: &str, def: &Value) {
    out.push_str(&format!("#### `{name}`\n\n"));
    if let Some(text) = def.get("description").and_then(Value::as_str) {
        out.push_str(&one_paragraph(text));
        out.push_str("\n\n");
    }
    if let Some(props) = def.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = def
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
        for (key, prop) in props {
            let default = match prop.get("default") {
                Some(value) => format!("`{}`", compact(value)),
                None if required.contains(&key.as_str()) => "required".to_owned(),
                None => "—".to_owned(),
            };
            let meaning = prop
                .get("description")
                .and_then(Value::as_str)
                .map(one_paragraph);
            out.push_str(&format!(
                "| `{key}` | {} | {default} | {} |\n",
                type_of(prop),
                meaning.unwrap_or_default().replace('|', "\\|")
            ));
        }
        out.push('\n');
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(variants) = def.get(key).and_then(Value::as_array) {
            for variant in variants {
                let shape = match variant.get("const").or_else(|| variant.get("enum")) {
                    Some(Value::Array(values)) => values
                        .iter()
                        .map(|v| format!("`{}`", compact(v)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Some(value) => format!("`{}`", compact(value)),
                    None => match variant.get("properties").and_then(Value::as_object) {
                        Some(props) => props
                            .iter()
                            .map(|(k, v)| format!("`{k}: <{}>`", type_of(v)))
                            .collect::<Vec<_>>()
                            .join(", "),
                        None => type_of(variant),
                    },
                };
                let meaning = variant
                    .get("description")
                    .and_then(Value::as_str)
                    .map(one_paragraph);
                out.push_str(&format!("- {shape}: {}\n", meaning.unwrap_or_default()));
            }
            out.push('\n');
        }
    }
    if let Some(examples) = def.get("examples").and_then(Value::as_array) {
        let shown: Vec<String> = examples
            .iter()
            .map(|e| format!("`{}`", compact(e)))
            .collect();
        out.push_str(&format!("Examples: {}.\n\n", shown.join(", ")));
    }
}

fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn type_of(prop: &Value) -> String {
    if let Some(target) = prop.get("$ref").and_then(Value::as_str) {
        let name = target.rsplit('/').next().unwrap_or(target);
        return format!("[`{name}`](#{})", name.to_lowercase());
    }
    if let Some(options) = prop.get("anyOf").and_then(Value::as_array) {
        let shown: Vec<String> = options
            .iter()
            .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
            .map(type_of)
            .collect();
        return shown.join(" or ");
    }
    let kind = match prop.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_owned(),
    };
    match kind.as_str() {
        "array" => format!(
            "list of {}",
            prop.get("items").map_or("any".to_owned(), type_of)
        ),
        "object" => match prop.get("additionalProperties") {
            Some(inner @ Value::Object(_)) => format!("map of {}", type_of(inner)),
            _ => "mapping".to_owned(),
        },
        _ => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_covers_every_definition_and_field() {
        let reference = reference_markdown();
        let schema = suite_schema();
        for name in schema["$defs"].as_object().unwrap().keys() {
            assert!(
                reference.contains(&format!("#### `{name}`")),
                "{name} missing"
            );
        }
        for field in [
            "min_read_mbps",
            "skip_tests",
            "stall_timeout",
            "pass_codes",
            "degraded",
        ] {
            assert!(
                reference.contains(&format!("| `{field}` |")),
                "{field} missing"
            );
        }
    }

    #[test]
    fn doc_comments_become_descriptions() {
        let schema = suite_schema();
        let desc = schema["$defs"]["DiskThresholds"]["properties"]["min_read_mbps"]["description"]
            .as_str()
            .unwrap();
        assert_eq!(desc, "Least sequential read throughput in MB/s.");
    }
}
