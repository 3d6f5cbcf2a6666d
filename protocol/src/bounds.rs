//! The bounds every string and list a node sends must keep, checked by the collector
//! (`validate`) and kept by the agent before it sends (`clamp`), so one over-long line from a
//! vendor tool never costs a run its report.
//!
//! A checked string has no control characters (log lines may keep tabs) and a bounded
//! length; a clamped one has its control characters replaced by `�` and is cut at a character
//! boundary with a marker saying how much was cut.

use crate::wire::{
    EventBody, Fault, Inventory, MAX_FIELD_LEN, MAX_LOG_LINE, Metric, Outcome, StepReport,
};

pub use crate::text::{check, clamp, hidden, visible};

/// Most attempts one step report carries (a suite's `retest.attempts` is at most 10).
pub const MAX_ATTEMPTS: usize = 10;

/// Longest fault message, reason, error message or detail value.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Most faults one outcome may carry.
pub const MAX_FAULTS: usize = 256;
/// Most metrics one step may report.
pub const MAX_METRICS: usize = 256;
/// Most details one fault may carry.
pub const MAX_DETAILS: usize = 32;
/// Most CPU flags, and the longest one.
pub const MAX_FLAGS: usize = 1024;
/// See [`MAX_FLAGS`].
pub const MAX_FLAG_LEN: usize = 64;
/// Most disks, NICs and DIMM slots in an inventory.
pub const MAX_DISKS: usize = 1024;
/// See [`MAX_DISKS`].
pub const MAX_NICS: usize = 256;
/// See [`MAX_DISKS`].
pub const MAX_DIMMS: usize = 512;
/// Most PCIe devices an inventory lists.
pub const MAX_PCIE: usize = 1024;
/// Most SEL entries an inventory carries (the newest).
pub const MAX_SEL: usize = 64;
/// Most sensor readings in one event (a BMC lists a few hundred at most; the rest are judged
/// by the agent but not charted).
pub const MAX_SENSORS: usize = 512;
/// Most absent sources an inventory lists.
pub const MAX_ABSENT: usize = 64;

fn field(name: &str, value: &str) -> Result<(), String> {
    check(name, value, MAX_FIELD_LEN, false)
}

fn message(name: &str, value: &str) -> Result<(), String> {
    check(name, value, MAX_MESSAGE_LEN, false)
}

fn clamp_field(value: &mut String) {
    *value = clamp(value, MAX_FIELD_LEN, false);
}

fn clamp_message(value: &mut String) {
    *value = clamp(value, MAX_MESSAGE_LEN, false);
}

fn count(name: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{n} {name}; at most {max} allowed"));
    }
    Ok(())
}

impl Fault {
    /// Checks the fault's bounds.
    pub fn validate(&self) -> Result<(), String> {
        field("fault code", &self.code)?;
        message("fault message", &self.message)?;
        count("fault details", self.details.len(), MAX_DETAILS)?;
        for (key, value) in &self.details {
            field("fault detail name", key)?;
            message("fault detail", value)?;
        }
        Ok(())
    }

    fn clamp(&mut self) {
        clamp_field(&mut self.code);
        clamp_message(&mut self.message);
        while self.details.len() > MAX_DETAILS {
            self.details.pop_last();
        }
        self.details = std::mem::take(&mut self.details)
            .into_iter()
            .map(|(k, v)| {
                (
                    clamp(&k, MAX_FIELD_LEN, false),
                    clamp(&v, MAX_MESSAGE_LEN, false),
                )
            })
            .collect();
    }
}

impl Outcome {
    /// Checks the outcome's bounds.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Outcome::Pass => Ok(()),
            Outcome::Degraded { reasons } => {
                count("reasons", reasons.len(), MAX_FAULTS)?;
                reasons.iter().try_for_each(|r| message("reason", r))
            }
            Outcome::Fail { faults } => {
                count("faults", faults.len(), MAX_FAULTS)?;
                faults.iter().try_for_each(Fault::validate)
            }
            Outcome::Skip { reason } => message("skip reason", reason),
            Outcome::Error { message: m } => message("error message", m),
        }
    }

    /// Brings the outcome within bounds. Faults beyond the limit are summed up in the last
    /// one kept, so the outcome stays a fail and says how many more there were.
    pub fn clamp(&mut self) {
        match self {
            Outcome::Pass => {}
            Outcome::Degraded { reasons } => {
                reasons.truncate(MAX_FAULTS);
                reasons.iter_mut().for_each(clamp_message);
            }
            Outcome::Fail { faults } => {
                if faults.len() > MAX_FAULTS {
                    let more = faults.len() - (MAX_FAULTS - 1);
                    faults.truncate(MAX_FAULTS - 1);
                    faults.push(Fault::new(
                        "kiln.faults_dropped",
                        format!("{more} more fault(s) not sent (at most {MAX_FAULTS} per step)"),
                    ));
                }
                faults.iter_mut().for_each(Fault::clamp);
            }
            Outcome::Skip { reason } => clamp_message(reason),
            Outcome::Error { message } => clamp_message(message),
        }
    }
}

impl Metric {
    fn validate(&self) -> Result<(), String> {
        field("metric name", &self.name)?;
        field("metric unit", &self.unit)?;
        if !self.value.is_finite() {
            return Err(format!("metric {} is not a finite number", self.name));
        }
        Ok(())
    }
}

impl StepReport {
    /// Checks the report's bounds.
    pub fn validate(&self) -> Result<(), String> {
        field("step name", &self.name)?;
        field("step kind", &self.kind)?;
        self.outcome.validate()?;
        count("attempts", self.attempts.len(), MAX_ATTEMPTS)?;
        self.attempts
            .iter()
            .try_for_each(|a| a.outcome.validate())?;
        count("metrics", self.metrics.len(), MAX_METRICS)?;
        self.metrics.iter().try_for_each(Metric::validate)
    }

    /// Brings the report within bounds. Metrics beyond the limit (or not finite) are dropped,
    /// and a fault says so: a threshold may have been on one of them.
    pub fn clamp(&mut self) {
        clamp_field(&mut self.name);
        clamp_field(&mut self.kind);
        let before = self.metrics.len();
        self.metrics.retain(|m| m.value.is_finite());
        let not_finite = before - self.metrics.len();
        let over = self.metrics.len().saturating_sub(MAX_METRICS);
        self.metrics.truncate(MAX_METRICS);
        for m in &mut self.metrics {
            clamp_field(&mut m.name);
            clamp_field(&mut m.unit);
        }
        if not_finite + over > 0 {
            let fault = Fault::new(
                "kiln.metrics_dropped",
                format!(
                    "{} metric(s) dropped before sending: {over} over the limit of {MAX_METRICS}, {not_finite} not a finite number",
                    over + not_finite
                ),
            );
            match &mut self.outcome {
                Outcome::Fail { faults } => faults.push(fault),
                // A harness error stays one; anything else now has a fault.
                Outcome::Error { .. } => {}
                other => {
                    *other = Outcome::Fail {
                        faults: vec![fault],
                    }
                }
            }
        }
        self.outcome.clamp();
        self.attempts.truncate(MAX_ATTEMPTS);
        self.attempts.iter_mut().for_each(|a| a.outcome.clamp());
    }
}

impl Inventory {
    /// Checks every field's bounds.
    pub fn validate(&self) -> Result<(), String> {
        let sys = &self.system;
        for (name, value) in [
            ("system.vendor", &sys.vendor),
            ("system.product", &sys.product),
            ("system.serial", &sys.serial),
            ("system.uuid", &sys.uuid),
            ("system.bios_version", &sys.bios_version),
            ("system.board_vendor", &sys.board_vendor),
            ("system.board_product", &sys.board_product),
            ("system.board_serial", &sys.board_serial),
            ("system.board_asset_tag", &sys.board_asset_tag),
            ("system.chassis_serial", &sys.chassis_serial),
            ("system.chassis_asset_tag", &sys.chassis_asset_tag),
            ("kernel", &self.kernel),
            ("boot_id", &self.boot_id),
        ] {
            if let Some(v) = value {
                field(name, v)?;
            }
        }
        field("cpu.vendor", &self.cpu.vendor)?;
        field("cpu.brand", &self.cpu.brand)?;
        count("CPU flags", self.cpu.flags.len(), MAX_FLAGS)?;
        for flag in &self.cpu.flags {
            check("cpu flag", flag, MAX_FLAG_LEN, false)?;
        }
        if let Some(dimms) = &self.memory.dimms {
            count("DIMM slots", dimms.len(), MAX_DIMMS)?;
            for d in dimms {
                field("dimm locator", &d.locator)?;
                for v in [
                    &d.bank,
                    &d.kind,
                    &d.manufacturer,
                    &d.serial,
                    &d.part,
                    &d.asset_tag,
                ]
                .into_iter()
                .flatten()
                {
                    field("dimm field", v)?;
                }
            }
        }
        count("PCIe devices", self.pcie.len(), MAX_PCIE)?;
        for l in &self.pcie {
            field("pcie address", &l.address)?;
            field("pcie class", &l.class)?;
            for v in [&l.vendor_device, &l.driver, &l.port].into_iter().flatten() {
                field("pcie field", v)?;
            }
        }
        count("SEL entries", self.sel.len(), MAX_SEL)?;
        for e in &self.sel {
            field("SEL entry", e)?;
        }
        count("absent sources", self.absent.len(), MAX_ABSENT)?;
        for a in &self.absent {
            field("absent source", a)?;
        }
        count("disks", self.disks.len(), MAX_DISKS)?;
        for d in &self.disks {
            field("disk name", &d.name)?;
            field("disk path", &d.path)?;
            for v in [&d.model, &d.serial, &d.transport].into_iter().flatten() {
                field("disk field", v)?;
            }
        }
        count("NICs", self.nics.len(), MAX_NICS)?;
        for n in &self.nics {
            field("nic name", &n.name)?;
            crate::wire::check_mac(&n.mac).map_err(|e| format!("nic {}: {e}", n.name))?;
            for v in [&n.driver, &n.pci].into_iter().flatten() {
                field("nic field", v)?;
            }
            if let Some(l) = &n.lldp {
                for v in l.texts() {
                    field("nic lldp field", v)?;
                }
            }
        }
        Ok(())
    }

    /// Brings every field within bounds (a MAC that is not one is blanked to zeros).
    pub fn clamp(&mut self) {
        let sys = &mut self.system;
        for value in [
            &mut sys.vendor,
            &mut sys.product,
            &mut sys.serial,
            &mut sys.uuid,
            &mut sys.bios_version,
            &mut sys.board_vendor,
            &mut sys.board_product,
            &mut sys.board_serial,
            &mut sys.board_asset_tag,
            &mut sys.chassis_serial,
            &mut sys.chassis_asset_tag,
            &mut self.kernel,
            &mut self.boot_id,
        ]
        .into_iter()
        .flatten()
        {
            clamp_field(value);
        }
        clamp_field(&mut self.cpu.vendor);
        clamp_field(&mut self.cpu.brand);
        self.cpu.flags.truncate(MAX_FLAGS);
        for flag in &mut self.cpu.flags {
            *flag = clamp(flag, MAX_FLAG_LEN, false);
        }
        if let Some(dimms) = &mut self.memory.dimms {
            dimms.truncate(MAX_DIMMS);
            for d in dimms {
                clamp_field(&mut d.locator);
                for v in [
                    &mut d.bank,
                    &mut d.kind,
                    &mut d.manufacturer,
                    &mut d.serial,
                    &mut d.part,
                    &mut d.asset_tag,
                ]
                .into_iter()
                .flatten()
                {
                    clamp_field(v);
                }
            }
        }
        self.pcie.truncate(MAX_PCIE);
        for l in &mut self.pcie {
            clamp_field(&mut l.address);
            clamp_field(&mut l.class);
            for v in [&mut l.vendor_device, &mut l.driver, &mut l.port]
                .into_iter()
                .flatten()
            {
                clamp_field(v);
            }
        }
        if self.sel.len() > MAX_SEL {
            self.sel.drain(..self.sel.len() - MAX_SEL);
        }
        for e in &mut self.sel {
            clamp_field(e);
        }
        self.absent.truncate(MAX_ABSENT);
        for a in &mut self.absent {
            clamp_field(a);
        }
        self.disks.truncate(MAX_DISKS);
        for d in &mut self.disks {
            clamp_field(&mut d.name);
            clamp_field(&mut d.path);
            for v in [&mut d.model, &mut d.serial, &mut d.transport]
                .into_iter()
                .flatten()
            {
                clamp_field(v);
            }
        }
        self.nics.truncate(MAX_NICS);
        for n in &mut self.nics {
            clamp_field(&mut n.name);
            if crate::wire::check_mac(&n.mac).is_err() {
                n.mac = "00:00:00:00:00:00".into();
            }
            for v in [&mut n.driver, &mut n.pci].into_iter().flatten() {
                clamp_field(v);
            }
            if let Some(l) = &mut n.lldp {
                for v in l.texts_mut() {
                    clamp_field(v);
                }
            }
        }
    }
}

impl EventBody {
    /// Checks the event's bounds.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            EventBody::RunStarted { suite, agent, .. } => {
                field("suite", suite)?;
                field("agent", agent)
            }
            EventBody::ExpectChecked { outcome } => outcome.validate(),
            EventBody::StepStarted { name, kind, .. } => {
                field("name", name)?;
                field("kind", kind)
            }
            EventBody::Progress {
                fraction, status, ..
            } => {
                if !(0.0..=1.0).contains(fraction) {
                    return Err(format!("progress {fraction} is outside 0..1"));
                }
                status.as_deref().map_or(Ok(()), |s| field("status", s))
            }
            EventBody::Log { line, .. } => check("log line", line, MAX_LOG_LINE, true),
            EventBody::LogsDropped { .. } | EventBody::RunFinished { .. } => Ok(()),
            EventBody::StepFinished { report } => report.validate(),
            EventBody::Sensors { readings, .. } => {
                if readings.len() > MAX_SENSORS {
                    return Err(format!(
                        "{} sensor readings; at most {MAX_SENSORS}",
                        readings.len()
                    ));
                }
                for r in readings {
                    field("sensor name", &r.name)?;
                    for v in [Some(r.value), r.low, r.high].into_iter().flatten() {
                        if !v.is_finite() || v.abs() > 1e9 {
                            return Err(format!(
                                "sensor {:?}: reading {v} is not a number a sensor gives",
                                r.name
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Brings the event within the bounds [`EventBody::validate`] checks.
    pub fn clamp(&mut self) {
        match self {
            EventBody::RunStarted { suite, agent, .. } => {
                clamp_field(suite);
                clamp_field(agent);
            }
            EventBody::ExpectChecked { outcome } => outcome.clamp(),
            EventBody::StepStarted { name, kind, .. } => {
                clamp_field(name);
                clamp_field(kind);
            }
            EventBody::Progress {
                fraction, status, ..
            } => {
                *fraction = if fraction.is_finite() {
                    fraction.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                if let Some(s) = status {
                    clamp_field(s);
                }
            }
            EventBody::Log { line, .. } => *line = clamp(line, MAX_LOG_LINE, true),
            EventBody::LogsDropped { .. } | EventBody::RunFinished { .. } => {}
            EventBody::StepFinished { report } => report.clamp(),
            EventBody::Sensors { readings, .. } => {
                readings.truncate(MAX_SENSORS);
                readings.retain(|r| {
                    [Some(r.value), r.low, r.high]
                        .into_iter()
                        .flatten()
                        .all(|v| v.is_finite() && v.abs() <= 1e9)
                });
                for r in readings {
                    clamp_field(&mut r.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LogLevel;
    use proptest::prelude::*;

    fn report(outcome: Outcome, metrics: usize) -> StepReport {
        StepReport {
            step: 0,
            name: "exec".into(),
            kind: "exec".into(),
            outcome,
            metrics: (0..metrics)
                .map(|i| Metric {
                    name: format!("m{i}"),
                    value: 1.0,
                    unit: String::new(),
                })
                .collect(),
            duration_ms: 1,
            attempts: vec![],
        }
    }

    #[test]
    fn a_long_line_is_cut_with_a_marker_and_control_characters_replaced() {
        let line = format!("a\u{1b}]52;c;evil\u{7}\r{}", "x".repeat(20_000));
        let clamped = clamp(&line, MAX_LOG_LINE, true);
        assert!(clamped.len() <= MAX_LOG_LINE);
        assert!(
            clamped.ends_with(" bytes cut]"),
            "{}",
            &clamped[clamped.len() - 40..]
        );
        assert!(clamped.starts_with("a\u{FFFD}]52;c;evil\u{FFFD}\u{FFFD}"));
        assert!(check("line", &clamped, MAX_LOG_LINE, true).is_ok());
        assert!(check("line", "a\tb", 10, true).is_ok());
        assert!(check("field", "a\tb", 10, false).is_err());
        // Cuts fall on character boundaries.
        let wide = "é".repeat(300);
        assert!(clamp(&wide, 256, false).len() <= 256);
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(visible("plain"), "plain");
        assert_eq!(
            visible("a\u{1b}]52;c;x\u{7}\r\0b"),
            "a\\x1b]52;c;x\\u{7}\\r\\u{0}b"
        );
    }

    #[test]
    fn bidi_overrides_zero_width_and_line_separators_are_refused_clamped_and_shown() {
        for hostile in [
            "r12-u07\u{202E}70u-21r",
            "r12\u{2066}-u07\u{2069}",
            "r12\u{200B}-u07",
            "r12\u{200F}",
            "a\u{2028}b",
            "a\u{2029}b",
            "\u{FEFF}r12",
            "a\u{061C}b",
            "a\u{2060}b",
        ] {
            let err = check("hostname", hostile, 64, false).unwrap_err();
            assert!(err.contains("invisible character"), "{hostile:?}: {err}");
            assert!(check("hostname", &clamp(hostile, 64, false), 64, false).is_ok());
            assert!(!visible(hostile).chars().any(hidden), "{hostile:?}");
        }
        assert_eq!(visible("r12-u07\u{202E}x"), "r12-u07\\u{202e}x");
        // Text people write keeps its accents, scripts and emoji.
        for fine in [
            "Müller-Lüdenscheidt",
            "サーバー 7",
            "rack 🔥 12",
            "r12\tu07",
        ] {
            assert!(check("line", fine, 64, true).is_ok(), "{fine}");
        }
    }

    #[test]
    fn too_many_metrics_are_dropped_with_a_fault_that_fails_the_step() {
        let mut r = report(Outcome::Pass, 300);
        assert!(r.validate().unwrap_err().contains("300 metrics"));
        r.clamp();
        assert!(r.validate().is_ok());
        assert_eq!(r.metrics.len(), MAX_METRICS);
        let Outcome::Fail { faults } = &r.outcome else {
            panic!("{:?}", r.outcome)
        };
        assert_eq!(faults[0].code, "kiln.metrics_dropped");
        assert!(faults[0].message.contains("44 over the limit"));
    }

    #[test]
    fn hostile_sensor_events_are_refused_and_clamped() {
        use crate::sensors::{SensorClass, SensorReading};
        let good = SensorReading {
            name: "Inlet Temp".into(),
            class: SensorClass::Inlet,
            value: 24.0,
            low: None,
            high: Some(42.0),
        };
        let mut body = EventBody::Sensors {
            step: Some(0),
            readings: vec![good.clone(); MAX_SENSORS + 1],
        };
        assert!(body.validate().unwrap_err().contains("at most 512"));
        body.clamp();
        assert!(body.validate().is_ok());
        for bad in [f64::NAN, f64::INFINITY, 1e12] {
            let mut body = EventBody::Sensors {
                step: None,
                readings: vec![
                    good.clone(),
                    SensorReading {
                        high: Some(bad),
                        ..good.clone()
                    },
                ],
            };
            assert!(
                body.validate()
                    .unwrap_err()
                    .contains("not a number a sensor gives")
            );
            body.clamp();
            let EventBody::Sensors { readings, .. } = &body else {
                unreachable!()
            };
            assert_eq!(
                readings,
                std::slice::from_ref(&good),
                "the bad reading is dropped, the good kept"
            );
        }
        let mut body = EventBody::Sensors {
            step: None,
            readings: vec![SensorReading {
                name: "FAN\u{1b}[2J".into(),
                ..good.clone()
            }],
        };
        assert!(body.validate().is_err());
        body.clamp();
        assert!(body.validate().is_ok());
    }

    #[test]
    fn hostile_inventory_strings_are_refused_and_clamped() {
        let mut inv = Inventory::default();
        inv.cpu.vendor = "Genuine\u{1b}[2J".into();
        assert!(inv.validate().unwrap_err().contains("cpu.vendor"));
        inv.cpu.flags = vec!["f".repeat(100_000)];
        inv.clamp();
        assert!(inv.validate().is_ok(), "{:?}", inv.validate());
        inv.nics.push(crate::wire::NicInfo {
            name: "eth0".into(),
            mac: "52:54:00:12:34:56\u{1b}".into(),
            ..Default::default()
        });
        assert!(inv.validate().is_err());
        inv.clamp();
        assert_eq!(inv.nics[0].mac, "00:00:00:00:00:00");
        // What a switch said is the agent's word too: bounded like the rest.
        inv.nics[0].lldp = Some(crate::lldp::Neighbor {
            port_id: "Eth\u{1b}[2J".into(),
            system_name: Some("x".repeat(100_000)),
            ..Default::default()
        });
        assert!(inv.validate().unwrap_err().contains("nic lldp field"));
        inv.clamp();
        assert!(inv.validate().is_ok(), "{:?}", inv.validate());
        // The readers added for real servers: every string checked, every list bounded.
        inv.system.chassis_asset_tag = Some("tag\u{7}".into());
        assert!(
            inv.validate()
                .unwrap_err()
                .contains("system.chassis_asset_tag")
        );
        inv.clamp();
        inv.sel = vec!["Memory sensor #8: event".into(); MAX_SEL + 10];
        inv.sel.push("newest\u{1b}]52;c;bad\u{7}".into());
        inv.absent = vec!["x".repeat(100_000); MAX_ABSENT + 1];
        inv.pcie = vec![crate::wire::PcieLink {
            address: "0000:3b:00.0\r".into(),
            ..Default::default()
        }];
        assert!(inv.validate().is_err());
        inv.clamp();
        assert!(inv.validate().is_ok(), "{:?}", inv.validate());
        assert_eq!(inv.sel.len(), MAX_SEL);
        assert!(
            inv.sel.last().unwrap().starts_with("newest"),
            "the newest entries are kept"
        );
        assert_eq!(inv.absent.len(), MAX_ABSENT);
    }

    proptest! {
        #[test]
        fn any_clamped_event_validates(line in ".{0,300}", name in ".{0,300}", n in 0usize..300) {
            let mut events = vec![
                EventBody::Log { step: None, level: LogLevel::Info, line: line.repeat(80) },
                EventBody::StepStarted { step: 0, name: name.clone(), kind: name.clone() },
                EventBody::StepFinished {
                    report: StepReport {
                        name: name.clone(),
                        outcome: Outcome::Fail { faults: vec![Fault::new(name.clone(), line.clone()).with(&name, &line); n] },
                        ..report(Outcome::Pass, n)
                    },
                },
            ];
            for e in &mut events {
                e.clamp();
                prop_assert!(e.validate().is_ok(), "{:?}", e.validate());
            }
        }
    }
}
