//! Bearer tokens: per-run tokens minted with 32 random bytes (only their hash is stored) and
//! the admin and read tokens from the configuration, compared in constant time.

use std::io::Read;

/// A fresh token: 32 bytes from the kernel's random pool, as 64 hex digits.
pub fn mint() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| anyhow::anyhow!("cannot read /dev/urandom for a token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    crate::store::queries::sha256_hex(token.as_bytes())
}

/// Compares two strings without leaking where they differ through timing.
pub fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_distinct_and_hashed() {
        let (a, b) = (mint().unwrap(), mint().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(hash(&a), a);
        assert!(equal(&hash(&a), &hash(&a)));
        assert!(!equal(&hash(&a), &hash(&b)));
        assert!(!equal("abc", "abcd"));
    }
}
