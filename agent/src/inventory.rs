//! What this node is made of: DMI identity, CPUs (CPUID and the kernel), memory and DIMMs
//! (dmidecode when present), whole disks and physical NICs (sysfs). Missing sources leave
//! fields unknown; the `expect:` rules treat unknown as a difference, never as a match.

use kiln_protocol::wire::{
    CpuInfo, Dimm, DiskInfo, Inventory, MemoryInfo, NicInfo, NodeIdentity, SystemInfo,
};

use crate::checks::nic::{physical_interfaces, read_interface};
use crate::os::{link_name, read_trimmed, read_u64};

/// Collects the inventory of this host.
pub fn collect() -> Inventory {
    Inventory {
        system: system(),
        cpu: cpu(),
        memory: MemoryInfo {
            total_bytes: mem_total(),
            dimms: dimms(),
        },
        disks: disks("/sys"),
        nics: nics("/sys"),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
    }
}

/// How this node names itself to the collector.
pub fn identity(inventory: &Inventory) -> NodeIdentity {
    NodeIdentity {
        macs: inventory
            .nics
            .iter()
            .map(|n| n.mac.clone())
            .filter(|m| !m.is_empty())
            .collect(),
        uuid: inventory.system.uuid.clone(),
        serial: inventory.system.serial.clone(),
    }
}

fn system() -> SystemInfo {
    let dmi = |f: &str| read_trimmed(format!("/sys/class/dmi/id/{f}"));
    SystemInfo {
        vendor: dmi("sys_vendor"),
        product: dmi("product_name"),
        serial: dmi("product_serial"),
        uuid: dmi("product_uuid").map(|u| u.to_lowercase()),
        bios_version: dmi("bios_version"),
    }
}

fn cpu() -> CpuInfo {
    let cpuid = raw_cpuid::CpuId::new();
    let (family, model, stepping) = cpuid.get_feature_info().map_or((0, 0, 0), |f| {
        (
            u32::from(f.family_id()),
            u32::from(f.model_id()),
            u32::from(f.stepping_id()),
        )
    });
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let brand = cpuid
        .get_processor_brand_string()
        .map(|b| b.as_str().trim().to_owned())
        .or_else(|| field("model name"))
        .unwrap_or_default();
    let sockets = {
        let mut ids: Vec<&str> = cpuinfo
            .lines()
            .filter(|l| l.starts_with("physical id"))
            .filter_map(|l| l.split(':').nth(1))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        (!ids.is_empty()).then_some(ids.len() as u32)
    };
    let cores = field("cpu cores")
        .and_then(|c| c.parse::<u32>().ok())
        .map(|c| c * sockets.unwrap_or(1));
    CpuInfo {
        vendor: cpuid
            .get_vendor_info()
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default(),
        brand,
        family,
        model,
        stepping,
        logical: crate::os::affinity::allowed_cpus().len() as u32,
        cores,
        sockets,
        flags: field("flags")
            .map(|f| f.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// DIMM slots from `dmidecode -t 17`; `None` when it is missing or reports nothing.
fn dimms() -> Option<Vec<Dimm>> {
    let out = std::process::Command::new("dmidecode")
        .args(["-t", "17"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let slots = parse_dmidecode_memory(&String::from_utf8_lossy(&out.stdout));
    (!slots.is_empty()).then_some(slots)
}

/// Parses `dmidecode -t 17` (Memory Device) records.
pub fn parse_dmidecode_memory(text: &str) -> Vec<Dimm> {
    let mut slots = Vec::new();
    for record in text.split("\n\n").filter(|r| r.contains("Memory Device")) {
        let get = |key: &str| {
            record.lines().find_map(|l| {
                let (k, v) = l.trim().split_once(':')?;
                (k == key)
                    .then(|| v.trim().to_owned())
                    .filter(|v| !v.is_empty() && v != "Unknown" && v != "Not Specified")
            })
        };
        let size_bytes = get("Size").and_then(|s| parse_dmi_size(&s));
        slots.push(Dimm {
            locator: get("Locator").unwrap_or_else(|| "?".into()),
            size_bytes,
            kind: get("Type"),
            speed_mts: get("Configured Memory Speed")
                .or_else(|| get("Speed"))
                .and_then(|s| s.split_whitespace().next()?.parse().ok()),
            manufacturer: get("Manufacturer"),
            serial: get("Serial Number"),
            part: get("Part Number"),
        });
    }
    slots
}

fn parse_dmi_size(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    let scale = match parts.next()? {
        "kB" | "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    Some(n * scale)
}

fn disks(sys: &str) -> Vec<DiskInfo> {
    let system = crate::checks::disk::System {
        sys: sys.to_owned(),
        mountinfo: String::new(),
        swaps: String::new(),
    };
    system
        .whole_disks()
        .into_iter()
        .filter_map(|name| {
            let dir = format!("{sys}/class/block/{name}");
            let size_bytes = read_u64(format!("{dir}/size"))? * 512;
            if size_bytes == 0 {
                return None;
            }
            let device_path = std::fs::canonicalize(format!("{dir}/device"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let transport = if name.starts_with("nvme") {
                Some("nvme")
            } else if link_name(format!("{dir}/device/driver")).as_deref() == Some("virtio_blk") {
                Some("virtio")
            } else if device_path.contains("/usb") {
                Some("usb")
            } else if device_path.contains("/ata") {
                Some("sata")
            } else if device_path.contains("/host") {
                Some("scsi")
            } else {
                None
            };
            Some(DiskInfo {
                path: format!("/dev/{name}"),
                model: read_trimmed(format!("{dir}/device/model")),
                serial: read_trimmed(format!("{dir}/device/serial"))
                    .or_else(|| read_trimmed(format!("{dir}/serial"))),
                size_bytes,
                rotational: read_u64(format!("{dir}/queue/rotational")) == Some(1),
                transport: transport.map(str::to_owned),
                name,
            })
        })
        .collect()
}

fn nics(sys: &str) -> Vec<NicInfo> {
    physical_interfaces(sys)
        .into_iter()
        .filter_map(|name| read_interface(sys, &name))
        .map(|i| NicInfo {
            name: i.name,
            mac: i.mac,
            driver: i.driver,
            speed_mbps: i.speed_mbps,
            pci: i.bus,
            mtu: i.mtu,
            link_up: i.link_up,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DMIDECODE: &str = "\
# dmidecode 3.4
Handle 0x1100, DMI type 17, 40 bytes
Memory Device
\tSize: 32 GB
\tLocator: DIMM_A1
\tType: DDR4
\tSpeed: 3200 MT/s
\tManufacturer: Samsung
\tSerial Number: 1234ABCD
\tPart Number: M393A4K40DB3-CWE
\tConfigured Memory Speed: 2933 MT/s

Handle 0x1101, DMI type 17, 40 bytes
Memory Device
\tSize: No Module Installed
\tLocator: DIMM_B2
\tType: Unknown
";

    #[test]
    fn dmidecode_slots_are_parsed_with_empty_ones() {
        let slots = parse_dmidecode_memory(DMIDECODE);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[0].locator, "DIMM_A1");
        assert_eq!(slots[0].size_bytes, Some(32 << 30));
        assert_eq!(slots[0].speed_mts, Some(2933));
        assert_eq!(slots[0].kind.as_deref(), Some("DDR4"));
        assert_eq!(slots[1].locator, "DIMM_B2");
        assert_eq!(slots[1].size_bytes, None);
        assert_eq!(slots[1].kind, None);
    }

    #[test]
    fn this_host_has_cpus_and_memory() {
        let inv = collect();
        assert!(inv.cpu.logical >= 1);
        assert!(inv.memory.total_bytes > 0);
        assert!(!inv.cpu.flags.is_empty());
    }
}
