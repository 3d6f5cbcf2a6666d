//! Physical addresses of our own pages, from `/proc/self/pagemap`, so a memory fault names the
//! physical address a technician can map to a DIMM. Without CAP_SYS_ADMIN the kernel reports
//! frame number 0, which we report as unknown.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Translates virtual to physical addresses of this process.
pub struct Pagemap {
    file: Option<File>,
    page: u64,
}

impl Pagemap {
    /// Opens the pagemap; translation answers `None` when it cannot be read.
    pub fn open() -> Self {
        Self {
            file: File::open("/proc/self/pagemap").ok(),
            page: super::locked::page_size() as u64,
        }
    }

    /// The physical address of `virt`, when the page is present and the kernel tells.
    pub fn physical(&self, virt: u64) -> Option<u64> {
        let file = self.file.as_ref()?;
        let mut entry = [0u8; 8];
        file.read_exact_at(&mut entry, virt / self.page * 8).ok()?;
        let entry = u64::from_le_bytes(entry);
        let present = entry >> 63 & 1 == 1;
        let frame = entry & ((1 << 55) - 1);
        (present && frame != 0).then(|| frame * self.page + virt % self.page)
    }
}
