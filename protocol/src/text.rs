//! What text from a node may hold, with no other part of the crate beneath it: the characters
//! that change how text reads without showing ([`hidden`]), the check that refuses them, the
//! clamp that replaces them, [`visible`], which writes them out wherever text is shown, and
//! [`table`], the one way kiln lays text out in columns for a terminal.

/// Whether `c` changes how text around it reads without showing itself: a control
/// character, a bidirectional override, embedding, isolate or mark (a hostname that shows as
/// `r12-u07` and sorts as something else), a zero-width character, or a line or paragraph
/// separator (a new line where none is seen). Such characters never come from a node into
/// anything a person reads.
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Checks `value`: at most `max` bytes, no [`hidden`] characters (tabs allowed when `tabs`).
pub fn check(name: &str, value: &str, max: usize, tabs: bool) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{name} is {} bytes long; at most {max} allowed",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|c| hidden(*c) && !(tabs && *c == '\t')) {
        return Err(format!(
            "{name} contains U+{:04X}, a control or invisible character",
            c as u32
        ));
    }
    Ok(())
}

/// `value` within the bounds [`check`] enforces: control characters replaced, cut to `max`
/// bytes with a marker.
pub fn clamp(value: &str, max: usize, tabs: bool) -> String {
    let clean: String = value
        .chars()
        .map(|c| {
            if hidden(c) && !(tabs && c == '\t') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    if clean.len() <= max {
        return clean;
    }
    let marker = format!(" … [{} bytes cut]", clean.len());
    let mut end = max.saturating_sub(marker.len());
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &clean[..end])
}

/// `text` safe to print on a terminal, put in a CSV cell or show on a page: every [`hidden`]
/// character written out as an escape (`\x1b`, `\r`, `\u{202e}`), so stored text can never
/// move a cursor, set a clipboard (OSC 52), forge a line or read backwards.
pub fn visible(text: &str) -> String {
    if !text.chars().any(hidden) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_default().to_string().replace("\\u{1b}", "\\x1b")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Rows laid out in columns for a terminal: the header, a dashed line, then each row; every
/// column as wide as its widest cell up to `widest` characters (longer cells cut there), two
/// spaces apart; the last column left unpadded and cut only past `last` characters; every
/// cell [`visible`], so stored text is shown and never obeyed.
pub fn table(header: &[&str], rows: &[Vec<String>], widest: usize, last: usize) -> String {
    let cells = |row: &[String]| -> Vec<String> { row.iter().map(|c| visible(c)).collect() };
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let lines: Vec<Vec<String>> = std::iter::once(head)
        .chain(rows.iter().map(|r| cells(r)))
        .collect();
    let mut widths = vec![0usize; header.len()];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count()).min(widest);
        }
    }
    let render = |line: &[String]| {
        let mut out = String::new();
        for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.extend(cell.chars().take(last));
            } else {
                let cut: String = cell.chars().take(*w).collect();
                out.push_str(&format!("{cut:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = render(&lines[0]);
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&dashes.join("  "));
    out.push('\n');
    for line in &lines[1..] {
        out.push_str(&render(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_cuts_and_shows_what_it_is_given() {
        let rows = vec![
            vec!["node-7".into(), "pass".into(), "".into()],
            vec![
                "a-very-long-hostname".into(),
                "fail\u{1b}[31m".into(),
                "fan 3 at 900 rpm; PSU 2 lost".into(),
            ],
        ];
        let text = table(&["node", "verdict", "faults"], &rows, 10, 12);
        assert_eq!(
            text,
            "node        verdict     faults\n\
             ----------  ----------  ----------\n\
             node-7      pass\n\
             a-very-lon  fail\\x1b[3  fan 3 at 900\n"
        );
    }
}
