//! One pass over a job's blocks, as both I/O engines (io_uring and threads) see it: the
//! buffers, which way the blocks move, and what the pass found.

use super::{Duration, File, Job, MAX_DETAILED, Stop};
use crate::os::locked::LockedRegion;

/// A block that read back wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMismatch {
    /// Block index.
    pub block: u64,
    /// Byte offset of the block.
    pub offset: u64,
    /// Words in a block.
    pub words: usize,
    /// Words that differ.
    pub bad_words: usize,
    /// Index of the first differing word.
    pub first_bad_word: usize,
    /// Expected value of that word.
    pub expected: u64,
    /// Value read.
    pub actual: u64,
    /// When the block's header names another block: that block's index.
    pub holds_block: Option<u64>,
}

/// A pass's buffers, one per I/O in flight, in one region on huge pages where the kernel
/// gives them: a 1 MiB buffer on 4 KiB pages is 256 pieces of memory, more than a virtio disk
/// takes in one request (254 segments here), so each block went to the device as two
/// requests; within a huge page it is one piece. Locked when allowed, pre-faulted either way,
/// so no I/O waits for a page fault.
pub(super) struct Buffers {
    region: LockedRegion,
    count: usize,
    words: usize,
}

impl Buffers {
    pub(super) fn new(count: usize, block_size: usize) -> anyhow::Result<Self> {
        // O_DIRECT wants every buffer on a 4 KiB boundary; blocks are whole 4 KiB pages.
        anyhow::ensure!(
            block_size >= 4096 && block_size.is_multiple_of(4096),
            "a {block_size}-byte block is not a whole number of 4 KiB pages"
        );
        // Whole huge pages, so that even one small buffer gets one (and starts on it).
        let bytes = (count * block_size).next_multiple_of(2 << 20);
        let region = LockedRegion::new(bytes).map_err(|e| {
            anyhow::anyhow!("cannot map {count} I/O buffers of {block_size} bytes: {e}")
        })?;
        Ok(Self {
            region,
            count,
            words: block_size / 8,
        })
    }

    /// Buffer `slot`.
    pub(super) fn words(&mut self, slot: usize) -> &mut [u64] {
        let words = self.words;
        &mut self.region.as_mut_slice()[slot * words..(slot + 1) * words]
    }

    /// Every buffer at once, one for each thread.
    pub(super) fn each(&mut self) -> impl Iterator<Item = &mut [u64]> {
        let (words, count) = (self.words, self.count);
        self.region
            .as_mut_slice()
            .chunks_exact_mut(words)
            .take(count)
    }
}

/// A buffer's bytes, as the I/O calls take them.
pub(super) fn bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: the same memory, borrowed as mutably as `words` is; u8 has no alignment or
    // validity needs a u64's bytes do not meet.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

/// Which way a pass moves the blocks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Write,
    Read,
}

/// What a pass over every block did.
#[derive(Default)]
pub(super) struct PassRun {
    pub(super) complete: bool,
    pub(super) blocks_done: u64,
    pub(super) latencies: Vec<Duration>,
    pub(super) mismatch_count: u64,
    pub(super) mismatches: Vec<BlockMismatch>,
}

impl PassRun {
    /// Counts a block read back: its mismatch, if any, kept in detail while there is room.
    pub(super) fn verified(&mut self, mismatch: Option<BlockMismatch>) {
        if let Some(m) = mismatch {
            self.mismatch_count += 1;
            if self.mismatches.len() < MAX_DETAILED {
                self.mismatches.push(m);
            }
        }
        self.blocks_done += 1;
    }
}

/// What the write pass and the read-and-verify pass over one job share.
#[derive(Clone, Copy)]
pub(super) struct Pass<'a> {
    pub(super) job: &'a Job,
    pub(super) file: &'a File,
    pub(super) blocks: u64,
    pub(super) block_size: usize,
    pub(super) seed: u64,
    pub(super) stop: &'a Stop,
    pub(super) progress: &'a (dyn Fn(u64) + Sync),
}
