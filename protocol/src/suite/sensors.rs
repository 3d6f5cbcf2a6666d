//! The suite's `sensors:` block: how often the BMC's sensors are read while steps run, and
//! the limits a QA engineer sets on top of the BMC's own thresholds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

/// The BMC's sensors (temperatures, fans, voltages, PSU input power), read over the node's
/// in-band IPMI interface every `interval` while each step runs and stored as series with the
/// step. A sensor past a critical threshold the BMC states is a fault of the running step,
/// and so is one past a limit set here. A limit whose sensors the BMC does not list, or
/// could not read during a step, fails that step: what the suite asks for was not measured.
/// Without this block the sensors are still read (every 5 s) where the node has a BMC.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sensors {
    /// Time between two readings of every sensor: 1s to 60s.
    #[serde(default = "five_seconds")]
    pub interval: HumanDuration,
    /// Hottest an inlet (ambient) temperature sensor may read, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inlet_c: Option<f64>,
    /// Hottest a CPU temperature sensor may read, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_c: Option<f64>,
    /// Hottest a DIMM temperature sensor may read, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dimm_c: Option<f64>,
    /// Slowest a fan may turn, RPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_fan_rpm: Option<f64>,
    /// Most a power supply may draw at its input, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_psu_watts: Option<f64>,
}

impl Default for Sensors {
    fn default() -> Self {
        Sensors {
            interval: five_seconds(),
            max_inlet_c: None,
            max_cpu_c: None,
            max_dimm_c: None,
            min_fan_rpm: None,
            max_psu_watts: None,
        }
    }
}

fn five_seconds() -> HumanDuration {
    HumanDuration::from_secs(5)
}
