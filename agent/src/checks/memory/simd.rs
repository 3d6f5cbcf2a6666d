//! The hot loops: fill a block from a pattern, invert it in place, scan it for words that
//! differ. Work goes a cache line (eight words) at a time: a pattern yields a whole line, which
//! is written with the widest non-temporal store the CPU has — AVX-512, AVX2 or SSE2, chosen at
//! run time — and compared with the widest loads. The loops are written once, generic over the
//! pattern, and compiled once per instruction set. Every `unsafe` of the memory check is here.
//! x86_64 only, like the agent (its CPU readers are x86's).

/// One cache line of words.
pub(super) type Line = [u64; 8];

/// Words in a line.
const LINE: usize = 8;

/// Words in a scan group: differences are folded over a group before any word is looked at.
const GROUP: usize = 64;

/// Where a sweep's expected words come from. Blocks handed to it start at word indexes that
/// are multiples of 64, so a line always starts at a multiple of 8.
pub(super) trait Words: Sync {
    /// The expected word at index `i` of the worker's share.
    fn at(&self, i: usize) -> u64;
    /// The expected words at the eight indexes in `idx` (consecutive, the first a multiple of
    /// 8). Inlined into the hot loops, where the compiler computes the eight lanes in one
    /// vector; the loops step `idx` by one vector add per line instead of rebuilding it.
    fn line(&self, idx: &Line) -> Line;
}

/// A pattern that repeats every 64 words, kept as the eight lines it streams from.
pub(super) struct Table([Line; GROUP / LINE]);

impl Table {
    pub(super) fn from_fn(f: impl Fn(usize) -> u64) -> Self {
        Self(std::array::from_fn(|l| {
            std::array::from_fn(|j| f(l * LINE + j))
        }))
    }
}

impl Words for Table {
    fn at(&self, i: usize) -> u64 {
        self.0[(i / LINE) % self.0.len()][i % LINE]
    }

    #[inline(always)]
    fn line(&self, idx: &Line) -> Line {
        self.0[(idx[0] as usize / LINE) % self.0.len()]
    }
}

/// A pattern computed from the word index: a function the compiler can run in vector lanes
/// (adds, shifts, 32-bit multiplies), so no state is carried from word to word and the check
/// regenerates any word from its index alone.
pub(super) struct Func<F>(pub(super) F);

impl<F: Fn(u64) -> u64 + Sync> Words for Func<F> {
    fn at(&self, i: usize) -> u64 {
        (self.0)(i as u64)
    }

    #[inline(always)]
    fn line(&self, idx: &Line) -> Line {
        std::array::from_fn(|j| (self.0)(idx[j]))
    }
}

/// The word indexes of the line starting at `first`.
#[inline(always)]
fn indexes(first: usize) -> Line {
    std::array::from_fn(|j| (first + j) as u64)
}

/// The indexes of the next line.
#[inline(always)]
fn step(idx: &mut Line) {
    for i in idx.iter_mut() {
        *i += LINE as u64;
    }
}

/// A cheap, well-mixed hash of a word index. It multiplies 32-bit halves only, which SIMD
/// units do lane by lane (`vpmuludq`), so generating the random pattern keeps up with memory.
#[inline(always)]
pub(super) fn mix64(x: u64) -> u64 {
    let a = (x & 0xFFFF_FFFF).wrapping_mul(0x9E37_79B1);
    let b = (x >> 32).wrapping_mul(0x85EB_CA77);
    let y = a ^ b.rotate_left(32) ^ x;
    y ^ (y >> 29)
}

/// The widest vector unit this CPU offers the hot loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 512-bit loads and non-temporal stores.
    Avx512,
    /// 256-bit.
    Avx2,
    /// 128-bit SSE2 (every x86_64 has it).
    Baseline,
}

impl Isa {
    /// What the running CPU has (detected at run time: the binary runs on whatever node boots).
    pub fn detect() -> Self {
        if std::arch::is_x86_feature_detected!("avx512f") {
            Isa::Avx512
        } else if std::arch::is_x86_feature_detected!("avx2") {
            Isa::Avx2
        } else {
            Isa::Baseline
        }
    }

    /// Its name, for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512",
            Isa::Avx2 => "AVX2",
            Isa::Baseline => "SSE2",
        }
    }
}

/// The generic loops, compiled for one instruction set by `hot_loops!`. `$store` writes one
/// line to a 64-byte-aligned address, bypassing the cache; `$diff` folds a line read from
/// memory into an accumulator (`acc | (read ^ want)`). Both are that set's intrinsics, so the
/// compiler keeps each line in one vector (left to itself it vectorizes across lines, with
/// gathers).
macro_rules! hot_loops {
    ($name:ident, $feature:literal, $store:ident, $diff:ident) => {
        pub(super) mod $name {
            use super::*;

            /// Writes `block` (which starts at word `first`, 64-byte aligned) from `source`.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn fill(source: &impl Words, block: &mut [u64], first: usize) {
                let done = block.len() / LINE * LINE;
                let mut lines = block.chunks_exact_mut(LINE);
                let mut idx = indexes(first);
                for dst in &mut lines {
                    let line = source.line(&idx);
                    step(&mut idx);
                    // SAFETY: `dst` is 8 words of `block`, 64-byte aligned (the caller's
                    // promise for the block, kept by whole lines), and this function's feature
                    // is the store's.
                    unsafe { $store(dst.as_mut_ptr(), &line) };
                }
                for (j, w) in lines.into_remainder().iter_mut().enumerate() {
                    *w = source.at(first + done + j);
                }
            }

            /// Start indexes of the 64-word groups of `block` (from word `first`) that differ.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn scan(
                source: &impl Words,
                block: &[u64],
                first: usize,
            ) -> Vec<usize> {
                let mut bad = Vec::new();
                for (g, group) in block.chunks(GROUP).enumerate() {
                    let at = first + g * GROUP;
                    let mut acc: Line = [0; LINE];
                    let done = group.len() / LINE * LINE;
                    let mut lines = group.chunks_exact(LINE);
                    let mut idx = indexes(at);
                    for got in &mut lines {
                        // SAFETY: `got` is 8 readable words; the feature is this function's.
                        acc = unsafe { $diff(acc, got.as_ptr(), &source.line(&idx)) };
                        step(&mut idx);
                    }
                    for (j, w) in lines.remainder().iter().enumerate() {
                        acc[0] |= w ^ source.at(at + done + j);
                    }
                    if acc.iter().fold(0, |a, w| a | w) != 0 {
                        bad.push(at);
                    }
                }
                bad
            }

            /// One moving-inversions step over `block` (from word `offset`): check each word
            /// holds `want` and write `write`, a group at a time, up or down. Returns the
            /// (index, value) of words that differed. A group is read whole, then written whole
            /// with non-temporal stores: the line goes back to memory once, without waiting
            /// for an eviction.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn invert(
                block: &mut [u64],
                offset: usize,
                want: u64,
                write: u64,
                ascending: bool,
            ) -> Vec<(usize, u64)> {
                let mut bad = Vec::new();
                let want_line: Line = [want; LINE];
                let write_line: Line = [write; LINE];
                let aligned = block.as_ptr() as usize % 64 == 0;
                let groups = block.len().div_ceil(GROUP);
                for g in 0..groups {
                    let g = if ascending { g } else { groups - 1 - g };
                    let start = g * GROUP;
                    let end = (start + GROUP).min(block.len());
                    let group = &mut block[start..end];
                    let whole = aligned && group.len() == GROUP;
                    let mut acc: Line = [0; LINE];
                    if whole {
                        for line in group.chunks_exact(LINE) {
                            // SAFETY: 8 readable words; the feature is this function's.
                            acc = unsafe { $diff(acc, line.as_ptr(), &want_line) };
                        }
                    } else {
                        for w in group.iter() {
                            acc[0] |= w ^ want;
                        }
                    }
                    if acc.iter().fold(0, |a, w| a | w) != 0 {
                        bad.extend(
                            group
                                .iter()
                                .enumerate()
                                .filter(|(_, w)| **w != want)
                                .map(|(j, w)| (offset + start + j, *w)),
                        );
                    }
                    if whole {
                        let mut write_one = |line: &mut [u64]| {
                            // SAFETY: 8 writable words, 64-byte aligned (an aligned block's
                            // whole group); the feature is this function's.
                            unsafe { $store(line.as_mut_ptr(), &write_line) };
                        };
                        if ascending {
                            group.chunks_exact_mut(LINE).for_each(&mut write_one);
                        } else {
                            group.chunks_exact_mut(LINE).rev().for_each(&mut write_one);
                        }
                    } else if ascending {
                        group.iter_mut().for_each(|w| *w = write);
                    } else {
                        group.iter_mut().rev().for_each(|w| *w = write);
                    }
                }
                bad
            }
        }
    };
}

hot_loops!(avx512, "avx512f", stream_line_avx512, diff_line_avx512);
hot_loops!(avx2, "avx2", stream_line_avx2, diff_line_avx2);
hot_loops!(baseline, "sse2", stream_line_sse2, diff_line_sse2);

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn stream_line_avx512(dst: *mut u64, line: &Line) {
    use std::arch::x86_64::{__m512i, _mm512_loadu_si512, _mm512_stream_si512};
    // SAFETY: the caller passes 8 writable words at a 64-byte-aligned `dst`; `line` is 64
    // readable bytes (an unaligned load is allowed).
    unsafe {
        let v = _mm512_loadu_si512(line.as_ptr().cast::<__m512i>());
        _mm512_stream_si512(dst.cast::<__m512i>(), v);
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn diff_line_avx512(acc: Line, got: *const u64, want: &Line) -> Line {
    use std::arch::x86_64::*;
    let mut out: Line = [0; LINE];
    // SAFETY: the caller passes 8 readable words at `got`; the arrays are 64 bytes each.
    unsafe {
        let a = _mm512_loadu_si512(acc.as_ptr().cast::<__m512i>());
        let g = _mm512_loadu_si512(got.cast::<__m512i>());
        let w = _mm512_loadu_si512(want.as_ptr().cast::<__m512i>());
        let r = _mm512_or_si512(a, _mm512_xor_si512(g, w));
        _mm512_storeu_si512(out.as_mut_ptr().cast::<__m512i>(), r);
    }
    out
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn stream_line_avx2(dst: *mut u64, line: &Line) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
    // SAFETY: as for the AVX-512 store; each half is 32-byte aligned because `dst` is 64.
    unsafe {
        for h in [0, 4] {
            let v = _mm256_loadu_si256(line.as_ptr().add(h).cast::<__m256i>());
            _mm256_stream_si256(dst.add(h).cast::<__m256i>(), v);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn diff_line_avx2(acc: Line, got: *const u64, want: &Line) -> Line {
    use std::arch::x86_64::*;
    let mut out: Line = [0; LINE];
    // SAFETY: as for the AVX-512 fold, a half at a time.
    unsafe {
        for h in [0, 4] {
            let a = _mm256_loadu_si256(acc.as_ptr().add(h).cast::<__m256i>());
            let g = _mm256_loadu_si256(got.add(h).cast::<__m256i>());
            let w = _mm256_loadu_si256(want.as_ptr().add(h).cast::<__m256i>());
            let r = _mm256_or_si256(a, _mm256_xor_si256(g, w));
            _mm256_storeu_si256(out.as_mut_ptr().add(h).cast::<__m256i>(), r);
        }
    }
    out
}

#[inline]
#[target_feature(enable = "sse2")]
unsafe fn stream_line_sse2(dst: *mut u64, line: &Line) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    // SAFETY: as for the AVX-512 store; each quarter is 16-byte aligned because `dst` is 64.
    unsafe {
        for q in [0, 2, 4, 6] {
            let v = _mm_loadu_si128(line.as_ptr().add(q).cast::<__m128i>());
            _mm_stream_si128(dst.add(q).cast::<__m128i>(), v);
        }
    }
}

#[inline]
#[target_feature(enable = "sse2")]
unsafe fn diff_line_sse2(acc: Line, got: *const u64, want: &Line) -> Line {
    use std::arch::x86_64::*;
    let mut out: Line = [0; LINE];
    // SAFETY: as for the AVX-512 fold, a quarter at a time.
    unsafe {
        for q in [0, 2, 4, 6] {
            let a = _mm_loadu_si128(acc.as_ptr().add(q).cast::<__m128i>());
            let g = _mm_loadu_si128(got.add(q).cast::<__m128i>());
            let w = _mm_loadu_si128(want.as_ptr().add(q).cast::<__m128i>());
            let r = _mm_or_si128(a, _mm_xor_si128(g, w));
            _mm_storeu_si128(out.as_mut_ptr().add(q).cast::<__m128i>(), r);
        }
    }
    out
}

/// Writes the pattern into `block` (which starts at word `first`) with non-temporal stores.
/// A block that is not 64-byte aligned (never the case for a region's page-sized shares) is
/// written with plain stores.
pub(super) fn fill_block(isa: Isa, source: &impl Words, block: &mut [u64], first: usize) {
    if !(block.as_ptr() as usize).is_multiple_of(64) || !first.is_multiple_of(LINE) {
        for (j, w) in block.iter_mut().enumerate() {
            *w = source.at(first + j);
        }
        return;
    }
    // SAFETY: each arm's instruction set was seen on this CPU by `Isa::detect` (Avx512 and
    // Avx2 are only ever detected, never assumed; SSE2 is part of x86_64); the block is 64-byte
    // aligned and its lines start at multiples of 8, as the loops require.
    unsafe {
        match isa {
            Isa::Avx512 => avx512::fill(source, block, first),
            Isa::Avx2 => avx2::fill(source, block, first),
            Isa::Baseline => baseline::fill(source, block, first),
        }
    }
}

/// Start indexes of the 64-word groups of `block` (from word `first`) that differ from the
/// pattern. Reading is the slow half of a sweep, so this uses the widest loads the CPU has.
pub(super) fn scan(isa: Isa, source: &impl Words, block: &[u64], first: usize) -> Vec<usize> {
    // SAFETY: as in `fill_block`; scanning has no alignment requirement.
    unsafe {
        match isa {
            Isa::Avx512 => avx512::scan(source, block, first),
            Isa::Avx2 => avx2::scan(source, block, first),
            Isa::Baseline => baseline::scan(source, block, first),
        }
    }
}

/// One moving-inversions step over a block: check each word holds `want` and write `write`,
/// walking up or down. Returns the (index, value) of words that differed.
pub(super) fn invert_block(
    isa: Isa,
    block: &mut [u64],
    offset: usize,
    want: u64,
    write: u64,
    ascending: bool,
) -> Vec<(usize, u64)> {
    // SAFETY: as in `fill_block`; plain stores have no alignment requirement.
    unsafe {
        match isa {
            Isa::Avx512 => avx512::invert(block, offset, want, write, ascending),
            Isa::Avx2 => avx2::invert(block, offset, want, write, ascending),
            Isa::Baseline => baseline::invert(block, offset, want, write, ascending),
        }
    }
}

/// Orders streaming stores before the reads that check them.
pub(super) fn stream_fence() {
    // SAFETY: SSE2 (sfence) is part of x86_64 and the fence has no operands.
    unsafe { std::arch::x86_64::_mm_sfence() };
}
