//! Faults the lab injects into its nodes the way real servers suffer them, each through the
//! interface the emulated hardware offers: an NVMe critical warning (QMP `qom-set` on the
//! controller's `smart_critical_warning`), a corrected or a fatal machine check (HMP `mce`),
//! an event in the BMC's System Event Log (OpenIPMI `ipmi_sim`'s `sel_add`), a non-fatal
//! PCIe AER error on the NIC and a correctable one (HMP `pcie_aer_inject_error`), and — at power-on — the NIC's slot
//! narrowed to x1 at 2.5 GT/s (`x-width`/`x-speed` on its root port); a BMC sensor set
//! while a step runs (`ipmi_sim`'s `sensor_set_value`: a fan stopped, a PSU drawing more);
//! a disk removed between two power cycles (QMP `device_del` of a SCSI disk);
//! and on the bridge
//! network, a node killed while it serves the payload to others, two nodes' cables crossed,
//! and a node's link slowed (`tc` on its switch port).

use std::fmt;
use std::str::FromStr;

/// A fault the lab can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// NVMe critical warning 04h (reliability degraded by media or internal errors).
    NvmeWarning,
    /// A corrected machine check with an address, in bank 1.
    Mce,
    /// An uncorrected, processor-context-corrupt machine check in bank 9: the kernel panics.
    FatalMce,
    /// A memory uncorrectable-ECC event on the BMC's System Event Log.
    SelEntry,
    /// An uncorrectable, non-fatal AER error (Completion Timeout) reported by the NIC.
    Aer,
    /// A correctable AER error (Receiver Error) reported by the NIC.
    AerCorrectable,
    /// The BMC's FAN1 sensor reads 0 RPM, below its lower critical threshold.
    FanFail,
    /// The BMC's PSU input power sensor reads the watts given (`N:psu-watts=W@STEP`).
    PsuWatts,
    /// The BMC's power-supply redundancy sensor says redundancy is lost.
    PsuRedundancyLost,
    /// The NIC's root port limited to x1 at 2.5 GT/s from power-on.
    NarrowSlot,
    /// The node's VM killed outright as soon as it has served a piece of the payload to
    /// another node: the nodes fetching from it must finish from others.
    KillPeer,
    /// The node's cable and another's crossed: each VM on the other's switch port (bridge
    /// network; `N:swap-cable=M`).
    SwapCable,
    /// The node's switch port rate-limited to the Mb/s given, towards the node (bridge
    /// network; `N:slow-nic=MBPS`): a slow link its partners cannot tell from their own.
    SlowNic,
    /// The node's SCSI disk removed before power cycle K (`N:drop-disk@cycleK`).
    DropDisk,
}

/// When a fault goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// At power-on.
    PowerOn,
    /// While a named step runs.
    Step,
    /// Once the node serves its payload to others.
    Serving,
    /// Before a power cycle (`@cycleK`).
    Cycle,
}

impl Fault {
    const ALL: [(Fault, &'static str); 14] = [
        (Fault::NvmeWarning, "nvme-warning"),
        (Fault::Mce, "mce"),
        (Fault::FatalMce, "mce-fatal"),
        (Fault::SelEntry, "sel"),
        (Fault::Aer, "aer"),
        (Fault::AerCorrectable, "aer-correctable"),
        (Fault::FanFail, "fan-fail"),
        (Fault::PsuWatts, "psu-watts"),
        (Fault::PsuRedundancyLost, "psu-redundancy-lost"),
        (Fault::NarrowSlot, "narrow-slot"),
        (Fault::KillPeer, "kill-peer"),
        (Fault::SwapCable, "swap-cable"),
        (Fault::SlowNic, "slow-nic"),
        (Fault::DropDisk, "drop-disk"),
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("?", |(_, n)| n)
    }

    /// When the fault goes in.
    pub fn when(self) -> When {
        match self {
            Fault::NarrowSlot | Fault::SwapCable | Fault::SlowNic => When::PowerOn,
            Fault::KillPeer => When::Serving,
            Fault::DropDisk => When::Cycle,
            _ => When::Step,
        }
    }

    /// Whether it needs the server profile's hardware (NVMe, BMC, root ports).
    pub fn needs_server(self) -> bool {
        !matches!(self, Fault::KillPeer | Fault::SwapCable | Fault::SlowNic)
    }
}

/// One injection: into which node (from 1), what, and while which step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// Node number, from 1.
    pub node: usize,
    /// The fault.
    pub fault: Fault,
    /// The step (by name) during which it is injected; `None` for power-on faults.
    pub during: Option<String>,
    /// The other node of a swap (`swap-cable=M`).
    pub partner: Option<usize>,
    /// The rate of a slowed link, Mb/s (`slow-nic=MBPS`).
    pub rate_mbps: Option<u32>,
    /// The PSU's input power, W (`psu-watts=W`).
    pub watts: Option<u32>,
}

/// What the lab's PSU sensor can read, W: a raw byte in steps of
/// [`super::server::PSU_WATTS_STEP`].
pub const PSU_WATTS: std::ops::RangeInclusive<u32> = 10..=2550;

/// The slowest and fastest rate `slow-nic` takes, Mb/s.
pub const SLOW_NIC_MBPS: std::ops::RangeInclusive<u32> = 1..=100_000;

impl FromStr for Injection {
    type Err = String;

    /// `NODE:FAULT@STEP` (`3:mce@memory`), or `NODE:narrow-slot`.
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "expected NODE:FAULT@STEP (e.g. 3:mce@memory), NODE:psu-watts=W@STEP, NODE:drop-disk@cycleK, NODE:narrow-slot, NODE:kill-peer, NODE:swap-cable=M or NODE:slow-nic=MBPS, FAULT one of {}; got {text:?}",
                Fault::ALL.map(|(_, n)| n).join(", ")
            )
        };
        let (node, rest) = text.split_once(':').ok_or_else(usage)?;
        let node: usize = node.parse().ok().filter(|&n| n >= 1).ok_or_else(usage)?;
        let (fault, during) = match rest.split_once('@') {
            Some((f, step)) if !step.is_empty() => (f, Some(step.to_owned())),
            Some(_) => return Err(usage()),
            None => (rest, None),
        };
        let (fault, value) = match fault.split_once('=') {
            Some((f, m)) => (
                f,
                Some(
                    m.parse::<usize>()
                        .ok()
                        .filter(|&m| m >= 1)
                        .ok_or_else(usage)?,
                ),
            ),
            None => (fault, None),
        };
        let fault = Fault::ALL
            .iter()
            .find(|(_, n)| *n == fault)
            .map(|(f, _)| *f)
            .ok_or_else(usage)?;
        let takes = matches!(fault, Fault::SwapCable | Fault::SlowNic | Fault::PsuWatts);
        if takes != value.is_some() {
            return Err(format!(
                "{text}: swap-cable takes the other node (N:swap-cable=M), slow-nic its rate (N:slow-nic=MBPS) and psu-watts the power (N:psu-watts=W@STEP); no other fault takes a value"
            ));
        }
        let watts = match fault {
            Fault::PsuWatts => Some(
                value
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|w| PSU_WATTS.contains(w) && w % super::server::PSU_WATTS_STEP == 0)
                    .ok_or_else(|| {
                        format!(
                            "{text}: the lab's PSU sensor reads {} to {} W in steps of {}",
                            PSU_WATTS.start(),
                            PSU_WATTS.end(),
                            super::server::PSU_WATTS_STEP
                        )
                    })?,
            ),
            _ => None,
        };
        let (partner, rate_mbps) = match fault {
            Fault::PsuWatts => (None, None),
            Fault::SwapCable => (value, None),
            Fault::SlowNic => {
                let rate = value
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|r| SLOW_NIC_MBPS.contains(r))
                    .ok_or_else(|| {
                        format!(
                            "{text}: a rate of {} to {} Mb/s",
                            SLOW_NIC_MBPS.start(),
                            SLOW_NIC_MBPS.end()
                        )
                    })?;
                (None, Some(rate))
            }
            _ => (None, None),
        };
        if partner == Some(node) {
            return Err(format!(
                "{text}: a node's cable cannot be swapped with its own"
            ));
        }
        match (fault.when(), &during) {
            (When::PowerOn, Some(_)) => Err(format!(
                "{text}: {} is set at power-on, not during a step",
                fault.name()
            )),
            (When::Serving, Some(_)) => Err(format!(
                "{text}: {} happens while the node serves its payload, not during a step",
                fault.name()
            )),
            (When::Cycle, d) if d.as_deref().and_then(cycle_of).is_none() => Err(format!(
                "{text}: say before which power cycle (from 1) {} goes in: NODE:{}@cycleK",
                fault.name(),
                fault.name()
            )),
            (When::Step, None) => Err(format!(
                "{text}: say during which step {} is injected (NODE:{}@STEP)",
                fault.name(),
                fault.name()
            )),
            _ => Ok(Injection {
                node,
                fault,
                during,
                partner,
                rate_mbps,
                watts,
            }),
        }
    }
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.fault.name())?;
        if let Some(m) = self.partner {
            write!(f, "={m}")?;
        }
        if let Some(v) = self.rate_mbps.or(self.watts) {
            write!(f, "={v}")?;
        }
        match &self.during {
            Some(step) => write!(f, "@{step}"),
            None => Ok(()),
        }
    }
}

/// The cycle an `@cycleK` names (K from 1 to the most a suite may ask for).
pub fn cycle_of(during: &str) -> Option<u32> {
    let k = during.strip_prefix("cycle")?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) || k.len() > 3 {
        return None;
    }
    k.parse()
        .ok()
        .filter(|k| (1..=kiln_protocol::suite::MAX_CYCLES).contains(k))
}

/// The QMP commands that inject `fault` (none for the BMC's and the power-on faults).
pub fn qmp_commands(fault: Fault) -> Vec<serde_json::Value> {
    let hmp = |line: &str| serde_json::json!({ "execute": "human-monitor-command", "arguments": { "command-line": line } });
    match fault {
        Fault::NvmeWarning => vec![serde_json::json!({
            "execute": "qom-set",
            "arguments": { "path": "/machine/peripheral/nvme0", "property": "smart_critical_warning", "value": 4 }
        })],
        // VAL|EN|MISCV|ADDRV, no UC: corrected; logged in the bank for the kernel's poller.
        Fault::Mce => vec![hmp("mce 0 1 0x9c0000000000009f 0x0 0x12345000 0x86")],
        // VAL|UC|EN|MISCV|ADDRV|PCC with MCG RIPV|MCIP, broadcast: the kernel panics.
        Fault::FatalMce => vec![hmp("mce -b 0 9 0xbd000000000000c0 0x5 0x2000000 0x86")],
        // Uncorrectable status bit 14, Completion Timeout, non-fatal by its default severity.
        Fault::Aer => vec![hmp("pcie_aer_inject_error nic0 0x4000")],
        Fault::DropDisk => vec![serde_json::json!({
            "execute": "device_del",
            "arguments": { "id": super::server::DROPPED_DISK }
        })],
        // Correctable status bit 0, Receiver Error. Linux 6.1 leaves correctable reporting
        // off on devices whose driver does not ask for it (virtio): the QEMU device drops
        // the message unless the agent has turned reporting on, as it does at boot.
        Fault::AerCorrectable => vec![hmp("pcie_aer_inject_error -c nic0 0x1")],
        Fault::SelEntry
        | Fault::FanFail
        | Fault::PsuWatts
        | Fault::PsuRedundancyLost
        | Fault::NarrowSlot
        | Fault::KillPeer
        | Fault::SwapCable
        | Fault::SlowNic => Vec::new(),
    }
}

/// The `ipmi_sim` console line that adds a System Event Log entry: a system event record
/// (type 02h) from the BIOS (generator 01h), event message revision 04h, sensor type 0Ch
/// (memory) number 01h, sensor-specific event type 6Fh, offset 1: uncorrectable ECC.
pub fn sel_add_line(timestamp: u32) -> String {
    let mut bytes = timestamp.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0x01, 0x00, 0x04, 0x0c, 0x01, 0x6f, 0x01, 0xff, 0xff]);
    let hex: Vec<String> = bytes.iter().map(|b| format!("0x{b:02x}")).collect();
    format!("sel_add 0x20 0x02 {}\n", hex.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injections_parse_and_print_back() {
        for text in [
            "3:mce@memory",
            "1:nvme-warning@nvme",
            "7:narrow-slot",
            "2:sel@memory",
            "3:kill-peer",
            "2:swap-cable=3",
            "4:slow-nic=20",
            "2:fan-fail@memory",
            "3:psu-watts=900@nvme",
            "3:psu-redundancy-lost@memory",
            "2:drop-disk@cycle2",
            "1:drop-disk@cycle100",
        ] {
            let i: Injection = text.parse().unwrap();
            assert_eq!(i.to_string(), text);
        }
        let i: Injection = "4:mce-fatal@memory".parse().unwrap();
        assert_eq!(
            (i.node, i.fault, i.during.as_deref()),
            (4, Fault::FatalMce, Some("memory"))
        );
    }

    #[test]
    fn a_malformed_injection_says_what_was_expected() {
        for bad in [
            "mce@memory",
            "0:mce@memory",
            "3:melt@memory",
            "3:mce@",
            "x:mce@cpu",
        ] {
            let err = bad.parse::<Injection>().unwrap_err();
            assert!(err.contains("expected NODE:FAULT@STEP"), "{bad}: {err}");
        }
        assert!(
            "3:mce"
                .parse::<Injection>()
                .unwrap_err()
                .contains("during which step"),
            "a run-time fault needs its step"
        );
        assert!(
            "3:narrow-slot@memory"
                .parse::<Injection>()
                .unwrap_err()
                .contains("power-on")
        );
        for (bad, says) in [
            ("2:swap-cable", "takes the other node"),
            ("2:swap-cable=2", "with its own"),
            ("2:swap-cable=x", "expected NODE:FAULT"),
            ("2:swap-cable=0", "expected NODE:FAULT"),
            ("2:slow-nic", "slow-nic its rate"),
            ("2:slow-nic=0", "expected NODE:FAULT"),
            ("2:slow-nic=100001", "a rate of 1 to 100000 Mb/s"),
            ("2:slow-nic=99999999999999999999", "expected NODE:FAULT"),
            ("2:slow-nic=20@nic", "at power-on"),
            ("2:mce=3@memory", "no other fault takes a value"),
            ("2:fan-fail=3@memory", "no other fault takes a value"),
            ("2:fan-fail", "during which step"),
            ("2:psu-watts@memory", "psu-watts the power"),
            ("2:psu-watts=5@memory", "10 to 2550 W in steps of 10"),
            ("2:psu-watts=905@memory", "in steps of 10"),
            ("2:psu-watts=2560@memory", "10 to 2550 W"),
            ("2:psu-watts=900", "during which step"),
            ("2:drop-disk", "before which power cycle"),
            ("2:drop-disk@memory", "before which power cycle"),
            ("2:drop-disk@cycle", "before which power cycle"),
            ("2:drop-disk@cycle0", "before which power cycle"),
            ("2:drop-disk@cycle101", "before which power cycle"),
            ("2:drop-disk@cycle-1", "before which power cycle"),
            ("2:drop-disk@cycle+2", "before which power cycle"),
            (
                "2:drop-disk@cycle99999999999999999999",
                "before which power cycle",
            ),
            ("2:drop-disk=3@cycle2", "no other fault takes a value"),
        ] {
            let err = bad.parse::<Injection>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(
            "3:kill-peer@memory"
                .parse::<Injection>()
                .unwrap_err()
                .contains("serves its payload")
        );
    }

    #[test]
    fn the_sel_entry_is_thirteen_bytes_after_the_record_type() {
        let line = sel_add_line(0x0102_0304);
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[..3], ["sel_add", "0x20", "0x02"]);
        assert_eq!(words.len() - 3, 13);
        // Timestamp little-endian first, then the memory sensor's uncorrectable-ECC event.
        assert_eq!(&words[3..7], ["0x04", "0x03", "0x02", "0x01"]);
        assert_eq!(&words[10..14], ["0x0c", "0x01", "0x6f", "0x01"]);
    }
}
