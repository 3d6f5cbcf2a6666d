//! The suite's `expect:` block: what a node must be before any step runs — system identity,
//! CPUs, memory and its DIMMs, disks, NICs, PCIe links and slots. Checked by
//! [`crate::expect::evaluate`] against the agent's inventory.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Size;

/// The bill of materials: every listed property must hold or the run fails with a fault that
/// says what differs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// System board identity from DMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<ExpectSystem>,
    /// Processors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<ExpectCpu>,
    /// Installed memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ExpectMemory>,
    /// Groups of disks; each group must be present with exactly `count` members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<ExpectDisks>,
    /// Groups of network interfaces; each group must be present with exactly `count` members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<ExpectNics>,
    /// PCIe links: every device a group selects must have trained to at least the width and
    /// speed given (a NIC at x8 in an x16 slot is named), and the group must have `count`
    /// devices when it says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcie: Vec<ExpectPcie>,
    /// What the switch port of every NIC with a link announces over LLDP (the agent listens
    /// for it, every interface at once, up to 35 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lldp: Option<ExpectLldp>,
}

/// LLDP as the switch ports announce it, for every NIC with a link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectLldp {
    /// A link where no LLDP is heard is no fault (switches that do not speak it); the
    /// cabling map, `vlan` and `min_mtu` are then checked only where it was heard. By default
    /// silence is a fault: an unverified cable is not a verified one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// The port VLAN ID every link's switch port announces (IEEE 802.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The least MTU every link's switch port allows (its IEEE 802.3 maximum frame size less
    /// 22 bytes of Ethernet header, tag and FCS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_mtu: Option<u32>,
}

/// PCIe devices selected by class and/or driver, and the link each must have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectPcie {
    /// Class code prefix, hex: `02` every network controller, `0200` Ethernet, `0302` 3D
    /// controllers (GPUs), `0108` NVMe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Regular expression the bound driver must match, e.g. `"^mlx5_core$"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Exact number of devices the selection must find.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Fewest lanes each selected link may have trained to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_width: Option<u32>,
    /// Slowest speed, in GT/s, each selected link may have trained to (2.5, 5, 8, 16, 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_speed_gts: Option<f64>,
    /// Fewest lanes the slot of each selected device may offer (the width its upstream
    /// port can train): catches a card in the wrong riser or a slot bifurcated to x8 — a
    /// slot that reports no link is a fault too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_slot_width: Option<u32>,
    /// Slowest speed, in GT/s, the slot of each selected device may allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_slot_speed_gts: Option<f64>,
}

/// System board identity, matched by regular expressions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectSystem {
    /// Regular expression the DMI system vendor must match, e.g. `"^Dell"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Regular expression the DMI product name must match, e.g. `"PowerEdge R6[0-9]5"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
}

/// Processor expectations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectCpu {
    /// Regular expression the CPU brand string must match, e.g. `"EPYC 9[0-9]54"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Fewest logical CPUs (hardware threads) the node may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_logical: Option<u32>,
    /// CPU flags that must all be present, as `/proc/cpuinfo` names them (`avx2`, `aes`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// Memory expectations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectMemory {
    /// Least total memory the kernel must see, e.g. `512GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_total: Option<Size>,
    /// Exact number of populated DIMM slots (SMBIOS memory devices); the fault names the
    /// empty slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimms: Option<u32>,
    /// Size every populated DIMM must have, e.g. `32GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimm_size: Option<Size>,
    /// Slowest configured speed, in MT/s, any populated DIMM may run at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_dimm_speed_mts: Option<u32>,
    /// Regular expression every populated DIMM's part number must match, e.g.
    /// `"^M321R4GA3BB6-CQK"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimm_part: Option<String>,
}

/// A group of disks that must be present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectDisks {
    /// How many disks must match this group.
    pub count: u32,
    /// Regular expression the disk model must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Smallest size a matching disk may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<Size>,
    /// `true` for spinning disks only, `false` for solid-state only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

/// A group of network interfaces that must be present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectNics {
    /// How many physical interfaces must match this group.
    pub count: u32,
    /// Least link speed in Mb/s a matching interface must report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_speed_mbps: Option<u32>,
    /// Regular expression the kernel driver name must match, e.g. `"^(mlx5_core|ice)$"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}
