//! The [`Store`] implementation: each method hands over to the module of
//! its concern and turns the crate's [`Error`](crate::error::Error) back
//! into the relay's.

use async_trait::async_trait;
use courier_protocol::{DeviceId, RelayName, Username};
use courier_relay::Result;
use courier_relay::store::{
    AcceptOutcome, AccessRecord, ChallengeRecord, DeviceRecord, InviteRecord, LinkRecord,
    MailboxRef, NewAccount, NewMessage, NewSession, OnCommit, OutboxDestination, OutboxDue,
    OutboxEntry, OutboxId, PurgeReport, RotateOutcome, Store, StoreStats, TokenHash, TokenHashes,
};
use courier_relay::types::{Envelope, OneTimePreKey, SignedDeviceList, SignedPreKey};
use sqlx::Row as _;

use super::query::{q, u};
use super::writer::SqlStore;
use super::{accounts, auth, keys, mailbox, outbox};

#[async_trait]
impl Store for SqlStore {
    async fn create_invite(&self, invite: InviteRecord) -> Result<()> {
        Ok(accounts::create_invite(self, invite).await?)
    }

    async fn register(&self, account: NewAccount) -> Result<()> {
        Ok(accounts::register(self, account).await?)
    }

    async fn device(&self, user: &Username, device: DeviceId) -> Result<Option<DeviceRecord>> {
        Ok(accounts::device(self, user, device).await?)
    }

    async fn devices(&self, user: &Username) -> Result<Vec<DeviceRecord>> {
        Ok(accounts::devices(self, user).await?)
    }

    async fn device_list(&self, user: &Username) -> Result<Option<SignedDeviceList>> {
        Ok(accounts::device_list(self, user).await?)
    }

    async fn put_link(&self, l: LinkRecord) -> Result<()> {
        Ok(accounts::put_link(self, l).await?)
    }

    async fn link(&self, code: &str) -> Result<Option<LinkRecord>> {
        Ok(accounts::link(self, code).await?)
    }

    async fn approve_link(
        &self,
        code: &str,
        device: DeviceRecord,
        list: SignedDeviceList,
        devices_max: u32,
        now_ms: u64,
    ) -> Result<()> {
        Ok(accounts::approve_link(self, code, device, list, devices_max, now_ms).await?)
    }

    async fn put_challenge(&self, ch: ChallengeRecord) -> Result<()> {
        Ok(auth::put_challenge(self, ch).await?)
    }

    async fn take_challenge(&self, id: &str) -> Result<Option<ChallengeRecord>> {
        Ok(auth::take_challenge(self, id).await?)
    }

    async fn create_session(&self, s: NewSession) -> Result<()> {
        Ok(auth::create_session(self, s).await?)
    }

    async fn access(&self, token: &TokenHash) -> Result<Option<AccessRecord>> {
        Ok(auth::access(self, token).await?)
    }

    async fn rotate_refresh(
        &self,
        token: &TokenHash,
        now_ms: u64,
        next: TokenHashes,
    ) -> Result<RotateOutcome> {
        Ok(auth::rotate_refresh(self, token, now_ms, next).await?)
    }

    async fn revoke_session(&self, session: &str) -> Result<()> {
        Ok(auth::revoke_session(self, session).await?)
    }

    async fn set_signed_prekey(
        &self,
        user: &Username,
        device: DeviceId,
        key: SignedPreKey,
    ) -> Result<()> {
        Ok(keys::set_signed_prekey(self, user, device, key).await?)
    }

    async fn add_one_time_prekeys(
        &self,
        user: &Username,
        device: DeviceId,
        keys: Vec<OneTimePreKey>,
        cap: u32,
    ) -> Result<u32> {
        Ok(keys::add_one_time_prekeys(self, user, device, keys, cap).await?)
    }

    async fn take_one_time_prekey(
        &self,
        user: &Username,
        device: DeviceId,
    ) -> Result<(Option<OneTimePreKey>, u32)> {
        Ok(keys::take_one_time_prekey(self, user, device).await?)
    }

    async fn accept(&self, message: NewMessage) -> Result<AcceptOutcome> {
        Ok(mailbox::accept(self, message).await?)
    }

    async fn accept_then(&self, message: NewMessage, committed: OnCommit) -> Result<AcceptOutcome> {
        Ok(mailbox::accept_then(self, message, committed).await?)
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
        Ok(mailbox::fetch(self, user, device, after, limit, bytes_max, now_ms).await?)
    }

    async fn ack(&self, user: &Username, device: DeviceId, seqs: &[u64]) -> Result<u32> {
        Ok(mailbox::ack(self, user, device, seqs).await?)
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<PurgeReport> {
        Ok(mailbox::purge_expired(self, now_ms).await?)
    }

    async fn outbox_take(
        &self,
        relay: &RelayName,
        max: u32,
        now_ms: u64,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>> {
        Ok(outbox::outbox_take(self, relay, max, now_ms, lease_until_ms).await?)
    }

    async fn outbox_delete(&self, ids: &[OutboxId]) -> Result<u32> {
        Ok(outbox::outbox_delete(self, ids).await?)
    }

    async fn outbox_reschedule(&self, id: OutboxId, next_attempt_ms: u64) -> Result<()> {
        Ok(outbox::outbox_reschedule(self, id, next_attempt_ms).await?)
    }

    async fn outbox_expired(&self, now_ms: u64, max: u32) -> Result<Vec<OutboxEntry>> {
        Ok(outbox::outbox_expired(self, now_ms, max).await?)
    }

    async fn outbox_expire(
        &self,
        id: OutboxId,
        notice: Option<NewMessage>,
    ) -> Result<Vec<MailboxRef>> {
        Ok(outbox::outbox_expire(self, id, notice).await?)
    }

    async fn outbox_destinations(&self) -> Result<Vec<OutboxDestination>> {
        Ok(outbox::outbox_destinations(self).await?)
    }

    async fn outbox_due(
        &self,
        now_ms: u64,
        entries_max: u32,
        destinations_max: u32,
    ) -> Result<OutboxDue> {
        Ok(outbox::outbox_due(self, now_ms, entries_max, destinations_max).await?)
    }

    async fn outbox_wake(&self, relay: &RelayName, now_ms: u64, later_than_ms: u64) -> Result<u64> {
        Ok(outbox::outbox_wake(self, relay, now_ms, later_than_ms).await?)
    }

    async fn stats(&self) -> Result<StoreStats> {
        Ok(stats(self).await?)
    }
}

async fn stats(store: &SqlStore) -> crate::error::Result<StoreStats> {
    let r = q("SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM messages WHERE body IS NOT NULL), (SELECT COUNT(*) FROM mailbox), (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM accounts)")
        .fetch_one(&store.read)
        .await?;
    Ok(StoreStats {
        accounts: u(r.try_get(4)?),
        messages: u(r.try_get(0)?),
        bodies: u(r.try_get(1)?),
        mailbox_entries: u(r.try_get(2)?),
        outbox_entries: u(r.try_get(3)?),
    })
}
