//! In-process cache of access tokens, so an authenticated request does not
//! read the store. Keyed by the token's SHA-256, like the store.
//!
//! Revocation stays immediate within this process: logout, a refresh
//! (rotation deletes the session's old access tokens) and a reused refresh
//! token drop that one session's entries here before the call returns
//! (found through a per-session index, so neither scans the cache nor
//! touches other sessions' entries), and an entry filled
//! from a store read that raced with such a drop is not kept (the
//! generation check). Other processes sharing the database hear of the
//! drops through [`crate::Notifier::revoked`] if the embedder wires one
//! (`courier serve` on PostgreSQL does); without it an entry there lives at
//! most `access_cache_ms` (docs/storage.md).

use std::collections::HashMap;
use std::sync::Mutex;

use courier_protocol::{DeviceId, Username};

use crate::store::{AccessRecord, TokenHash};

struct Cached {
    session: String,
    user: Username,
    device: DeviceId,
    expires_ms: u64,
    /// Read from the store again after this.
    fresh_until_ms: u64,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<TokenHash, Cached>,
    /// The cached tokens of each session, so revoking one session touches
    /// only its own entries instead of scanning every token.
    sessions: HashMap<String, Vec<TokenHash>>,
    /// One-time prekeys left per device of a cached token, as read with it
    /// or as this process last changed it (for the low-water hint).
    prekeys: HashMap<(Username, DeviceId), u32>,
    /// Bumped by every drop; a fill that started before a drop is refused.
    generation: u64,
}

impl Inner {
    /// Drops one token and its place in the session index.
    fn remove(&mut self, token: &TokenHash) {
        let Some(cached) = self.tokens.remove(token) else {
            return;
        };
        if let Some(tokens) = self.sessions.get_mut(&cached.session) {
            tokens.retain(|t| t != token);
            if tokens.is_empty() {
                self.sessions.remove(&cached.session);
            }
        }
    }
}

pub(crate) struct AccessCache {
    inner: Mutex<Inner>,
    entries_max: usize,
    ttl_ms: u64,
}

impl AccessCache {
    /// A cache of at most `entries_max` tokens, each trusted for `ttl_ms`
    /// after it was read from the store. `entries_max == 0` disables it.
    pub(crate) fn new(entries_max: usize, ttl_ms: u64) -> Self {
        AccessCache {
            inner: Mutex::new(Inner::default()),
            entries_max,
            ttl_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-update; the maps
        // stay consistent enough for a cache (worst case: a miss).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached record of `token`, if fresh.
    pub(crate) fn get(&self, token: &TokenHash, now_ms: u64) -> Option<AccessRecord> {
        if self.entries_max == 0 {
            return None;
        }
        let mut inner = self.lock();
        let c = inner.tokens.get(token)?;
        if c.fresh_until_ms <= now_ms {
            inner.remove(token);
            return None;
        }
        let one_time_count = *inner.prekeys.get(&(c.user.clone(), c.device))?;
        Some(AccessRecord {
            session: c.session.clone(),
            user: c.user.clone(),
            device: c.device,
            expires_ms: c.expires_ms,
            one_time_count,
        })
    }

    /// The generation to pass to [`AccessCache::fill`] after a store read.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `record`, read from the store when the cache was at
    /// `generation`, unless something was dropped since.
    pub(crate) fn fill(
        &self,
        token: TokenHash,
        record: &AccessRecord,
        generation: u64,
        now_ms: u64,
    ) {
        if self.entries_max == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.tokens.len() >= self.entries_max {
            let stale: Vec<TokenHash> = inner
                .tokens
                .iter()
                .filter(|(_, c)| c.fresh_until_ms <= now_ms)
                .map(|(hash, _)| *hash)
                .collect();
            for hash in &stale {
                inner.remove(hash);
            }
            if inner.tokens.len() >= self.entries_max {
                // Bounded memory over hit rate: start over.
                inner.tokens.clear();
                inner.sessions.clear();
                inner.prekeys.clear();
            }
        }
        inner
            .prekeys
            .insert((record.user.clone(), record.device), record.one_time_count);
        let tokens = inner.sessions.entry(record.session.clone()).or_default();
        if !tokens.contains(&token) {
            tokens.push(token);
        }
        inner.tokens.insert(
            token,
            Cached {
                session: record.session.clone(),
                user: record.user.clone(),
                device: record.device,
                expires_ms: record.expires_ms,
                fresh_until_ms: now_ms.saturating_add(self.ttl_ms),
            },
        );
    }

    /// Drops every token of `session`: a lookup in the session index, so
    /// its cost does not grow with the number of cached tokens.
    pub(crate) fn forget_session(&self, session: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        for hash in inner.sessions.remove(session).unwrap_or_default() {
            inner.tokens.remove(&hash);
        }
    }

    /// Drops every token of one device (its session's tokens were rotated).
    pub(crate) fn forget_device(&self, user: &Username, device: DeviceId) {
        let mut inner = self.lock();
        inner.generation += 1;
        let gone: Vec<TokenHash> = inner
            .tokens
            .iter()
            .filter(|(_, c)| c.device == device && c.user == *user)
            .map(|(hash, _)| *hash)
            .collect();
        for hash in &gone {
            inner.remove(hash);
        }
    }

    /// Drops everything (a session was revoked and we do not know which).
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.tokens.clear();
        inner.sessions.clear();
        inner.prekeys.clear();
    }

    /// Records a device's new one-time prekey count, if it is cached.
    pub(crate) fn set_prekeys(&self, user: &Username, device: DeviceId, count: u32) {
        let mut inner = self.lock();
        if let Some(c) = inner.prekeys.get_mut(&(user.clone(), device)) {
            *c = count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(session: &str, device: u32) -> AccessRecord {
        AccessRecord {
            session: session.to_owned(),
            user: Username::parse("alice").unwrap(),
            device: DeviceId(device),
            expires_ms: 1_000_000,
            one_time_count: 5,
        }
    }

    #[test]
    fn forgetting_a_session_drops_only_its_tokens() {
        let cache = AccessCache::new(100, 10_000);
        let (a1, a2, b) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        for (token, session) in [(a1, "a"), (a2, "a"), (b, "b")] {
            let generation = cache.generation();
            cache.fill(token, &record(session, 1), generation, 0);
        }
        cache.forget_session("a");
        assert!(cache.get(&a1, 1).is_none());
        assert!(cache.get(&a2, 1).is_none());
        // Another session of the same device stays cached: no store read.
        assert_eq!(cache.get(&b, 1).map(|r| r.session), Some("b".to_owned()));
        let inner = cache.lock();
        assert!(!inner.sessions.contains_key("a"), "index entry gone too");
        assert_eq!(inner.sessions.get("b").map(Vec::len), Some(1));
    }

    #[test]
    fn the_session_index_follows_evictions() {
        let cache = AccessCache::new(2, 10);
        let generation = cache.generation();
        cache.fill([1; 32], &record("a", 1), generation, 0);
        cache.fill([2; 32], &record("b", 1), generation, 0);
        // Both stale at 20: the fill evicts them and their index entries.
        cache.fill([3; 32], &record("c", 1), generation, 20);
        let inner = cache.lock();
        assert_eq!(inner.tokens.len(), 1);
        assert_eq!(inner.sessions.len(), 1);
        assert!(inner.sessions.contains_key("c"));
    }
}
