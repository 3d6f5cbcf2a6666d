//! SATA SMART without smartctl: ATA PASS-THROUGH (16) through SG_IO on the disk's block
//! device (the kernel's SCSI/ATA translation, SAT), as smartmontools does for `-d sat`:
//! SMART READ DATA and READ THRESHOLDS for the attribute table, SMART RETURN STATUS for the
//! drive's own verdict.

use std::os::fd::AsRawFd;
use std::path::Path;

/// `SG_IO` of `<scsi/sg.h>`.
const SG_IO: libc::c_ulong = 0x2285;
/// `SG_DXFER_NONE`, `SG_DXFER_FROM_DEV`.
const SG_DXFER_NONE: i32 = -1;
const SG_DXFER_FROM_DEV: i32 = -3;

/// `struct sg_io_hdr` of `<scsi/sg.h>`.
#[repr(C)]
struct SgIoHdr {
    interface_id: i32,
    dxfer_direction: i32,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut libc::c_void,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: i32,
    usr_ptr: *mut libc::c_void,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: i32,
    duration: u32,
    info: u32,
}

/// One SMART attribute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attribute {
    /// Attribute id (5 reallocated sectors, 197 pending sectors, …).
    pub id: u8,
    /// Normalized value.
    pub value: u8,
    /// Worst normalized value seen.
    pub worst: u8,
    /// The drive's failure threshold for the normalized value, when read.
    pub threshold: Option<u8>,
    /// Pre-failure attribute (flag bit 0): at or below its threshold, the drive predicts its
    /// own failure.
    pub prefail: bool,
    /// The raw value (48 bits).
    pub raw: u64,
}

impl Attribute {
    /// A pre-failure attribute at or below its threshold.
    pub fn failing(&self) -> bool {
        self.prefail && self.threshold.is_some_and(|t| t != 0 && self.value <= t)
    }
}

/// What a SATA drive reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Smart {
    /// SMART RETURN STATUS: `Some(false)` when the drive says a threshold is exceeded.
    pub passed: Option<bool>,
    /// The attribute table.
    pub attributes: Vec<Attribute>,
}

impl Smart {
    /// The raw value of attribute `id`.
    pub fn raw(&self, id: u8) -> Option<u64> {
        self.attributes.iter().find(|a| a.id == id).map(|a| a.raw)
    }
}

/// The name smartmontools gives the attributes kiln reads.
pub fn attribute_name(id: u8) -> &'static str {
    match id {
        5 => "reallocated sectors",
        10 => "spin retries",
        184 => "end-to-end errors",
        187 => "reported uncorrectable errors",
        188 => "command timeouts",
        196 => "reallocation events",
        197 => "pending sectors",
        198 => "offline uncorrectable sectors",
        199 => "UDMA CRC errors",
        _ => "attribute",
    }
}

/// Parses SMART READ DATA (and, when read, READ THRESHOLDS): 30 entries of 12 bytes from
/// offset 2; each 512-byte structure ends in a checksum making its bytes sum to 0.
pub fn parse(data: &[u8], thresholds: Option<&[u8]>) -> Result<Vec<Attribute>, String> {
    checked("SMART data", data)?;
    let thresholds = thresholds
        .map(|t| checked("SMART thresholds", t))
        .transpose()?;
    let mut out = Vec::new();
    for entry in data[2..2 + 30 * 12].chunks_exact(12) {
        let id = entry[0];
        if id == 0 {
            continue;
        }
        let mut raw = [0u8; 8];
        raw[..6].copy_from_slice(&entry[5..11]);
        let threshold = thresholds.and_then(|t| {
            t[2..2 + 30 * 12]
                .chunks_exact(12)
                .find(|e| e[0] == id)
                .map(|e| e[1])
        });
        out.push(Attribute {
            id,
            value: entry[3],
            worst: entry[4],
            threshold,
            prefail: entry[1] & 1 != 0,
            raw: u64::from_le_bytes(raw),
        });
    }
    Ok(out)
}

fn checked<'a>(what: &str, block: &'a [u8]) -> Result<&'a [u8], String> {
    if block.len() < 512 {
        return Err(format!("{what} is {} bytes; expected 512", block.len()));
    }
    let sum = block[..512].iter().fold(0u8, |s, b| s.wrapping_add(*b));
    if sum != 0 {
        return Err(format!(
            "{what} fails its checksum (bytes sum to {sum:#04x}, not 0)"
        ));
    }
    Ok(&block[..512])
}

/// The drive's verdict from the ATA Status Return sense descriptor of SMART RETURN STATUS:
/// LBA mid/high 4Fh/C2h is good, F4h/2Ch is a threshold exceeded.
pub fn return_status(sense: &[u8]) -> Option<bool> {
    // Descriptor-format sense (response code 72h); descriptors from byte 8.
    if sense.len() < 8 || sense[0] & 0x7F != 0x72 {
        return None;
    }
    let end = (8 + usize::from(sense[7])).min(sense.len());
    let mut at = 8;
    while at + 2 <= end {
        let (code, len) = (sense[at], usize::from(sense[at + 1]));
        if code == 0x09 && at + 14 <= sense.len() {
            let d = &sense[at..at + 14];
            return match (d[9], d[11]) {
                (0x4F, 0xC2) => Some(true),
                (0xF4, 0x2C) => Some(false),
                _ => None,
            };
        }
        at += 2 + len;
    }
    None
}

/// Reads SMART status and attributes from `device` (`/dev/sda`).
pub fn read(device: &Path) -> Result<Smart, String> {
    let raw = read_raw(device)?;
    let attributes = parse(&raw.data, raw.thresholds.as_deref())
        .map_err(|e| format!("{}: {e}", device.display()))?;
    Ok(Smart {
        passed: raw.status_sense.as_deref().and_then(return_status),
        attributes,
    })
}

/// The blocks and sense data SMART answers with, as read.
#[derive(Debug, Clone, Default)]
pub struct RawSmart {
    /// SMART READ DATA.
    pub data: Vec<u8>,
    /// SMART READ THRESHOLDS, when the drive answered.
    pub thresholds: Option<Vec<u8>>,
    /// The sense data of SMART RETURN STATUS, when the drive answered.
    pub status_sense: Option<Vec<u8>>,
}

/// Reads SMART's answers from `device` without interpreting them.
pub fn read_raw(device: &Path) -> Result<RawSmart, String> {
    let file = std::fs::File::open(device).map_err(|e| format!("{}: {e}", device.display()))?;
    let mut data = vec![0u8; 512];
    pass_through(&file, 0xD0, Some(&mut data))
        .map_err(|e| format!("{}: SMART READ DATA: {e}", device.display()))?;
    let mut thresholds = vec![0u8; 512];
    let thresholds = pass_through(&file, 0xD1, Some(&mut thresholds))
        .ok()
        .map(|_| thresholds);
    let status_sense = pass_through(&file, 0xDA, None).ok();
    Ok(RawSmart {
        data,
        thresholds,
        status_sense,
    })
}

/// One SMART command (feature `feature`) as ATA PASS-THROUGH (16); reads 512 bytes into
/// `data` (PIO data-in) or none (non-data, with the registers asked back in the sense data,
/// which is returned).
fn pass_through(
    file: &std::fs::File,
    feature: u8,
    data: Option<&mut Vec<u8>>,
) -> Result<Vec<u8>, String> {
    let reading = data.is_some();
    let mut cdb = [0u8; 16];
    cdb[0] = 0x85; // ATA PASS-THROUGH (16)
    if reading {
        cdb[1] = 4 << 1; // PIO data-in
        cdb[2] = 0x0E; // T_DIR from device, BYT_BLOK, T_LENGTH in the sector count
        cdb[6] = 1; // one sector
    } else {
        cdb[1] = 3 << 1; // non-data
        cdb[2] = 0x20; // CK_COND: return the registers
    }
    cdb[4] = feature;
    cdb[10] = 0x4F; // LBA mid, LBA high: the SMART signature
    cdb[12] = 0xC2;
    cdb[14] = 0xB0; // SMART
    let mut sense = vec![0u8; 32];
    let (dir, len, ptr) = match data {
        Some(buf) => (SG_DXFER_FROM_DEV, buf.len() as u32, buf.as_mut_ptr().cast()),
        None => (SG_DXFER_NONE, 0, std::ptr::null_mut()),
    };
    let mut hdr = SgIoHdr {
        interface_id: i32::from(b'S'),
        dxfer_direction: dir,
        cmd_len: cdb.len() as u8,
        mx_sb_len: sense.len() as u8,
        iovec_count: 0,
        dxfer_len: len,
        dxferp: ptr,
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: 10_000,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: `hdr` points at `cdb`, `sense` and the data buffer (or none), all alive and of
    // the lengths given for the duration of the call; the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), SG_IO, &mut hdr as *mut SgIoHdr) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // With CK_COND (no data) the drive answers CHECK CONDITION carrying the registers:
    // expected, not a refusal.
    let registers_returned = !reading && hdr.status == 0x02;
    if hdr.host_status != 0 || (hdr.status != 0 && !registers_returned) {
        return Err(format!(
            "the device refused it (SCSI status {:#x}, host {:#x}, driver {:#x})",
            hdr.status, hdr.host_status, hdr.driver_status
        ));
    }
    sense.truncate(usize::from(hdr.sb_len_wr));
    Ok(sense)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SMART READ DATA block in the layout every ATA drive uses, with the checksum set.
    fn block(entries: &[(u8, u8, u8, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0] = 0x10; // revision
        for (i, &(id, flags, value, raw)) in entries.iter().enumerate() {
            let e = &mut b[2 + i * 12..2 + (i + 1) * 12];
            e[0] = id;
            e[1] = flags;
            e[3] = value;
            e[4] = value;
            e[5..11].copy_from_slice(&raw.to_le_bytes()[..6]);
        }
        let sum = b[..511].iter().fold(0u8, |s, x| s.wrapping_add(*x));
        b[511] = 0u8.wrapping_sub(sum);
        b
    }

    #[test]
    fn attributes_thresholds_and_raw_counters_are_read() {
        let data = block(&[(5, 0x33, 100, 12), (197, 0x32, 100, 3), (199, 0x3E, 200, 0)]);
        // Thresholds block: id in byte 0, threshold in byte 1 of each entry.
        let mut thr = block(&[]);
        thr[2] = 5;
        thr[3] = 36;
        thr[14] = 197;
        thr[15] = 0;
        let sum = thr[..511].iter().fold(0u8, |s, x| s.wrapping_add(*x));
        thr[511] = 0u8.wrapping_sub(sum);
        let attrs = parse(&data, Some(&thr)).unwrap();
        assert_eq!(attrs.len(), 3);
        assert_eq!(
            (attrs[0].id, attrs[0].raw, attrs[0].threshold),
            (5, 12, Some(36))
        );
        assert!(attrs[0].prefail && !attrs[0].failing());
        assert_eq!((attrs[1].id, attrs[1].raw), (197, 3));
        let smart = Smart {
            passed: Some(true),
            attributes: attrs,
        };
        assert_eq!(smart.raw(197), Some(3));
        assert_eq!(smart.raw(9), None);
    }

    #[test]
    fn qemus_smart_blocks_and_status_parse() {
        let data = include_bytes!("../../tests/fixtures/smart/qemu-7.2-ide-hd-smart-data.bin");
        let thr = include_bytes!("../../tests/fixtures/smart/qemu-7.2-ide-hd-smart-thresholds.bin");
        let sense =
            include_bytes!("../../tests/fixtures/smart/qemu-7.2-ide-hd-return-status-sense.bin");
        let attrs = parse(data, Some(thr)).unwrap();
        let ids: Vec<u8> = attrs.iter().map(|a| a.id).collect();
        assert_eq!(ids, [1, 3, 4, 5, 9, 12, 190]);
        let reallocated = attrs.iter().find(|a| a.id == 5).unwrap();
        assert_eq!(
            (reallocated.value, reallocated.threshold, reallocated.raw),
            (100, Some(36), 0)
        );
        assert!(attrs.iter().all(|a| !a.failing()));
        assert_eq!(return_status(sense), Some(true));
    }

    #[test]
    fn a_prefail_attribute_at_its_threshold_is_failing() {
        let a = Attribute {
            id: 5,
            value: 36,
            worst: 36,
            threshold: Some(36),
            prefail: true,
            raw: 4000,
        };
        assert!(a.failing());
        let advisory = Attribute {
            prefail: false,
            ..a.clone()
        };
        assert!(!advisory.failing());
    }

    #[test]
    fn a_bad_checksum_is_refused_by_name() {
        let mut data = block(&[(5, 0x33, 100, 1)]);
        data[100] ^= 0xFF;
        let err = parse(&data, None).unwrap_err();
        assert!(err.starts_with("SMART data fails its checksum"), "{err}");
    }

    #[test]
    fn return_status_reads_the_ata_descriptor() {
        let mut sense = vec![0u8; 22];
        sense[0] = 0x72;
        sense[7] = 14;
        sense[8] = 0x09;
        sense[9] = 12;
        sense[17] = 0x4F;
        sense[19] = 0xC2;
        assert_eq!(return_status(&sense), Some(true));
        sense[17] = 0xF4;
        sense[19] = 0x2C;
        assert_eq!(return_status(&sense), Some(false));
        assert_eq!(return_status(&[0x70, 0, 0]), None);
    }

    #[test]
    fn the_header_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
        let err = read(Path::new("/dev/null")).unwrap_err();
        assert!(err.starts_with("/dev/null: SMART READ DATA"), "{err}");
    }
}
