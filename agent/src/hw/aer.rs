//! PCIe Advanced Error Reporting, read two ways before and after each step so an error during
//! it is that step's fault: the kernel's counters (`aer_dev_{correctable,nonfatal,fatal}`),
//! and each device's own AER status registers in its configuration space. The registers latch
//! an error the kernel never heard of — a message the device did not send because its driver
//! left reporting off, firmware-first platforms, an emulator that drops the message — so
//! the agent turns reporting on at boot, clears what was latched before the run, and reads
//! the registers itself.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use kiln_protocol::wire::Fault;

/// Each device's AER counters: (device, severity) → counter name → count.
pub type AerCounts = BTreeMap<(String, &'static str), BTreeMap<String, u64>>;

/// What one step's AER reading saw: the kernel's counters and the latched status registers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AerSnapshot {
    /// The kernel's counters.
    pub counters: AerCounts,
    /// Each device's status registers, by device address.
    pub latched: BTreeMap<String, Latched>,
}

/// A device's AER status registers (PCIe base spec 7.8.4): which errors it latched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latched {
    /// Where the AER capability is in the configuration space.
    at: usize,
    /// Uncorrectable Error Status.
    uncorrectable: u32,
    /// Uncorrectable Error Severity: a set bit is fatal.
    severity: u32,
    /// Correctable Error Status.
    correctable: u32,
}

/// Correctable Error Status bits, named as the kernel names them.
const CORRECTABLE: [(u32, &str); 8] = [
    (0, "RxErr"),
    (6, "BadTLP"),
    (7, "BadDLLP"),
    (8, "Rollover"),
    (12, "Timeout"),
    (13, "NonFatalErr"),
    (14, "CorrIntErr"),
    (15, "HeaderOF"),
];

/// Uncorrectable Error Status bits, named as the kernel names them.
const UNCORRECTABLE: [(u32, &str); 18] = [
    (0, "Undefined"),
    (4, "DLP"),
    (5, "SDES"),
    (12, "TLP"),
    (13, "FCP"),
    (14, "CmpltTO"),
    (15, "CmpltAbrt"),
    (16, "UnxCmplt"),
    (17, "RxOF"),
    (18, "MalfTLP"),
    (19, "ECRC"),
    (20, "UnsupReq"),
    (21, "ACSViol"),
    (22, "UncorrIntErr"),
    (23, "BlockedTLP"),
    (24, "AtomicOpBlocked"),
    (25, "TLPBlockedErr"),
    (26, "PoisonTLPBlocked"),
];

/// The Device Control bits that let a function report errors: correctable, non-fatal, fatal
/// and unsupported request — what Linux sets on every device when it owns AER (6.4 and
/// later). Older kernels leave them to the driver, and most drivers (virtio among them) never
/// ask: a correctable error on such a device is never reported, never counted.
const REPORTING: u16 = 0x000f;

/// Reads every device's counters and status registers under `sys` (normally `/sys`).
pub fn aer(sys: &Path) -> AerSnapshot {
    let mut out = AerSnapshot::default();
    for dir in devices(sys) {
        let device = name(&dir);
        for severity in ["correctable", "nonfatal", "fatal"] {
            let Ok(text) = std::fs::read_to_string(dir.join(format!("aer_dev_{severity}"))) else {
                continue;
            };
            out.counters
                .insert((device.clone(), severity), counters(&text));
        }
        if let Some(latched) = std::fs::read(dir.join("config"))
            .ok()
            .and_then(|c| latched(&c))
        {
            out.latched.insert(device, latched);
        }
    }
    out
}

/// `RxErr 3` lines, without the totals.
fn counters(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, n) = l.rsplit_once(' ')?;
            Some((name.trim().to_owned(), n.trim().parse().ok()?))
        })
        .filter(|(name, _): &(String, u64)| !name.starts_with("TOTAL_"))
        .collect()
}

/// The faults of a step whose reading before was `before`, read now under `sys`; the
/// status bits latched during it are cleared, so the next step sees only its own.
pub fn step_errors(sys: &Path, before: &AerSnapshot) -> Vec<Fault> {
    let after = aer(sys);
    let faults = new_errors(before, &after);
    clear_latched(sys, &after);
    faults
}

/// A fault for every device whose counters grew, or whose registers latched an error the
/// counters did not show (one fault per device and severity either way).
pub fn new_errors(before: &AerSnapshot, after: &AerSnapshot) -> Vec<Fault> {
    let mut found: BTreeMap<(String, &'static str), (Vec<String>, bool)> = BTreeMap::new();
    for ((device, severity), counts) in &after.counters {
        let old = before.counters.get(&(device.clone(), *severity));
        let grew: Vec<String> = counts
            .iter()
            .filter_map(|(name, &n)| {
                let was = old.and_then(|o| o.get(name)).copied().unwrap_or(0);
                (n > was).then(|| format!("{name} +{}", n - was))
            })
            .collect();
        if !grew.is_empty() {
            found.insert((device.clone(), severity), (grew, true));
        }
    }
    for (device, now) in &after.latched {
        let was = before.latched.get(device).copied().unwrap_or_default();
        for (severity, bits) in now.new_since(&was) {
            found
                .entry((device.clone(), severity))
                .or_insert((bits, false));
        }
    }
    found
        .into_iter()
        .map(|((device, severity), (names, counted))| {
            let how = if counted {
                ""
            } else {
                " (latched in its AER status register; the kernel did not count it)"
            };
            Fault::new(
                format!("pcie.aer.{severity}"),
                format!(
                    "PCIe device {device}: new {severity} AER errors during the step: {}{how}",
                    names.join(", ")
                ),
            )
            .with("device", device)
        })
        .collect()
}

impl Latched {
    /// The errors set now that were not set in `was`, by severity, by name.
    fn new_since(&self, was: &Latched) -> Vec<(&'static str, Vec<String>)> {
        let named = |bits: u32, table: &[(u32, &str)]| -> Vec<String> {
            table
                .iter()
                .filter(|(bit, _)| bits & (1 << bit) != 0)
                .map(|(_, n)| (*n).to_owned())
                .collect()
        };
        let unc = self.uncorrectable & !was.uncorrectable;
        [
            (
                "correctable",
                named(self.correctable & !was.correctable, &CORRECTABLE),
            ),
            ("nonfatal", named(unc & !self.severity, &UNCORRECTABLE)),
            ("fatal", named(unc & self.severity, &UNCORRECTABLE)),
        ]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .collect()
    }
}

/// The AER registers of a configuration space: the extended capability with id 0001h,
/// found by walking the list from 100h. `None` when the space is the 256 bytes an
/// unprivileged read gets, or the list leaves the space or loops.
pub fn latched(config: &[u8]) -> Option<Latched> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(config.get(at..at + 4)?.try_into().ok()?))
    };
    let mut at = 0x100;
    // At most (4096 - 256) / 4 capabilities fit: a longer walk is a loop.
    for _ in 0..960 {
        let header = word(at)?;
        if header & 0xffff == 0x0001 {
            return Some(Latched {
                at,
                uncorrectable: word(at + 0x04)?,
                severity: word(at + 0x0c)?,
                correctable: word(at + 0x10)?,
            });
        }
        let next = (header >> 20) as usize & !3;
        if next < 0x100 {
            return None;
        }
        at = next;
    }
    None
}

/// Clears (write one to clear) every status bit `snapshot` saw latched.
fn clear_latched(sys: &Path, snapshot: &AerSnapshot) {
    for (device, l) in &snapshot.latched {
        if l.uncorrectable | l.correctable == 0 {
            continue;
        }
        let path = sys.join("bus/pci/devices").join(device).join("config");
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = file.write_all_at(&l.uncorrectable.to_le_bytes(), (l.at + 0x04) as u64);
            let _ = file.write_all_at(&l.correctable.to_le_bytes(), (l.at + 0x10) as u64);
        }
    }
}

/// Where a function's PCI Express Device Control register is in its configuration space: the
/// PCIe capability (id 10h) found by walking the capability list, plus 8. `None` when the
/// space has no list, no PCIe capability, or a list that leaves the space or loops.
pub fn device_control_offset(config: &[u8]) -> Option<usize> {
    const STATUS_CAP_LIST: u8 = 0x10;
    if config.get(0x06)? & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut at = usize::from(*config.get(0x34)? & 0xfc);
    // At most 48 capabilities fit the standard space: a longer walk is a loop.
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        let (&id, &next) = (config.get(at)?, config.get(at + 1)?);
        if id == 0x10 {
            return (at + 10 <= config.len()).then_some(at + 8);
        }
        at = usize::from(next & 0xfc);
    }
    None
}

/// Prepares every device with AER for the run: turns error reporting on where the kernel
/// keeps counters (each has `aer_dev_correctable`), so an error reaches them whatever its
/// driver asked for, and clears what its status registers latched before the run. Returns
/// one line per device changed, refused or found with old errors, for the run's log.
pub fn prepare(sys: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for dir in devices(sys)
        .into_iter()
        .filter(|d| d.join("aer_dev_correctable").exists())
    {
        let device = name(&dir);
        let path = dir.join("config");
        let result = std::fs::read(&path).and_then(|config| {
            let Some(at) = device_control_offset(&config) else {
                return Ok(None);
            };
            let was = u16::from_le_bytes([config[at], config[at + 1]]);
            if was & REPORTING == REPORTING {
                return Ok(None);
            }
            let now = was | REPORTING;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .write_all_at(&now.to_le_bytes(), at as u64)?;
            Ok(Some((was, now)))
        });
        match result {
            Ok(None) => {}
            Ok(Some((was, now))) => lines.push(format!(
                "PCIe device {device}: error reporting turned on (Device Control {was:#06x} -> {now:#06x})"
            )),
            Err(e) => lines.push(format!(
                "PCIe device {device}: cannot turn error reporting on ({}: {e}): its correctable errors may go uncounted",
                path.display()
            )),
        }
    }
    let before = aer(sys);
    for (device, l) in &before.latched {
        for (severity, names) in l.new_since(&Latched::default()) {
            lines.push(format!(
                "PCIe device {device}: {severity} AER errors latched before the run, cleared: {}",
                names.join(", ")
            ));
        }
    }
    clear_latched(sys, &before);
    lines
}

/// Every device directory under `sys`, sorted.
fn devices(sys: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(sys.join("bus/pci/devices"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn name(dir: &Path) -> String {
    dir.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests;
