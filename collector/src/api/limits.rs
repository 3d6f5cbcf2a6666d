//! Per-source rate limits on the routes anyone on the boot network can call without a token
//! (`/ipxe`, `/boot.ipxe`, registration, artifacts, login): a token bucket per source address,
//! so one host cannot flood the collector with unknown nodes or downloads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Sources remembered at most; idle ones are forgotten first.
const MAX_SOURCES: usize = 65_536;

/// Token buckets by source address.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token for `source`; `Err(seconds)` says when the next one is due.
    pub fn take(&self, source: IpAddr, per_sec: f64, burst: f64) -> Result<(), f64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES {
            // Full buckets are the same as forgotten ones.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(source).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / per_sec.max(1e-9))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let limiter = RateLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..5 {
            assert!(limiter.take(a, 1.0, 5.0).is_ok());
        }
        let wait = limiter.take(a, 1.0, 5.0).unwrap_err();
        assert!(wait > 0.0 && wait <= 1.0, "{wait}");
        assert!(limiter.take(b, 1.0, 5.0).is_ok());
    }
}
