//! Seeds and the counter-based mixer the checks share: a fresh seed per run (printed, so a
//! run can be repeated), and SplitMix64 to turn a counter into a well-spread word.

/// SplitMix64: a counter-based generator, so the checker recomputes any word from its index.
#[inline(always)]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed from the kernel's random pool, or the clock if that is unreadable.
pub fn fresh_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok()
    {
        return u64::from_le_bytes(bytes);
    }
    splitmix64(crate::os::now_ms() ^ u64::from(std::process::id()))
}
