//! What agents and the collector say to each other, as JSON over HTTP: node identity,
//! inventory, numbered events, step outcomes with metrics and faults, and the run verdict.
//!
//! Every event carries a per-run sequence number so the collector can store a resent batch
//! once and acknowledge the highest contiguous number it holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a node names itself on first contact. The collector matches any of these to a known
/// node, so a NIC swap keeps the node's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    /// MAC addresses of every physical NIC, lowercase `aa:bb:cc:dd:ee:ff`.
    pub macs: Vec<String>,
    /// SMBIOS system UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// SMBIOS system serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// What the agent found on the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// DMI system identity.
    pub system: SystemInfo,
    /// Processors.
    pub cpu: CpuInfo,
    /// Memory.
    pub memory: MemoryInfo,
    /// Block devices that are whole disks.
    pub disks: Vec<DiskInfo>,
    /// Physical network interfaces.
    pub nics: Vec<NicInfo>,
    /// Running kernel release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`): new on every boot, so two
    /// inventories with different ones prove the node booted between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The BMC's System Event Log as read at boot, decoded, newest last (at most the last
    /// 64 entries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sel: Vec<String>,
    /// PCIe devices that have a link, with its trained and maximum speed and width.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcie: Vec<PcieLink>,
    /// Every source of facts this node did not offer, with why ("SMBIOS tables: … not
    /// found"): what could not be looked at is said, never left out silently.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
    /// How long the agent listened for LLDP on every NIC with a link (none: it did not
    /// listen); a NIC with a link and no `lldp` heard nothing in that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lldp_listened_s: Option<u32>,
}

/// DMI system identity; any field may be unknown on odd hardware or in VMs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemInfo {
    /// `sys_vendor`.
    pub vendor: Option<String>,
    /// `product_name`.
    pub product: Option<String>,
    /// `product_serial`.
    pub serial: Option<String>,
    /// `product_uuid`.
    pub uuid: Option<String>,
    /// `bios_version`.
    pub bios_version: Option<String>,
    /// Baseboard (SMBIOS type 2) manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_vendor: Option<String>,
    /// Baseboard product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_product: Option<String>,
    /// Baseboard serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_serial: Option<String>,
    /// Baseboard asset tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_asset_tag: Option<String>,
    /// Chassis (SMBIOS type 3) serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_serial: Option<String>,
    /// Chassis asset tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_asset_tag: Option<String>,
}

/// Processor facts from CPUID and the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuInfo {
    /// Vendor string (`GenuineIntel`, `AuthenticAMD`).
    pub vendor: String,
    /// Brand string.
    pub brand: String,
    /// Family, model and stepping as CPUID reports them (display family/model).
    pub family: u32,
    /// See `family`.
    pub model: u32,
    /// See `family`.
    pub stepping: u32,
    /// Logical CPUs online.
    pub logical: u32,
    /// Physical cores, when known.
    pub cores: Option<u32>,
    /// Sockets, when known.
    pub sockets: Option<u32>,
    /// Flags as `/proc/cpuinfo` names them.
    pub flags: Vec<String>,
}

/// Memory as the kernel and the SMBIOS tables see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryInfo {
    /// `MemTotal` in bytes.
    pub total_bytes: u64,
    /// Every DIMM slot, populated or not (SMBIOS type 17); `None` when the SMBIOS tables
    /// could not be read.
    pub dimms: Option<Vec<Dimm>>,
}

/// One memory slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dimm {
    /// Slot name (`DIMM_A1`, `B2`).
    pub locator: String,
    /// Bank (`P0_Node0_Channel1`), when the firmware names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank: Option<String>,
    /// Module size; `None` for an empty slot.
    pub size_bytes: Option<u64>,
    /// Memory type (`DDR5`).
    pub kind: Option<String>,
    /// Configured speed in MT/s.
    pub speed_mts: Option<u32>,
    /// Module manufacturer.
    pub manufacturer: Option<String>,
    /// Module serial.
    pub serial: Option<String>,
    /// Module part number.
    pub part: Option<String>,
    /// Module asset tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_tag: Option<String>,
}

/// A PCIe device's link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcieLink {
    /// Address (`0000:3b:00.0`).
    pub address: String,
    /// Class and subclass, four hex digits (`0200` Ethernet, `0302` 3D controller, `0108`
    /// NVMe).
    pub class: String,
    /// `vendor:device` ids, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_device: Option<String>,
    /// Bound driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Trained link speed, GT/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_speed_gts: Option<f64>,
    /// Fastest speed device and slot allow, GT/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_speed_gts: Option<f64>,
    /// Trained link width (lanes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_width: Option<u32>,
    /// Widest link the device supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_width: Option<u32>,
    /// The port above the device (its slot's end of the link), when that port reports a link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Widest link that port can train (the slot's electrical width: an x16 card in a slot
    /// wired, or bifurcated, to x8 trains at x8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_max_width: Option<u32>,
    /// Fastest speed that port allows, GT/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_max_speed_gts: Option<f64>,
}

/// A whole disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskInfo {
    /// Kernel name (`sda`, `nvme0n1`).
    pub name: String,
    /// Device path.
    pub path: String,
    /// Model, when the device reports one.
    pub model: Option<String>,
    /// Serial, when the device reports one.
    pub serial: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Spinning disk.
    pub rotational: bool,
    /// Transport (`nvme`, `sata`, `sas`, `virtio`, `usb`).
    pub transport: Option<String>,
}

/// A physical network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicInfo {
    /// Kernel name.
    pub name: String,
    /// MAC address, lowercase.
    pub mac: String,
    /// Kernel driver.
    pub driver: Option<String>,
    /// Link speed in Mb/s, when the link is up and the driver says.
    pub speed_mbps: Option<u32>,
    /// PCI address.
    pub pci: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Carrier present.
    pub link_up: bool,
    /// What the switch port it is cabled to announced over LLDP, when the agent listened
    /// and heard it ([`Inventory::lldp_listened_s`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lldp: Option<crate::lldp::Neighbor>,
}

/// A measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// Name, as thresholds name it (`read_mbps`).
    pub name: String,
    /// Value.
    pub value: f64,
    /// Unit for display (`MB/s`, `°C`).
    pub unit: String,
}

/// A hardware fault found by a check: data, not an error of the harness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Stable machine-readable kind, e.g. `memory.mismatch`, `expect.cpu.min_logical`.
    pub code: String,
    /// One line for people: what differs, exactly.
    pub message: String,
    /// Structured facts (address, expected, actual, device, CPU, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

impl Fault {
    /// A fault with no details.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            details: BTreeMap::new(),
        }
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.details.insert(key.to_owned(), value.to_string());
        self
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase", deny_unknown_fields)]
pub enum Outcome {
    /// Every threshold met, no fault.
    Pass,
    /// Pass thresholds met, but some `degraded:` target missed.
    Degraded {
        /// Which targets were missed.
        reasons: Vec<String>,
    },
    /// A hardware fault or a missed pass threshold.
    Fail {
        /// What was found.
        faults: Vec<Fault>,
    },
    /// The check could not apply here (no SMART tool, no such device).
    Skip {
        /// Why.
        reason: String,
    },
    /// The harness itself failed or was stopped (timeout, Ctrl-C); never a pass.
    Error {
        /// What went wrong.
        message: String,
    },
}

impl Outcome {
    /// Lowercase name as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Degraded { .. } => "degraded",
            Outcome::Fail { .. } => "fail",
            Outcome::Skip { .. } => "skip",
            Outcome::Error { .. } => "error",
        }
    }
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepReport {
    /// Index of the step in the suite.
    pub step: u32,
    /// Step name.
    pub name: String,
    /// Check kind (`memory`, …).
    pub kind: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What was measured.
    pub metrics: Vec<Metric>,
    /// Run time in milliseconds.
    pub duration_ms: u64,
    /// Every attempt of a retested step, in order (empty when it ran once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

/// One attempt of a retested step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// How it ended.
    pub outcome: Outcome,
    /// Run time in milliseconds.
    pub duration_ms: u64,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something the operator should know.
    Warn,
    /// Something failed.
    Error,
}

/// One numbered event of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Per-run sequence number, from 1, without gaps.
    pub seq: u64,
    /// When it happened, milliseconds since the Unix epoch (node clock).
    pub at_ms: u64,
    /// What happened.
    pub body: EventBody,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventBody {
    /// The agent began the suite.
    RunStarted {
        /// Suite name.
        suite: String,
        /// Number of steps planned.
        steps: u32,
        /// Agent version.
        agent: String,
    },
    /// The node's inventory was checked against the suite's `expect:` block.
    ExpectChecked {
        /// `pass`, or `fail` with one fault per difference.
        outcome: Outcome,
    },
    /// A step began.
    StepStarted {
        /// Step index.
        step: u32,
        /// Step name.
        name: String,
        /// Check kind.
        kind: String,
    },
    /// Progress of the running step.
    Progress {
        /// Step index.
        step: u32,
        /// Done fraction in [0, 1].
        fraction: f64,
        /// The live metric as shown on the console (`7.9 GB/s`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
    },
    /// A log line.
    Log {
        /// Step index, when the line belongs to a step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
        /// Severity.
        level: LogLevel,
        /// The text.
        line: String,
    },
    /// Log lines the agent's bounded spool dropped (oldest first) before they were sent.
    LogsDropped {
        /// How many.
        count: u64,
    },
    /// One reading of the BMC's sensors, taken while `step` ran (or between steps).
    Sensors {
        /// The step running when they were read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
        /// Every sensor read, at most [`crate::bounds::MAX_SENSORS`].
        readings: Vec<crate::sensors::SensorReading>,
    },
    /// A step ended.
    StepFinished {
        /// Its result.
        report: StepReport,
    },
    /// The run ended; the agent sends nothing after this.
    RunFinished {
        /// The agent's verdict over all steps.
        verdict: Verdict,
    },
}

impl EventBody {
    /// Its `type` on the wire (what serde's tag says; a test keeps the two the same).
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::RunStarted { .. } => "run_started",
            EventBody::ExpectChecked { .. } => "expect_checked",
            EventBody::StepStarted { .. } => "step_started",
            EventBody::Progress { .. } => "progress",
            EventBody::Log { .. } => "log",
            EventBody::LogsDropped { .. } => "logs_dropped",
            EventBody::Sensors { .. } => "sensors",
            EventBody::StepFinished { .. } => "step_finished",
            EventBody::RunFinished { .. } => "run_finished",
        }
    }

    /// The step it is about, when it is about one.
    pub fn step(&self) -> Option<u32> {
        match self {
            EventBody::StepStarted { step, .. } | EventBody::Progress { step, .. } => Some(*step),
            EventBody::Log { step, .. } | EventBody::Sensors { step, .. } => *step,
            EventBody::StepFinished { report } => Some(report.step),
            _ => None,
        }
    }
}

impl EventBody {
    /// Whether a bounded spool may drop this event under pressure (log lines, progress and
    /// sensor series; outcomes never: a sensor's fault travels in its step's outcome).
    pub fn droppable(&self) -> bool {
        matches!(
            self,
            EventBody::Log { .. } | EventBody::Progress { .. } | EventBody::Sensors { .. }
        )
    }
}

/// A batch of events, in sequence order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// The events.
    pub events: Vec<Event>,
}

/// The collector's answer to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchAck {
    /// Highest sequence number stored with every lower one stored too.
    pub acked: u64,
}

/// Longest string a node may send in any identity or inventory field.
pub const MAX_FIELD_LEN: usize = 256;
/// Highest sequence number an event may carry (what SQLite's signed integers hold).
pub const MAX_SEQ: u64 = i64::MAX as u64;
/// Most events one batch may carry.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Longest log line stored; longer lines are refused.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// An agent that was not network-booted (`kiln-agent run --collector URL`) asks for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Who the node is.
    pub identity: NodeIdentity,
    /// Host name, for the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The suite it is about to run, as text (the collector checks and records it).
    pub suite_text: String,
}

/// The collector's answer: the run to report to and its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    /// The node's id at the collector.
    pub node_id: i64,
    /// The run's id.
    pub run_id: i64,
    /// Bearer token for this run only (shown once; the collector keeps its hash).
    pub token: String,
    /// Send something at least this often, or the run fails as lost contact.
    pub heartbeat_secs: u64,
}

/// The answer to a bootstrap exchange: the run's session token. It travels only in this
/// answer — never on a command line, never in an environment a child could inherit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionResponse {
    /// Bearer token for this run's calls from now on (the collector keeps its hash).
    pub token: String,
    /// Send something at least this often, or the run fails as lost contact.
    pub heartbeat_secs: u64,
    /// The key the agent proves its run with on the node's console
    /// ([`crate::attest::line`]); the collector keeps only the proof it expects.
    pub attest_key: String,
}

/// What a network-booted agent fetches first: the suite to run and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPlan {
    /// The run's id.
    pub run_id: i64,
    /// The node's id.
    pub node_id: i64,
    /// Suite text, as recorded with the run.
    pub suite_text: String,
    /// Whether destructive disk steps are allowed on this node.
    pub allow_destructive: bool,
    /// Heartbeat interval the collector expects.
    pub heartbeat_secs: u64,
    /// What the image does when the agent is done.
    pub after: After,
    /// Listen this long for LLDP on every NIC with a link before the inventory is sent (the
    /// site's cabling map has lines for this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lldp_secs: Option<u32>,
    /// This boot is a power cycle of the run: the agent reports its inventory
    /// ([`crate::routes::CYCLE`]) and runs no step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<CycleBoot>,
}

/// Which power cycle a boot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CycleBoot {
    /// This boot's cycle, from 1.
    pub cycle: u32,
    /// Cycles in all.
    pub count: u32,
}

/// How long an agent listens for LLDP when the collector asks: a switch's 30-second
/// interval, and a little more.
pub const LLDP_LISTEN_SECS: u32 = 35;

crate::words!(
    /// What the RAM image does once its agent is done (the agent writes the word to its
    /// `--after-file` for the image's init).
    After, "after", {
        /// Power the node off (the collector's choice for every run today: the operator's
        /// `after_verify` applies at the node's next boot).
        Poweroff => "poweroff",
        /// Reboot it.
        Reboot => "reboot",
        /// Stay up at a shell, for a technician.
        Hold => "hold",
    }
);

/// Checks the bounds every node-supplied string must keep: length, and no control or
/// invisible characters ([`crate::text::hidden`]).
pub fn check_field(name: &str, value: &str) -> Result<(), String> {
    crate::text::check(name, value, MAX_FIELD_LEN, false)
}

/// Checks a MAC address is written `aa:bb:cc:dd:ee:ff` (lowercase hex).
pub fn check_mac(mac: &str) -> Result<(), String> {
    let ok = mac.len() == 17
        && mac.split(':').count() == 6
        && mac.split(':').all(|b| {
            b.len() == 2
                && b.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{mac:?} is not a MAC address like aa:bb:cc:dd:ee:ff"
        ))
    }
}

impl NodeIdentity {
    /// Checks every field's bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.macs.is_empty() && self.uuid.is_none() && self.serial.is_none() {
            return Err("the identity names no MAC, UUID or serial".into());
        }
        if self.macs.len() > 64 {
            return Err(format!("{} MACs; at most 64 allowed", self.macs.len()));
        }
        for mac in &self.macs {
            check_mac(mac)?;
        }
        for (name, value) in [("uuid", &self.uuid), ("serial", &self.serial)] {
            if let Some(v) = value {
                check_field(name, v)?;
            }
        }
        Ok(())
    }
}

impl EventBatch {
    /// Checks the batch's bounds: size, sequence order, and every string an event carries.
    pub fn validate(&self) -> Result<(), String> {
        if self.events.is_empty() {
            return Err("the batch is empty".into());
        }
        if self.events.len() > MAX_BATCH_EVENTS {
            return Err(format!(
                "{} events in one batch; at most {MAX_BATCH_EVENTS} allowed",
                self.events.len()
            ));
        }
        if let Some(e) = self.events.iter().find(|e| e.seq > MAX_SEQ) {
            return Err(format!(
                "sequence number {} is over the limit of {MAX_SEQ}",
                e.seq
            ));
        }
        for pair in self.events.windows(2) {
            if pair[0].seq.checked_add(1) != Some(pair[1].seq) {
                return Err(format!(
                    "sequence numbers jump from {} to {}; a batch must be contiguous",
                    pair[0].seq, pair[1].seq
                ));
            }
        }
        if self.events[0].seq == 0 {
            return Err("sequence numbers start at 1".into());
        }
        for event in &self.events {
            event
                .body
                .validate()
                .map_err(|e| format!("event {}: {e}", event.seq))?;
        }
        Ok(())
    }
}

/// The verdict of a stage or a whole run, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every step passed (skips allowed).
    Pass,
    /// Every step passed, some short of a `degraded:` target.
    Degraded,
    /// Every step passed, but no console vouches that the node in the rack ran them (no
    /// console capture is configured for it, or it registered ad hoc): never a plain pass.
    Unattested,
    /// Not every planned step finished, or the run never said it finished.
    Incomplete,
    /// The harness failed in some step (timeout, crash, interrupt).
    Error,
    /// A hardware fault.
    Fail,
}

impl Verdict {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Degraded => "degraded",
            Verdict::Unattested => "unattested",
            Verdict::Incomplete => "incomplete",
            Verdict::Error => "error",
            Verdict::Fail => "fail",
        }
    }

    /// Whether the node may go into production on this verdict.
    pub fn is_good(self) -> bool {
        matches!(self, Verdict::Pass | Verdict::Degraded)
    }

    /// The worse of two verdicts: how stage verdicts combine into a run's.
    pub fn worst(self, other: Verdict) -> Verdict {
        self.max(other)
    }

    /// Every verdict, best first.
    pub const ALL: [Verdict; 6] = [
        Verdict::Pass,
        Verdict::Degraded,
        Verdict::Unattested,
        Verdict::Incomplete,
        Verdict::Error,
        Verdict::Fail,
    ];
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A verdict name that is none of the six.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown verdict {0:?}; expected pass, degraded, unattested, incomplete, error or fail")]
pub struct UnknownVerdict(pub String);

impl std::str::FromStr for Verdict {
    type Err = UnknownVerdict;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownVerdict(s.to_owned()))
    }
}

#[cfg(test)]
mod tests;
