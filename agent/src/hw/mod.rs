//! Native readers of what a server's firmware and devices report, with no tool in the image:
//! the SMBIOS tables (system, board, chassis, CPU sockets, memory devices), NVMe and SATA
//! health, PCIe links and their AER counters.

pub mod ata;
pub mod edac;
pub mod nvme;
pub mod pcie;
pub mod sel;
pub mod smbios;
