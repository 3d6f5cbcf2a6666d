//! What a node's serial console says when Linux dies: the last lines are kept through the
//! Linux stage, and when a run ends by lost contact or an unexpected reboot they are read for
//! a kernel panic, a fatal machine check (bank, status, address), a hung task, a soft lockup
//! or the OOM killer — so the run fails with the cause, not only "lost contact".

/// Most bytes of console tail kept per run.
pub const MAX_TAIL: usize = 64 << 10;

/// Longest one finding is quoted, in characters.
pub const MAX_FINDING: usize = 240;

/// Lines shown with a diagnosis.
pub const SHOWN_LINES: usize = 40;

/// Appends `bytes` to `tail`, keeping its last [`MAX_TAIL`] bytes.
pub fn keep_tail(tail: &mut Vec<u8>, bytes: &[u8]) {
    tail.extend_from_slice(bytes);
    if tail.len() > MAX_TAIL {
        tail.drain(..tail.len() - MAX_TAIL);
    }
}

/// The console as lines of text: escape sequences and carriage returns removed, the kernel's
/// `[  12.345678] ` timestamps kept.
pub fn lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut out = Vec::new();
    for line in text.split('\n') {
        let mut clean = String::with_capacity(line.len());
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\u{1b}' => {
                    // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                    if chars.peek() == Some(&'[') {
                        chars.next();
                        for f in chars.by_ref() {
                            if ('@'..='~').contains(&f) {
                                break;
                            }
                        }
                    } else {
                        chars.next();
                    }
                }
                c if c.is_control() && c != '\t' => {}
                c => clean.push(c),
            }
        }
        let clean = clean.trim_end();
        if !clean.is_empty() {
            out.push(clean.to_owned());
        }
    }
    out
}

/// The message of a kernel log line, without its timestamp.
fn message(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((stamp, rest)) if stamp.trim().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

/// What the console's last lines show, most telling first; empty when they show nothing
/// known.
pub fn diagnose(lines: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut mce = kiln_protocol::mce::Records::default();
    for line in lines {
        let msg = message(line);
        if mce.feed(msg) {
            continue;
        } else if let Some(reason) = msg.strip_prefix("Kernel panic - not syncing: ") {
            let reason = reason.trim();
            if !found.iter().any(|f: &String| f.ends_with(reason)) {
                found.push(format!("kernel panic: {reason}"));
            }
        } else if msg.contains("blocked for more than") && msg.starts_with("INFO: task ") {
            found.push(format!(
                "hung task: {}",
                msg.trim_start_matches("INFO: task ")
            ));
        } else if msg.contains("soft lockup") || msg.contains("hard LOCKUP") {
            found.push(format!("lockup: {}", msg.trim()));
        } else if let Some(rest) = msg.strip_prefix("Out of memory: ") {
            found.push(format!("out of memory: {}", rest.trim()));
        } else if msg.starts_with("BUG: ") || msg.starts_with("Oops: ") {
            found.push(format!("kernel bug: {}", msg.trim()));
        }
    }
    // The last machine check is the one that took the node down.
    if let Some(last) = mce.finish().0.pop() {
        found.insert(0, last.to_string());
    }
    found.dedup();
    found
}

/// The sentence added to a run's reason: what the console shows, or nothing.
pub fn explain(raw: &[u8]) -> Option<String> {
    let lines = lines(raw);
    // The console is the node's: each finding is cut short, so a line of any length cannot
    // swell the run's reason.
    let found: Vec<String> = diagnose(&lines)
        .into_iter()
        .map(|f| match f.char_indices().nth(MAX_FINDING) {
            Some((at, _)) => format!("{}…", &f[..at]),
            None => f,
        })
        .take(4)
        .collect();
    (!found.is_empty()).then(|| format!("the console shows {}", found.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/console")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn a_fatal_machine_check_is_named_with_bank_status_and_address() {
        let raw = fixture("qemu-7.2-fatal-mce.log");
        assert_eq!(
            diagnose(&lines(&raw)),
            [
                "machine check on CPU 0, bank 9, status 0xbd000000000000c0, address 0x2000000 (Uncorrected error without MCA Recovery)",
                "kernel panic: Fatal local machine check",
            ]
        );
        assert!(
            explain(&raw)
                .unwrap()
                .starts_with("the console shows machine check on CPU 0, bank 9")
        );
    }

    #[test]
    fn panics_hung_tasks_lockups_and_the_oom_killer_are_named() {
        let raw =
            b"\x1b[0m[ 100.1] INFO: task kiln-agent:231 blocked for more than 120 seconds.\r\n\
[ 101.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [stress:99]\r\n\
[ 102.0] Out of memory: Killed process 231 (kiln-agent) total-vm:1000kB\r\n\
[ 103.0] Kernel panic - not syncing: Out of memory and no killable processes...\r\n";
        assert_eq!(
            diagnose(&lines(raw)),
            [
                "hung task: kiln-agent:231 blocked for more than 120 seconds.",
                "lockup: watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [stress:99]",
                "out of memory: Killed process 231 (kiln-agent) total-vm:1000kB",
                "kernel panic: Out of memory and no killable processes...",
            ]
        );
        assert_eq!(explain(b"[ 1.0] all is well\n"), None);
        // A hostile console: a panic line of 100,000 characters is quoted short.
        let long = format!("Kernel panic - not syncing: {}\n", "x".repeat(100_000));
        let said = explain(long.as_bytes()).unwrap();
        assert!(said.len() < 400 && said.ends_with('…'), "{}", said.len());
    }

    #[test]
    fn the_tail_is_bounded_and_escape_sequences_are_removed() {
        let mut tail = Vec::new();
        keep_tail(&mut tail, &vec![b'x'; MAX_TAIL]);
        keep_tail(&mut tail, b"\n\x1b[2J\x1b[01;01Hlast line\r\n");
        assert_eq!(tail.len(), MAX_TAIL);
        assert_eq!(lines(&tail).last().map(String::as_str), Some("last line"));
    }
}
