//! In-memory store: the reference semantics, used by simulations and tests.
//! One mutex around all state makes every method trivially atomic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use courier_protocol::{Bytes, DeviceId, EnvelopeId, RelayName, Username};

use super::OutboxDue;
use super::{
    AcceptOutcome, AccessRecord, ChallengeRecord, DeviceRecord, InviteRecord, LinkRecord,
    MailboxRef, NewAccount, NewMessage, NewSession, OnCommit, OutboxDestination, OutboxEntry,
    OutboxId, PurgeReport, RotateOutcome, Store, StoreStats, TokenHash, TokenHashes,
};
use crate::error::{RelayError, Result};
use crate::secret::{MessageKey, QuotaKey};
use crate::types::{Envelope, EnvelopeKind, OneTimePreKey, SignedDeviceList, SignedPreKey};

/// A store that keeps everything in process memory; nothing survives a restart.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves state that each method
        // already validated before mutating; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Default)]
struct State {
    invites: HashMap<TokenHash, (u64, bool)>,
    accounts: HashMap<Username, Account>,
    challenges: HashMap<String, ChallengeRecord>,
    sessions: HashMap<String, (Username, DeviceId)>,
    access: HashMap<TokenHash, (String, u64)>,
    refresh: HashMap<TokenHash, Refresh>,
    links: HashMap<String, LinkRecord>,
    /// By message key: (source, envelope id), not the envelope id alone.
    messages: HashMap<MessageKey, Message>,
    outbox: BTreeMap<OutboxId, Outgoing>,
    next_outbox_id: OutboxId,
}

#[derive(Debug)]
struct Account {
    list: SignedDeviceList,
    devices: BTreeMap<DeviceId, Device>,
}

#[derive(Debug)]
struct Device {
    record: DeviceRecord,
    /// Keyed by upload order, so the oldest key is handed out first.
    one_time: BTreeMap<u64, OneTimePreKey>,
    next_one_time: u64,
    mailbox: BTreeMap<u64, Entry>,
    next_seq: u64,
    /// Bytes of the mailbox's entries.
    bytes: u64,
    /// (entries, bytes) per quota key with entries waiting.
    quotas: HashMap<QuotaKey, (u64, u64)>,
}

#[derive(Debug)]
struct Entry {
    message: MessageKey,
    header: Bytes,
    expires_ms: u64,
    quota_key: Option<QuotaKey>,
    bytes: u64,
}

#[derive(Debug)]
struct Refresh {
    session: String,
    expires_ms: u64,
    used: bool,
}

#[derive(Debug)]
struct Message {
    envelope: EnvelopeId,
    digest: [u8; 32],
    origin: RelayName,
    kind: EnvelopeKind,
    body: Option<Bytes>,
    refs: u64,
    received_ms: u64,
    expires_ms: u64,
}

#[derive(Debug)]
struct Outgoing {
    entry: OutboxEntry,
    message: MessageKey,
    next_attempt_ms: u64,
}

impl Device {
    fn new(record: DeviceRecord) -> Self {
        Device {
            record,
            one_time: BTreeMap::new(),
            next_one_time: 0,
            mailbox: BTreeMap::new(),
            next_seq: 1,
            bytes: 0,
            quotas: HashMap::new(),
        }
    }

    /// Removes an entry and gives back what it counted.
    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let e = self.mailbox.remove(&seq)?;
        self.forget(&e);
        Some(e)
    }

    /// Gives back what a removed entry counted.
    fn forget(&mut self, e: &Entry) {
        self.bytes = self.bytes.saturating_sub(e.bytes);
        if let Some(k) = e.quota_key
            && let Some(q) = self.quotas.get_mut(&k)
        {
            q.0 = q.0.saturating_sub(1);
            q.1 = q.1.saturating_sub(e.bytes);
            if q.0 == 0 {
                self.quotas.remove(&k);
            }
        }
    }
}

impl State {
    fn device(&self, user: &Username, device: DeviceId) -> Option<&Device> {
        self.accounts.get(user)?.devices.get(&device)
    }

    fn device_mut(&mut self, user: &Username, device: DeviceId) -> Option<&mut Device> {
        self.accounts.get_mut(user)?.devices.get_mut(&device)
    }

    fn release(&mut self, id: &MessageKey) {
        if let Some(m) = self.messages.get_mut(id) {
            m.refs = m.refs.saturating_sub(1);
            if m.refs == 0 {
                m.body = None;
            }
        }
    }

    fn revoke(&mut self, session: &str) {
        self.sessions.remove(session);
        self.access.retain(|_, (s, _)| s != session);
        self.refresh.retain(|_, r| r.session != session);
    }

    fn accept(&mut self, m: NewMessage) -> Result<AcceptOutcome> {
        if let Some(existing) = self.messages.get(&m.key) {
            return if existing.digest == m.digest {
                Ok(AcceptOutcome::Duplicate {
                    accepted_ms: existing.received_ms,
                })
            } else {
                Err(RelayError::Conflict("envelope id already used"))
            };
        }
        // Check everything before changing anything.
        let mut local = Vec::with_capacity(m.local.len());
        let mut adding: HashMap<(Username, DeviceId), (u64, u64)> = HashMap::new();
        for r in m.local {
            let bytes = (m.body.as_slice().len() + r.header.as_slice().len()) as u64;
            let Some(d) = self.device(&r.user, r.device) else {
                if m.skip_unknown {
                    continue;
                }
                return Err(if self.accounts.contains_key(&r.user) {
                    RelayError::UnknownDevice
                } else {
                    RelayError::UnknownUser
                });
            };
            let n = adding.entry((r.user.clone(), r.device)).or_insert((0, 0));
            n.0 += 1;
            n.1 += bytes;
            if d.mailbox.len() as u64 + n.0 > u64::from(m.depth_max)
                || d.bytes.saturating_add(n.1) > m.bytes_max
            {
                return Err(RelayError::MailboxFull);
            }
            // One message has one source, so all its entries for this
            // device (`n`) count against the same share.
            if let Some(k) = r.quota_key {
                let held = d.quotas.get(&k).copied().unwrap_or((0, 0));
                if held.0 + n.0 > u64::from(m.per_source_max)
                    || held.1.saturating_add(n.1) > m.per_source_bytes_max
                {
                    return Err(RelayError::MailboxQuota);
                }
            }
            local.push((r, bytes));
        }
        if local.is_empty() && m.remote.is_empty() {
            return Err(RelayError::UnknownDevice);
        }
        let mut delivered = Vec::with_capacity(local.len());
        for (r, bytes) in local {
            if let Some(d) = self.device_mut(&r.user, r.device) {
                let seq = d.next_seq;
                d.next_seq += 1;
                d.bytes += bytes;
                if let Some(k) = r.quota_key {
                    let q = d.quotas.entry(k).or_insert((0, 0));
                    q.0 += 1;
                    q.1 += bytes;
                }
                d.mailbox.insert(
                    seq,
                    Entry {
                        message: m.key,
                        header: r.header,
                        expires_ms: m.expires_ms,
                        quota_key: r.quota_key,
                        bytes,
                    },
                );
                delivered.push(MailboxRef {
                    user: r.user,
                    device: r.device,
                    seq,
                });
            }
        }
        let refs = (delivered.len() + m.remote.len()) as u64;
        for remote in m.remote {
            self.next_outbox_id += 1;
            let id = self.next_outbox_id;
            self.outbox.insert(
                id,
                Outgoing {
                    entry: OutboxEntry {
                        id,
                        relay: remote.relay,
                        envelope: m.id,
                        kind: m.kind,
                        body: m.body.clone(),
                        recipients: remote.recipients,
                        expires_ms: m.expires_ms,
                        attempts: 0,
                        sender: m.sender.clone(),
                    },
                    message: m.key,
                    next_attempt_ms: 0,
                },
            );
        }
        self.messages.insert(
            m.key,
            Message {
                envelope: m.id,
                digest: m.digest,
                origin: m.origin,
                kind: m.kind,
                body: Some(m.body),
                refs,
                received_ms: m.received_ms,
                expires_ms: m.expires_ms,
            },
        );
        Ok(AcceptOutcome::Accepted { delivered })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_invite(&self, invite: InviteRecord) -> Result<()> {
        self.lock()
            .invites
            .insert(invite.code_hash, (invite.expires_ms, false));
        Ok(())
    }

    async fn register(&self, account: NewAccount) -> Result<()> {
        let mut s = self.lock();
        let user = account.device.user.clone();
        // The invite first: without a valid one, whether a name is taken
        // is none of the caller's business.
        if let Some(code) = &account.invite {
            match s.invites.get(code) {
                Some((expires, used)) if !*used && *expires > account.now_ms => {}
                _ => return Err(RelayError::InvalidInvite),
            }
        }
        if s.accounts.contains_key(&user) {
            return Err(RelayError::UsernameTaken);
        }
        if let Some(code) = &account.invite
            && let Some((_, used)) = s.invites.get_mut(code)
        {
            *used = true;
        }
        let mut devices = BTreeMap::new();
        devices.insert(account.device.device, Device::new(account.device));
        s.accounts.insert(
            user,
            Account {
                list: account.device_list,
                devices,
            },
        );
        Ok(())
    }

    async fn device(&self, user: &Username, device: DeviceId) -> Result<Option<DeviceRecord>> {
        let s = self.lock();
        Ok(s.device(user, device).map(|d| {
            let mut r = d.record.clone();
            r.one_time_count = d.one_time.len() as u32;
            r
        }))
    }

    async fn devices(&self, user: &Username) -> Result<Vec<DeviceRecord>> {
        let s = self.lock();
        Ok(s.accounts
            .get(user)
            .map(|a| {
                a.devices
                    .values()
                    .map(|d| {
                        let mut r = d.record.clone();
                        r.one_time_count = d.one_time.len() as u32;
                        r
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn device_list(&self, user: &Username) -> Result<Option<SignedDeviceList>> {
        Ok(self.lock().accounts.get(user).map(|a| a.list.clone()))
    }

    async fn put_challenge(&self, challenge: ChallengeRecord) -> Result<()> {
        self.lock()
            .challenges
            .insert(challenge.id.clone(), challenge);
        Ok(())
    }

    async fn take_challenge(&self, id: &str) -> Result<Option<ChallengeRecord>> {
        Ok(self.lock().challenges.remove(id))
    }

    async fn create_session(&self, session: NewSession) -> Result<()> {
        let mut s = self.lock();
        let t = session.tokens;
        s.access
            .insert(t.access, (session.id.clone(), t.access_expires_ms));
        s.refresh.insert(
            t.refresh,
            Refresh {
                session: session.id.clone(),
                expires_ms: t.refresh_expires_ms,
                used: false,
            },
        );
        s.sessions
            .insert(session.id, (session.user, session.device));
        Ok(())
    }

    async fn access(&self, token: &TokenHash) -> Result<Option<AccessRecord>> {
        let s = self.lock();
        let Some((session, expires_ms)) = s.access.get(token) else {
            return Ok(None);
        };
        let Some((user, device)) = s.sessions.get(session) else {
            return Ok(None);
        };
        let one_time_count = s
            .device(user, *device)
            .map(|d| d.one_time.len() as u32)
            .unwrap_or(0);
        Ok(Some(AccessRecord {
            session: session.clone(),
            user: user.clone(),
            device: *device,
            expires_ms: *expires_ms,
            one_time_count,
        }))
    }

    async fn rotate_refresh(
        &self,
        token: &TokenHash,
        now_ms: u64,
        next: TokenHashes,
    ) -> Result<RotateOutcome> {
        let mut s = self.lock();
        let Some(r) = s.refresh.get(token) else {
            return Ok(RotateOutcome::Invalid);
        };
        let session = r.session.clone();
        if r.used {
            s.revoke(&session);
            return Ok(RotateOutcome::Reused { session });
        }
        if r.expires_ms <= now_ms {
            return Ok(RotateOutcome::Invalid);
        }
        let Some((user, device)) = s.sessions.get(&session).cloned() else {
            return Ok(RotateOutcome::Invalid);
        };
        if let Some(r) = s.refresh.get_mut(token) {
            r.used = true;
        }
        s.access.retain(|_, (sess, _)| *sess != session);
        s.access
            .insert(next.access, (session.clone(), next.access_expires_ms));
        s.refresh.insert(
            next.refresh,
            Refresh {
                session: session.clone(),
                expires_ms: next.refresh_expires_ms,
                used: false,
            },
        );
        Ok(RotateOutcome::Rotated {
            session,
            user,
            device,
        })
    }

    async fn revoke_session(&self, session: &str) -> Result<()> {
        self.lock().revoke(session);
        Ok(())
    }

    async fn put_link(&self, link: LinkRecord) -> Result<()> {
        let mut s = self.lock();
        if s.links.contains_key(&link.code) {
            return Err(RelayError::Conflict("link code in use"));
        }
        s.links.insert(link.code.clone(), link);
        Ok(())
    }

    async fn link(&self, code: &str) -> Result<Option<LinkRecord>> {
        Ok(self.lock().links.get(code).cloned())
    }

    async fn approve_link(
        &self,
        code: &str,
        device: DeviceRecord,
        list: SignedDeviceList,
        devices_max: u32,
        now_ms: u64,
    ) -> Result<()> {
        let mut s = self.lock();
        match s.links.get(code) {
            Some(l) if l.approved.is_none() && l.expires_ms > now_ms => {}
            _ => return Err(RelayError::InvalidLinkCode),
        }
        let account = s
            .accounts
            .get_mut(&device.user)
            .ok_or(RelayError::UnknownUser)?;
        if account.devices.len() >= devices_max as usize {
            return Err(RelayError::TooManyDevices);
        }
        if list.list.version != account.list.list.version + 1
            || account.devices.contains_key(&device.device)
        {
            return Err(RelayError::Conflict("device list changed meanwhile"));
        }
        let id = device.device;
        account.devices.insert(id, Device::new(device));
        account.list = list;
        if let Some(l) = s.links.get_mut(code) {
            l.approved = Some(id);
        }
        Ok(())
    }

    async fn set_signed_prekey(
        &self,
        user: &Username,
        device: DeviceId,
        key: SignedPreKey,
    ) -> Result<()> {
        let mut s = self.lock();
        let d = s
            .device_mut(user, device)
            .ok_or(RelayError::UnknownDevice)?;
        d.record.signed_prekey = Some(key);
        Ok(())
    }

    async fn add_one_time_prekeys(
        &self,
        user: &Username,
        device: DeviceId,
        keys: Vec<OneTimePreKey>,
        cap: u32,
    ) -> Result<u32> {
        let mut s = self.lock();
        let d = s
            .device_mut(user, device)
            .ok_or(RelayError::UnknownDevice)?;
        let new = keys
            .iter()
            .filter(|k| !d.one_time.values().any(|o| o.id == k.id))
            .count();
        if d.one_time.len() + new > cap as usize {
            return Err(RelayError::TooManyPrekeys);
        }
        for k in keys {
            if let Some(existing) = d.one_time.values_mut().find(|o| o.id == k.id) {
                *existing = k;
            } else {
                d.next_one_time += 1;
                d.one_time.insert(d.next_one_time, k);
            }
        }
        Ok(d.one_time.len() as u32)
    }

    async fn take_one_time_prekey(
        &self,
        user: &Username,
        device: DeviceId,
    ) -> Result<(Option<OneTimePreKey>, u32)> {
        let mut s = self.lock();
        let d = s
            .device_mut(user, device)
            .ok_or(RelayError::UnknownDevice)?;
        let key = d.one_time.pop_first().map(|(_, k)| k);
        Ok((key, d.one_time.len() as u32))
    }

    async fn accept(&self, message: NewMessage) -> Result<AcceptOutcome> {
        self.lock().accept(message)
    }

    async fn accept_then(&self, message: NewMessage, committed: OnCommit) -> Result<AcceptOutcome> {
        // Under the lock, so entries of one mailbox are announced in seq order.
        let mut state = self.lock();
        let outcome = state.accept(message)?;
        committed(&outcome);
        Ok(outcome)
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
        let s = self.lock();
        let Some(d) = s.device(user, device) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (seq, e) in d.mailbox.range(after.saturating_add(1)..) {
            if out.len() >= limit as usize || bytes > bytes_max {
                break;
            }
            if e.expires_ms <= now_ms {
                continue;
            }
            let Some(m) = s.messages.get(&e.message) else {
                continue;
            };
            let body = m.body.clone().unwrap_or_default();
            bytes += e.header.len() + body.len();
            out.push(Envelope {
                seq: *seq,
                id: m.envelope,
                origin: m.origin.clone(),
                header: e.header.clone(),
                body,
                received_ms: m.received_ms,
                expires_ms: e.expires_ms,
                kind: m.kind,
            });
        }
        Ok(out)
    }

    async fn ack(&self, user: &Username, device: DeviceId, seqs: &[u64]) -> Result<u32> {
        let mut s = self.lock();
        let Some(d) = s.device_mut(user, device) else {
            return Ok(0);
        };
        let removed: Vec<MessageKey> = seqs
            .iter()
            .filter_map(|seq| d.remove(*seq).map(|e| e.message))
            .collect();
        for id in &removed {
            s.release(id);
        }
        Ok(removed.len() as u32)
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<PurgeReport> {
        let mut s = self.lock();
        let mut report = PurgeReport::default();
        let mut released = Vec::new();
        for account in s.accounts.values_mut() {
            for d in account.devices.values_mut() {
                let expired: Vec<u64> = d
                    .mailbox
                    .iter()
                    .filter(|(_, e)| e.expires_ms <= now_ms)
                    .map(|(seq, _)| *seq)
                    .collect();
                for seq in expired {
                    if let Some(e) = d.remove(seq) {
                        released.push(e.message);
                    }
                }
            }
        }
        report.mailbox_entries = released.len() as u64;
        for id in &released {
            s.release(id);
        }
        let before = s.messages.len();
        s.messages
            .retain(|_, m| m.refs > 0 || m.expires_ms > now_ms);
        report.messages = (before - s.messages.len()) as u64;
        let before =
            s.challenges.len() + s.links.len() + s.invites.len() + s.access.len() + s.refresh.len();
        s.challenges.retain(|_, c| c.expires_ms > now_ms);
        s.links.retain(|_, l| l.expires_ms > now_ms);
        s.invites
            .retain(|_, (expires, used)| *expires > now_ms && !*used);
        s.access.retain(|_, (_, expires)| *expires > now_ms);
        s.refresh.retain(|_, r| r.expires_ms > now_ms);
        let after =
            s.challenges.len() + s.links.len() + s.invites.len() + s.access.len() + s.refresh.len();
        report.auth_records = (before - after) as u64;
        let live: std::collections::HashSet<String> =
            s.refresh.values().map(|r| r.session.clone()).collect();
        s.sessions.retain(|id, _| live.contains(id));
        Ok(report)
    }

    async fn outbox_take(
        &self,
        relay: &RelayName,
        max: u32,
        now_ms: u64,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>> {
        let mut s = self.lock();
        let mut out = Vec::new();
        for o in s.outbox.values_mut() {
            if out.len() >= max as usize {
                break;
            }
            if &o.entry.relay == relay && o.next_attempt_ms <= now_ms && o.entry.expires_ms > now_ms
            {
                o.next_attempt_ms = lease_until_ms;
                out.push(o.entry.clone());
            }
        }
        Ok(out)
    }

    async fn outbox_delete(&self, ids: &[OutboxId]) -> Result<u32> {
        let mut s = self.lock();
        let mut n = 0;
        for id in ids {
            if let Some(o) = s.outbox.remove(id) {
                s.release(&o.message);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn outbox_reschedule(&self, id: OutboxId, next_attempt_ms: u64) -> Result<()> {
        if let Some(o) = self.lock().outbox.get_mut(&id) {
            o.entry.attempts += 1;
            o.next_attempt_ms = next_attempt_ms;
        }
        Ok(())
    }

    async fn outbox_expired(&self, now_ms: u64, max: u32) -> Result<Vec<OutboxEntry>> {
        let s = self.lock();
        Ok(s.outbox
            .values()
            .filter(|o| o.entry.expires_ms <= now_ms)
            .take(max as usize)
            .map(|o| o.entry.clone())
            .collect())
    }

    async fn outbox_expire(
        &self,
        id: OutboxId,
        notice: Option<NewMessage>,
    ) -> Result<Vec<MailboxRef>> {
        let mut s = self.lock();
        let Some(o) = s.outbox.remove(&id) else {
            return Ok(Vec::new());
        };
        let mut delivered = Vec::new();
        if let Some(notice) = notice {
            match s.accept(notice) {
                Ok(AcceptOutcome::Accepted { delivered: d }) => delivered = d,
                Ok(AcceptOutcome::Duplicate { .. }) => {}
                Err(e) => {
                    // Keep the step atomic: put the entry back.
                    s.outbox.insert(id, o);
                    return Err(e);
                }
            }
        }
        s.release(&o.message);
        Ok(delivered)
    }

    async fn outbox_destinations(&self) -> Result<Vec<OutboxDestination>> {
        let s = self.lock();
        let mut by: BTreeMap<RelayName, OutboxDestination> = BTreeMap::new();
        for o in s.outbox.values() {
            let d = by
                .entry(o.entry.relay.clone())
                .or_insert_with(|| OutboxDestination {
                    relay: o.entry.relay.clone(),
                    pending: 0,
                    next_attempt_ms: u64::MAX,
                });
            d.pending += 1;
            d.next_attempt_ms = d.next_attempt_ms.min(o.next_attempt_ms);
        }
        Ok(by.into_values().collect())
    }

    async fn outbox_due(
        &self,
        now_ms: u64,
        entries_max: u32,
        destinations_max: u32,
    ) -> Result<OutboxDue> {
        let s = self.lock();
        // The same answer as the SQL stores' index scan: the first
        // `entries_max` due entries in (due time, id) order.
        let mut due: Vec<(u64, OutboxId, &RelayName)> = Vec::new();
        let mut next_due_ms: Option<u64> = None;
        for (id, o) in &s.outbox {
            if o.next_attempt_ms <= now_ms {
                // Expired entries are the expiry pass's, as in `outbox_take`.
                if o.entry.expires_ms <= now_ms {
                    continue;
                }
                due.push((o.next_attempt_ms, *id, &o.entry.relay));
            } else {
                next_due_ms =
                    Some(next_due_ms.map_or(o.next_attempt_ms, |t| t.min(o.next_attempt_ms)));
            }
        }
        due.sort_unstable();
        due.truncate(entries_max as usize);
        let mut by: BTreeMap<&RelayName, OutboxDestination> = BTreeMap::new();
        for (at, _, relay) in due {
            let d = by.entry(relay).or_insert_with(|| OutboxDestination {
                relay: relay.clone(),
                pending: 0,
                next_attempt_ms: at,
            });
            d.pending += 1;
            d.next_attempt_ms = d.next_attempt_ms.min(at);
        }
        let mut destinations: Vec<OutboxDestination> = by.into_values().collect();
        destinations
            .sort_by(|a, b| (a.next_attempt_ms, &a.relay).cmp(&(b.next_attempt_ms, &b.relay)));
        destinations.truncate(destinations_max as usize);
        Ok(OutboxDue {
            destinations,
            next_due_ms,
        })
    }

    async fn outbox_wake(&self, relay: &RelayName, now_ms: u64, later_than_ms: u64) -> Result<u64> {
        let mut s = self.lock();
        let mut n = 0;
        for o in s.outbox.values_mut() {
            if &o.entry.relay == relay && o.next_attempt_ms > later_than_ms {
                o.next_attempt_ms = now_ms;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn stats(&self) -> Result<StoreStats> {
        let s = self.lock();
        Ok(StoreStats {
            accounts: s.accounts.len() as u64,
            messages: s.messages.len() as u64,
            bodies: s.messages.values().filter(|m| m.body.is_some()).count() as u64,
            mailbox_entries: s
                .accounts
                .values()
                .flat_map(|a| a.devices.values())
                .map(|d| d.mailbox.len() as u64)
                .sum(),
            outbox_entries: s.outbox.len() as u64,
        })
    }
}
