//! What this node is made of: identity, CPU sockets and every DIMM slot from the SMBIOS tables
//! (read natively, [`crate::hw::smbios`]), CPUs from CPUID and the kernel, whole disks and
//! physical NICs from sysfs. Missing sources leave fields unknown and are listed in
//! `absent`; the `expect:` rules treat unknown as a difference, never as a match.

use kiln_protocol::wire::{
    CpuInfo, DiskInfo, Inventory, MemoryInfo, NicInfo, NodeIdentity, SystemInfo,
};

use crate::checks::nic::{physical_interfaces, read_interface};
use crate::os::{link_name, read_trimmed, read_u64};

/// Collects the inventory of this host.
pub fn collect() -> Inventory {
    let mut absent = Vec::new();
    let smbios = match crate::hw::smbios::read(std::path::Path::new(crate::hw::smbios::TABLES)) {
        Ok(s) => Some(s),
        Err(e) => {
            absent.push(format!("SMBIOS tables (identity, CPU sockets, DIMMs): {e}"));
            None
        }
    };
    let mut cpu = cpu();
    if cpu.sockets.is_none() {
        // The kernel names no physical packages (some VMs): count the populated sockets.
        cpu.sockets = smbios
            .as_ref()
            .map(|s| s.sockets.iter().filter(|c| c.populated).count() as u32)
            .filter(|&n| n > 0);
    }
    let disks = disks("/sys");
    for d in &disks {
        // Said here too, not only in a disk step's log: reports list what a node lacks.
        if let Err(why) = crate::hw::disk_health(d) {
            absent.push(format!("disk health (SMART) of {}: {why}", d.path));
        }
    }
    Inventory {
        system: system(smbios.as_ref()),
        cpu,
        memory: MemoryInfo {
            total_bytes: mem_total(),
            dimms: smbios.map(|s| s.dimms).filter(|d| !d.is_empty()),
        },
        disks,
        nics: nics("/sys"),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        pcie: crate::hw::pcie::links(std::path::Path::new("/sys")),
        sel: match crate::hw::sel::read(std::path::Path::new(crate::hw::sel::DEVICE)) {
            Ok(events) => {
                let from = events.len().saturating_sub(kiln_protocol::bounds::MAX_SEL);
                events[from..].iter().map(|e| e.text.clone()).collect()
            }
            Err(e) => {
                absent.push(format!("IPMI BMC event log: {e}"));
                Vec::new()
            }
        },
        absent,
        lldp_listened_s: None,
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

/// Identity from the SMBIOS tables, each field falling back to what the kernel parsed of them
/// (`/sys/class/dmi/id`). The UUID is always the kernel's: its byte order is the one iPXE and
/// the collector's lookups use.
fn system(smbios: Option<&crate::hw::smbios::Smbios>) -> SystemInfo {
    let dmi = |f: &str| read_trimmed(format!("/sys/class/dmi/id/{f}"));
    let from = |pick: fn(&crate::hw::smbios::Smbios) -> &Option<String>, sysfs: &str| {
        smbios.and_then(|s| pick(s).clone()).or_else(|| dmi(sysfs))
    };
    SystemInfo {
        vendor: from(|s| &s.vendor, "sys_vendor"),
        product: from(|s| &s.product, "product_name"),
        serial: from(|s| &s.serial, "product_serial"),
        uuid: dmi("product_uuid").map(|u| u.to_lowercase()),
        bios_version: dmi("bios_version"),
        board_vendor: from(|s| &s.board_vendor, "board_vendor"),
        board_product: from(|s| &s.board_product, "board_name"),
        board_serial: from(|s| &s.board_serial, "board_serial"),
        board_asset_tag: from(|s| &s.board_asset_tag, "board_asset_tag"),
        chassis_serial: from(|s| &s.chassis_serial, "chassis_serial"),
        chassis_asset_tag: from(|s| &s.chassis_asset_tag, "chassis_asset_tag"),
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
                    .or_else(|| read_trimmed(format!("{dir}/serial")))
                    .or_else(|| {
                        std::fs::read(format!("{dir}/device/vpd_pg80"))
                            .ok()
                            .and_then(|page| vpd_serial(&page))
                    }),
                size_bytes,
                rotational: read_u64(format!("{dir}/queue/rotational")) == Some(1),
                transport: transport.map(str::to_owned),
                name,
            })
        })
        .collect()
}

/// How long to listen for LLDP when the suite's `expect.lldp` asks what switch ports say.
pub fn lldp_asked(plan: &kiln_protocol::Plan) -> Option<u32> {
    plan.expect()
        .and_then(|e| e.lldp.as_ref())
        .map(|_| kiln_protocol::wire::LLDP_LISTEN_SECS)
}

/// Listens for LLDP on every NIC with a link, all at once, for up to `timeout` (stopping
/// once each has heard its switch port), and records what each heard; an interface that
/// could not be listened on is said in `absent`.
pub fn hear_lldp(inv: &mut Inventory, timeout: std::time::Duration) {
    let names: Vec<String> = inv
        .nics
        .iter()
        .filter(|n| n.link_up)
        .map(|n| n.name.clone())
        .collect();
    for (name, heard) in crate::os::lldp::listen(&names, timeout) {
        let Some(nic) = inv.nics.iter_mut().find(|n| n.name == name) else {
            continue;
        };
        match heard {
            crate::os::lldp::Heard::Neighbor(n) => nic.lldp = Some(n),
            crate::os::lldp::Heard::Nothing(Some(why)) => inv
                .absent
                .push(format!("LLDP on {name}: no frame that parsed ({why})")),
            crate::os::lldp::Heard::Nothing(None) => {}
            crate::os::lldp::Heard::Unreadable(why) => inv.absent.push(format!("LLDP: {why}")),
        }
    }
    inv.lldp_listened_s = Some(timeout.as_secs() as u32);
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
            lldp: None,
        })
        .collect()
}

/// The unit serial number of a SCSI disk's VPD page 80h, as sysfs keeps it (`vpd_pg80`):
/// SATA disks behind libata and SAS disks have no `serial` attribute, and a power cycle's
/// disk check needs their serials. `None` for anything that is not a well-formed page 80h
/// holding a printable serial.
pub fn vpd_serial(page: &[u8]) -> Option<String> {
    let [_, 0x80, hi, lo, body @ ..] = page else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let serial = body.get(..len)?;
    let text = std::str::from_utf8(serial).ok()?;
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    let printable = text.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    (printable && !text.is_empty() && text.len() <= 64).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_serial_is_read_from_vpd_page_80h_and_hostile_pages_give_none() {
        let page = |code: u8, len: u16, body: &[u8]| {
            let mut p = vec![0, code];
            p.extend(len.to_be_bytes());
            p.extend(body);
            p
        };
        assert_eq!(
            vpd_serial(&page(0x80, 14, b"  KILNSCSI01\0\0\0")).as_deref(),
            Some("KILNSCSI01")
        );
        // Another page, a length past the end, nothing but padding, control bytes, not
        // UTF-8, too short for a header.
        assert_eq!(vpd_serial(&page(0x83, 4, b"ABCD")), None);
        assert_eq!(vpd_serial(&page(0x80, 200, b"ABCD")), None);
        assert_eq!(vpd_serial(&page(0x80, 4, b"    ")), None);
        assert_eq!(vpd_serial(&page(0x80, 4, b"A\x1bB\n")), None);
        assert_eq!(vpd_serial(&page(0x80, 2, &[0xff, 0xfe])), None);
        assert_eq!(vpd_serial(&[0, 0x80, 0]), None);
        assert_eq!(vpd_serial(&page(0x80, 100, &[b'A'; 100])), None);
    }

    #[test]
    fn this_host_has_cpus_and_memory() {
        let inv = collect();
        assert!(inv.cpu.logical >= 1);
        assert!(inv.memory.total_bytes > 0);
        assert!(!inv.cpu.flags.is_empty());
    }
}
