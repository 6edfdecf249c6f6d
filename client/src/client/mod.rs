//! The SDK's entry point: [`Client`], one device of one account.
//!
//! All state changes go through the [`ClientStore`] in atomic batches, and
//! every outgoing encryption's advanced state is stored *before* the message
//! leaves (write-ahead), so a crash can never make the device reuse a
//! message key. See `docs/client.md` for the message layout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use courier_crypto::sealed::{self, SenderAddress};
use courier_crypto::{
    Identity, IdentityPickle, MessageKind, OneTimePreKey, PreKeyMessage, PreKeyPickle,
    PublicIdentity, SenderKey, SenderKeyPickle, SenderKeyReceiver, Session, SessionPickle,
    SignedPreKey,
};
use courier_protocol::api::{
    ApproveLinkRequest, ChallengeRequest, DeviceBundle, DeviceList, DeviceListEntry, Envelope,
    EnvelopeKind, LinkRequest, RefreshRequest, RegisterRequest, SignedDeviceList, TokenResponse,
};
use courier_protocol::limits::{DEVICES_PER_ACCOUNT_MAX, ONE_TIME_PREKEYS_PER_UPLOAD_MAX};
use courier_protocol::ws::ServerFrame;
use courier_protocol::{
    Address, Bytes, DeviceId, EnvelopeId, ErrorCode, OutgoingMessage, RecipientEntry, RelayName,
    Username,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_core::Rng as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::content::{
    self, Content, DirectKey, GroupInfo, GroupKeyDelivery, TAG_DIRECT, TAG_GROUP,
    TAG_GROUP_WITH_KEY,
};
use crate::store::{Batch, ClientStore, Table};
use crate::transport::{Subscription, Transport, TransportError};
use crate::wire::{device_keys, prekey_bundle, sign_list, verify_list};
use crate::{Clock, Error};

/// Previous sessions kept per remote device, so simultaneous session starts
/// from both sides converge instead of failing.
pub const SESSIONS_PER_DEVICE_MAX: usize = 3;
/// Sender-key receivers kept per member device (current plus a rotated one,
/// for messages that arrive late).
pub const RECEIVERS_PER_DEVICE_MAX: usize = 2;
/// Attempts to submit one message while the home relay is unreachable.
pub const SEND_ATTEMPTS_MAX: u32 = 4;

/// Tunables of a [`Client`]. `Default` is what the CLI uses.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// A remote contact's device list is fetched again when older than this.
    /// Contacts on the home relay are re-read on every send (cheap); a
    /// remote list comes with key bundles and so costs the contact one-time
    /// prekeys, hence the longer interval.
    pub device_list_refresh_ms: u64,
    /// One-time prekeys kept on the relay; refilled to this when it reports low.
    pub one_time_prekeys_target: u32,
    /// A signed prekey older than this is replaced.
    pub signed_prekey_rotation_ms: u64,
    /// How often to ask the relay for the one-time prekey count (it also
    /// says so itself over the WebSocket).
    pub prekey_check_interval_ms: u64,
    /// How long relays keep an undelivered message, seconds.
    pub ttl_secs: u64,
    /// Fault injection for crash tests: process and persist received
    /// envelopes but return [`Error::FaultInjected`] before acking them.
    pub fail_before_ack: bool,
    /// An envelope this device cannot process yet (its sender key has not
    /// arrived, its sender's relay is down) is left on the relay for this
    /// many receive attempts at most, then parked in the local store and
    /// acked, so unreadable envelopes can never pin the mailbox full.
    pub defer_attempts_max: u32,
    /// ... or for at most this long after this device first saw it, ms.
    pub defer_max_ms: u64,
    /// Most envelopes parked at once; the oldest are dropped beyond it.
    pub parked_max: usize,
    /// Most bytes (header + body) of parked envelopes at once; the oldest
    /// are dropped beyond it.
    pub parked_bytes_max: usize,
    /// A parked envelope is dropped this long after it was parked (or at
    /// its relay expiry, if sooner), ms.
    pub parked_ttl_ms: u64,
    /// A contact's device list is re-read because of a received message at
    /// most this often, ms: messages that claim a sender cannot make the
    /// client fetch that sender's keys in a burst.
    pub contact_refresh_min_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            device_list_refresh_ms: 60_000,
            one_time_prekeys_target: 100,
            signed_prekey_rotation_ms: 7 * 24 * 3600 * 1000,
            prekey_check_interval_ms: 60_000,
            ttl_secs: 7 * 24 * 3600,
            fail_before_ack: false,
            defer_attempts_max: 3,
            defer_max_ms: 5 * 60 * 1000,
            parked_max: 256,
            parked_bytes_max: 4 * 1024 * 1024,
            parked_ttl_ms: 7 * 24 * 3600 * 1000,
            contact_refresh_min_ms: 60_000,
        }
    }
}

/// The account this device belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// `user@relay`.
    pub address: Address,
    /// This device's id.
    pub device: DeviceId,
    /// The home relay's base URL (empty for in-memory transports).
    pub relay_url: String,
}

/// A message as the user sees it: received, or sent by this account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The envelope id (hex).
    pub id: String,
    /// Who wrote it (this account's own address for its own messages).
    pub from: Address,
    /// The writing device.
    pub from_device: DeviceId,
    /// For a direct message this account sent: the other party.
    pub to: Option<Address>,
    /// The group's name, for a group message.
    pub group: Option<String>,
    /// The text.
    pub text: String,
    /// The sender's clock when it was written, Unix milliseconds.
    pub sent_ms: u64,
    /// When this device stored it, Unix milliseconds.
    pub received_ms: u64,
    /// Whether this account wrote it (on this or another of its devices).
    pub outgoing: bool,
}

/// What [`Client::send`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The message's envelope id.
    pub id: EnvelopeId,
    /// How many devices it was addressed to (recipient's and own others).
    pub devices: usize,
    /// When the home relay accepted it, Unix milliseconds.
    pub accepted_ms: u64,
}

/// A link started by [`Client::link_start`] on a new device.
pub struct PendingLink {
    /// Show this to the user; they run `approve CODE` on an existing device.
    pub code: String,
    secret: String,
    address: Address,
    identity: Identity,
    expires_ms: u64,
}

impl std::fmt::Debug for PendingLink {
    // The polling secret and the new identity stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLink")
            .field("code", &self.code)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// One of this account's devices, for [`Client::devices`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device id.
    pub device: DeviceId,
    /// Hex of the first 8 bytes of its identity key.
    pub fingerprint: String,
    /// Whether it is the device this client runs on.
    pub this_device: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeyState {
    next_one_time_id: u32,
    signed_prekey_id: u32,
    signed_prekey_created_ms: u64,
    last_count_check_ms: u64,
}

/// What this device pins about a contact (or its own account).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Contact {
    address: Address,
    /// Version of the device list pinned.
    version: u64,
    /// Device id → Ed25519 identity key (hex), from the last accepted list.
    devices: BTreeMap<u32, String>,
    /// Device id → full public identity (hex), learned with a session.
    identities: BTreeMap<u32, String>,
    /// When the list was last fetched, Unix milliseconds.
    fetched_ms: u64,
}

impl Contact {
    fn device_ids(&self) -> Vec<DeviceId> {
        self.devices.keys().map(|&d| DeviceId(d)).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupRecord {
    info: GroupInfo,
    /// This account was removed (or left); nothing more is sent.
    left: bool,
}

#[derive(Serialize, Deserialize)]
struct OwnSenderKey {
    epoch: u64,
    pickle: SenderKeyPickle,
    /// `address/device` of every device that holds this key.
    distributed: BTreeSet<String>,
}

/// A [`Client`] needs these to run.
pub struct ClientParts {
    /// How it talks to its home relay.
    pub transport: Arc<dyn Transport>,
    /// Where it keeps its state.
    pub store: Arc<dyn ClientStore>,
    /// Its clock.
    pub clock: Arc<dyn Clock>,
    /// Seed of its random number generator; `None` seeds from the OS.
    /// Simulations pass a seed so a run is reproducible.
    pub rng_seed: Option<[u8; 32]>,
    /// Tunables.
    pub config: ClientConfig,
}

/// One device of one account: register or link it, then send and receive.
///
/// Methods take `&self` and serialize internally, so a `Client` can be
/// shared (`Arc<Client>`) between a receive loop and senders.
pub struct Client {
    inner: tokio::sync::Mutex<Inner>,
    transport: Arc<dyn Transport>,
    /// The same clock as `Inner`'s, so waits need not hold the lock.
    clock: Arc<dyn Clock>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    store: Arc<dyn ClientStore>,
    clock: Arc<dyn Clock>,
    rng: StdRng,
    config: ClientConfig,
    me: Option<Me>,
    /// When a received message last made this client re-read a contact's
    /// device list, by address (see [`ClientConfig::contact_refresh_min_ms`]).
    refreshed: std::collections::HashMap<String, u64>,
    /// Set when a processed envelope brought a new session or sender key,
    /// so parked envelopes that waited for one are tried again.
    keys_arrived: bool,
    /// Set when the current signed prekey accepted its maximum of sessions,
    /// so the next key maintenance rotates it early.
    rotate_signed_prekey: bool,
}

struct Me {
    account: Account,
    identity: Identity,
    tokens: Option<TokenResponse>,
}

fn hexs(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn session_key(address: &Address, device: DeviceId) -> String {
    format!("{address}/{}", device.0)
}

/// History key: sorts by local receive time, then mailbox order (a sent
/// message has order 0), then id.
fn message_key(received_ms: u64, order: u64, id: &str) -> String {
    format!("{received_ms:016x}/{order:016x}/{id}")
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Corrupt(e.to_string()))
}

/// Sessions with one remote device, newest first.
struct DeviceSessions {
    sessions: Vec<Session>,
}

impl DeviceSessions {
    fn pickles(&self) -> Vec<SessionPickle> {
        self.sessions.iter().map(Session::to_pickle).collect()
    }
}

/// Result of processing one envelope.
enum Outcome {
    /// Stored (maybe with nothing to show), or parked locally; ack it.
    Done,
    /// Needs a sender key not seen yet; leave it on the relay and retry later.
    Later,
}

/// Most X3DH base keys remembered per signed prekey (one per session it
/// started); a signed prekey that reaches it rotates and starts no more.
pub const BASE_KEYS_PER_SIGNED_PREKEY_MAX: u32 = 10_000;

macro_rules! authed {
    ($inner:expr, |$t:ident| $call:expr) => {{
        let $t = $inner.token().await?;
        match $call.await {
            Err(TransportError::Api(e))
                if matches!(e.code, ErrorCode::TokenExpired | ErrorCode::Unauthenticated) =>
            {
                $inner.drop_tokens().await?;
                let $t = $inner.token().await?;
                $call.await
            }
            other => other,
        }
    }};
}

mod account;
mod contacts;
mod receive;
mod send;

impl Client {
    /// Opens a client over its parts, loading the account if the store has one.
    pub async fn open(parts: ClientParts) -> Result<Self, Error> {
        let rng = match parts.rng_seed {
            Some(seed) => StdRng::from_seed(seed),
            None => rand::make_rng::<StdRng>(),
        };
        let mut inner = Inner {
            transport: parts.transport.clone(),
            store: parts.store,
            clock: parts.clock.clone(),
            rng,
            config: parts.config,
            me: None,
            refreshed: std::collections::HashMap::new(),
            keys_arrived: false,
            rotate_signed_prekey: false,
        };
        inner.load().await?;
        Ok(Self {
            inner: tokio::sync::Mutex::new(inner),
            transport: parts.transport,
            clock: parts.clock,
        })
    }

    /// Reads the account stored in `store` without opening a client (the CLI
    /// needs the relay URL before it can build the transport).
    pub async fn stored_account(store: &dyn ClientStore) -> Result<Option<Account>, Error> {
        match store.get(Table::Meta, "account").await? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// The account, if registered or linked.
    pub async fn account(&self) -> Option<Account> {
        self.inner
            .lock()
            .await
            .me
            .as_ref()
            .map(|m| m.account.clone())
    }

    /// Creates an account `username` on the home relay with this device as
    /// device 1, uploads its keys and returns the full address. The relay's
    /// name (the part after `@`) comes from the relay (`GET /v1/relay`);
    /// only a relay without that endpoint makes the client try the names in
    /// `relay_name_candidates` in turn.
    pub async fn register(
        &self,
        username: &str,
        invite: Option<&str>,
        relay_url: &str,
        relay_name_candidates: &[String],
    ) -> Result<Address, Error> {
        let mut inner = self.inner.lock().await;
        inner
            .register(username, invite, relay_url, relay_name_candidates)
            .await
    }

    /// Starts linking this (new, empty) client as another device of
    /// `address`: returns the code to approve on an existing device.
    pub async fn link_start(&self, address: &Address) -> Result<PendingLink, Error> {
        let mut inner = self.inner.lock().await;
        if let Some(me) = &inner.me {
            return Err(Error::AlreadyRegistered(me.account.address.clone()));
        }
        let identity = Identity::generate(&mut inner.rng);
        let req = LinkRequest {
            username: address.user.clone(),
            device: device_keys(&identity),
        };
        let resp = inner
            .transport
            .create_link(&req)
            .await
            .map_err(|e| Error::about(address, e))?;
        Ok(PendingLink {
            code: resp.code,
            secret: resp.secret,
            address: address.clone(),
            identity,
            expires_ms: resp.expires_ms,
        })
    }

    /// Waits (polling every `poll`) until an existing device approves the
    /// link, then logs in, uploads keys and stores the account.
    pub async fn link_finish(
        &self,
        pending: PendingLink,
        relay_url: &str,
        poll: Duration,
    ) -> Result<Account, Error> {
        let device = loop {
            let status = {
                let inner = self.inner.lock().await;
                if inner.now() > pending.expires_ms {
                    return Err(Error::LinkExpired);
                }
                inner
                    .transport
                    .link_status(&pending.code, &pending.secret)
                    .await
            };
            match status {
                Ok(s) => {
                    if let (true, Some(device)) = (s.approved, s.device) {
                        break device;
                    }
                }
                Err(TransportError::Api(e)) if e.code == ErrorCode::InvalidLinkCode => {
                    return Err(Error::LinkExpired);
                }
                Err(TransportError::Unreachable(_)) => {}
                Err(e) => return Err(e.into()),
            }
            self.clock.sleep(poll).await;
        };
        let mut inner = self.inner.lock().await;
        let account = Account {
            address: pending.address.clone(),
            device,
            relay_url: relay_url.to_owned(),
        };
        inner.install(account.clone(), pending.identity).await?;
        // Pin our own account's list as it is now (it includes us).
        let own = inner.transport.device_list(&account.address.user).await?;
        verify_list(&own)?;
        let my_key = hexs(inner.me()?.identity.public().signing_key().as_slice());
        if own
            .list
            .entry(device)
            .map(|e| hexs(e.identity_key.as_slice()))
            != Some(my_key)
        {
            return Err(Error::BadResponse(
                "approved device list does not hold this device".into(),
            ));
        }
        let contact = inner.contact_from_list(&own, None);
        let mut batch = Batch::new();
        batch.put(
            Table::Contacts,
            account.address.to_string(),
            json(&contact)?,
        );
        inner.store.apply(batch).await?;
        inner.maintain_keys(true).await?;
        Ok(account)
    }

    /// On an existing device: approves the new device that showed `code`.
    /// Returns the new device's id.
    pub async fn approve(&self, code: &str) -> Result<DeviceId, Error> {
        let mut inner = self.inner.lock().await;
        inner.approve(code).await
    }

    /// This account's devices, from the relay's signed list.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        let mut inner = self.inner.lock().await;
        let me = inner.me()?.account.clone();
        let contact = inner.contact(&me.address, true).await?;
        Ok(contact
            .devices
            .iter()
            .map(|(&d, key)| DeviceInfo {
                device: DeviceId(d),
                fingerprint: key.chars().take(16).collect(),
                this_device: DeviceId(d) == me.device,
            })
            .collect())
    }

    /// Sends `text` to `to`: to each of its devices and to this account's
    /// other devices. Returns once the home relay stored it.
    pub async fn send(&self, to: &Address, text: &str) -> Result<SendReceipt, Error> {
        let mut inner = self.inner.lock().await;
        inner.send_direct(to, text).await
    }

    /// Creates a group with the given other members and tells them.
    pub async fn group_create(&self, name: &str, members: &[Address]) -> Result<(), Error> {
        let mut inner = self.inner.lock().await;
        inner.group_create(name, members).await
    }

    /// Adds members to a group (rotating this device's sender key).
    pub async fn group_add(&self, name: &str, members: &[Address]) -> Result<(), Error> {
        let mut inner = self.inner.lock().await;
        inner.group_change(name, members, true).await
    }

    /// Removes members from a group; they cannot read later messages.
    pub async fn group_remove(&self, name: &str, members: &[Address]) -> Result<(), Error> {
        let mut inner = self.inner.lock().await;
        inner.group_change(name, members, false).await
    }

    /// Sends `text` to every member device of a group, in one message.
    pub async fn group_send(&self, name: &str, text: &str) -> Result<SendReceipt, Error> {
        let mut inner = self.inner.lock().await;
        let record = inner.group(name).await?;
        inner.group_send(record, text).await
    }

    /// The groups this device knows: `(name, members)`.
    pub async fn groups(&self) -> Result<Vec<(String, Vec<Address>)>, Error> {
        let inner = self.inner.lock().await;
        let rows = inner.store.scan(Table::Groups, "").await?;
        rows.into_iter()
            .map(|(name, v)| {
                let g: GroupRecord = serde_json::from_slice(&v)?;
                Ok((name, g.info.members))
            })
            .collect()
    }

    /// Fetches everything waiting on the relay over HTTP, decrypts and stores
    /// it, then acks it. Returns how many envelopes were processed. The new
    /// messages are in the inbox: see [`Client::take_inbox`].
    pub async fn receive_pending(&self) -> Result<usize, Error> {
        let mut inner = self.inner.lock().await;
        inner.maintain_keys(false).await?;
        inner.receive_pending().await
    }

    /// Messages stored but not yet handed out, oldest first; handing them
    /// out removes them from the inbox (history keeps them).
    pub async fn take_inbox(&self) -> Result<Vec<Message>, Error> {
        let inner = self.inner.lock().await;
        inner.take_inbox().await
    }

    /// [`Client::receive_pending`] then [`Client::take_inbox`].
    pub async fn recv(&self) -> Result<Vec<Message>, Error> {
        self.receive_pending().await?;
        self.take_inbox().await
    }

    /// Every stored message (received and sent), oldest first.
    pub async fn history(&self) -> Result<Vec<Message>, Error> {
        let inner = self.inner.lock().await;
        let rows = inner.store.scan(Table::Messages, "").await?;
        rows.into_iter()
            .map(|(_, v)| Ok(serde_json::from_slice(&v)?))
            .collect()
    }

    /// Listens on the WebSocket for `duration`, handing each new message to
    /// `on_message` once it is stored (and then acking it). Reconnects with
    /// backoff; while the WebSocket is down it polls over HTTP.
    pub async fn listen(
        &self,
        duration: Duration,
        mut on_message: impl FnMut(Message) + Send,
    ) -> Result<(), Error> {
        let deadline = self
            .clock
            .now_ms()
            .saturating_add(duration.as_millis() as u64);
        // Anything stored by an earlier run that crashed before showing it.
        for m in self.take_inbox().await? {
            on_message(m);
        }
        let mut backoff = Duration::from_millis(100);
        let mut last_error: Option<Error> = None;
        while self.clock.now_ms() < deadline {
            let token = {
                let mut inner = self.inner.lock().await;
                inner.maintain_keys(false).await.and(inner.token().await)
            };
            let sub = match token {
                Ok(token) => self.transport.subscribe(&token).await.map_err(Error::from),
                Err(e) => Err(e),
            };
            match sub {
                Ok(mut sub) => {
                    backoff = Duration::from_millis(100);
                    last_error = None;
                    // Catch up over HTTP too: a relay may push only new envelopes.
                    let mut result = self.receive_pending().await.map(|_| ());
                    if result.is_ok() {
                        for m in self.take_inbox().await? {
                            on_message(m);
                        }
                        result = self.pump(sub.as_mut(), deadline, &mut on_message).await;
                    }
                    match result {
                        Ok(()) => {}
                        Err(Error::RelayUnreachable(m)) => {
                            last_error = Some(Error::RelayUnreachable(m));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(Error::RelayUnreachable(m)) => {
                    last_error = Some(Error::RelayUnreachable(m));
                    // HTTP fallback while the WebSocket is down.
                    match self.receive_pending().await {
                        Ok(_) => {
                            for m in self.take_inbox().await? {
                                on_message(m);
                            }
                        }
                        Err(Error::RelayUnreachable(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            let now = self.clock.now_ms();
            if now >= deadline {
                break;
            }
            let jitter = {
                let mut inner = self.inner.lock().await;
                Duration::from_millis(inner.rng.next_u64() % 100)
            };
            let left = Duration::from_millis(deadline - now);
            self.clock.sleep((backoff + jitter).min(left)).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        match last_error {
            // Waiting was asked for; a relay that never answered is an error.
            Some(e) if duration > Duration::ZERO => Err(e),
            _ => Ok(()),
        }
    }

    async fn pump(
        &self,
        sub: &mut dyn Subscription,
        deadline_ms: u64,
        on_message: &mut (impl FnMut(Message) + Send),
    ) -> Result<(), Error> {
        loop {
            let left = Duration::from_millis(deadline_ms.saturating_sub(self.clock.now_ms()));
            let frame = {
                let next = sub.next();
                let end = self.clock.sleep(left);
                futures::pin_mut!(next);
                match futures::future::select(next, end).await {
                    futures::future::Either::Left((frame, _)) => frame?,
                    futures::future::Either::Right(_) => return Ok(()),
                }
            };
            match frame {
                None => return Err(Error::RelayUnreachable("WebSocket closed".into())),
                Some(ServerFrame::Envelope { envelope }) => {
                    let seq = envelope.seq;
                    let outcome = {
                        let mut inner = self.inner.lock().await;
                        let outcome = match inner.process(&envelope).await? {
                            Outcome::Later => inner.defer(&envelope).await?,
                            done => done,
                        };
                        if inner.keys_arrived {
                            inner.retry_parked(true).await?;
                        }
                        outcome
                    };
                    if matches!(outcome, Outcome::Done) {
                        if self.inner.lock().await.config.fail_before_ack {
                            return Err(Error::FaultInjected);
                        }
                        for m in self.take_inbox().await? {
                            on_message(m);
                        }
                        sub.ack(&[seq]).await?;
                    }
                }
                Some(ServerFrame::PrekeysLow { .. }) => {
                    let mut inner = self.inner.lock().await;
                    inner.maintain_keys(true).await?;
                }
                Some(ServerFrame::Error { error }) => {
                    if matches!(
                        error.code,
                        ErrorCode::TokenExpired | ErrorCode::Unauthenticated
                    ) {
                        self.inner.lock().await.drop_tokens().await?;
                        return Err(Error::RelayUnreachable("session expired".into()));
                    }
                    tracing::warn!(code = %error.code, message = %error.message, "relay reported an error");
                }
                // This client sends over HTTP, so answers to WebSocket
                // sends are not for it.
                Some(ServerFrame::Sent { .. } | ServerFrame::Refused { .. }) => {}
            }
        }
    }

    /// Forgets the pinned identity keys of `address` (after the user checked
    /// the new safety number) and pins its current device list.
    pub async fn trust(&self, address: &Address) -> Result<(), Error> {
        let mut inner = self.inner.lock().await;
        inner.me()?;
        let mut batch = Batch::new();
        batch.delete(Table::Contacts, address.to_string());
        for (key, _) in inner
            .store
            .scan(Table::Sessions, &format!("{address}/"))
            .await?
        {
            batch.delete(Table::Sessions, key);
        }
        inner.store.apply(batch).await?;
        inner.contact(address, true).await.map(|_| ())
    }

    /// A safety number for `address`: compare it out of band. Derived from
    /// both accounts' pinned device identity keys.
    pub async fn safety_number(&self, address: &Address) -> Result<String, Error> {
        let mut inner = self.inner.lock().await;
        let me = inner.me()?.account.address.clone();
        let mine = inner.contact(&me, false).await?;
        let theirs = inner.contact(address, false).await?;
        Ok(crate::safety_number(
            &me,
            &mine.devices,
            address,
            &theirs.devices,
        ))
    }

    /// Checks the one-time prekey pool and signed prekey age now, refilling
    /// and rotating as needed.
    pub async fn maintain_keys(&self) -> Result<(), Error> {
        self.inner.lock().await.maintain_keys(true).await
    }
}

impl Inner {
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn me(&self) -> Result<&Me, Error> {
        self.me.as_ref().ok_or(Error::NotRegistered)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, Error> {
        match self.store.get(table, key).await? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    async fn load(&mut self) -> Result<(), Error> {
        let Some(account) = self.get_json::<Account>(Table::Meta, "account").await? else {
            return Ok(());
        };
        let pickle: IdentityPickle = self
            .get_json(Table::Meta, "identity")
            .await?
            .ok_or_else(|| Error::Corrupt("account without identity".into()))?;
        let identity = Identity::from_pickle(&pickle)?;
        let tokens = self.get_json(Table::Meta, "tokens").await?;
        self.me = Some(Me {
            account,
            identity,
            tokens,
        });
        Ok(())
    }

    /// Stores a new account and identity, then logs in.
    async fn install(&mut self, account: Account, identity: Identity) -> Result<(), Error> {
        let mut batch = Batch::new();
        batch.put(Table::Meta, "account", json(&account)?);
        batch.put(Table::Meta, "identity", json(&identity.to_pickle())?);
        batch.put(Table::Meta, "keys", json(&KeyState::default())?);
        self.store.apply(batch).await?;
        self.me = Some(Me {
            account,
            identity,
            tokens: None,
        });
        self.token().await?;
        Ok(())
    }
}
