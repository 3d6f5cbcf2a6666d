//! The suite's `cycles:` block: power cycles after the steps, each boot required to find the
//! same hardware as the first.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

/// Power the node `count` times through its power driver once the steps have passed. Each
/// boot the agent takes the inventory again; the collector compares it with the first
/// boot's — DIMMs (slot, size, part), PCIe links (trained width and speed), disks (serial,
/// size), NICs (MAC, speed), the CPU count — and requires a boot id no earlier boot had.
/// Any difference fails the run, naming the cycle and what changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cycles {
    /// How many power cycles: 1 to 100.
    pub count: u32,
    /// `warm` (a reset, power kept) or `cold` (power off, a pause, power on).
    pub kind: CycleKind,
    /// Longest a cycle may take from its power action to the node's inventory: 1m to 2h.
    #[serde(default = "fifteen_minutes")]
    pub boot_timeout: HumanDuration,
}

/// How a node is power-cycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CycleKind {
    /// A reset: the platform restarts with its power kept (`chassis power reset`).
    Warm,
    /// Power off, a pause, power on (`chassis power cycle`): every rail drops.
    Cold,
}

impl CycleKind {
    /// The word the suite uses.
    pub fn name(self) -> &'static str {
        match self {
            CycleKind::Warm => "warm",
            CycleKind::Cold => "cold",
        }
    }
}

fn fifteen_minutes() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(15 * 60))
}

/// Most power cycles a suite may ask for.
pub const MAX_CYCLES: u32 = 100;
