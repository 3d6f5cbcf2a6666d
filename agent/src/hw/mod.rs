//! Native readers of what a server's firmware and devices report, with no tool in the image:
//! the SMBIOS tables (system, board, chassis, CPU sockets, memory devices), NVMe and SATA
//! health, PCIe links and their AER counters.

pub mod ata;
pub mod edac;
pub mod nvme;
pub mod pcie;
pub mod sel;
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
