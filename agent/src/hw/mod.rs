//! Native readers of what a server's firmware and devices report, with no tool in the image:
//! the SMBIOS tables (system, board, chassis, CPU sockets, memory devices), NVMe and SATA
//! health, PCIe links and their AER errors.

pub mod aer;
pub mod ata;
pub mod edac;
pub mod nvme;
pub mod pcie;
pub mod sel;
pub mod sensors;
pub mod smbios;

/// Whether a whole disk's health can be read natively: `Ok` when its NVMe health log or SATA
/// SMART answered, else why not.
pub fn disk_health(disk: &kiln_protocol::wire::DiskInfo) -> Result<(), String> {
    let device = std::path::Path::new(&disk.path);
    if disk.name.starts_with("nvme") {
        nvme::read(device).map(|_| ())
    } else if disk.name.starts_with("sd") {
        ata::read(device).map(|_| ())
    } else {
        Err(format!(
            "no native SMART reader for {} ({})",
            disk.name,
            disk.transport.as_deref().unwrap_or("unknown transport")
        ))
    }
}

/// A throwaway sysfs tree for the PCIe readers' tests.
#[cfg(test)]
pub(crate) mod test_sysfs {
    use std::path::{Path, PathBuf};

    /// Writes `files` into device `addr`'s directory under `sys/bus/pci/devices`.
    pub fn device(sys: &Path, addr: &str, files: &[(&str, &str)]) {
        let d = sys.join("bus/pci/devices").join(addr);
        std::fs::create_dir_all(&d).unwrap();
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
    }

    /// An empty tree named for the test.
    pub fn sysfs(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-pcie-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
