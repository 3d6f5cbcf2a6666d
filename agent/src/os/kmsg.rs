//! Watches the kernel log during a step: machine checks, EDAC reports, I/O errors and links
//! going down become faults of the step that was running.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use kiln_protocol::wire::Fault;

/// Kernel log line classes that are hardware faults, by the words the kernel uses.
const CLASSES: &[(&str, &[&str])] = &[
    (
        "kernel.machine_check",
        &["Machine check", "mce:", "[Hardware Error]"],
    ),
    ("kernel.edac", &["EDAC"]),
    (
        "kernel.io_error",
        &["I/O error", "critical medium error", "blk_update_request"],
    ),
    (
        "kernel.link_down",
        &["Link is Down", "link down", "NIC Link is Down"],
    ),
];

/// Classifies one kernel log message, if it reports a hardware fault.
pub fn classify(message: &str) -> Option<&'static str> {
    CLASSES
        .iter()
        .find(|(_, needles)| needles.iter().any(|n| message.contains(n)))
        .map(|(code, _)| *code)
}

/// A running watch; [`KmsgWatch::finish`] stops it and returns what it saw.
pub struct KmsgWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Fault>>>,
}

impl KmsgWatch {
    /// Starts watching new kernel messages; `None` when `/dev/kmsg` cannot be read (containers,
    /// no privilege), which the caller reports once.
    pub fn start() -> Option<Self> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        // Skip what was logged before the step: only new records count against it.
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0)).ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kmsg".into())
            .spawn(move || watch(file, &flag))
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the watch and returns the faults seen.
    pub fn finish(mut self) -> Vec<Fault> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// One fault per machine-check record, naming CPU, bank, status and address; lines that
/// belong to no record each stay a fault of their own.
fn machine_checks(records: kiln_protocol::mce::Records) -> Vec<Fault> {
    let (records, loose) = records.finish();
    let mut faults: Vec<Fault> = records
        .iter()
        .map(|m| {
            let mut f = Fault::new("kernel.machine_check", format!("kernel: {m}"))
                .with("cpu", &m.cpu)
                .with("bank", &m.bank)
                .with("status", format!("0x{}", m.status));
            if let Some(a) = &m.address {
                f = f.with("address", format!("0x{a}"));
            }
            f
        })
        .collect();
    faults.extend(loose.iter().take(20).map(|l| {
        Fault::new(
            "kernel.machine_check",
            format!("kernel: mce: [Hardware Error]: {l}"),
        )
    }));
    faults
}

fn watch(mut file: std::fs::File, stop: &AtomicBool) -> Vec<Fault> {
    let mut faults = Vec::new();
    // A machine check spans several lines: gathered into one fault per record.
    let mut mce = kiln_protocol::mce::Records::default();
    let mut record = vec![0u8; 8192];
    loop {
        // One read returns one record; EAGAIN means none is waiting.
        match file.read(&mut record) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&record[..n]);
                // Format: "PRIORITY,SEQ,USEC,FLAGS;message\n continuation…"
                let message = text
                    .split_once(';')
                    .map_or(&*text, |(_, m)| m)
                    .lines()
                    .next()
                    .unwrap_or("");
                if mce.feed(message) {
                    continue;
                }
                if let Some(code) = classify(message) {
                    if faults.len() < 100 {
                        faults.push(
                            Fault::new(code, format!("kernel: {message}")).with("line", message),
                        );
                    }
                }
                continue;
            }
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => continue, // overwritten records
            _ => {}
        }
        if stop.load(Ordering::Relaxed) {
            faults.splice(0..0, machine_checks(mce));
            return faults;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, machine_checks};

    #[test]
    fn a_machine_check_record_is_one_fault_naming_bank_and_address() {
        let mut r = kiln_protocol::mce::Records::default();
        for l in [
            "mce: [Hardware Error]: Machine check events logged",
            "mce: [Hardware Error]: CPU 0: Machine Check: 0 Bank 1: 9c0000000000009f",
            "mce: [Hardware Error]: TSC 0 ADDR 12345000 MISC 86 ",
            "mce: [Hardware Error]: PROCESSOR 2:60fb1 TIME 1796058541 SOCKET 0 APIC 0",
        ] {
            assert!(r.feed(l));
        }
        assert!(!r.feed("EDAC MC0: 1 CE memory read error"));
        let faults = machine_checks(r);
        assert_eq!(faults.len(), 1);
        assert_eq!(
            faults[0].message,
            "kernel: machine check on CPU 0, bank 1, status 0x9c0000000000009f, address 0x12345000 (corrected)"
        );
        assert_eq!(faults[0].code, "kernel.machine_check");
    }

    #[test]
    fn hardware_lines_are_classified() {
        assert_eq!(
            classify("mce: [Hardware Error]: CPU 3: Machine Check: 0 Bank 5"),
            Some("kernel.machine_check")
        );
        assert_eq!(
            classify("EDAC MC0: 1 CE memory read error on CPU_SrcID#0_Ha#0_Chan#1_DIMM#0"),
            Some("kernel.edac")
        );
        assert_eq!(
            classify("blk_update_request: I/O error, dev sdb, sector 2048"),
            Some("kernel.io_error")
        );
        assert_eq!(
            classify("ixgbe 0000:3b:00.0 eth2: NIC Link is Down"),
            Some("kernel.link_down")
        );
        assert_eq!(classify("virtio_net virtio2 eth0: renamed from veth"), None);
    }
}
