//! Thin, checked wrappers over the Linux interfaces the checks read: sysfs and procfs files,
//! CPU affinity, locked anonymous memory, the pagemap, the kernel log, LLDP off the wire, and
//! the console the run's attestation is written to.

pub mod affinity;
pub mod attest;
pub mod kmsg;
pub mod lldp;
pub mod locked;
pub mod mce;
pub mod modules;
pub mod pagemap;
pub mod signatures;

use std::path::Path;

/// Reads a small sysfs/procfs file, trimmed; `None` when absent or unreadable (hardware that
/// lacks a file is normal, not an error).
pub fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Reads a sysfs file holding one unsigned integer.
pub fn read_u64(path: impl AsRef<Path>) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// Reads a sysfs file holding one signed integer (`speed` is -1 when unknown).
pub fn read_i64(path: impl AsRef<Path>) -> Option<i64> {
    read_trimmed(path)?.parse().ok()
}

/// The basename a symlink points to (`/sys/class/net/eth0/device/driver` → `virtio_net`).
pub fn link_name(path: impl AsRef<Path>) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Milliseconds since the Unix epoch, for event timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
