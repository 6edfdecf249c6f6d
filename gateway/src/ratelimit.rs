//! Token buckets keyed by client IP or account.
//!
//! A small hand-written limiter rather than a crate: it gives the exact wait
//! for `Retry-After`, bounds its own memory (at most [`KEYS_MAX`] buckets;
//! when full, the least recently used one is forgotten) and takes `now` as
//! an argument so tests need no clock.
//!
//! Why least recently used: an attacker who churns through fresh keys (new
//! IPv6 addresses, new accounts) only ever evicts the buckets touched
//! longest ago, so a client being limited right now, which keeps knocking,
//! stays limited. (Clearing the table when full, as this did before, handed
//! such a client a fresh burst.)

use std::collections::hash_map::RandomState;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hashlink::LruCache;

/// Most keys a limiter tracks before it forgets the least recently used.
pub const KEYS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A token bucket per key: `burst` requests at once, refilled at
/// `per_second`. A limiter with `per_second == 0` lets everything through.
pub struct RateLimiter<K> {
    per_second: f64,
    burst: f64,
    // SipHash with a random key: the keys are chosen by clients.
    buckets: Mutex<LruCache<K, Bucket, RandomState>>,
}

impl<K> std::fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// A limiter refilling `per_second` tokens per second up to `burst`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self::with_capacity(per_second, burst, KEYS_MAX)
    }

    /// A limiter tracking at most `keys` buckets.
    pub fn with_capacity(per_second: f64, burst: u32, keys: usize) -> Self {
        RateLimiter {
            per_second: per_second.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(LruCache::with_hasher(keys.max(1), RandomState::new())),
        }
    }

    /// Takes one token for `key` at `now`, or says how long until one is there.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        // `get_mut` marks the bucket most recently used.
        let bucket = match buckets.get_mut(key) {
            Some(bucket) => bucket,
            None => {
                // At capacity, `insert` forgets the least recently used.
                buckets.insert(
                    key.clone(),
                    Bucket {
                        tokens: self.burst,
                        updated: now,
                    },
                );
                buckets.get_mut(key).ok_or_else(|| Duration::from_secs(1))?
            }
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_the_exact_wait() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(&"ip", t0).is_ok());
        }
        let wait = limiter.check(&"ip", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(limiter.check(&"other", t0).is_ok());
        assert!(
            limiter
                .check(&"ip", t0 + Duration::from_millis(500))
                .is_ok()
        );
    }

    #[test]
    fn zero_rate_disables_limiting() {
        let limiter = RateLimiter::new(0.0, 1);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(limiter.check(&1u32, t0).is_ok());
        }
    }

    #[test]
    fn a_limited_key_stays_limited_while_others_churn() {
        let limiter = RateLimiter::with_capacity(1.0, 2, 100);
        let t0 = Instant::now();
        let victim = 0u32;
        assert!(limiter.check(&victim, t0).is_ok());
        assert!(limiter.check(&victim, t0).is_ok());
        assert!(limiter.check(&victim, t0).is_err());
        // An attacker cycles through ten times the table's size in fresh
        // keys, while the limited client keeps knocking (as it would).
        for n in 1..=1000u32 {
            let _ = limiter.check(&n, t0);
            if n % 50 == 0 {
                assert!(limiter.check(&victim, t0).is_err(), "reset after {n} keys");
            }
        }
        assert_eq!(limiter.len(), 100);
        assert!(limiter.check(&victim, t0).is_err());
        // The keys touched longest ago were the ones forgotten.
        assert!(limiter.buckets.lock().unwrap().peek(&1).is_none());
        assert!(limiter.buckets.lock().unwrap().peek(&1000).is_some());
    }
}
