//! Budgets on handing out one-time prekeys, so one requester cannot drain a
//! device's pool.
//!
//! Every bundle request that would take a one-time prekey first asks two
//! token buckets: the one of (requester, target device) and the one of the
//! target device (all requesters together). Only when both have a token is
//! a one-time prekey taken (and a token from each); otherwise the bundle is
//! still served, without a one-time prekey: X3DH then runs on the signed
//! prekey alone, so first contact keeps working while the pool is
//! protected. A requester is a local account or, on the federation path, a
//! peer relay (for all of its users together), each kind with its own
//! budget.
//!
//! Plain logic over `now_ms` from the relay's clock (simulations stay
//! deterministic), in memory: each `courier serve` process sharing one
//! database keeps its own buckets. Memory is bounded: each map keeps at
//! most [`PrekeyBudgetConfig::keys_max`] buckets and forgets the least
//! recently used one beyond that (a forgotten bucket starts full again,
//! which only matters under a flood of distinct keys).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;

use courier_protocol::{DeviceId, RelayName, Username};

/// Limits of the one-time prekey budgets (see the module doc). A bucket
/// holds at most `*_burst` tokens and gains one every `*_refill_ms`; a
/// burst of 0 hands out no one-time prekeys to that kind of requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrekeyBudgetConfig {
    /// One-time prekeys one local account may take from one device at once.
    pub account_burst: u32,
    /// One more for an account (per device) every this many ms.
    pub account_refill_ms: u64,
    /// One-time prekeys one peer relay (all its users together) may take
    /// from one device at once.
    pub peer_burst: u32,
    /// One more for a peer (per device) every this many ms.
    pub peer_refill_ms: u64,
    /// One-time prekeys one device hands out to all requesters together at
    /// once.
    pub device_burst: u32,
    /// One more for a device every this many ms.
    pub device_refill_ms: u64,
    /// Most buckets kept per map (pairs, devices); the least recently used
    /// are forgotten beyond that.
    pub keys_max: usize,
}

impl Default for PrekeyBudgetConfig {
    /// An account: 5 at once, then one per 10 minutes per device. A peer: 50
    /// at once, then one per 30 s. A device: 100 at once, then one per 30 s
    /// (at most 2 880 a day however many requesters). 100 000 buckets per map.
    fn default() -> Self {
        PrekeyBudgetConfig {
            account_burst: 5,
            account_refill_ms: 10 * 60 * 1000,
            peer_burst: 50,
            peer_refill_ms: 30 * 1000,
            device_burst: 100,
            device_refill_ms: 30 * 1000,
            keys_max: 100_000,
        }
    }
}

/// Who asks for a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requester {
    /// A local account (over HTTP, authenticated).
    Account(Username),
    /// A peer relay (over federation, authenticated by its key).
    Peer(RelayName),
}

/// A token bucket in thousandths of a token, so slow refills do not round
/// to zero.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens_milli: u64,
    updated_ms: u64,
}

impl Bucket {
    fn full(burst: u32, now_ms: u64) -> Self {
        Bucket {
            tokens_milli: u64::from(burst) * 1000,
            updated_ms: now_ms,
        }
    }

    /// Refills up to `now_ms` and says whether a whole token is there.
    fn refill(&mut self, burst: u32, refill_ms: u64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        self.updated_ms = self.updated_ms.max(now_ms);
        let gained = elapsed.saturating_mul(1000) / refill_ms.max(1);
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(gained)
            .min(u64::from(burst) * 1000);
        self.tokens_milli >= 1000
    }
}

/// Buckets by key with least-recently-used eviction beyond `max`.
struct Lru<K> {
    buckets: HashMap<K, (Bucket, u64)>,
    /// Use stamp → key, oldest first.
    order: BTreeMap<u64, K>,
    stamp: u64,
    max: usize,
}

impl<K: Eq + Hash + Clone> Lru<K> {
    fn new(max: usize) -> Self {
        Lru {
            buckets: HashMap::new(),
            order: BTreeMap::new(),
            stamp: 0,
            max: max.max(1),
        }
    }

    /// The bucket of `key` (a full one if unknown), marked as just used.
    fn touch(&mut self, key: &K, burst: u32, now_ms: u64) -> &mut Bucket {
        self.stamp += 1;
        let stamp = self.stamp;
        if let Some((_, old)) = self.buckets.get(key) {
            self.order.remove(old);
        } else if self.buckets.len() >= self.max
            && let Some((_, oldest)) = self.order.pop_first()
        {
            self.buckets.remove(&oldest);
        }
        self.order.insert(stamp, key.clone());
        let entry = self
            .buckets
            .entry(key.clone())
            .or_insert((Bucket::full(burst, now_ms), stamp));
        entry.1 = stamp;
        &mut entry.0
    }
}

type Target = (Username, DeviceId);

struct Inner {
    pairs: Lru<(Requester, Target)>,
    devices: Lru<Target>,
}

/// The budgets of one relay process.
pub(crate) struct PrekeyBudget {
    config: PrekeyBudgetConfig,
    inner: Mutex<Inner>,
}

impl PrekeyBudget {
    pub(crate) fn new(config: PrekeyBudgetConfig) -> Self {
        PrekeyBudget {
            config,
            inner: Mutex::new(Inner {
                pairs: Lru::new(config.keys_max),
                devices: Lru::new(config.keys_max),
            }),
        }
    }

    /// Takes a token from both buckets of (`requester`, `target`) if both
    /// have one; true means a one-time prekey may be handed out. Takes
    /// nothing when either is empty, so a requester over its own budget
    /// does not spend the device's budget for everyone else.
    pub(crate) fn take(
        &self,
        requester: &Requester,
        user: &Username,
        device: DeviceId,
        now_ms: u64,
    ) -> bool {
        let c = &self.config;
        let (burst, refill_ms) = match requester {
            Requester::Account(_) => (c.account_burst, c.account_refill_ms),
            Requester::Peer(_) => (c.peer_burst, c.peer_refill_ms),
        };
        let target = (user.clone(), device);
        // A poisoned lock only means a panic elsewhere mid-update; the
        // buckets are still numbers.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        let pair = inner
            .pairs
            .touch(&(requester.clone(), target.clone()), burst, now_ms);
        let pair_ok = pair.refill(burst, refill_ms, now_ms);
        let target_bucket = inner.devices.touch(&target, c.device_burst, now_ms);
        let target_ok = target_bucket.refill(c.device_burst, c.device_refill_ms, now_ms);
        if !(pair_ok && target_ok) {
            return false;
        }
        pair.tokens_milli -= 1000;
        target_bucket.tokens_milli -= 1000;
        true
    }

    /// Gives back the tokens of a [`PrekeyBudget::take`] that handed out
    /// nothing (the pool was empty).
    pub(crate) fn refund(&self, requester: &Requester, user: &Username, device: DeviceId) {
        let c = &self.config;
        let burst = match requester {
            Requester::Account(_) => c.account_burst,
            Requester::Peer(_) => c.peer_burst,
        };
        let target = (user.clone(), device);
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        let give_back = |bucket: &mut Bucket, burst: u32| {
            bucket.tokens_milli = (bucket.tokens_milli + 1000).min(u64::from(burst) * 1000);
        };
        if let Some((bucket, _)) = inner
            .pairs
            .buckets
            .get_mut(&(requester.clone(), target.clone()))
        {
            give_back(bucket, burst);
        }
        if let Some((bucket, _)) = inner.devices.buckets.get_mut(&target) {
            give_back(bucket, c.device_burst);
        }
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.pairs.buckets.len(), inner.devices.buckets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Username {
        Username::parse(name).unwrap()
    }

    fn config() -> PrekeyBudgetConfig {
        PrekeyBudgetConfig {
            account_burst: 2,
            account_refill_ms: 1000,
            peer_burst: 3,
            peer_refill_ms: 1000,
            device_burst: 4,
            device_refill_ms: 500,
            keys_max: 100,
        }
    }

    #[test]
    fn a_requester_gets_its_burst_then_one_per_refill() {
        let b = PrekeyBudget::new(config());
        let mallory = Requester::Account(user("mallory"));
        let bob = user("bob");
        assert!(b.take(&mallory, &bob, DeviceId(1), 0));
        assert!(b.take(&mallory, &bob, DeviceId(1), 0));
        assert!(!b.take(&mallory, &bob, DeviceId(1), 0));
        // Another device of the same account has its own buckets.
        assert!(b.take(&mallory, &bob, DeviceId(2), 0));
        assert!(!b.take(&mallory, &bob, DeviceId(1), 999));
        assert!(b.take(&mallory, &bob, DeviceId(1), 1000));
        assert!(!b.take(&mallory, &bob, DeviceId(1), 1000));
    }

    #[test]
    fn the_device_budget_caps_all_requesters_together() {
        let b = PrekeyBudget::new(config());
        let bob = user("bob");
        let granted = (0..10)
            .filter(|i| {
                let r = Requester::Account(user(&format!("sybil{i}")));
                b.take(&r, &bob, DeviceId(1), 0)
            })
            .count();
        assert_eq!(granted, 4);
        // Refills at its own rate.
        let r = Requester::Peer(RelayName::parse("relay-b.example").unwrap());
        assert!(!b.take(&r, &bob, DeviceId(1), 499));
        assert!(b.take(&r, &bob, DeviceId(1), 500));
    }

    #[test]
    fn a_refused_requester_spends_nothing_and_refunds_give_back() {
        let b = PrekeyBudget::new(config());
        let bob = user("bob");
        let mallory = Requester::Account(user("mallory"));
        for _ in 0..50 {
            b.take(&mallory, &bob, DeviceId(1), 0);
        }
        // Mallory took 2 of the device's 4; the other 2 are still there.
        let alice = Requester::Account(user("alice"));
        assert!(b.take(&alice, &bob, DeviceId(1), 0));
        b.refund(&alice, &bob, DeviceId(1));
        assert!(b.take(&alice, &bob, DeviceId(1), 0));
        assert!(b.take(&alice, &bob, DeviceId(1), 0));
        assert!(!b.take(&alice, &bob, DeviceId(1), 0));
    }

    #[test]
    fn maps_stay_bounded_and_forget_the_least_recently_used() {
        let b = PrekeyBudget::new(PrekeyBudgetConfig {
            keys_max: 3,
            ..config()
        });
        let mallory = Requester::Account(user("mallory"));
        let bob = user("bob");
        for d in 0..10 {
            b.take(&mallory, &bob, DeviceId(d), 0);
        }
        assert_eq!(b.sizes(), (3, 3));
        let mut lru = Lru::<u32>::new(2);
        lru.touch(&1, 1, 0);
        lru.touch(&2, 1, 0);
        lru.touch(&1, 1, 0);
        lru.touch(&3, 1, 0);
        assert!(lru.buckets.contains_key(&1) && lru.buckets.contains_key(&3));
        assert!(!lru.buckets.contains_key(&2));
    }
}
