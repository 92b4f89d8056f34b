//! Failed authentications, throttled per client address: a token bucket per
//! address holds `burst` failures and refills one every [`REFILL`]. A
//! failure that finds its bucket empty is answered 429 instead of 401,
//! with the seconds until the bucket holds one again. While an address's
//! bucket is empty, every token it sends is answered 429 before it is
//! checked, the right one too: otherwise a guesser would tell the right
//! token (200) from wrong ones (429) at full speed. Addresses that have not
//! failed are never held back.
//!
//! Addresses are IPv4 addresses and IPv6 /64 networks (one host on IPv6
//! usually has a whole /64 to pick from). At most [`MAX_ADDRESSES`]
//! buckets are kept; a new address beyond that evicts the oldest bucket.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a bucket takes to win back one failure.
pub const REFILL: Duration = Duration::from_secs(6);
/// Most addresses tracked at once.
pub const MAX_ADDRESSES: usize = 10_000;

/// One address's failures still allowed (fractional while refilling), as
/// of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    left: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Buckets {
    by_address: HashMap<IpAddr, Bucket>,
    /// Addresses in the order their buckets were made (oldest first).
    order: VecDeque<IpAddr>,
}

/// The buckets of every address seen failing (`burst` 0: no throttling).
#[derive(Debug)]
pub struct Throttle {
    burst: u32,
    capacity: usize,
    buckets: Mutex<Buckets>,
}

/// The address a bucket belongs to: IPv4 as it is (an IPv4-mapped IPv6
/// address too), IPv6 by its /64 network.
fn bucket_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}

impl Throttle {
    /// `burst` failures per address, then one per [`REFILL`]; 0 turns
    /// throttling off.
    pub fn new(burst: u32) -> Throttle {
        Throttle::with_capacity(burst, MAX_ADDRESSES)
    }

    fn with_capacity(burst: u32, capacity: usize) -> Throttle {
        Throttle {
            burst,
            capacity,
            buckets: Mutex::default(),
        }
    }

    /// Records a failed authentication from `address`: `Ok` when it may be
    /// answered as one (401), `Err(seconds)` when the address has used up
    /// its failures (429, to retry after that many seconds).
    pub fn fail(&self, address: IpAddr) -> Result<(), u64> {
        self.fail_at(address, Instant::now())
    }

    /// `Some(seconds)` while `address` has used up its failures: a token
    /// it sends now is refused (429) without being checked.
    pub fn blocked(&self, address: IpAddr) -> Option<u64> {
        self.blocked_at(address, Instant::now())
    }

    fn blocked_at(&self, address: IpAddr, now: Instant) -> Option<u64> {
        if self.burst == 0 {
            return None;
        }
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.by_address.get(&bucket_key(address))?;
        let left = refilled(bucket, now, f64::from(self.burst));
        (left < 1.0).then(|| wait_secs(left))
    }

    fn fail_at(&self, address: IpAddr, now: Instant) -> Result<(), u64> {
        if self.burst == 0 {
            return Ok(());
        }
        let burst = f64::from(self.burst);
        let key = bucket_key(address);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.by_address.contains_key(&key) {
            while buckets.by_address.len() >= self.capacity {
                let Some(oldest) = buckets.order.pop_front() else {
                    break;
                };
                buckets.by_address.remove(&oldest);
            }
            buckets.order.push_back(key);
        }
        let bucket = buckets.by_address.entry(key).or_insert(Bucket {
            left: burst,
            at: now,
        });
        bucket.left = refilled(bucket, now, burst);
        bucket.at = now;
        if bucket.left >= 1.0 {
            bucket.left -= 1.0;
            Ok(())
        } else {
            Err(wait_secs(bucket.left))
        }
    }
}

/// The failures `bucket` allows at `now`, refilled since it was last used.
fn refilled(bucket: &Bucket, now: Instant, burst: f64) -> f64 {
    let gained = now.saturating_duration_since(bucket.at).as_secs_f64() / REFILL.as_secs_f64();
    (bucket.left + gained).min(burst)
}

/// Whole seconds (at least one) until a bucket holding `left` holds one.
fn wait_secs(left: f64) -> u64 {
    (((1.0 - left) * REFILL.as_secs_f64()).ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_is_blocked_only_while_its_bucket_is_empty() {
        let throttle = Throttle::new(2);
        let start = Instant::now();
        let a = ip("192.0.2.7");
        assert_eq!(throttle.blocked_at(a, start), None);
        throttle.fail_at(a, start).unwrap();
        assert_eq!(throttle.blocked_at(a, start), None);
        throttle.fail_at(a, start).unwrap();
        assert_eq!(throttle.blocked_at(a, start), Some(6));
        assert_eq!(
            throttle.blocked_at(a, start + Duration::from_secs(5)),
            Some(1)
        );
        assert_eq!(throttle.blocked_at(a, start + REFILL), None);
        assert_eq!(throttle.blocked_at(ip("192.0.2.8"), start), None);
        assert_eq!(Throttle::new(0).blocked_at(a, start), None);
    }

    #[test]
    fn a_burst_of_failures_then_one_per_refill() {
        let throttle = Throttle::new(3);
        let start = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(throttle.fail_at(a, start), Ok(()));
        }
        assert_eq!(throttle.fail_at(a, start), Err(6));
        assert_eq!(throttle.fail_at(a, start + Duration::from_secs(4)), Err(2));
        // Another address has its own bucket.
        assert_eq!(throttle.fail_at(ip("192.0.2.2"), start), Ok(()));
        // One failure back per refill, never more than the burst.
        let later = start + REFILL;
        assert_eq!(throttle.fail_at(a, later), Ok(()));
        assert_eq!(throttle.fail_at(a, later), Err(6));
        let much_later = later + REFILL * 100;
        for _ in 0..3 {
            assert_eq!(throttle.fail_at(a, much_later), Ok(()));
        }
        assert!(throttle.fail_at(a, much_later).is_err());
    }

    #[test]
    fn ipv6_counts_by_network_and_zero_turns_it_off() {
        let throttle = Throttle::new(1);
        let now = Instant::now();
        assert_eq!(throttle.fail_at(ip("2001:db8:1:2::1"), now), Ok(()));
        assert!(throttle.fail_at(ip("2001:db8:1:2::ffff"), now).is_err());
        assert_eq!(throttle.fail_at(ip("2001:db8:1:3::1"), now), Ok(()));
        assert_eq!(throttle.fail_at(ip("::ffff:192.0.2.9"), now), Ok(()));
        assert!(throttle.fail_at(ip("192.0.2.9"), now).is_err());
        let off = Throttle::new(0);
        for _ in 0..100 {
            assert_eq!(off.fail_at(ip("192.0.2.1"), now), Ok(()));
        }
    }

    #[test]
    fn the_oldest_address_is_forgotten_beyond_the_capacity() {
        let throttle = Throttle::with_capacity(1, 2);
        let now = Instant::now();
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        for address in [a, b] {
            assert_eq!(throttle.fail_at(address, now), Ok(()));
        }
        assert!(throttle.fail_at(a, now).is_err());
        assert_eq!(throttle.fail_at(c, now), Ok(()), "a is evicted for c");
        assert_eq!(
            throttle.fail_at(a, now),
            Ok(()),
            "a starts afresh, evicting b"
        );
        assert!(throttle.fail_at(c, now).is_err());
        let buckets = throttle.buckets.lock().unwrap();
        assert_eq!(buckets.by_address.len(), 2);
        assert_eq!(buckets.order.len(), 2);
    }
}
