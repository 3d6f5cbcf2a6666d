//! The hot loops: fill a block from a pattern, invert it in place, scan it for words that
//! differ — with AVX2 and non-temporal stores where the CPU has them (detected at run time),
//! portable code otherwise. Every `unsafe` of the memory check is here.

/// Where a sweep's expected words come from. Blocks handed to it start at word indexes that
/// are multiples of 64, so periodic patterns can be a 64-word table the CPU streams from.
pub(super) trait Words {
    /// The expected word at index `i` of the worker's share.
    fn at(&self, i: usize) -> u64;
    /// Writes the expected words of `block`, which starts at index `first`.
    fn fill(&self, block: &mut [u64], first: usize);
    /// OR of (read XOR expected) over `chunk`, which starts at `first`: zero when it matches.
    fn diff(&self, chunk: &[u64], first: usize) -> u64;
}

/// A pattern that repeats every 64 words.
pub(super) struct Table([u64; 64]);

impl Table {
    pub(super) fn from_fn(f: impl Fn(usize) -> u64) -> Self {
        Self(std::array::from_fn(f))
    }
}

impl Words for Table {
    fn at(&self, i: usize) -> u64 {
        self.0[i % 64]
    }

    #[inline(always)]
    fn fill(&self, block: &mut [u64], first: usize) {
        debug_assert_eq!(first % 64, 0);
        let mut groups = block.chunks_exact_mut(64);
        for group in &mut groups {
            stream_copy64(group, &self.0);
        }
        for (j, w) in groups.into_remainder().iter_mut().enumerate() {
            *w = self.0[j];
        }
    }

    #[inline(always)]
    fn diff(&self, chunk: &[u64], _first: usize) -> u64 {
        chunk
            .iter()
            .zip(&self.0)
            .fold(0, |acc, (w, t)| acc | (w ^ t))
    }
}

/// A pattern computed from the word index.
pub(super) struct Func<F>(pub(super) F);

impl<F: Fn(usize) -> u64> Words for Func<F> {
    fn at(&self, i: usize) -> u64 {
        (self.0)(i)
    }

    #[inline(always)]
    fn fill(&self, block: &mut [u64], first: usize) {
        // Compute a group into a small buffer (a loop the compiler vectorizes), then stream it.
        for (g, group) in block.chunks_mut(64).enumerate() {
            let at = first + g * 64;
            let values: [u64; 64] = std::array::from_fn(|j| (self.0)(at + j));
            stream_copy64(group, &values);
        }
    }

    #[inline(always)]
    fn diff(&self, chunk: &[u64], first: usize) -> u64 {
        chunk
            .iter()
            .enumerate()
            .fold(0, |acc, (j, w)| acc | (w ^ (self.0)(first + j)))
    }
}

/// A cheap, well-mixed hash of a word index. It multiplies 32-bit halves only, which SIMD
/// units do lane by lane, so generating the random pattern keeps up with memory.
#[inline(always)]
pub(super) fn mix64(x: u64) -> u64 {
    let a = (x & 0xFFFF_FFFF).wrapping_mul(0x9E37_79B1);
    let b = (x >> 32).wrapping_mul(0x85EB_CA77);
    let y = a ^ b.rotate_left(32) ^ x;
    y ^ (y >> 29)
}

/// Writes the pattern into `block` (which starts at `first`), with AVX2 where present.
pub(super) fn fill_block(source: &impl Words, block: &mut [u64], first: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just seen to support AVX2, the only requirement of fill_avx2.
        return unsafe { fill_avx2(source, block, first) };
    }
    source.fill(block, first);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn fill_avx2(source: &impl Words, block: &mut [u64], first: usize) {
    source.fill(block, first);
}

/// One moving-inversions step over a block: check each word holds `want` and write `write`,
/// walking up or down, 64 words at a time. Returns the (index, value) of words that differed.
pub(super) fn invert_block(
    block: &mut [u64],
    offset: usize,
    want: u64,
    write: u64,
    ascending: bool,
) -> Vec<(usize, u64)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just seen to support AVX2, the only requirement of invert_avx2.
        return unsafe { invert_avx2(block, offset, want, write, ascending) };
    }
    invert_portable(block, offset, want, write, ascending)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn invert_avx2(
    block: &mut [u64],
    offset: usize,
    want: u64,
    write: u64,
    ascending: bool,
) -> Vec<(usize, u64)> {
    invert_portable(block, offset, want, write, ascending)
}

#[inline(always)]
pub(super) fn invert_portable(
    block: &mut [u64],
    offset: usize,
    want: u64,
    write: u64,
    ascending: bool,
) -> Vec<(usize, u64)> {
    let mut bad = Vec::new();
    let len = block.len();
    let groups = len.div_ceil(64);
    for g in 0..groups {
        let g = if ascending { g } else { groups - 1 - g };
        let start = g * 64;
        let group = &mut block[start..(start + 64).min(len)];
        let diff = group.iter().fold(0, |acc, w| acc | (w ^ want));
        if diff != 0 {
            bad.extend(
                group
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| **w != want)
                    .map(|(j, w)| (offset + start + j, *w)),
            );
        }
        if ascending {
            group.iter_mut().for_each(|w| *w = write);
        } else {
            group.iter_mut().rev().for_each(|w| *w = write);
        }
    }
    bad
}

/// Start indexes of the 64-word chunks of `block` (which starts at `first`) that differ from
/// the pattern. Reading is the slow half of a sweep, so this uses the widest loads the CPU has.
pub(super) fn scan(source: &impl Words, block: &[u64], first: usize) -> Vec<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just seen to support AVX2, the only requirement of scan_avx2.
        return unsafe { scan_avx2(source, block, first) };
    }
    scan_portable(source, block, first)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn scan_avx2(source: &impl Words, block: &[u64], first: usize) -> Vec<usize> {
    scan_portable(source, block, first)
}

#[inline(always)]
pub(super) fn scan_portable(source: &impl Words, block: &[u64], first: usize) -> Vec<usize> {
    let mut bad = Vec::new();
    for (c, chunk) in block.chunks(64).enumerate() {
        let at = first + c * 64;
        if source.diff(chunk, at) != 0 {
            bad.push(at);
        }
    }
    bad
}

/// Copies a 64-word group from `table` with streaming stores where the CPU has them.
#[inline(always)]
pub(super) fn stream_copy64(group: &mut [u64], table: &[u64; 64]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let dst = group.as_mut_ptr();
        if (dst as usize) % 16 == 0 && group.len() == 64 {
            for k in (0..64).step_by(2) {
                // SAFETY: SSE2 is part of x86_64; k + 1 < 64 keeps both pointers in bounds and
                // `dst + k` is 16-byte aligned because `dst` is and k is even.
                unsafe {
                    let v = _mm_loadu_si128(table.as_ptr().add(k).cast::<__m128i>());
                    _mm_stream_si128(dst.add(k).cast::<__m128i>(), v);
                }
            }
            return;
        }
    }
    group.copy_from_slice(&table[..group.len()]);
}

/// Orders streaming stores before the reads that check them.
pub(super) fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 (sfence) is part of x86_64 and the fence has no operands.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}
