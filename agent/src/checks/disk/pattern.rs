//! What every block of the disk check holds: its index, the run's seed, then a counter-based
//! pattern of both (SplitMix64 of seed and word number), so a block that reads back wrong —
//! or holds another block's data — is named. Building and checking a block is compiled for
//! AVX-512 and AVX2 as well and chosen at run time: at a few GB/s of I/O, the pattern is the
//! disk check's CPU cost, and it runs on the thread that keeps the I/Os in flight.

use super::{BlockMismatch, splitmix64};

/// The expected content of word `k` of block `b`: the block index, the seed, then a pattern of
/// both.
#[inline(always)]
pub(super) fn expected_word(seed: u64, block: u64, k: usize, words: usize) -> u64 {
    match k {
        0 => block,
        1 => seed,
        _ => pattern_word(seed, block.wrapping_mul(words as u64), k),
    }
}

/// Word `k` (from 2) of the block whose first word number is `base`.
#[inline(always)]
fn pattern_word(seed: u64, base: u64, k: usize) -> u64 {
    splitmix64(seed ^ base.wrapping_add(k as u64))
}

/// Writes block `block`'s pattern into `words`.
pub fn fill_block(words: &mut [u64], seed: u64, block: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU was just seen to have AVX-512 F and DQ, all `fill_avx512` needs.
            return unsafe { fill_avx512(words, seed, block) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU was just seen to have AVX2, all `fill_avx2` needs.
            return unsafe { fill_avx2(words, seed, block) };
        }
    }
    fill_plain(words, seed, block);
}

#[inline(always)]
fn fill_plain(words: &mut [u64], seed: u64, block: u64) {
    let n = words.len();
    let base = block.wrapping_mul(n as u64);
    for (k, w) in words.iter_mut().enumerate() {
        *w = match k {
            0 => block,
            1 => seed,
            _ => pattern_word(seed, base, k),
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn fill_avx512(words: &mut [u64], seed: u64, block: u64) {
    fill_plain(words, seed, block);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2(words: &mut [u64], seed: u64, block: u64) {
    fill_plain(words, seed, block);
}

/// OR of (read XOR expected) over a block: zero when it holds what was written.
fn diff(words: &[u64], seed: u64, block: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: as in `fill_block`.
            return unsafe { diff_avx512(words, seed, block) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as in `fill_block`.
            return unsafe { diff_avx2(words, seed, block) };
        }
    }
    diff_plain(words, seed, block)
}

#[inline(always)]
fn diff_plain(words: &[u64], seed: u64, block: u64) -> u64 {
    let n = words.len();
    let base = block.wrapping_mul(n as u64);
    let head = words
        .iter()
        .take(2)
        .zip([block, seed])
        .fold(0, |acc, (w, e)| acc | (w ^ e));
    let tail = words
        .iter()
        .enumerate()
        .skip(2)
        .fold(0, |acc, (k, w)| acc | (w ^ pattern_word(seed, base, k)));
    head | tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn diff_avx512(words: &[u64], seed: u64, block: u64) -> u64 {
    diff_plain(words, seed, block)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn diff_avx2(words: &[u64], seed: u64, block: u64) -> u64 {
    diff_plain(words, seed, block)
}

/// Compares a block read back with what was written; `None` when it matches.
pub fn verify_block(
    words: &[u64],
    seed: u64,
    block: u64,
    block_size: usize,
) -> Option<BlockMismatch> {
    if diff(words, seed, block) == 0 {
        return None;
    }
    let n = words.len();
    let bad: Vec<usize> = (0..n)
        .filter(|k| words[*k] != expected_word(seed, block, *k, n))
        .collect();
    let first = *bad.first()?;
    let holds_block = (words[1] == seed && words[0] != block).then_some(words[0]);
    Some(BlockMismatch {
        block,
        offset: block * block_size as u64,
        words: n,
        bad_words: bad.len(),
        first_bad_word: first,
        expected: expected_word(seed, block, first, n),
        actual: words[first],
        holds_block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_builds_and_checks_match_the_word_by_word_pattern() {
        let n = 1024;
        let mut fast = vec![0; n];
        fill_block(&mut fast, 7, 42);
        let mut plain = vec![0; n];
        fill_plain(&mut plain, 7, 42);
        assert_eq!(fast, plain);
        for (k, w) in plain.iter().enumerate() {
            assert_eq!(*w, expected_word(7, 42, k, n), "word {k}");
        }
        assert_eq!((fast[0], fast[1]), (42, 7));
        assert_eq!(diff(&fast, 7, 42), 0);
        assert_eq!(diff_plain(&fast, 7, 42), 0);
        assert!(verify_block(&fast, 7, 42, n * 8).is_none());
        // One bit flipped anywhere, the header included, is seen by both.
        for at in [0, 1, 2, 500, n - 1] {
            let mut bad = fast.clone();
            bad[at] ^= 1 << 3;
            assert_ne!(diff(&bad, 7, 42), 0, "word {at}");
            assert_ne!(diff_plain(&bad, 7, 42), 0, "word {at}");
            let m = verify_block(&bad, 7, 42, n * 8).unwrap();
            assert_eq!((m.first_bad_word, m.bad_words), (at, 1));
        }
    }
}
