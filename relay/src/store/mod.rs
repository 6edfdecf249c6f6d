//! Storage behind one async trait, with an in-memory implementation here
//! and the SQLite and PostgreSQL ones in `courier-store-sql`, which pass
//! the same conformance suite (`crate::testkit`, feature `testkit`).
//!
//! The trait is object safe (`Arc<dyn Store>`) because the gateway, the
//! federation driver and the node hold the store without knowing which one
//! the operator configured; `async-trait` boxes the futures to make that
//! possible (native `async fn` in traits is not `dyn`-compatible).
//!
//! Each method is one atomic step: a store either does all of it or none
//! of it, and returns only after it is durable (for the SQL stores: after
//! COMMIT). Checks that need the stored state under the same lock or
//! transaction (username free, invite unused, mailbox depth, one-time prekey
//! hand-out, refresh token reuse) happen inside the store; checks of the
//! request alone (signatures, sizes) happen in [`crate::Relay`] before.

use async_trait::async_trait;
use courier_protocol::{DeviceId, EnvelopeId, RelayName, Username};

use crate::error::Result;
pub use crate::secret::{MessageKey, QuotaKey};
use crate::types::{
    DeviceKeys, EnvelopeKind, FedRecipient, OneTimePreKey, SignedDeviceList, SignedPreKey,
};
use courier_protocol::Bytes;

pub mod memory;

pub use memory::MemoryStore;

/// SHA-256 of a secret token or code; stores never see the secret itself.
pub type TokenHash = [u8; 32];

/// Row id of an outbox entry.
pub type OutboxId = i64;

/// An operator-created invite code (hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    /// SHA-256 of the code.
    pub code_hash: TokenHash,
    /// After this the code is void.
    pub expires_ms: u64,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Owner.
    pub user: Username,
    /// Device id.
    pub device: DeviceId,
    /// Public identity keys.
    pub keys: DeviceKeys,
    /// Current signed prekey, once uploaded.
    pub signed_prekey: Option<SignedPreKey>,
    /// One-time prekeys left.
    pub one_time_count: u32,
    /// When registered.
    pub created_ms: u64,
}

/// A new account with its first device, registered atomically.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Device 1 of the account (its `user` is the new username).
    pub device: DeviceRecord,
    /// The signed device list, version 1.
    pub device_list: SignedDeviceList,
    /// Invite to consume in the same step (`None` under the open policy).
    pub invite: Option<TokenHash>,
    /// Now (for invite expiry).
    pub now_ms: u64,
}

/// A login challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRecord {
    /// Random id (base64url).
    pub id: String,
    /// Who may answer it.
    pub user: Username,
    /// Which device.
    pub device: DeviceId,
    /// The nonce to sign.
    pub nonce: [u8; 32],
    /// After this it is void.
    pub expires_ms: u64,
}

/// A login session: one device, one chain of refresh tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// Random session id.
    pub id: String,
    /// The account.
    pub user: Username,
    /// The device.
    pub device: DeviceId,
    /// First token pair.
    pub tokens: TokenHashes,
}

/// Hashes and expiries of an access/refresh token pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHashes {
    /// SHA-256 of the access token.
    pub access: TokenHash,
    /// When the access token expires.
    pub access_expires_ms: u64,
    /// SHA-256 of the refresh token.
    pub refresh: TokenHash,
    /// When the refresh token expires.
    pub refresh_expires_ms: u64,
}

/// What an access token unlocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// Its session.
    pub session: String,
    /// The account.
    pub user: Username,
    /// The device.
    pub device: DeviceId,
    /// When it expires.
    pub expires_ms: u64,
    /// One-time prekeys the device has left (for the low-water hint).
    pub one_time_count: u32,
}

/// Result of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token was current: it is now used and `next` is stored.
    Rotated {
        /// The login session the token belonged to (its old access tokens
        /// were deleted).
        session: String,
        /// The account.
        user: Username,
        /// The device.
        device: DeviceId,
    },
    /// The token had been used before: the whole session is revoked.
    Reused {
        /// The revoked session, so only its cached tokens are dropped.
        session: String,
    },
    /// Unknown, expired or of a revoked session.
    Invalid,
}

/// A pending device link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    /// The short code.
    pub code: String,
    /// SHA-256 of the new device's secret.
    pub secret_hash: TokenHash,
    /// The account to join.
    pub user: Username,
    /// The new device's keys.
    pub keys: DeviceKeys,
    /// After this it is void.
    pub expires_ms: u64,
    /// Set once approved.
    pub approved: Option<DeviceId>,
}

/// One local mailbox entry of a new message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecipient {
    /// The user.
    pub user: Username,
    /// The device.
    pub device: DeviceId,
    /// Its header.
    pub header: Bytes,
    /// What the entry counts against: the keyed (recipient device, source)
    /// of [`crate::secret::StoreSecret::quota_key`]; `None` counts against
    /// no source's share (delivery-failure notices).
    pub quota_key: Option<QuotaKey>,
}

/// The recipients of a new message on one other relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRecipients {
    /// The destination relay.
    pub relay: RelayName,
    /// The recipients there.
    pub recipients: Vec<FedRecipient>,
}

/// A message to store: body once, a mailbox entry per local recipient, an
/// outbox entry per remote relay. Stored all at once or not at all.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Envelope id, as delivered to recipients.
    pub id: EnvelopeId,
    /// Who submitted it (`local:<user>/<device>` or `relay:<name>`): a retry
    /// must come from the same source to count as a duplicate. Not stored.
    pub source: String,
    /// The idempotency key: keyed hash of (source, id), for federated mail
    /// of (source, id, digest). Two sources may use the same envelope id;
    /// only the same source's retry collides.
    pub key: MessageKey,
    /// Keyed digest over source, body and recipients: a retry must match it.
    pub digest: [u8; 32],
    /// Relay that accepted it from its sender.
    pub origin: RelayName,
    /// Message or notice.
    pub kind: EnvelopeKind,
    /// The shared body.
    pub body: Bytes,
    /// When the origin accepted it.
    pub received_ms: u64,
    /// When undelivered entries are purged.
    pub expires_ms: u64,
    /// Local mailbox entries.
    pub local: Vec<LocalRecipient>,
    /// Outbox entries, one per destination relay.
    pub remote: Vec<RemoteRecipients>,
    /// The submitting local device, sealed with the store secret
    /// ([`crate::secret::StoreSecret::seal_sender`]), remembered with outbox
    /// entries only so a delivery-failure notice can reach it.
    pub sender: Option<Bytes>,
    /// Mailbox depth limit per device.
    pub depth_max: u32,
    /// Mailbox size limit per device (body + header of each entry).
    pub bytes_max: u64,
    /// Most entries with one quota key per device mailbox.
    pub per_source_max: u32,
    /// Most bytes with one quota key per device mailbox.
    pub per_source_bytes_max: u64,
    /// Skip local recipients that do not exist instead of failing
    /// (federated delivery: the sender's device list may be stale).
    pub skip_unknown: bool,
}

impl NewMessage {
    /// What the entry for `r` counts against its mailbox's byte limits:
    /// the body (stored once, but kept alive by every entry) and the header.
    pub fn entry_bytes(&self, r: &LocalRecipient) -> u64 {
        (self.body.as_slice().len() + r.header.as_slice().len()) as u64
    }
}

/// What [`Store::accept_then`] calls with a stored message's outcome. It
/// runs on the store's commit path: it must be quick and must not block.
pub type OnCommit = Box<dyn FnOnce(&AcceptOutcome) + Send + Sync>;

/// A new mailbox entry, to notify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRef {
    /// The user.
    pub user: Username,
    /// The device.
    pub device: DeviceId,
    /// The entry's sequence number.
    pub seq: u64,
}

/// Result of [`Store::accept`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Stored now.
    Accepted {
        /// New mailbox entries.
        delivered: Vec<MailboxRef>,
    },
    /// Stored before by the same source with the same content: nothing changed.
    Duplicate {
        /// When it was first accepted.
        accepted_ms: u64,
    },
}

/// An outbox entry: one message for all its recipients on one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Row id.
    pub id: OutboxId,
    /// Destination relay.
    pub relay: RelayName,
    /// Envelope id.
    pub envelope: EnvelopeId,
    /// Message or notice.
    pub kind: EnvelopeKind,
    /// Body.
    pub body: Bytes,
    /// Recipients on the destination.
    pub recipients: Vec<FedRecipient>,
    /// When the origin gives up.
    pub expires_ms: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The local device that submitted it, sealed, if any.
    pub sender: Option<Bytes>,
}

/// Outbox backlog of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxDestination {
    /// Destination relay.
    pub relay: RelayName,
    /// Entries waiting.
    pub pending: u64,
    /// Earliest time one of them may be attempted.
    pub next_attempt_ms: u64,
}

/// What [`Store::outbox_due`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxDue {
    /// Destinations with due entries, earliest due first; `pending` counts
    /// only the due entries the scan read.
    pub destinations: Vec<OutboxDestination>,
    /// The earliest due time later than the scan's `now_ms`, if any.
    pub next_due_ms: Option<u64>,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Expired mailbox entries deleted.
    pub mailbox_entries: u64,
    /// Message records (bodies, dedup keys) deleted.
    pub messages: u64,
    /// Expired challenges, links, invites and tokens deleted.
    pub auth_records: u64,
}

/// Counts of stored things (metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Registered accounts (users).
    pub accounts: u64,
    /// Message records (dedup keys), with or without body.
    pub messages: u64,
    /// Stored bodies.
    pub bodies: u64,
    /// Mailbox entries.
    pub mailbox_entries: u64,
    /// Outbox entries.
    pub outbox_entries: u64,
}

/// The relay's persistent state. See the module doc for the contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- accounts and devices ---

    /// Stores an invite code.
    async fn create_invite(&self, invite: InviteRecord) -> Result<()>;
    /// Registers an account and its device 1, consuming the invite if any.
    /// Errors: `UsernameTaken`, `InvalidInvite` (unknown, used, expired).
    async fn register(&self, account: NewAccount) -> Result<()>;
    /// One device, if registered.
    async fn device(&self, user: &Username, device: DeviceId) -> Result<Option<DeviceRecord>>;
    /// All devices of an account, by id (empty if no such account).
    async fn devices(&self, user: &Username) -> Result<Vec<DeviceRecord>>;
    /// The current signed device list of an account.
    async fn device_list(&self, user: &Username) -> Result<Option<SignedDeviceList>>;

    // --- login ---

    /// Stores a login challenge.
    async fn put_challenge(&self, challenge: ChallengeRecord) -> Result<()>;
    /// Removes and returns a challenge (single use).
    async fn take_challenge(&self, id: &str) -> Result<Option<ChallengeRecord>>;
    /// Stores a new session with its first tokens.
    async fn create_session(&self, session: NewSession) -> Result<()>;
    /// Looks up an access token.
    async fn access(&self, token: &TokenHash) -> Result<Option<AccessRecord>>;
    /// Presents a refresh token: rotates it (storing `next`), or revokes the
    /// whole session if it was used before.
    async fn rotate_refresh(
        &self,
        token: &TokenHash,
        now_ms: u64,
        next: TokenHashes,
    ) -> Result<RotateOutcome>;
    /// Deletes a session and all its tokens.
    async fn revoke_session(&self, session: &str) -> Result<()>;

    // --- device links ---

    /// Stores a link request.
    async fn put_link(&self, link: LinkRecord) -> Result<()>;
    /// A link request by code.
    async fn link(&self, code: &str) -> Result<Option<LinkRecord>>;
    /// Approves a link: adds the device and replaces the device list, if the
    /// link is still pending and unexpired (`InvalidLinkCode`), the list's
    /// version is the current one + 1 (`Conflict`) and the account has room
    /// (`TooManyDevices`, with `devices_max`).
    async fn approve_link(
        &self,
        code: &str,
        device: DeviceRecord,
        list: SignedDeviceList,
        devices_max: u32,
        now_ms: u64,
    ) -> Result<()>;

    // --- key directory ---

    /// Replaces a device's signed prekey.
    async fn set_signed_prekey(
        &self,
        user: &Username,
        device: DeviceId,
        key: SignedPreKey,
    ) -> Result<()>;
    /// Adds one-time prekeys (an id the device already holds is replaced);
    /// fails with `TooManyPrekeys` if the pool would exceed `cap`. Returns the
    /// new pool size.
    async fn add_one_time_prekeys(
        &self,
        user: &Username,
        device: DeviceId,
        keys: Vec<OneTimePreKey>,
        cap: u32,
    ) -> Result<u32>;
    /// Removes and returns one one-time prekey (never the same one twice,
    /// whatever the concurrency), with the pool size left.
    async fn take_one_time_prekey(
        &self,
        user: &Username,
        device: DeviceId,
    ) -> Result<(Option<OneTimePreKey>, u32)>;

    // --- mailboxes ---

    /// Stores a message (see [`NewMessage`]). Errors: `UnknownDevice` (a
    /// local recipient does not exist, unless `skip_unknown`), `MailboxFull`
    /// (a mailbox at `depth_max` or `bytes_max`), `MailboxQuota` (a mailbox
    /// at `per_source_max` or `per_source_bytes_max` for the entry's quota
    /// key), `Conflict` (same key, other content). A device's depth and
    /// bytes change in the statements that add and delete its entries; a
    /// source's share needs counting only once the mailbox holds more than
    /// one share.
    async fn accept(&self, message: NewMessage) -> Result<AcceptOutcome>;
    /// Like [`Store::accept`], and calls `committed` with the outcome once
    /// it is durable, before answering. A store that commits in batches
    /// calls it for the accepts of a batch in commit order, from one
    /// thread, so the new entries of a mailbox reach it in seq order (what
    /// lets the push hub hand entries straight to WebSockets without
    /// gaps). The default calls it when `accept` returns, in whatever order
    /// concurrent callers resume.
    async fn accept_then(&self, message: NewMessage, committed: OnCommit) -> Result<AcceptOutcome> {
        let outcome = self.accept(message).await?;
        committed(&outcome);
        Ok(outcome)
    }
    /// Unexpired entries of a mailbox with `seq > after`, ascending, at most
    /// `limit`, and no more after the one that takes their header and body
    /// bytes past `bytes_max` (so a read holds at most `bytes_max` plus one
    /// envelope in memory, however big the entries; the caller trims that
    /// last one off if it wants to stay under the cap).
    async fn fetch(
        &self,
        user: &Username,
        device: DeviceId,
        after: u64,
        limit: u32,
        bytes_max: usize,
        now_ms: u64,
    ) -> Result<Vec<crate::types::Envelope>>;
    /// Deletes the named entries that exist; returns how many did. A body
    /// goes when the last entry (mailbox or outbox) referencing it does.
    async fn ack(&self, user: &Username, device: DeviceId, seqs: &[u64]) -> Result<u32>;
    /// Deletes expired mailbox entries, message records and auth records.
    async fn purge_expired(&self, now_ms: u64) -> Result<PurgeReport>;

    // --- outbox ---

    /// Up to `max` entries for `relay` due at `now_ms`, oldest first; each is
    /// leased until `lease_until_ms` (not returned again before then unless
    /// rescheduled), so a crashed attempt is retried.
    async fn outbox_take(
        &self,
        relay: &RelayName,
        max: u32,
        now_ms: u64,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>>;
    /// Deletes delivered entries; returns how many existed.
    async fn outbox_delete(&self, ids: &[OutboxId]) -> Result<u32>;
    /// Sets an entry's next attempt and counts the attempt.
    async fn outbox_reschedule(&self, id: OutboxId, next_attempt_ms: u64) -> Result<()>;
    /// Entries whose expiry has passed.
    async fn outbox_expired(&self, now_ms: u64, max: u32) -> Result<Vec<OutboxEntry>>;
    /// Deletes an expired (or permanently rejected) entry and stores the
    /// failure notice (if any) in one step; returns the notice's mailbox
    /// entries (empty if the entry was already gone).
    async fn outbox_expire(
        &self,
        id: OutboxId,
        notice: Option<NewMessage>,
    ) -> Result<Vec<MailboxRef>>;
    /// Destinations with a backlog.
    async fn outbox_destinations(&self) -> Result<Vec<OutboxDestination>>;
    /// The drainer's bounded look at what is due: the destinations among
    /// the first `entries_max` unexpired entries due at `now_ms` (earliest due first,
    /// read off an index), at most `destinations_max` of them, earliest due
    /// first; each with how many of those scanned entries are its own.
    /// Also the earliest due time after `now_ms`, to sleep until. The cost
    /// is bounded by `entries_max`, not by the size of the outbox, however
    /// many destinations it holds.
    ///
    /// The default reads every destination (for wrappers and stores
    /// without an index for it); the shipped stores override it.
    async fn outbox_due(
        &self,
        now_ms: u64,
        entries_max: u32,
        destinations_max: u32,
    ) -> Result<OutboxDue> {
        let mut all = self.outbox_destinations().await?;
        let next_due_ms = all
            .iter()
            .map(|d| d.next_attempt_ms)
            .filter(|t| *t > now_ms)
            .min();
        all.retain(|d| d.next_attempt_ms <= now_ms);
        all.sort_by(|a, b| (a.next_attempt_ms, &a.relay).cmp(&(b.next_attempt_ms, &b.relay)));
        all.truncate(destinations_max as usize);
        let _ = entries_max;
        Ok(OutboxDue {
            destinations: all,
            next_due_ms,
        })
    }
    /// Makes `relay`'s entries that are backing off until after
    /// `later_than_ms` due at `now_ms` (leased entries, which are due no later
    /// than the lease end, are left alone); returns how many.
    async fn outbox_wake(&self, relay: &RelayName, now_ms: u64, later_than_ms: u64) -> Result<u64>;

    // --- observation ---

    /// Counts of stored things.
    async fn stats(&self) -> Result<StoreStats>;
}
