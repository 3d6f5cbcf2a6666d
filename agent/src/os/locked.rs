//! Anonymous memory for the memory check: mapped on a 2 MiB boundary and advised to use
//! transparent huge pages (so the TLB, not the DRAM, never limits a sweep), pre-faulted, and
//! locked so the kernel cannot swap or migrate it while patterns run; unlocked and unmapped on
//! drop.

use std::io;

/// A page-aligned region of 64-bit words.
pub struct LockedRegion {
    ptr: *mut u64,
    bytes: usize,
    locked: bool,
    /// The whole mapping, alignment slack included, for munmap.
    mapping: (*mut libc::c_void, usize),
}

/// Transparent huge page size on x86_64.
const HUGE: usize = 2 << 20;

// SAFETY: the region is plain memory owned by this value; access goes through `as_mut_slice`,
// which borrows it mutably, so the usual borrow rules prevent data races.
unsafe impl Send for LockedRegion {}
// SAFETY: shared references give no access to the memory.
unsafe impl Sync for LockedRegion {}

impl LockedRegion {
    /// Maps `bytes` (rounded down to whole pages) and tries to lock them. When locking is
    /// refused (RLIMIT_MEMLOCK, no CAP_IPC_LOCK) the region is still usable: `locked()` says so.
    pub fn new(bytes: usize) -> io::Result<Self> {
        let page = page_size();
        let bytes = bytes / page * page;
        if bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "less than one page to test",
            ));
        }
        // Regions of a huge page or more get one page of slack so they can start on a huge
        // page boundary; smaller ones would not fill one anyway.
        let slack = if bytes >= HUGE { HUGE } else { 0 };
        let len = bytes + slack;
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED before use.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = (mapping as usize).next_multiple_of(slack.max(page));
        let ptr = start as *mut libc::c_void;
        // SAFETY: [ptr, ptr + bytes) lies inside the mapping just made (start - mapping < slack).
        // Advice is a hint: a kernel without THP (or with it off) refuses it and nothing changes.
        unsafe { libc::madvise(ptr, bytes, libc::MADV_HUGEPAGE) };
        // Fault every page in now (mlock does when it is allowed), so the first sweep does not
        // time page faults and the huge pages are chosen while the range is empty.
        // SAFETY: as above.
        let locked = unsafe { libc::mlock(ptr, bytes) } == 0;
        if !locked {
            // SAFETY: as above; MADV_POPULATE_WRITE (Linux 5.14) pre-faults writable pages.
            let populated = unsafe { libc::madvise(ptr, bytes, libc::MADV_POPULATE_WRITE) } == 0;
            if !populated {
                // Older kernels: touch one word per page.
                // SAFETY: the range is mapped read-write; writing zero is what the page holds.
                unsafe {
                    for offset in (0..bytes).step_by(page) {
                        std::ptr::write_volatile(ptr.cast::<u8>().add(offset), 0);
                    }
                }
            }
        }
        Ok(Self {
            ptr: ptr.cast(),
            bytes,
            locked,
            mapping: (mapping, len),
        })
    }

    /// Bytes of the region the kernel backs with huge pages (from /proc/self/smaps), when it
    /// says.
    pub fn huge_bytes(&self) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let start = self.ptr as usize;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        inside = lo <= start && start < hi;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    let kb: usize = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
                    return Some(kb << 10);
                }
            }
        }
        None
    }

    /// Whether `mlock` succeeded.
    pub fn locked(&self) -> bool {
        self.locked
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The words of the region.
    pub fn as_mut_slice(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is `bytes` long, page aligned (so aligned for u64), readable and
        // writable, and lives as long as `self`, which this borrow keeps mutably borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes / 8) }
    }
}

impl Drop for LockedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`bytes` are exactly the mapping made in `new`, unmapped only here.
        unsafe {
            if self.locked {
                libc::munlock(self.ptr.cast(), self.bytes);
            }
            libc::munmap(self.mapping.0, self.mapping.1);
        }
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_region_starts_on_a_huge_page_and_gets_huge_pages_where_the_kernel_gives_them() {
        let mut region = LockedRegion::new(16 << 20).unwrap();
        assert_eq!(region.as_mut_slice().as_ptr() as usize % HUGE, 0);
        assert_eq!(region.bytes(), 16 << 20);
        // Every word is there and writable.
        region.as_mut_slice().iter_mut().for_each(|w| *w = 7);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if thp.contains("[always]") || thp.contains("[madvise]") {
            let huge = region.huge_bytes().expect("smaps names the region");
            assert!(huge >= 8 << 20, "only {huge} bytes on huge pages");
        }
        let mut small = LockedRegion::new(64 << 10).unwrap();
        assert_eq!(small.as_mut_slice().len(), 8 << 10);
    }
}
