//! Per-source rate limits on the routes anyone on the boot network can call without a token
//! (`/ipxe`, `/boot.ipxe`, registration, artifacts, login): a token bucket per source address,
//! so one host cannot flood the collector with unknown nodes or downloads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Sources remembered at most: full buckets are forgotten first, then the longest idle.
const MAX_SOURCES: usize = 65_536;

/// Token buckets by source: an IPv4 address, or an IPv6 /64 (one host holds a whole /64 and
/// could otherwise take a new bucket, with a fresh burst, for every request).
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// The bucket `source` draws from.
fn bucket_of(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
    }
}

impl RateLimiter {
    /// Sources remembered now.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes one token for `source`; `Err(seconds)` says when the next one is due.
    pub fn take(&self, source: IpAddr, per_sec: f64, burst: f64) -> Result<(), f64> {
        let now = Instant::now();
        let source = bucket_of(source);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            // Full buckets are the same as forgotten ones.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
            if buckets.len() >= MAX_SOURCES {
                // Every one still drawing (a flood of sources): the longest idle eighth goes,
                // which forgives them a little and keeps the table bounded.
                let mut ages: Vec<(Instant, IpAddr)> =
                    buckets.iter().map(|(ip, (_, at))| (*at, *ip)).collect();
                let cut = MAX_SOURCES / 8;
                ages.select_nth_unstable(cut);
                for (_, ip) in &ages[..=cut] {
                    buckets.remove(ip);
                }
            }
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

    #[test]
    fn an_ipv6_host_is_one_source_per_64_and_a_flood_of_sources_stays_bounded() {
        let limiter = RateLimiter::default();
        // Every address of one /64 draws from one bucket.
        for i in 0..5u128 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (i << 3)));
            assert!(limiter.take(ip, 0.001, 5.0).is_ok());
        }
        let next = IpAddr::V6("2001:db8::ffff:1".parse().unwrap());
        assert!(limiter.take(next, 0.001, 5.0).is_err());
        // An IPv4 peer seen as IPv4-mapped IPv6 is its IPv4 address.
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(bucket_of(v4), bucket_of(mapped));
        // A flood of distinct /64s, each still drawing: the table never passes its bound.
        for i in 0..(MAX_SOURCES as u128 + 10_000) {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db9u128 << 96) | (i << 64),
            ));
            let _ = limiter.take(ip, 0.001, 5.0);
            assert!(limiter.len() <= MAX_SOURCES);
        }
        assert!(limiter.len() > MAX_SOURCES / 2);
    }
}
