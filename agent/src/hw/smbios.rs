//! The SMBIOS tables the firmware hands the kernel (`/sys/firmware/dmi/tables`), parsed with
//! `smbios-lib`: system, baseboard and chassis identity (types 1–3), CPU sockets (type 4) and
//! every memory device (type 17), empty slots included.

use std::path::Path;

use kiln_protocol::wire::Dimm;
use smbioslib::{
    MemoryDeviceType, MemorySize, MemorySizeExtended, MemorySpeed, MemorySpeedExtended,
    SMBiosBaseboardInformation, SMBiosData, SMBiosEntryPoint32, SMBiosEntryPoint64,
    SMBiosMemoryDevice, SMBiosProcessorInformation, SMBiosString, SMBiosSystemChassisInformation,
    SMBiosSystemInformation, SMBiosVersion,
};

/// Where Linux exposes the tables.
pub const TABLES: &str = "/sys/firmware/dmi/tables";

/// What the tables say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Smbios {
    /// Table version, `major.minor`.
    pub version: String,
    /// System manufacturer (type 1).
    pub vendor: Option<String>,
    /// System product name.
    pub product: Option<String>,
    /// System serial number.
    pub serial: Option<String>,
    /// Baseboard manufacturer (type 2).
    pub board_vendor: Option<String>,
    /// Baseboard product.
    pub board_product: Option<String>,
    /// Baseboard serial.
    pub board_serial: Option<String>,
    /// Baseboard asset tag.
    pub board_asset_tag: Option<String>,
    /// Chassis serial (type 3).
    pub chassis_serial: Option<String>,
    /// Chassis asset tag.
    pub chassis_asset_tag: Option<String>,
    /// CPU sockets (type 4).
    pub sockets: Vec<Socket>,
    /// Memory devices (type 17), in table order.
    pub dimms: Vec<Dimm>,
}

/// One processor socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Socket {
    /// Socket name (`CPU 0`, `P1`).
    pub designation: String,
    /// A processor sits in it.
    pub populated: bool,
    /// Processor version string, as the firmware gives it.
    pub version: Option<String>,
}

/// Reads the tables under `dir` (normally [`TABLES`]).
pub fn read(dir: &Path) -> Result<Smbios, String> {
    let entry = dir.join("smbios_entry_point");
    let table = dir.join("DMI");
    let entry = std::fs::read(&entry).map_err(|e| format!("{}: {e}", entry.display()))?;
    let table = std::fs::read(&table).map_err(|e| format!("{}: {e}", table.display()))?;
    parse(&entry, table)
}

/// Parses an entry point (SMBIOS 2.x `_SM_` or 3.x `_SM3_`) and the structure table it
/// describes.
pub fn parse(entry_point: &[u8], table: Vec<u8>) -> Result<Smbios, String> {
    let version = if let Ok(ep) = SMBiosEntryPoint64::try_from(entry_point.to_vec()) {
        SMBiosVersion::new(ep.major_version(), ep.minor_version(), ep.docrev())
    } else {
        let ep = SMBiosEntryPoint32::try_from(entry_point.to_vec())
            .map_err(|e| format!("the SMBIOS entry point is neither _SM_ nor _SM3_: {e}"))?;
        SMBiosVersion::new(ep.major_version(), ep.minor_version(), 0)
    };
    if table.is_empty() {
        return Err("the SMBIOS structure table is empty".into());
    }
    let data = SMBiosData::from_vec_and_version(table, Some(version));
    let mut out = Smbios {
        version: format!("{}.{}", version.major, version.minor),
        ..Smbios::default()
    };
    if let Some(sys) = data.find_map(|s: SMBiosSystemInformation<'_>| Some(s)) {
        out.vendor = text(sys.manufacturer());
        out.product = text(sys.product_name());
        out.serial = text(sys.serial_number());
    }
    if let Some(board) = data.find_map(|b: SMBiosBaseboardInformation<'_>| Some(b)) {
        out.board_vendor = text(board.manufacturer());
        out.board_product = text(board.product());
        out.board_serial = text(board.serial_number());
        out.board_asset_tag = text(board.asset_tag());
    }
    if let Some(chassis) = data.find_map(|c: SMBiosSystemChassisInformation<'_>| Some(c)) {
        out.chassis_serial = text(chassis.serial_number());
        out.chassis_asset_tag = text(chassis.asset_tag_number());
    }
    out.sockets = data
        .collect::<SMBiosProcessorInformation<'_>>()
        .iter()
        .map(|p| Socket {
            designation: text(p.socket_designation()).unwrap_or_else(|| "?".into()),
            populated: p.status().is_some_and(|s| s.socket_populated()),
            version: text(p.processor_version()),
        })
        .collect();
    out.dimms = data
        .collect::<SMBiosMemoryDevice<'_>>()
        .iter()
        .map(dimm)
        .collect();
    Ok(out)
}

fn dimm(d: &SMBiosMemoryDevice<'_>) -> Dimm {
    let size_bytes = match d.size() {
        Some(MemorySize::Kilobytes(kb)) => Some(u64::from(kb) << 10),
        Some(MemorySize::Megabytes(mb)) => Some(u64::from(mb) << 20),
        Some(MemorySize::SeeExtendedSize) => match d.extended_size() {
            Some(MemorySizeExtended::Megabytes(mb)) => Some(u64::from(mb) << 20),
            _ => None,
        },
        // Not installed, or a size the firmware does not know: no module to count.
        Some(MemorySize::NotInstalled | MemorySize::Unknown) | None => None,
    };
    // The configured speed is what the module runs at; the plain speed is what it can do.
    let speed = |plain: Option<MemorySpeed>, extended: Option<MemorySpeedExtended>| match plain {
        Some(MemorySpeed::MTs(s)) => Some(u32::from(s)),
        Some(MemorySpeed::SeeExtendedSpeed) => match extended {
            Some(MemorySpeedExtended::MTs(s)) => Some(s),
            _ => None,
        },
        _ => None,
    };
    let speed_mts = speed(
        d.configured_memory_speed(),
        d.extended_configured_memory_speed(),
    )
    .or_else(|| speed(d.speed(), d.extended_speed()));
    let installed = size_bytes.is_some();
    Dimm {
        locator: text(d.device_locator()).unwrap_or_else(|| "?".into()),
        bank: text(d.bank_locator()),
        size_bytes,
        kind: installed
            .then(|| d.memory_type())
            .flatten()
            .and_then(|t| match t.value {
                MemoryDeviceType::Other | MemoryDeviceType::Unknown | MemoryDeviceType::None => {
                    None
                }
                known => Some(format!("{known:?}").to_uppercase()),
            }),
        speed_mts: installed.then_some(speed_mts).flatten(),
        manufacturer: installed.then(|| text(d.manufacturer())).flatten(),
        serial: installed.then(|| text(d.serial_number())).flatten(),
        part: installed.then(|| text(d.part_number())).flatten(),
        asset_tag: installed.then(|| text(d.asset_tag())).flatten(),
    }
}

/// A table string, or `None` for the placeholders firmware writes when it knows nothing.
fn text(s: SMBiosString) -> Option<String> {
    let s = s.to_utf8_lossy()?;
    let s = s.trim();
    let placeholder = s.is_empty()
        || [
            "Not Specified",
            "Not Available",
            "Unknown",
            "To Be Filled By O.E.M.",
            "Default string",
            "None",
            "NO DIMM",
            "Not Provided",
        ]
        .iter()
        .any(|p| s.eq_ignore_ascii_case(p));
    (!placeholder).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Smbios {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smbios"
        ));
        let ep = std::fs::read(dir.join(format!("{name}.smbios_entry_point"))).unwrap();
        let table = std::fs::read(dir.join(format!("{name}.DMI"))).unwrap();
        parse(&ep, table).unwrap()
    }

    #[test]
    fn qemu_seabios_tables_give_identity_sockets_and_the_dimm() {
        let s = fixture("qemu-7.2-seabios");
        assert_eq!(s.version, "2.8");
        assert_eq!(s.vendor.as_deref(), Some("KilnLab"));
        assert_eq!(s.product.as_deref(), Some("Server-1U"));
        assert_eq!(s.serial.as_deref(), Some("SN-LAB-0001"));
        assert_eq!(s.board_serial.as_deref(), Some("BB-0001"));
        assert_eq!(s.board_asset_tag.as_deref(), Some("ASSET-BB"));
        assert_eq!(s.chassis_serial.as_deref(), Some("CH-0001"));
        assert_eq!(s.chassis_asset_tag.as_deref(), Some("ASSET-CH"));
        assert_eq!(s.sockets.len(), 1, "{:?}", s.sockets);
        assert!(s.sockets.iter().all(|c| c.populated));
        assert_eq!(s.sockets[0].designation, "CPU 0");
        assert_eq!(s.sockets[0].version.as_deref(), Some("K1"));
        assert_eq!(s.dimms.len(), 1);
        let d = &s.dimms[0];
        assert_eq!(d.locator, "DIMM 0");
        assert_eq!(d.bank.as_deref(), Some("BANK"));
        assert_eq!(d.size_bytes, Some(1 << 30));
        assert_eq!(d.kind.as_deref(), Some("RAM"));
        assert_eq!(d.speed_mts, Some(3200));
        assert_eq!(d.manufacturer.as_deref(), Some("Samsung"));
        assert_eq!(d.serial.as_deref(), Some("DS-0001"));
        assert_eq!(d.part.as_deref(), Some("M393A4K40DB3-CWE"));
        assert_eq!(d.asset_tag.as_deref(), Some("DA-0001"));
    }

    /// An SMBIOS 3.x entry point (`_SM3_`, 24 bytes, checksummed) for a table of `len`
    /// bytes at version `major.minor`.
    fn entry_point_3(major: u8, minor: u8, len: u32) -> Vec<u8> {
        let mut ep = b"_SM3_".to_vec();
        ep.extend_from_slice(&[0, 0x18, major, minor, 0, 1, 0]);
        ep.extend_from_slice(&len.to_le_bytes());
        ep.extend_from_slice(&0u64.to_le_bytes());
        let sum = ep.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        ep[5] = 0u8.wrapping_sub(sum);
        ep
    }

    #[test]
    fn a_real_laptops_table_gives_identity_socket_and_both_channels() {
        let table = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smbios/surface-laptop-3.DMI"
        ))
        .unwrap();
        let s = parse(&entry_point_3(3, 2, table.len() as u32), table).unwrap();
        assert_eq!(s.version, "3.2");
        assert_eq!(s.vendor.as_deref(), Some("Microsoft Corporation"));
        assert_eq!(s.product.as_deref(), Some("Surface Laptop 3"));
        assert_eq!(s.serial.as_deref(), Some("023078193757"));
        assert_eq!(s.board_serial.as_deref(), Some("A009250100J1939A"));
        assert_eq!(s.chassis_serial.as_deref(), Some("023078193757"));
        assert_eq!(s.sockets.len(), 1, "{:?}", s.sockets);
        assert_eq!(s.sockets[0].designation, "FP5");
        assert_eq!(
            s.sockets[0].version.as_deref(),
            Some("AMD Ryzen 7 Microsoft Surface (R) Edition")
        );
        let banks: Vec<Option<&str>> = s.dimms.iter().map(|d| d.bank.as_deref()).collect();
        assert_eq!(banks, [Some("P0 CHANNEL A"), Some("P0 CHANNEL B")]);
        for d in &s.dimms {
            assert_eq!(d.locator, "DIMM 0");
            assert_eq!(d.manufacturer.as_deref(), Some("Hynix"));
            // Padded with spaces in the table; compared trimmed.
            assert_eq!(d.part.as_deref(), Some("HMAA1GS6CMR6N-UH"));
            assert_eq!(d.size_bytes, Some(8 << 30));
            assert_eq!(d.kind.as_deref(), Some("DDR4"));
            assert_eq!(d.speed_mts, Some(2400));
        }
    }

    #[test]
    fn qemu_ovmf_tables_split_20g_into_two_devices() {
        let s = fixture("qemu-7.2-ovmf-20G");
        assert_eq!(s.serial.as_deref(), Some("SN-LAB-0002"));
        let sizes: Vec<Option<u64>> = s.dimms.iter().map(|d| d.size_bytes).collect();
        assert_eq!(sizes, [Some(16 << 30), Some(4 << 30)]);
        let names: Vec<&str> = s.dimms.iter().map(|d| d.locator.as_str()).collect();
        assert_eq!(names, ["DIMM 0", "DIMM 1"]);
    }

    #[test]
    fn an_empty_slot_is_listed_without_a_module() {
        // The SeaBIOS table with the memory device's size word (offset 0x0C of type 17) set
        // to 0, as firmware writes it for an empty slot.
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smbios"
        ));
        let ep = std::fs::read(dir.join("qemu-7.2-seabios.smbios_entry_point")).unwrap();
        let mut table = std::fs::read(dir.join("qemu-7.2-seabios.DMI")).unwrap();
        let mut at = 0;
        while table[at] != 17 {
            let len = usize::from(table[at + 1]);
            at += len;
            // Skip the string area: up to and past its double NUL.
            while !(table[at] == 0 && table[at + 1] == 0) {
                at += 1;
            }
            at += 2;
        }
        table[at + 0x0C] = 0;
        table[at + 0x0D] = 0;
        let s = parse(&ep, table).unwrap();
        let d = &s.dimms[0];
        assert_eq!(d.locator, "DIMM 0");
        assert_eq!(d.size_bytes, None);
        assert_eq!((d.part.as_deref(), d.serial.as_deref()), (None, None));
    }

    #[test]
    fn a_missing_or_bad_entry_point_is_an_error_that_says_so() {
        let err = read(Path::new("/nonexistent/dmi")).unwrap_err();
        assert!(err.contains("/nonexistent/dmi/smbios_entry_point"), "{err}");
        let err = parse(b"_XX_ not an entry point", vec![0; 16]).unwrap_err();
        assert!(err.contains("neither _SM_ nor _SM3_"), "{err}");
    }
}
