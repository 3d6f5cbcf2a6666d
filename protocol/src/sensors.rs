//! The BMC's sensors as both sides judge them: what class a sensor is (from its IPMI entity,
//! sensor type and name), and when a reading is a fault — past a critical threshold the BMC
//! states, or past a limit of the suite's `sensors:` block. The agent applies it to every
//! reading; the collector applies it again to the readings it stored.

use serde::{Deserialize, Serialize};

use crate::suite::Sensors;

/// What a sensor measures, as the suite's limits name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorClass {
    /// Air inlet (ambient) temperature, °C.
    Inlet,
    /// A processor's temperature, °C.
    Cpu,
    /// A memory module's temperature, °C.
    Dimm,
    /// Any other temperature, °C.
    Temperature,
    /// A fan's speed, RPM.
    Fan,
    /// A power supply's input power, W.
    PsuPower,
    /// Any other power, W.
    Power,
    /// A voltage, V.
    Voltage,
    /// A current, A.
    Current,
}

impl SensorClass {
    /// Every class, in display order.
    pub const ALL: [SensorClass; 9] = [
        SensorClass::Inlet,
        SensorClass::Cpu,
        SensorClass::Dimm,
        SensorClass::Temperature,
        SensorClass::Fan,
        SensorClass::PsuPower,
        SensorClass::Power,
        SensorClass::Voltage,
        SensorClass::Current,
    ];

    /// The unit its readings are in.
    pub fn unit(self) -> &'static str {
        match self {
            SensorClass::Inlet
            | SensorClass::Cpu
            | SensorClass::Dimm
            | SensorClass::Temperature => "°C",
            SensorClass::Fan => "RPM",
            SensorClass::PsuPower | SensorClass::Power => "W",
            SensorClass::Voltage => "V",
            SensorClass::Current => "A",
        }
    }

    /// The class of a sensor whose SDR gives its `entity` id, IPMI `base_unit` and `name`;
    /// `None` for units kiln does not chart (°F and kelvin included: BMCs report °C).
    pub fn of(entity: u8, base_unit: u8, name: &str) -> Option<SensorClass> {
        let name = name.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| name.contains(w));
        Some(match base_unit {
            // IPMI 2.0 table 43-15: 1 °C, 4 V, 5 A, 6 W, 18 RPM.
            1 => match entity {
                // Table 43-13: 37h air inlet, 40h air inlet (DCMI); 03h processor, 41h (DCMI);
                // 08h memory module, 20h memory device.
                0x37 | 0x40 => SensorClass::Inlet,
                0x03 | 0x41 => SensorClass::Cpu,
                0x08 | 0x20 => SensorClass::Dimm,
                _ if has(&["inlet", "ambient"]) => SensorClass::Inlet,
                _ if has(&["cpu", "proc"]) => SensorClass::Cpu,
                _ if has(&["dimm", "mem"]) => SensorClass::Dimm,
                _ => SensorClass::Temperature,
            },
            4 => SensorClass::Voltage,
            5 => SensorClass::Current,
            // 0Ah power supply.
            6 if entity == 0x0a || has(&["psu", "ps1", "ps2", "supply"]) => SensorClass::PsuPower,
            6 => SensorClass::Power,
            18 => SensorClass::Fan,
            _ => return None,
        })
    }

    /// The suite's limit for this class: the bound and whether it is a floor.
    fn limit(self, sensors: &Sensors) -> Option<(&'static str, f64, Bound)> {
        match self {
            SensorClass::Inlet => sensors.max_inlet_c.map(|v| ("max_inlet_c", v, Bound::Max)),
            SensorClass::Cpu => sensors.max_cpu_c.map(|v| ("max_cpu_c", v, Bound::Max)),
            SensorClass::Dimm => sensors.max_dimm_c.map(|v| ("max_dimm_c", v, Bound::Max)),
            SensorClass::Fan => sensors.min_fan_rpm.map(|v| ("min_fan_rpm", v, Bound::Min)),
            SensorClass::PsuPower => sensors
                .max_psu_watts
                .map(|v| ("max_psu_watts", v, Bound::Max)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Min,
    Max,
}

/// One sensor's reading, with the critical thresholds its BMC states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorReading {
    /// The sensor's name as its SDR gives it (`Inlet Temp`, `FAN1`).
    pub name: String,
    /// What it measures.
    pub class: SensorClass,
    /// The reading, in the class's unit.
    pub value: f64,
    /// Lower critical threshold, when the BMC states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    /// Upper critical threshold, when the BMC states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
}

/// One reading past a threshold: the line that names the sensor, its reading and the bound.
pub fn crossing(reading: &SensorReading, limits: &Sensors) -> Option<String> {
    let r = reading;
    let unit = r.class.unit();
    let v = r.value;
    if let Some(high) = r.high.filter(|&h| v >= h) {
        return Some(format!(
            "BMC sensor {}: {v} {unit}, at or above its upper critical threshold {high} {unit}",
            r.name
        ));
    }
    if let Some(low) = r.low.filter(|&l| v <= l) {
        return Some(format!(
            "BMC sensor {}: {v} {unit}, at or below its lower critical threshold {low} {unit}",
            r.name
        ));
    }
    match r.class.limit(limits)? {
        (key, max, Bound::Max) if v > max => Some(format!(
            "BMC sensor {}: {v} {unit}, above the suite's {key} {max} {unit}",
            r.name
        )),
        (key, min, Bound::Min) if v < min => Some(format!(
            "BMC sensor {}: {v} {unit}, below the suite's {key} {min} {unit}",
            r.name
        )),
        _ => None,
    }
}

/// What a state sensor's asserted states say is wrong, if anything: a power supply's failure,
/// lost input or configuration error (sensor type 08h, sensor-specific states), or redundancy
/// lost or degraded (the generic redundancy states, event/reading type 0Bh). Only states that
/// mean a fault: a single-supply server's "non-redundant: sufficient resources" is none.
pub fn state_fault(sensor_type: u8, reading_type: u8, states: u16) -> Option<String> {
    let on = |bit: u16| states & (1 << bit) != 0;
    let named: &[(u16, &str)] = match (sensor_type, reading_type) {
        (_, 0x0b) => &[
            (1, "redundancy lost"),
            (2, "redundancy degraded"),
            (5, "non-redundant: insufficient resources"),
            (6, "redundancy degraded from fully redundant"),
            (7, "redundancy degraded from non-redundant"),
        ],
        (0x08, 0x6f) => &[
            (1, "power supply failure detected"),
            (2, "power supply predictive failure"),
            (3, "power supply input lost (AC/DC)"),
            (4, "power supply input lost or out of range"),
            (5, "power supply input out of range, but present"),
            (6, "power supply configuration error"),
        ],
        _ => return None,
    };
    let said: Vec<&str> = named
        .iter()
        .filter(|(bit, _)| on(*bit))
        .map(|(_, what)| *what)
        .collect();
    (!said.is_empty()).then(|| said.join(", "))
}

/// Each sensor's lowest and highest reading over many sweeps: all a threshold can be crossed
/// by, kept small (a 72-hour burn-in reads every sensor fifty thousand times).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extremes(std::collections::BTreeMap<String, (SensorReading, SensorReading)>);

impl Extremes {
    /// Takes one reading in.
    pub fn add(&mut self, r: SensorReading) {
        match self.0.get_mut(&r.name) {
            Some((low, high)) => {
                if r.value < low.value {
                    *low = r.clone();
                }
                if r.value > high.value {
                    *high = r;
                }
            }
            None => {
                self.0.insert(r.name.clone(), (r.clone(), r));
            }
        }
    }

    /// Every sensor's lowest and highest reading (one when they are the same).
    pub fn readings(&self) -> Vec<&SensorReading> {
        self.0
            .values()
            .flat_map(|(low, high)| std::iter::once(low).chain((low != high).then_some(high)))
            .collect()
    }
}

/// The suite's limits no reading in `read` could be held to: each names the limit and the
/// class it needed. A limit the suite sets is a measurement it asks for.
pub fn unmeasured(limits: &Sensors, read: &[SensorClass]) -> Vec<String> {
    SensorClass::ALL
        .into_iter()
        .filter_map(|c| Some((c, c.limit(limits)?)))
        .filter(|(c, _)| !read.contains(c))
        .map(|(c, (key, _, _))| {
            format!(
                "the suite sets sensors.{key}, and no {} sensor of the BMC was read during the step",
                c.name()
            )
        })
        .collect()
}

impl SensorClass {
    /// Lowercase words for people.
    pub fn name(self) -> &'static str {
        match self {
            SensorClass::Inlet => "inlet temperature",
            SensorClass::Cpu => "CPU temperature",
            SensorClass::Dimm => "DIMM temperature",
            SensorClass::Temperature => "temperature",
            SensorClass::Fan => "fan",
            SensorClass::PsuPower => "PSU input power",
            SensorClass::Power => "power",
            SensorClass::Voltage => "voltage",
            SensorClass::Current => "current",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(name: &str, class: SensorClass, value: f64) -> SensorReading {
        SensorReading {
            name: name.into(),
            class,
            value,
            low: None,
            high: None,
        }
    }

    #[test]
    fn sensors_are_classed_by_entity_then_name() {
        assert_eq!(SensorClass::of(0x37, 1, "Temp 1"), Some(SensorClass::Inlet));
        assert_eq!(
            SensorClass::of(0x07, 1, "Inlet Temp"),
            Some(SensorClass::Inlet)
        );
        assert_eq!(SensorClass::of(0x03, 1, "Temp"), Some(SensorClass::Cpu));
        assert_eq!(
            SensorClass::of(0x07, 1, "CPU1 Temp"),
            Some(SensorClass::Cpu)
        );
        assert_eq!(SensorClass::of(0x20, 1, "Temp"), Some(SensorClass::Dimm));
        assert_eq!(
            SensorClass::of(0x07, 1, "Exhaust Temp"),
            Some(SensorClass::Temperature)
        );
        assert_eq!(SensorClass::of(0x1d, 18, "FAN1"), Some(SensorClass::Fan));
        assert_eq!(
            SensorClass::of(0x0a, 6, "Input"),
            Some(SensorClass::PsuPower)
        );
        assert_eq!(
            SensorClass::of(0x07, 6, "PS2 Input Power"),
            Some(SensorClass::PsuPower)
        );
        assert_eq!(
            SensorClass::of(0x07, 6, "Pwr Consumption"),
            Some(SensorClass::Power)
        );
        assert_eq!(SensorClass::of(0x07, 4, "12V"), Some(SensorClass::Voltage));
        // Fahrenheit, unspecified and out-of-table units are not charted.
        assert_eq!(SensorClass::of(0x07, 2, "Temp"), None);
        assert_eq!(SensorClass::of(0x07, 0, "Temp"), None);
        assert_eq!(SensorClass::of(0x07, 255, "Temp"), None);
    }

    #[test]
    fn the_bmc_thresholds_and_the_suite_limits_each_make_a_fault() {
        let none = Sensors::default();
        let mut fan = reading("FAN1", SensorClass::Fan, 0.0);
        assert_eq!(
            crossing(&fan, &none),
            None,
            "no threshold stated, no limit set"
        );
        fan.low = Some(1000.0);
        assert_eq!(
            crossing(&fan, &none).unwrap(),
            "BMC sensor FAN1: 0 RPM, at or below its lower critical threshold 1000 RPM"
        );
        let mut psu = reading("PSU1 Input", SensorClass::PsuPower, 900.0);
        psu.high = Some(1200.0);
        assert_eq!(crossing(&psu, &none), None);
        let limits = Sensors {
            max_psu_watts: Some(800.0),
            min_fan_rpm: Some(2000.0),
            ..Sensors::default()
        };
        assert_eq!(
            crossing(&psu, &limits).unwrap(),
            "BMC sensor PSU1 Input: 900 W, above the suite's max_psu_watts 800 W"
        );
        psu.value = 1250.0;
        assert_eq!(
            crossing(&psu, &limits).unwrap(),
            "BMC sensor PSU1 Input: 1250 W, at or above its upper critical threshold 1200 W"
        );
        let slow = reading("FAN2", SensorClass::Fan, 1500.0);
        assert!(
            crossing(&slow, &limits)
                .unwrap()
                .ends_with("below the suite's min_fan_rpm 2000 RPM")
        );
        // A limit of another class does not apply.
        assert_eq!(
            crossing(&reading("CPU", SensorClass::Cpu, 99.0), &limits),
            None
        );
    }

    #[test]
    fn only_states_that_mean_a_fault_are_one() {
        assert_eq!(state_fault(0x09, 0x0b, 1 << 0), None, "fully redundant");
        assert_eq!(state_fault(0x09, 0x0b, 1 << 3), None, "one supply, enough");
        assert_eq!(
            state_fault(0x09, 0x0b, 1 << 1).as_deref(),
            Some("redundancy lost")
        );
        assert_eq!(state_fault(0x08, 0x6f, 1 << 0), None, "present");
        assert_eq!(
            state_fault(0x08, 0x6f, (1 << 0) | (1 << 1) | (1 << 3)).as_deref(),
            Some("power supply failure detected, power supply input lost (AC/DC)")
        );
        // Other sensors' states are not judged here; every bit set is no panic.
        assert_eq!(state_fault(0x0c, 0x6f, u16::MAX), None);
        assert!(state_fault(0x08, 0x6f, u16::MAX).is_some());
    }

    #[test]
    fn extremes_keep_each_sensors_lowest_and_highest() {
        let mut e = Extremes::default();
        for v in [4800.0, 0.0, 4900.0, 4700.0] {
            e.add(reading("FAN1", SensorClass::Fan, v));
        }
        e.add(reading("CPU", SensorClass::Cpu, 50.0));
        let got: Vec<(&str, f64)> = e
            .readings()
            .iter()
            .map(|r| (r.name.as_str(), r.value))
            .collect();
        assert_eq!(got, [("CPU", 50.0), ("FAN1", 0.0), ("FAN1", 4900.0)]);
    }

    #[test]
    fn a_limit_without_a_reading_of_its_class_is_unmeasured() {
        let limits = Sensors {
            max_inlet_c: Some(35.0),
            min_fan_rpm: Some(2000.0),
            ..Sensors::default()
        };
        assert_eq!(
            unmeasured(&limits, &[SensorClass::Fan, SensorClass::Cpu]),
            [
                "the suite sets sensors.max_inlet_c, and no inlet temperature sensor of the BMC was read during the step"
            ]
        );
        assert!(unmeasured(&limits, &[SensorClass::Fan, SensorClass::Inlet]).is_empty());
        assert!(unmeasured(&Sensors::default(), &[]).is_empty());
    }
}
