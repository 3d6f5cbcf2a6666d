//! Writing the run's attestation to the node's console, where the collector reads it out of
//! band (the BMC's serial over LAN, the lab's socket): the one thing the node in the rack can
//! show that a party holding its tokens elsewhere cannot ([`kiln_protocol::attest`]).

use std::io::Write;
use std::path::Path;

/// Where the line goes: the kernel's console (the last `console=`, the serial port the
/// collector reads; the Linux stage's command line puts it there).
pub const CONSOLE: &str = "/dev/console";

/// Writes `line` on a line of its own to `console`; `Err` names the device and why.
pub fn write_line(console: &Path, line: &str) -> anyhow::Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(console)
        .map_err(|e| {
            anyhow::anyhow!("cannot open {} for the attestation: {e}", console.display())
        })?;
    // One write: another writer's text cannot land inside the line.
    out.write_all(format!("\r\n{line}\r\n").as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot write the attestation to {}: {e}", console.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_written_whole_on_a_line_of_its_own_and_a_missing_device_is_named() {
        let dir = std::env::temp_dir().join(format!("kiln-attest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join("console");
        std::fs::write(&console, "").unwrap();
        let line = kiln_protocol::attest::line("k", 4, 2);
        write_line(&console, &line).unwrap();
        let text = std::fs::read_to_string(&console).unwrap();
        let claim = text
            .lines()
            .find_map(kiln_protocol::attest::parse)
            .expect("the line reads back");
        assert_eq!((claim.run, claim.node), (4, 2));
        let err = write_line(&dir.join("missing/console"), &line).unwrap_err();
        assert!(err.to_string().contains("missing/console"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
