//! Disk health after the I/O: NVMe health log and ATA SMART read natively, `smartctl --json`
//! as the fallback, each turned into faults and metrics.

use super::{CheckOutput, Fault, LogLevel, Path, StepContext};

/// SMART / NVMe health, read natively (the NVMe health log by admin ioctl, SATA SMART by
/// ATA PASS-THROUGH), else through `smartctl --json` when it is installed. What could not be
/// read is logged with why; a threshold on a SMART metric then fails the step as unmeasured.
pub(super) fn smart(device: Option<&Path>, out: &mut CheckOutput, ctx: &StepContext<'_>) {
    let Some(device) = device else {
        ctx.observer.log(
            LogLevel::Warn,
            "SMART not read: the device under the scratch directory is unknown",
        );
        return;
    };
    let name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let native = if name.starts_with("nvme") {
        crate::hw::nvme::read(device).map(|h| read_nvme(&h, device, out))
    } else if name.starts_with("sd") {
        crate::hw::ata::read(device).map(|s| read_ata(&s, device, out))
    } else {
        Err(format!(
            "{}: no native SMART reader for this kind of device",
            device.display()
        ))
    };
    let Err(native) = native else {
        return;
    };
    let output = match std::process::Command::new("smartctl")
        .args(["--json", "-a"])
        .arg(device)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            ctx.observer.log(
                LogLevel::Warn,
                &format!("SMART not available: {native} (and smartctl is not installed)"),
            );
            return;
        }
    };
    // smartctl's exit status is a bit mask; bits 0-1 mean it could not talk to the device.
    let status = output.status.code().unwrap_or(2);
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        ctx.observer.log(
            LogLevel::Warn,
            &format!(
                "SMART not available: {native}; smartctl gave no JSON for {}",
                device.display()
            ),
        );
        return;
    };
    if status & 0b11 != 0 {
        let why = json["smartctl"]["messages"][0]["string"]
            .as_str()
            .unwrap_or("device not supported");
        ctx.observer.log(
            LogLevel::Warn,
            &format!("SMART not available: {native}; smartctl: {why}"),
        );
        return;
    }
    read_smart(&json, device, out);
}

/// Faults and metrics from an NVMe health log.
pub fn read_nvme(h: &crate::hw::nvme::Health, device: &Path, out: &mut CheckOutput) {
    let warnings = h.warnings();
    if !warnings.is_empty() {
        out.faults.push(
            Fault::new(
                "disk.nvme_critical_warning",
                format!(
                    "{}: NVMe critical warning {:#04x}: {}",
                    device.display(),
                    h.critical_warning,
                    warnings.join(", ")
                ),
            )
            .with("device", device.display().to_string())
            .with("critical_warning", h.critical_warning),
        );
    }
    out.metric("media_errors", h.media_errors as f64, "");
    out.metric("percentage_used", f64::from(h.percentage_used), "%");
    out.metric("available_spare", f64::from(h.available_spare_pct), "%");
    out.metric("unsafe_shutdowns", h.unsafe_shutdowns as f64, "");
    if let Some(t) = h.temperature_c() {
        out.metric("temp_c", (t * 10.0).round() / 10.0, "°C");
    }
}

/// Faults and metrics from SATA SMART.
pub fn read_ata(s: &crate::hw::ata::Smart, device: &Path, out: &mut CheckOutput) {
    if s.passed == Some(false) {
        out.faults.push(Fault::new(
            "disk.smart_failed",
            format!(
                "{}: SMART overall health self-assessment failed",
                device.display()
            ),
        ));
    }
    for a in s.attributes.iter().filter(|a| a.failing()) {
        out.faults.push(
            Fault::new(
                "disk.smart_attribute_failing",
                format!(
                    "{}: SMART attribute {} ({}) is at {}, at or below its threshold {}",
                    device.display(),
                    a.id,
                    crate::hw::ata::attribute_name(a.id),
                    a.value,
                    a.threshold.unwrap_or(0)
                ),
            )
            .with("attribute", a.id)
            .with("raw", a.raw),
        );
    }
    for (id, metric) in [
        (5, "reallocated_sectors"),
        (197, "pending_sectors"),
        (198, "offline_uncorrectable"),
        (199, "udma_crc_errors"),
    ] {
        if let Some(raw) = s.raw(id) {
            // The low 32 bits: vendors pack other counters into the upper raw bytes.
            out.metric(metric, (raw & 0xFFFF_FFFF) as f64, "");
        }
    }
}

/// Reads health, reallocated and pending sectors (ATA) and media errors (NVMe) from
/// `smartctl --json -a` output.
pub fn read_smart(json: &serde_json::Value, device: &Path, out: &mut CheckOutput) {
    if json["smart_status"]["passed"].as_bool() == Some(false) {
        out.faults.push(Fault::new(
            "disk.smart_failed",
            format!(
                "{}: SMART overall health self-assessment failed",
                device.display()
            ),
        ));
    }
    if let Some(table) = json["ata_smart_attributes"]["table"].as_array() {
        for (id, metric) in [(5, "reallocated_sectors"), (197, "pending_sectors")] {
            if let Some(raw) = table
                .iter()
                .find(|a| a["id"].as_u64() == Some(id))
                .and_then(|a| a["raw"]["value"].as_f64())
            {
                out.metric(metric, raw, "");
            }
        }
    }
    if let Some(errors) = json["nvme_smart_health_information_log"]["media_errors"].as_f64() {
        out.metric("media_errors", errors, "");
    }
}
