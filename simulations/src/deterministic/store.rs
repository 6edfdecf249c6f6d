//! The relay store as the simulation runs it: the real [`MemoryStore`]
//! behind a thin wrapper that
//! - scans every message written for plaintext (the `no_plaintext_at_rest`
//!   invariant: every simulated plaintext starts with [`PLAINTEXT_MARKER`],
//!   which no ciphertext contains by chance), and
//! - can be told to lose one outbox entry — the deliberately broken relay
//!   that proves the checker can fail.
//!
//! Surviving a crash is the point of a store: the simulation drops the
//! `Relay` and keeps this object, and a restart builds a new `Relay` over it.

use std::sync::Mutex;

use async_trait::async_trait;
use courier_protocol::{DeviceId, EnvelopeId, RelayName, Username};
use courier_relay::Result;
use courier_relay::store::{
    AcceptOutcome, AccessRecord, ChallengeRecord, DeviceRecord, InviteRecord, LinkRecord,
    MailboxRef, NewAccount, NewMessage, NewSession, OutboxDestination, OutboxEntry, OutboxId,
    PurgeReport, RotateOutcome, StoreStats, TokenHash, TokenHashes,
};
use courier_relay::types::{Envelope, OneTimePreKey, SignedDeviceList, SignedPreKey};
use courier_relay::{MemoryStore, Store};

/// Every plaintext the simulated clients encrypt begins with this.
pub const PLAINTEXT_MARKER: &[u8] = b"courier-sim-plaintext:";

/// Finds `needle` in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    haystack.len() >= needle.len()
        && haystack[..=haystack.len() - needle.len()]
            .iter()
            .enumerate()
            .any(|(i, &b)| b == first && haystack[i + 1..i + needle.len()] == *rest)
}

/// A [`MemoryStore`] that watches what is written to it.
#[derive(Debug, Default)]
pub struct SimStore {
    inner: MemoryStore,
    state: Mutex<Watch>,
    /// Set with every sighting, so the per-step check costs one load.
    sighted: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Watch {
    /// Plaintext sightings, described.
    plaintext: Vec<String>,
    /// Lose the next outbox entry handed out (the broken-relay hook).
    drop_next_outbox_entry: bool,
    /// Envelope ids of entries lost that way.
    dropped: Vec<EnvelopeId>,
}

impl SimStore {
    /// An empty store.
    pub fn new() -> Self {
        SimStore::default()
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        // A poisoned lock means a panicking test; the data is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms the broken-relay hook: the next outbox entry taken for delivery
    /// is deleted instead of delivered, as a buggy relay would.
    pub fn lose_next_outbox_entry(&self) {
        self.watch().drop_next_outbox_entry = true;
    }

    /// Envelopes lost by the hook.
    pub fn lost_entries(&self) -> Vec<EnvelopeId> {
        self.watch().dropped.clone()
    }

    /// Descriptions of every plaintext written, and forgets them.
    pub fn take_plaintext_sightings(&self) -> Vec<String> {
        self.sighted
            .store(false, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut self.watch().plaintext)
    }

    /// True when a plaintext was written since the sightings were last taken.
    pub fn has_plaintext_sightings(&self) -> bool {
        self.sighted.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn scan(&self, message: &NewMessage) {
        let mut found = Vec::new();
        if contains(message.body.as_slice(), PLAINTEXT_MARKER) {
            found.push(format!("body of envelope {}", message.id));
        }
        for r in &message.local {
            if contains(r.header.as_slice(), PLAINTEXT_MARKER) {
                found.push(format!(
                    "header for {}/{} of {}",
                    r.user, r.device, message.id
                ));
            }
        }
        for relay in &message.remote {
            for r in &relay.recipients {
                if contains(r.header.as_slice(), PLAINTEXT_MARKER) {
                    found.push(format!(
                        "outbox header for {}@{} of {}",
                        r.user, relay.relay, message.id
                    ));
                }
            }
        }
        if !found.is_empty() {
            self.watch().plaintext.extend(found);
            self.sighted
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl Store for SimStore {
    async fn create_invite(&self, invite: InviteRecord) -> Result<()> {
        self.inner.create_invite(invite).await
    }
    async fn register(&self, account: NewAccount) -> Result<()> {
        self.inner.register(account).await
    }
    async fn device(&self, user: &Username, device: DeviceId) -> Result<Option<DeviceRecord>> {
        self.inner.device(user, device).await
    }
    async fn devices(&self, user: &Username) -> Result<Vec<DeviceRecord>> {
        self.inner.devices(user).await
    }
    async fn device_list(&self, user: &Username) -> Result<Option<SignedDeviceList>> {
        self.inner.device_list(user).await
    }
    async fn put_challenge(&self, challenge: ChallengeRecord) -> Result<()> {
        self.inner.put_challenge(challenge).await
    }
    async fn take_challenge(&self, id: &str) -> Result<Option<ChallengeRecord>> {
        self.inner.take_challenge(id).await
    }
    async fn create_session(&self, session: NewSession) -> Result<()> {
        self.inner.create_session(session).await
    }
    async fn access(&self, token: &TokenHash) -> Result<Option<AccessRecord>> {
        self.inner.access(token).await
    }
    async fn rotate_refresh(
        &self,
        token: &TokenHash,
        now_ms: u64,
        next: TokenHashes,
    ) -> Result<RotateOutcome> {
        self.inner.rotate_refresh(token, now_ms, next).await
    }
    async fn revoke_session(&self, session: &str) -> Result<()> {
        self.inner.revoke_session(session).await
    }
    async fn put_link(&self, link: LinkRecord) -> Result<()> {
        self.inner.put_link(link).await
    }
    async fn link(&self, code: &str) -> Result<Option<LinkRecord>> {
        self.inner.link(code).await
    }
    async fn approve_link(
        &self,
        code: &str,
        device: DeviceRecord,
        list: SignedDeviceList,
        devices_max: u32,
        now_ms: u64,
    ) -> Result<()> {
        self.inner
            .approve_link(code, device, list, devices_max, now_ms)
            .await
    }
    async fn set_signed_prekey(
        &self,
        user: &Username,
        device: DeviceId,
        key: SignedPreKey,
    ) -> Result<()> {
        self.inner.set_signed_prekey(user, device, key).await
    }
    async fn add_one_time_prekeys(
        &self,
        user: &Username,
        device: DeviceId,
        keys: Vec<OneTimePreKey>,
        cap: u32,
    ) -> Result<u32> {
        self.inner
            .add_one_time_prekeys(user, device, keys, cap)
            .await
    }
    async fn take_one_time_prekey(
        &self,
        user: &Username,
        device: DeviceId,
    ) -> Result<(Option<OneTimePreKey>, u32)> {
        self.inner.take_one_time_prekey(user, device).await
    }
    async fn accept(&self, message: NewMessage) -> Result<AcceptOutcome> {
        self.scan(&message);
        self.inner.accept(message).await
    }
    async fn fetch(
        &self,
        user: &Username,
        device: DeviceId,
        after: u64,
        limit: u32,
        bytes_max: usize,
        now_ms: u64,
    ) -> Result<Vec<Envelope>> {
        self.inner
            .fetch(user, device, after, limit, bytes_max, now_ms)
            .await
    }
    async fn ack(&self, user: &Username, device: DeviceId, seqs: &[u64]) -> Result<u32> {
        self.inner.ack(user, device, seqs).await
    }
    async fn purge_expired(&self, now_ms: u64) -> Result<PurgeReport> {
        self.inner.purge_expired(now_ms).await
    }
    async fn outbox_take(
        &self,
        relay: &RelayName,
        max: u32,
        now_ms: u64,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>> {
        let mut entries = self
            .inner
            .outbox_take(relay, max, now_ms, lease_until_ms)
            .await?;
        let lose = {
            let mut w = self.watch();
            let lose = w.drop_next_outbox_entry && !entries.is_empty();
            if lose {
                w.drop_next_outbox_entry = false;
                w.dropped.push(entries[0].envelope);
            }
            lose
        };
        if lose {
            let lost = entries.remove(0);
            self.inner.outbox_delete(&[lost.id]).await?;
        }
        Ok(entries)
    }
    async fn outbox_delete(&self, ids: &[OutboxId]) -> Result<u32> {
        self.inner.outbox_delete(ids).await
    }
    async fn outbox_reschedule(&self, id: OutboxId, next_attempt_ms: u64) -> Result<()> {
        self.inner.outbox_reschedule(id, next_attempt_ms).await
    }
    async fn outbox_expired(&self, now_ms: u64, max: u32) -> Result<Vec<OutboxEntry>> {
        self.inner.outbox_expired(now_ms, max).await
    }
    async fn outbox_expire(
        &self,
        id: OutboxId,
        notice: Option<NewMessage>,
    ) -> Result<Vec<MailboxRef>> {
        if let Some(n) = &notice {
            self.scan(n);
        }
        self.inner.outbox_expire(id, notice).await
    }
    async fn outbox_destinations(&self) -> Result<Vec<OutboxDestination>> {
        self.inner.outbox_destinations().await
    }
    async fn outbox_wake(&self, relay: &RelayName, now_ms: u64, later_than_ms: u64) -> Result<u64> {
        self.inner.outbox_wake(relay, now_ms, later_than_ms).await
    }
    async fn stats(&self) -> Result<StoreStats> {
        self.inner.stats().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_finds_the_marker_anywhere() {
        let mut text = b"xxcourier-sim-plaintext:42".to_vec();
        assert!(contains(&text, PLAINTEXT_MARKER));
        text[5] = b'X';
        assert!(!contains(&text, PLAINTEXT_MARKER));
        assert!(!contains(b"short", PLAINTEXT_MARKER));
    }
}
