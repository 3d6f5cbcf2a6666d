//! Machine-check records as the Linux kernel prints them (`mce: [Hardware Error]: …`, one
//! record over several lines), read back into one finding each: CPU, bank, status, address,
//! and whether the error was corrected. The agent reads them from the kernel log during a
//! step, the collector from a node's console after it died; both name the same record the
//! same way. Text in, text out: no I/O here.

use std::fmt;

/// One machine-check record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineCheck {
    /// CPU that logged it.
    pub cpu: String,
    /// Bank number.
    pub bank: String,
    /// `MCi_STATUS`, hex as printed.
    pub status: String,
    /// `MCi_ADDR`, hex, when valid.
    pub address: Option<String>,
    /// The kernel's verdict line (`Uncorrected error without MCA Recovery`), when printed.
    pub note: Option<String>,
}

impl MachineCheck {
    /// Whether `MCi_STATUS.UC` (bit 61) is set. `None` when the status does not parse.
    pub fn uncorrected(&self) -> Option<bool> {
        u64::from_str_radix(&self.status, 16)
            .ok()
            .map(|s| s & (1 << 61) != 0)
    }
}

impl fmt::Display for MachineCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "machine check on CPU {}, bank {}, status 0x{}",
            self.cpu, self.bank, self.status
        )?;
        if let Some(a) = &self.address {
            write!(f, ", address 0x{a}")?;
        }
        match (&self.note, self.uncorrected()) {
            (Some(note), _) => write!(f, " ({note})"),
            (None, Some(true)) => write!(f, " (uncorrected)"),
            (None, Some(false)) => write!(f, " (corrected)"),
            (None, None) => Ok(()),
        }
    }
}

/// Reads kernel messages (timestamps stripped) one at a time and gathers the records.
#[derive(Debug, Default)]
pub struct Records {
    done: Vec<MachineCheck>,
    open: Option<MachineCheck>,
    /// Hardware-error lines that belong to no record (the kernel printed only a summary).
    pub loose: Vec<String>,
    /// "Machine check events logged" was seen: if no record follows, that line alone is the
    /// finding (a machine check is never dropped for want of detail).
    summary: bool,
}

/// The prefix of every line of a record.
const PREFIX: &str = "mce: [Hardware Error]: ";

impl Records {
    /// Feeds one message; returns whether it was a machine-check line.
    pub fn feed(&mut self, message: &str) -> bool {
        let Some(rest) = message.trim_end().strip_prefix(PREFIX) else {
            return false;
        };
        // "CPU 0: Machine Check: 0 Bank 1: 9c0000000000009f" (polled, corrected) or
        // "CPU 0: Machine Check Exception: 5 Bank 9: bd000000000000c0" (raised): a new record.
        if let Some((head, bank)) = rest.split_once(" Bank ") {
            if let Some((bank, status)) = bank.split_once(": ") {
                self.close();
                self.open = Some(MachineCheck {
                    cpu: head
                        .strip_prefix("CPU ")
                        .and_then(|r| r.split(':').next())
                        .unwrap_or("?")
                        .to_owned(),
                    bank: bank.trim().to_owned(),
                    status: status.split_whitespace().next().unwrap_or("").to_owned(),
                    ..Default::default()
                });
                return true;
            }
        }
        if let Some(note) = rest.strip_prefix("Machine check: ") {
            // The verdict follows the record it judges.
            match self.open.as_mut().or(self.done.last_mut()) {
                Some(m) => m.note = Some(note.trim().to_owned()),
                None => self.loose.push(rest.to_owned()),
            }
            return true;
        }
        match self.open.as_mut() {
            Some(m) => {
                // "TSC 493efa791 ADDR 2000000 MISC 86"
                let mut words = rest.split_whitespace();
                while let Some(w) = words.next() {
                    if w == "ADDR" {
                        m.address = words.next().map(str::to_owned);
                    }
                }
                // "PROCESSOR 2:60fb1 TIME … SOCKET 0 APIC 0 microcode …" is a record's last line.
                if rest.starts_with("PROCESSOR ") {
                    self.close();
                }
            }
            None if rest.starts_with("Machine check events logged") => self.summary = true,
            None => self.loose.push(rest.to_owned()),
        }
        true
    }

    fn close(&mut self) {
        if let Some(m) = self.open.take() {
            self.done.push(m);
        }
    }

    /// The records read, in order (one still open is included).
    pub fn finish(mut self) -> (Vec<MachineCheck>, Vec<String>) {
        self.close();
        if self.summary && self.done.is_empty() && self.loose.is_empty() {
            self.loose.push("Machine check events logged".to_owned());
        }
        (self.done, self.loose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&str]) -> (Vec<MachineCheck>, Vec<String>) {
        let mut r = Records::default();
        for l in lines {
            r.feed(l);
        }
        r.finish()
    }

    #[test]
    fn a_polled_corrected_error_is_one_record_with_bank_and_address() {
        // As Linux 6.1 logged the lab's injected error (QEMU `mce 0 1 0x9c…9f 0 0x12345000 0x86`).
        let (records, loose) = read(&[
            "mce: [Hardware Error]: Machine check events logged",
            "mce: [Hardware Error]: CPU 0: Machine Check: 0 Bank 1: 9c0000000000009f",
            "mce: [Hardware Error]: TSC 0 ADDR 12345000 MISC 86 ",
            "mce: [Hardware Error]: PROCESSOR 2:60fb1 TIME 1796058541 SOCKET 0 APIC 0 microcode 1000065",
        ]);
        assert!(loose.is_empty(), "{loose:?}");
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].to_string(),
            "machine check on CPU 0, bank 1, status 0x9c0000000000009f, address 0x12345000 (corrected)"
        );
        assert_eq!(records[0].uncorrected(), Some(false));
    }

    #[test]
    fn a_fatal_error_carries_the_kernels_verdict() {
        let (records, _) = read(&[
            "mce: [Hardware Error]: CPU 0: Machine Check Exception: 5 Bank 9: bd000000000000c0",
            "mce: [Hardware Error]: RIP !INEXACT! 10:<ffffffff8f0c0b8e> {native_safe_halt+0xe/0x20}",
            "mce: [Hardware Error]: TSC 493efa791 ADDR 2000000 MISC 86 ",
            "mce: [Hardware Error]: PROCESSOR 2:60fb1 TIME 1796058541 SOCKET 0 APIC 0 microcode 1000065",
            "mce: [Hardware Error]: Machine check: Uncorrected error without MCA Recovery",
            "Kernel panic - not syncing: Fatal local machine check",
        ]);
        assert_eq!(
            records[0].to_string(),
            "machine check on CPU 0, bank 9, status 0xbd000000000000c0, address 0x2000000 (Uncorrected error without MCA Recovery)"
        );
        assert_eq!(records[0].uncorrected(), Some(true));
    }

    #[test]
    fn two_records_stay_two_and_stray_lines_are_kept_loose() {
        let (records, loose) = read(&[
            "mce: [Hardware Error]: CPU 1: Machine Check: 0 Bank 5: 9c00000000010090",
            "mce: [Hardware Error]: CPU 2: Machine Check: 0 Bank 7: 8c00004000010091",
            "mce: [Hardware Error]: TSC 0 ADDR ff00 MISC 86",
            "eth0: link up",
        ]);
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].bank.as_str(), records[0].address.as_deref()),
            ("5", None)
        );
        assert_eq!(records[1].address.as_deref(), Some("ff00"));
        // The summary line alone (the details went to another consumer): still a finding.
        let (none, summary) = read(&["mce: [Hardware Error]: Machine check events logged"]);
        assert!(none.is_empty());
        assert_eq!(summary, ["Machine check events logged"]);
        let (none, loose_only) = read(&["mce: [Hardware Error]: something new"]);
        assert!(none.is_empty());
        assert_eq!(loose_only, ["something new"]);
        assert!(loose.is_empty());
    }
}
