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

/// Shortest admin or read token the collector accepts from its configuration.
pub const MIN_CONFIGURED_LEN: usize = 32;

/// Checks a configured token (`what` names where it came from): long enough to resist
/// guessing over the network.
pub fn check_configured(what: &str, token: &str) -> Result<(), String> {
    let len = token.chars().count();
    if len < MIN_CONFIGURED_LEN {
        return Err(format!(
            "{what} is {len} characters long; at least {MIN_CONFIGURED_LEN} are needed \
             (generate one with `openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

/// The token of an `Authorization: Bearer …` header (the scheme in any case, as HTTP says).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let mut h = axum::http::HeaderMap::new();
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
        ] {
            h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&h), want, "{value:?}");
        }
        assert!(check_configured("admin token", "change-me").is_err());
        assert!(check_configured("admin token", &"x".repeat(32)).is_ok());
    }

    #[test]
    fn minted_tokens_are_64_hex_digits_and_never_repeat() {
        let tokens: std::collections::BTreeSet<String> =
            (0..200).map(|_| mint().unwrap()).collect();
        assert_eq!(tokens.len(), 200, "a token repeated");
        for t in &tokens {
            assert_eq!(t.len(), 64, "{t}");
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{t}"
            );
        }
        // 32 random bytes each: over 200 tokens every hex digit shows up.
        let digits: std::collections::BTreeSet<char> =
            tokens.iter().flat_map(|t| t.chars()).collect();
        assert_eq!(digits.len(), 16, "{digits:?}");
    }

    #[test]
    fn the_stored_form_is_sha256_and_comparison_is_exact() {
        // FIPS 180-2's test vector: what is stored is the SHA-256 of the token, in hex.
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = hash("token-a");
        assert!(equal(&a, &hash("token-a")));
        // Same length, one character different (first, last), shorter, longer, empty.
        let mut last = a.clone();
        last.replace_range(63.., if a.ends_with('0') { "1" } else { "0" });
        let mut first = a.clone();
        first.replace_range(..1, if a.starts_with('0') { "1" } else { "0" });
        for other in [
            last.as_str(),
            first.as_str(),
            &a[..63],
            &format!("{a}0"),
            "",
        ] {
            assert!(!equal(&a, other), "{other:?}");
        }
    }

    #[test]
    fn configured_tokens_are_refused_below_32_characters() {
        assert!(check_configured("admin_token", &"x".repeat(32)).is_ok());
        let err = check_configured("admin_token", &"x".repeat(31)).unwrap_err();
        assert!(err.contains("admin_token is 31 characters long"), "{err}");
        // Characters, not bytes: 16 two-byte characters are 16, not 32.
        assert!(check_configured("read_token", &"é".repeat(16)).is_err());
    }
}
