//! NVMe health without nvme-cli or smartctl: the SMART / Health Information log page (Get Log
//! Page, log 02h, NVMe base specification 1.4 figure 194) through the kernel's admin
//! passthrough ioctl on the namespace's block device.

use std::os::fd::AsRawFd;
use std::path::Path;

/// Length of the SMART / Health Information log page.
pub const LOG_LEN: usize = 512;

/// `struct nvme_passthru_cmd` of `<linux/nvme_ioctl.h>`.
#[repr(C)]
#[derive(Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

/// `NVME_IOCTL_ADMIN_CMD`: `_IOWR('N', 0x41, struct nvme_passthru_cmd)`.
const NVME_IOCTL_ADMIN_CMD: u64 =
    (3 << 30) | ((std::mem::size_of::<PassthruCmd>() as u64) << 16) | ((b'N' as u64) << 8) | 0x41;

/// What the health log says.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// Critical warning bits (byte 0).
    pub critical_warning: u8,
    /// Composite temperature in kelvin; 0 when the controller does not report one.
    pub temperature_k: u16,
    /// Remaining spare capacity, percent.
    pub available_spare_pct: u8,
    /// Spare below this percent raises critical warning bit 0.
    pub spare_threshold_pct: u8,
    /// Vendor estimate of life used, percent (may exceed 100).
    pub percentage_used: u8,
    /// Data units (1000 × 512 bytes) read and written.
    pub data_units_read: u128,
    /// See `data_units_read`.
    pub data_units_written: u128,
    /// Power-on hours.
    pub power_on_hours: u128,
    /// Shutdowns without a shutdown notification.
    pub unsafe_shutdowns: u128,
    /// Unrecovered data integrity errors.
    pub media_errors: u128,
    /// Entries in the error information log over the controller's life.
    pub error_log_entries: u128,
}

impl Health {
    /// The names of the critical warning bits that are set.
    pub fn warnings(&self) -> Vec<&'static str> {
        [
            "available spare below threshold",
            "temperature outside its thresholds",
            "reliability degraded by media or internal errors",
            "media placed in read-only mode",
            "volatile memory backup failed",
            "persistent memory region read-only or unreliable",
        ]
        .iter()
        .enumerate()
        .filter(|(bit, _)| self.critical_warning & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
    }

    /// Composite temperature in °C, when reported.
    pub fn temperature_c(&self) -> Option<f64> {
        (self.temperature_k > 0).then(|| f64::from(self.temperature_k) - 273.15)
    }
}

/// Parses a SMART / Health Information log page.
pub fn parse(log: &[u8]) -> Result<Health, String> {
    if log.len() < LOG_LEN {
        return Err(format!(
            "the health log is {} bytes; expected {LOG_LEN}",
            log.len()
        ));
    }
    let u16_at = |at: usize| u16::from_le_bytes([log[at], log[at + 1]]);
    let u128_at = |at: usize| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&log[at..at + 16]);
        u128::from_le_bytes(b)
    };
    Ok(Health {
        critical_warning: log[0],
        temperature_k: u16_at(1),
        available_spare_pct: log[3],
        spare_threshold_pct: log[4],
        percentage_used: log[5],
        data_units_read: u128_at(32),
        data_units_written: u128_at(48),
        power_on_hours: u128_at(128),
        unsafe_shutdowns: u128_at(144),
        media_errors: u128_at(160),
        error_log_entries: u128_at(176),
    })
}

/// Reads the health log of the controller behind `device` (`/dev/nvme0n1` or `/dev/nvme0`).
pub fn read(device: &Path) -> Result<Health, String> {
    parse(&read_log(device)?)
}

/// The raw health log page of the controller behind `device`.
pub fn read_log(device: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(device).map_err(|e| format!("{}: {e}", device.display()))?;
    let mut log = vec![0u8; LOG_LEN];
    let mut cmd = PassthruCmd {
        opcode: 0x02, // Get Log Page
        nsid: 0xFFFF_FFFF,
        addr: log.as_mut_ptr() as u64,
        data_len: LOG_LEN as u32,
        // Log 02h, number of dwords less one in bits 31:16.
        cdw10: ((LOG_LEN as u32 / 4 - 1) << 16) | 0x02,
        timeout_ms: 10_000,
        ..PassthruCmd::default()
    };
    // SAFETY: `cmd` is a valid nvme_passthru_cmd whose `addr` points at `log`, LOG_LEN bytes
    // that outlive the call; the fd is open.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            NVME_IOCTL_ADMIN_CMD as libc::c_ulong,
            &mut cmd as *mut PassthruCmd,
        )
    };
    match rc {
        0 => Ok(log),
        -1 => Err(format!(
            "{}: Get Log Page (health): {}",
            device.display(),
            std::io::Error::last_os_error()
        )),
        status => Err(format!(
            "{}: Get Log Page (health): the controller answered status {status:#x}",
            device.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A health log laid out as the specification's figure 194 places each field, with the
    /// values QEMU's emulated controller starts from (no spare used, 0 % life used).
    fn log() -> Vec<u8> {
        let mut log = vec![0u8; LOG_LEN];
        log[1..3].copy_from_slice(&323u16.to_le_bytes()); // 49.85 °C
        log[3] = 100;
        log[4] = 10;
        log[32..48].copy_from_slice(&1234u128.to_le_bytes());
        log[48..64].copy_from_slice(&5678u128.to_le_bytes());
        log[128..144].copy_from_slice(&42u128.to_le_bytes());
        log[144..160].copy_from_slice(&3u128.to_le_bytes());
        log
    }

    #[test]
    fn qemus_health_log_parses() {
        let log = include_bytes!("../../tests/fixtures/smart/qemu-7.2-nvme-health.log");
        let h = parse(log).unwrap();
        assert_eq!(h.critical_warning, 0);
        assert_eq!(h.temperature_k, 323);
        assert_eq!(h.media_errors, 0);
        assert_eq!(h.data_units_read, 1);
    }

    #[test]
    fn the_command_is_the_kernels_ioctl_number() {
        assert_eq!(std::mem::size_of::<PassthruCmd>(), 72);
        assert_eq!(NVME_IOCTL_ADMIN_CMD, 0xC048_4E41);
    }

    #[test]
    fn a_healthy_log_parses_field_by_field() {
        let h = parse(&log()).unwrap();
        assert_eq!(h.critical_warning, 0);
        assert!(h.warnings().is_empty());
        assert_eq!(h.temperature_c().map(|t| t.round()), Some(50.0));
        assert_eq!((h.available_spare_pct, h.spare_threshold_pct), (100, 10));
        assert_eq!((h.data_units_read, h.data_units_written), (1234, 5678));
        assert_eq!((h.power_on_hours, h.unsafe_shutdowns), (42, 3));
        assert_eq!(h.media_errors, 0);
    }

    #[test]
    fn warning_bits_and_media_errors_are_named() {
        let mut bytes = log();
        bytes[0] = 0b0000_1001;
        bytes[160..176].copy_from_slice(&7u128.to_le_bytes());
        let h = parse(&bytes).unwrap();
        assert_eq!(
            h.warnings(),
            [
                "available spare below threshold",
                "media placed in read-only mode"
            ]
        );
        assert_eq!(h.media_errors, 7);
        assert!(parse(&bytes[..100]).unwrap_err().contains("100 bytes"));
    }

    #[test]
    fn a_device_that_is_not_nvme_is_an_error_that_names_it() {
        let err = read(Path::new("/dev/null")).unwrap_err();
        assert!(err.starts_with("/dev/null: Get Log Page"), "{err}");
    }
}
