//! Anonymous memory for the memory check: mapped, pre-faulted, and locked so the kernel cannot
//! swap or migrate it while patterns run; unlocked and unmapped on drop.

use std::io;

/// A page-aligned region of 64-bit words.
pub struct LockedRegion {
    ptr: *mut u64,
    bytes: usize,
    locked: bool,
}

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
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ptr` and `bytes` are the mapping just made.
        let locked = unsafe { libc::mlock(ptr, bytes) } == 0;
        Ok(Self {
            ptr: ptr.cast(),
            bytes,
            locked,
        })
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
            libc::munmap(self.ptr.cast(), self.bytes);
        }
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}
