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
    Identity, IdentityPickle, MessageKind, OneTimePreKey, OneTimePreKeyPublic, PreKeyBundle,
    PreKeyMessage, PreKeyPickle, PublicIdentity, SenderKey, SenderKeyPickle, SenderKeyReceiver,
    Session, SessionPickle, SignedPreKey, SignedPreKeyPublic,
};
use courier_protocol::api::{
    ApproveLinkRequest, ChallengeRequest, DeviceBundle, DeviceKeys, DeviceList, DeviceListEntry,
    Envelope, EnvelopeKind, LinkRequest, LoginRequest, RefreshRequest, RegisterRequest,
    SignedDeviceList, TokenResponse, UploadOneTimePreKeys,
};
use courier_protocol::limits::{DEVICES_PER_ACCOUNT_MAX, ONE_TIME_PREKEYS_PER_UPLOAD_MAX};
use courier_protocol::signing;
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
    /// Contacts on the home relay are re-read on every send (cheap).
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
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            device_list_refresh_ms: 5_000,
            one_time_prekeys_target: 100,
            signed_prekey_rotation_ms: 7 * 24 * 3600 * 1000,
            prekey_check_interval_ms: 60_000,
            ttl_secs: 7 * 24 * 3600,
            fail_before_ack: false,
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
#[derive(Debug)]
pub struct PendingLink {
    /// Show this to the user; they run `approve CODE` on an existing device.
    pub code: String,
    secret: String,
    address: Address,
    identity: Identity,
    expires_ms: u64,
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
}

struct Inner {
    transport: Arc<dyn Transport>,
    store: Arc<dyn ClientStore>,
    clock: Arc<dyn Clock>,
    rng: StdRng,
    config: ClientConfig,
    me: Option<Me>,
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

/// The device keys a relay publishes for `identity`.
fn device_keys(identity: &Identity) -> DeviceKeys {
    let public = identity.public();
    let dh = public.dh_key();
    DeviceKeys {
        identity_key: Bytes(public.signing_key().to_vec()),
        dh_key: Bytes(dh.to_vec()),
        dh_key_signature: Bytes(identity.sign(&signing::dh_key_signing_bytes(&dh)).to_vec()),
    }
}

/// The verified public identity described by published device keys.
fn public_identity(keys: &DeviceKeys) -> Result<PublicIdentity, Error> {
    let mut bytes = Vec::with_capacity(128);
    bytes.extend_from_slice(keys.identity_key.as_slice());
    bytes.extend_from_slice(keys.dh_key.as_slice());
    bytes.extend_from_slice(keys.dh_key_signature.as_slice());
    Ok(PublicIdentity::from_bytes(&bytes)?)
}

/// The verified prekey bundle of a device.
fn prekey_bundle(bundle: &DeviceBundle) -> Result<PreKeyBundle, Error> {
    let identity = public_identity(&bundle.keys)?;
    let spk = &bundle.signed_prekey;
    let mut bytes = Vec::with_capacity(108);
    bytes.extend_from_slice(&spk.id.to_be_bytes());
    bytes.extend_from_slice(&spk.created_ms.to_be_bytes());
    bytes.extend_from_slice(spk.public.as_slice());
    bytes.extend_from_slice(spk.signature.as_slice());
    let spk = SignedPreKeyPublic::from_bytes(&bytes)?;
    let otk = match &bundle.one_time_prekey {
        Some(k) => {
            let mut bytes = Vec::with_capacity(36);
            bytes.extend_from_slice(&k.id.to_be_bytes());
            bytes.extend_from_slice(k.public.as_slice());
            Some(OneTimePreKeyPublic::from_bytes(&bytes)?)
        }
        None => None,
    };
    Ok(PreKeyBundle::new(identity, spk, otk)?)
}

fn verify_list(list: &SignedDeviceList) -> Result<(), Error> {
    let key = list
        .signer_key()
        .ok_or_else(|| Error::BadResponse("device list signer is not listed".into()))?;
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| Error::BadResponse("device list key length".into()))?;
    let sig: [u8; 64] = list
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| Error::BadResponse("device list signature length".into()))?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| Error::BadResponse("device list key".into()))?;
    vk.verify_strict(
        &list.list.signing_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| Error::BadResponse("device list signature does not verify".into()))
}

fn sign_list(identity: &Identity, list: DeviceList, signer: DeviceId) -> SignedDeviceList {
    let signature = Bytes(identity.sign(&list.signing_bytes()).to_vec());
    SignedDeviceList {
        list,
        signer,
        signature,
    }
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
    /// Stored (maybe with nothing to show); ack it.
    Done,
    /// Needs a sender key not seen yet; leave it on the relay and retry later.
    Later,
}

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
            clock: parts.clock,
            rng,
            config: parts.config,
            me: None,
        };
        inner.load().await?;
        Ok(Self {
            inner: tokio::sync::Mutex::new(inner),
            transport: parts.transport,
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
    /// device 1, uploads its keys and returns the full address. `relay_name`
    /// is the relay's name as used in addresses; when `None` the transport's
    /// name is used, or names are tried from `relay_name_candidates`.
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
            tokio::time::sleep(poll).await;
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
        let deadline = tokio::time::Instant::now() + duration;
        // Anything stored by an earlier run that crashed before showing it.
        for m in self.take_inbox().await? {
            on_message(m);
        }
        let mut backoff = Duration::from_millis(100);
        let mut last_error: Option<Error> = None;
        while tokio::time::Instant::now() < deadline {
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
                    self.receive_pending().await?;
                    for m in self.take_inbox().await? {
                        on_message(m);
                    }
                    match self.pump(sub.as_mut(), deadline, &mut on_message).await {
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
                    if self.receive_pending().await.is_ok() {
                        for m in self.take_inbox().await? {
                            on_message(m);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let jitter = {
                let mut inner = self.inner.lock().await;
                Duration::from_millis(inner.rng.next_u64() % 100)
            };
            tokio::time::sleep((backoff + jitter).min(deadline - now)).await;
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
        deadline: tokio::time::Instant,
        on_message: &mut (impl FnMut(Message) + Send),
    ) -> Result<(), Error> {
        loop {
            let frame = match tokio::time::timeout_at(deadline, sub.next()).await {
                Err(_) => return Ok(()),
                Ok(frame) => frame?,
            };
            match frame {
                None => return Err(Error::RelayUnreachable("WebSocket closed".into())),
                Some(ServerFrame::Envelope { envelope }) => {
                    let seq = envelope.seq;
                    let outcome = {
                        let mut inner = self.inner.lock().await;
                        inner.process(&envelope).await?
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

    async fn register(
        &mut self,
        username: &str,
        invite: Option<&str>,
        relay_url: &str,
        candidates: &[String],
    ) -> Result<Address, Error> {
        if let Some(me) = &self.me {
            return Err(Error::AlreadyRegistered(me.account.address.clone()));
        }
        let user = Username::parse(username).map_err(|e| Error::Invalid(e.to_string()))?;
        let identity = Identity::generate(&mut self.rng);
        let keys = device_keys(&identity);
        let mut names: Vec<String> = self.transport.relay_name().into_iter().collect();
        names.extend(candidates.iter().cloned());
        let mut last = None;
        for name in names {
            let Ok(relay) = RelayName::parse(&name) else {
                continue;
            };
            let list = DeviceList {
                address: Address::new(user.clone(), relay),
                version: 1,
                devices: vec![DeviceListEntry {
                    device: DeviceId(1),
                    identity_key: keys.identity_key.clone(),
                }],
            };
            let device_list = sign_list(&identity, list, DeviceId(1));
            let req = RegisterRequest {
                username: user.clone(),
                invite: invite.map(str::to_owned),
                device: keys.clone(),
                device_list: device_list.clone(),
            };
            match self.transport.register(&req).await {
                Ok(resp) => {
                    let account = Account {
                        address: resp.address.clone(),
                        device: resp.device,
                        relay_url: relay_url.to_owned(),
                    };
                    self.install(account, identity).await?;
                    let contact = self.contact_from_list(&device_list, None);
                    let mut batch = Batch::new();
                    batch.put(Table::Contacts, resp.address.to_string(), json(&contact)?);
                    self.store.apply(batch).await?;
                    self.maintain_keys(true).await?;
                    return Ok(resp.address);
                }
                // The relay refuses a list naming another relay: try the next name.
                Err(TransportError::Api(e)) if e.code == ErrorCode::BadRequest => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        // Every guess was refused: the relay has another name.
        Err(Error::Invalid(match last {
            Some(e) => format!(
                "the relay refused the relay names tried ({}): register as USER@RELAYNAME",
                e.message
            ),
            None => "the relay's name is unknown: register as USER@RELAYNAME".into(),
        }))
    }

    async fn drop_tokens(&mut self) -> Result<(), Error> {
        if let Some(me) = &mut self.me
            && let Some(t) = &mut me.tokens
        {
            // Keep the refresh token; only the access token is suspect.
            t.access_expires_ms = 0;
        }
        Ok(())
    }

    /// A valid access token: cached, refreshed, or from a fresh challenge login.
    async fn token(&mut self) -> Result<String, Error> {
        let now = self.now();
        let me = self.me()?;
        if let Some(t) = &me.tokens {
            if t.access_expires_ms > now + 30_000 {
                return Ok(t.access_token.clone());
            }
            if t.refresh_expires_ms > now + 5_000 {
                let req = RefreshRequest {
                    refresh_token: t.refresh_token.clone(),
                };
                match self.transport.refresh(&req).await {
                    Ok(tokens) => return self.save_tokens(tokens).await,
                    Err(TransportError::Api(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let (user, device, relay) = {
            let a = &me.account;
            (a.address.user.clone(), a.device, a.address.relay.clone())
        };
        let challenge = match self
            .transport
            .challenge(&ChallengeRequest {
                username: user.clone(),
                device,
            })
            .await
        {
            Ok(c) => c,
            Err(TransportError::Api(e))
                if matches!(e.code, ErrorCode::UnknownUser | ErrorCode::UnknownDevice) =>
            {
                return Err(Error::NotRegistered);
            }
            Err(e) => return Err(e.into()),
        };
        let bytes = signing::login_signing_bytes(&relay, &user, device, challenge.nonce.as_slice());
        let signature = Bytes(self.me()?.identity.sign(&bytes).to_vec());
        let tokens = self
            .transport
            .login(&LoginRequest {
                challenge_id: challenge.challenge_id,
                signature,
            })
            .await?;
        self.save_tokens(tokens).await
    }

    async fn save_tokens(&mut self, tokens: TokenResponse) -> Result<String, Error> {
        let mut batch = Batch::new();
        batch.put(Table::Meta, "tokens", json(&tokens)?);
        self.store.apply(batch).await?;
        let access = tokens.access_token.clone();
        if let Some(me) = &mut self.me {
            me.tokens = Some(tokens);
        }
        Ok(access)
    }

    /// Rotates the signed prekey when due and refills one-time prekeys when
    /// the relay's pool is under its low-water mark. `force` checks the pool
    /// now instead of at most every `prekey_check_interval_ms`.
    async fn maintain_keys(&mut self, force: bool) -> Result<(), Error> {
        self.me()?;
        let now = self.now();
        let mut state: KeyState = self
            .get_json(Table::Meta, "keys")
            .await?
            .unwrap_or_default();
        if state.signed_prekey_id == 0
            || now.saturating_sub(state.signed_prekey_created_ms)
                >= self.config.signed_prekey_rotation_ms
        {
            self.rotate_signed_prekey(&mut state, now).await?;
        }
        if force
            || now.saturating_sub(state.last_count_check_ms) >= self.config.prekey_check_interval_ms
        {
            let tr = self.transport.clone();
            let count = authed!(self, |t| tr.prekey_count(&t))?;
            let target = self.config.one_time_prekeys_target.max(count.low_water);
            if count.one_time < count.low_water.max(1) || (force && count.one_time < target / 2) {
                self.refill_one_time(&mut state, target.saturating_sub(count.one_time))
                    .await?;
            }
            state.last_count_check_ms = now;
            let mut batch = Batch::new();
            batch.put(Table::Meta, "keys", json(&state)?);
            self.store.apply(batch).await?;
        }
        Ok(())
    }

    async fn rotate_signed_prekey(&mut self, state: &mut KeyState, now: u64) -> Result<(), Error> {
        let id = state.signed_prekey_id.wrapping_add(1).max(1);
        let (spk, upload) = {
            let me = self.me.as_ref().ok_or(Error::NotRegistered)?;
            let spk = SignedPreKey::generate(&me.identity, id, now, &mut self.rng);
            let public = spk.public().key();
            let signature = me
                .identity
                .sign(&signing::signed_prekey_signing_bytes(id, &public, now));
            let upload = courier_protocol::api::SignedPreKey {
                id,
                public: Bytes(public.to_vec()),
                signature: Bytes(signature.to_vec()),
                created_ms: now,
            };
            (spk, upload)
        };
        let previous = state.signed_prekey_id;
        state.signed_prekey_id = id;
        state.signed_prekey_created_ms = now;
        // Store the secret before the public half is published.
        let mut batch = Batch::new();
        batch.put(Table::PreKeys, format!("s/{id}"), json(&spk.to_pickle())?);
        batch.put(Table::Meta, "keys", json(&*state)?);
        // Keep the previous key for messages already on their way; drop older.
        for (key, _) in self.store.scan(Table::PreKeys, "s/").await? {
            let old: u32 = key[2..].parse().unwrap_or(0);
            if old != id && old != previous {
                batch.delete(Table::PreKeys, key);
            }
        }
        self.store.apply(batch).await?;
        let tr = self.transport.clone();
        authed!(self, |t| tr.put_signed_prekey(&t, &upload))?;
        Ok(())
    }

    async fn refill_one_time(&mut self, state: &mut KeyState, count: u32) -> Result<(), Error> {
        let mut remaining = count;
        while remaining > 0 {
            let n = remaining.min(ONE_TIME_PREKEYS_PER_UPLOAD_MAX as u32);
            let first = state.next_one_time_id.max(1);
            let keys = OneTimePreKey::generate_batch(first, n, &mut self.rng);
            state.next_one_time_id = first.wrapping_add(n);
            let mut batch = Batch::new();
            for k in &keys {
                batch.put(
                    Table::PreKeys,
                    format!("o/{}", k.id()),
                    json(&k.to_pickle())?,
                );
            }
            batch.put(Table::Meta, "keys", json(&*state)?);
            self.store.apply(batch).await?;
            let req = UploadOneTimePreKeys {
                prekeys: keys
                    .iter()
                    .map(|k| courier_protocol::api::OneTimePreKey {
                        id: k.id(),
                        public: Bytes(k.public().key().to_vec()),
                    })
                    .collect(),
            };
            let tr = self.transport.clone();
            authed!(self, |t| tr.upload_one_time_prekeys(&t, &req))?;
            remaining -= n;
        }
        Ok(())
    }

    fn contact_from_list(&self, list: &SignedDeviceList, old: Option<&Contact>) -> Contact {
        let devices: BTreeMap<u32, String> = list
            .list
            .devices
            .iter()
            .map(|e| (e.device.0, hexs(e.identity_key.as_slice())))
            .collect();
        let identities = old
            .map(|c| {
                c.identities
                    .iter()
                    .filter(|(d, _)| c.devices.get(d) == devices.get(d))
                    .map(|(d, v)| (*d, v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Contact {
            address: list.list.address.clone(),
            version: list.list.version,
            devices,
            identities,
            fetched_ms: self.now(),
        }
    }

    /// The verified, pinned device list of `address`, fetched again when
    /// stale (or `refresh`). Fails with [`Error::IdentityChanged`] when the
    /// relay's list is not signed by a pinned device or changes a pinned key.
    async fn contact(&mut self, address: &Address, refresh: bool) -> Result<Contact, Error> {
        self.contact_with_bundles(address, refresh)
            .await
            .map(|(c, _)| c)
    }

    async fn contact_with_bundles(
        &mut self,
        address: &Address,
        refresh: bool,
    ) -> Result<(Contact, Vec<DeviceBundle>), Error> {
        let me = self.me()?.account.clone();
        let old: Option<Contact> = self.get_json(Table::Contacts, &address.to_string()).await?;
        let local = address.relay == me.address.relay;
        if let Some(c) = &old {
            let fresh =
                self.now().saturating_sub(c.fetched_ms) < self.config.device_list_refresh_ms;
            if !refresh && (fresh && !local) {
                return Ok((c.clone(), Vec::new()));
            }
        }
        let (list, bundles) = if local {
            let list = self
                .transport
                .device_list(&address.user)
                .await
                .map_err(|e| Error::about(address, e))?;
            (list, Vec::new())
        } else {
            let tr = self.transport.clone();
            let resp = authed!(self, |t| tr.key_bundle(&t, address, None))
                .map_err(|e| Error::about(address, e))?;
            (resp.device_list, resp.bundles)
        };
        if list.list.address != *address {
            return Err(Error::BadResponse(format!(
                "device list of {address} names another address"
            )));
        }
        verify_list(&list)?;
        if let Some(c) = &old {
            let signer_key = list.signer_key().map(|k| hexs(k.as_slice()));
            let signer_pinned = c.devices.get(&list.signer.0).cloned();
            let unchanged =
                c.version == list.list.version
                    && list.list.devices.iter().all(|e| {
                        c.devices.get(&e.device.0) == Some(&hexs(e.identity_key.as_slice()))
                    })
                    && list.list.devices.len() == c.devices.len();
            let signed_by_known = signer_pinned.is_some() && signer_pinned == signer_key;
            let keys_kept = list.list.devices.iter().all(|e| {
                c.devices
                    .get(&e.device.0)
                    .is_none_or(|k| *k == hexs(e.identity_key.as_slice()))
            });
            let accepted_update = signed_by_known && keys_kept && list.list.version > c.version;
            if !(unchanged || accepted_update) {
                return Err(Error::IdentityChanged {
                    address: address.clone(),
                });
            }
        }
        let contact = self.contact_from_list(&list, old.as_ref());
        // A local contact is re-read on every send; an unchanged list needs
        // no write (the fetch time only matters for remote contacts).
        if let Some(c) = old.as_ref().filter(|c| {
            local && c.version == contact.version && c.devices == contact.devices
        }) {
            return Ok((c.clone(), bundles));
        }
        let mut batch = Batch::new();
        batch.put(Table::Contacts, address.to_string(), json(&contact)?);
        // Sessions with devices no longer listed are dropped.
        if let Some(c) = &old {
            for d in c
                .devices
                .keys()
                .filter(|d| !contact.devices.contains_key(d))
            {
                batch.delete(Table::Sessions, session_key(address, DeviceId(*d)));
            }
        }
        self.store.apply(batch).await?;
        Ok((contact, bundles))
    }

    async fn load_sessions(
        &self,
        address: &Address,
        device: DeviceId,
    ) -> Result<DeviceSessions, Error> {
        let pickles: Vec<SessionPickle> = self
            .get_json(Table::Sessions, &session_key(address, device))
            .await?
            .unwrap_or_default();
        let sessions = pickles
            .iter()
            .map(Session::from_pickle)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DeviceSessions { sessions })
    }

    /// A session with each device of `contact` (starting new ones from
    /// fetched bundles), in device order.
    async fn sessions_for(
        &mut self,
        contact: &mut Contact,
        devices: &[DeviceId],
        mut bundles: Vec<DeviceBundle>,
    ) -> Result<Vec<(DeviceId, DeviceSessions)>, Error> {
        let address = contact.address.clone();
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for &d in devices {
            let s = self.load_sessions(&address, d).await?;
            if s.sessions.is_empty() {
                missing.push(d);
            }
            out.push((d, s));
        }
        for d in missing {
            let bundle = match bundles.iter().position(|b| b.device == d) {
                Some(i) => bundles.swap_remove(i),
                None => {
                    let tr = self.transport.clone();
                    let resp = authed!(self, |t| tr.key_bundle(&t, &address, Some(d)))
                        .map_err(|e| Error::about(&address, e))?;
                    match resp.bundles.into_iter().find(|b| b.device == d) {
                        Some(b) => b,
                        // A listed device without keys yet cannot be reached.
                        None => continue,
                    }
                }
            };
            if contact.devices.get(&d.0) != Some(&hexs(bundle.keys.identity_key.as_slice())) {
                return Err(Error::IdentityChanged { address });
            }
            let bundle = prekey_bundle(&bundle)?;
            let me = self.me.as_ref().ok_or(Error::NotRegistered)?;
            let session = Session::initiate(&me.identity, &bundle, &mut self.rng)?;
            contact
                .identities
                .insert(d.0, hexs(&bundle.identity().to_bytes()));
            if let Some((_, s)) = out.iter_mut().find(|(dev, _)| *dev == d) {
                s.sessions.insert(0, session);
            }
        }
        out.retain(|(_, s)| !s.sessions.is_empty());
        Ok(out)
    }

    fn sender_address(&self) -> Result<SenderAddress, Error> {
        let a = &self.me()?.account;
        Ok(SenderAddress {
            address: a.address.to_string(),
            device: a.device.0,
        })
    }

    /// Seals a pairwise-encrypted payload for a device: `tag || session message`.
    fn seal_session(
        &mut self,
        tag: u8,
        session: &mut Session,
        plaintext: &[u8],
    ) -> Result<Bytes, Error> {
        let message = session.encrypt(plaintext, &mut self.rng)?;
        let mut payload = Zeroizing::new(Vec::with_capacity(1 + message.len()));
        payload.push(tag);
        payload.extend_from_slice(&message);
        let recipient = session.remote_identity().clone();
        self.seal_payload(&recipient, &payload)
    }

    fn seal_payload(&mut self, recipient: &PublicIdentity, payload: &[u8]) -> Result<Bytes, Error> {
        let from = self.sender_address()?;
        let me = self.me.as_ref().ok_or(Error::NotRegistered)?;
        Ok(Bytes(sealed::seal(
            &me.identity,
            &from,
            recipient,
            payload,
            &mut self.rng,
        )?))
    }

    fn new_envelope_id(&mut self) -> EnvelopeId {
        let mut random = [0u8; 10];
        self.rng.fill_bytes(&mut random);
        EnvelopeId::new(self.now(), random)
    }

    /// The devices a message from this account reaches: every device of
    /// each address in `to` plus this account's other devices.
    async fn recipients(
        &mut self,
        to: &[Address],
    ) -> Result<Vec<(Contact, Vec<DeviceId>, Vec<DeviceBundle>)>, Error> {
        let me = self.me()?.account.clone();
        let mut out = Vec::new();
        let mut seen_self = false;
        for address in to {
            let (contact, bundles) = self.contact_with_bundles(address, false).await?;
            let mut devices = contact.device_ids();
            if *address == me.address {
                seen_self = true;
                devices.retain(|d| *d != me.device);
            } else if devices.is_empty() {
                return Err(Error::UnknownRecipient(address.clone()));
            }
            out.push((contact, devices, bundles));
        }
        if !seen_self {
            let contact = self.contact(&me.address, true).await?;
            let devices: Vec<DeviceId> = contact
                .device_ids()
                .into_iter()
                .filter(|d| *d != me.device)
                .collect();
            out.push((contact, devices, Vec::new()));
        }
        Ok(out)
    }

    async fn submit(&mut self, message: &OutgoingMessage) -> Result<u64, Error> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tr = self.transport.clone();
            match authed!(self, |t| tr.send(&t, message)) {
                Ok(resp) => return Ok(resp.accepted_ms),
                // Same id on retry: the relay stores it at most once.
                Err(TransportError::Unreachable(_)) if attempt < SEND_ATTEMPTS_MAX => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                // The relay asked to slow down: wait and send the same id again.
                Err(TransportError::Api(e))
                    if e.code == ErrorCode::RateLimited && attempt < SEND_ATTEMPTS_MAX =>
                {
                    tokio::time::sleep(delay.max(Duration::from_secs(1))).await;
                    delay *= 2;
                }
                Err(TransportError::Api(e)) => {
                    if let Some(to) = message.recipients.first().map(|r| r.to.clone())
                        && matches!(e.code, ErrorCode::UnknownUser | ErrorCode::UnknownDevice)
                    {
                        return Err(Error::UnknownRecipient(to));
                    }
                    return Err(TransportError::Api(e).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stages the history record of a message being sent in the
    /// write-ahead batch; returns its key so a failed send can drop it.
    fn stage_sent(batch: &mut Batch, message: &Message) -> Result<String, Error> {
        let key = message_key(message.received_ms, 0, &message.id);
        batch.put(Table::Messages, key.clone(), json(message)?);
        Ok(key)
    }

    /// Submits a message whose history record `key` was staged; if the
    /// relay did not take it, the record goes again.
    async fn submit_recorded(
        &mut self,
        message: &OutgoingMessage,
        key: Option<String>,
    ) -> Result<u64, Error> {
        match self.submit(message).await {
            Ok(accepted_ms) => Ok(accepted_ms),
            Err(e) => {
                if let Some(key) = key {
                    let mut batch = Batch::new();
                    batch.delete(Table::Messages, key);
                    self.store.apply(batch).await?;
                }
                Err(e)
            }
        }
    }

    async fn send_direct(&mut self, to: &Address, text: &str) -> Result<SendReceipt, Error> {
        let me = self.me()?.account.clone();
        if *to == me.address {
            return Err(Error::Invalid(
                "cannot send a direct message to yourself".into(),
            ));
        }
        self.maintain_keys(false).await?;
        let now = self.now();
        let content = Content::Direct {
            to: to.clone(),
            text: text.to_owned(),
            sent_ms: now,
        };
        let plaintext = Zeroizing::new(content.encode()?);
        let (body, key) = content::seal_body(&plaintext, &mut self.rng)?;
        let secret = key.encode();
        let targets = self.recipients(std::slice::from_ref(to)).await?;
        let mut recipients = Vec::new();
        let mut batch = Batch::new();
        for (mut contact, devices, bundles) in targets {
            let sessions = self.sessions_for(&mut contact, &devices, bundles).await?;
            if contact.address == *to && sessions.is_empty() {
                return Err(Error::UnknownRecipient(to.clone()));
            }
            for (device, mut s) in sessions {
                let header = self.seal_session(TAG_DIRECT, &mut s.sessions[0], &secret)?;
                batch.put(
                    Table::Sessions,
                    session_key(&contact.address, device),
                    json(&s.pickles())?,
                );
                recipients.push(RecipientEntry {
                    to: contact.address.clone(),
                    device,
                    header,
                });
            }
            batch.put(
                Table::Contacts,
                contact.address.to_string(),
                json(&contact)?,
            );
        }
        let id = self.new_envelope_id();
        let key = Self::stage_sent(
            &mut batch,
            &Message {
                id: id.to_string(),
                from: me.address.clone(),
                from_device: me.device,
                to: Some(to.clone()),
                group: None,
                text: text.to_owned(),
                sent_ms: now,
                received_ms: now,
                outgoing: true,
            },
        )?;
        // Write-ahead: the advanced ratchets are durable before anything leaves.
        self.store.apply(batch).await?;
        let message = OutgoingMessage {
            id,
            body: Bytes(body),
            recipients,
            ttl_secs: self.config.ttl_secs,
        };
        let accepted_ms = self.submit_recorded(&message, Some(key)).await?;
        Ok(SendReceipt {
            id: message.id,
            devices: message.recipients.len(),
            accepted_ms,
        })
    }

    async fn group(&self, name: &str) -> Result<GroupRecord, Error> {
        self.get_json(Table::Groups, name)
            .await?
            .ok_or_else(|| Error::UnknownGroup(name.to_owned()))
    }

    async fn group_create(&mut self, name: &str, members: &[Address]) -> Result<(), Error> {
        let me = self.me()?.account.clone();
        if name.is_empty() || name.len() > 64 || name.contains('/') {
            return Err(Error::Invalid(
                "group name must be 1 to 64 characters without '/'".into(),
            ));
        }
        if self.store.get(Table::Groups, name).await?.is_some() {
            return Err(Error::GroupExists(name.to_owned()));
        }
        let mut all = vec![me.address.clone()];
        for m in members {
            if !all.contains(m) {
                all.push(m.clone());
            }
        }
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let record = GroupRecord {
            info: GroupInfo {
                id: hexs(&id),
                name: name.to_owned(),
                epoch: 1,
                members: all,
            },
            left: false,
        };
        // Check every member exists before storing anything.
        for m in &record.info.members {
            self.contact(m, false).await?;
        }
        let mut batch = Batch::new();
        batch.put(Table::Groups, name, json(&record)?);
        self.store.apply(batch).await?;
        self.group_send(record, "").await.map(|_| ())
    }

    async fn group_change(
        &mut self,
        name: &str,
        changed: &[Address],
        add: bool,
    ) -> Result<(), Error> {
        let me = self.me()?.account.clone();
        let mut record = self.group(name).await?;
        if record.left {
            return Err(Error::Invalid(format!(
                "you are no longer a member of {name}"
            )));
        }
        for m in changed {
            if add {
                self.contact(m, false).await?;
                if !record.info.members.contains(m) {
                    record.info.members.push(m.clone());
                }
            } else {
                if *m == me.address {
                    return Err(Error::Invalid("cannot remove yourself".into()));
                }
                record.info.members.retain(|x| x != m);
            }
        }
        // A new epoch makes every member's next send use a new sender key.
        record.info.epoch += 1;
        let mut batch = Batch::new();
        batch.put(Table::Groups, name, json(&record)?);
        self.store.apply(batch).await?;
        self.group_send(record, "").await.map(|_| ())
    }

    async fn group_send(&mut self, record: GroupRecord, text: &str) -> Result<SendReceipt, Error> {
        let me = self.me()?.account.clone();
        if record.left {
            return Err(Error::Invalid(format!(
                "you are no longer a member of {}",
                record.info.name
            )));
        }
        self.maintain_keys(false).await?;
        let now = self.now();
        let gid_hex = record.info.id.clone();
        let gid: [u8; 16] = hex::decode(&gid_hex)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Error::Corrupt("group id".into()))?;
        let own_key_name = format!("{gid_hex}/self");
        let mut own: OwnSenderKey = match self
            .get_json::<OwnSenderKey>(Table::SenderKeys, &own_key_name)
            .await?
        {
            Some(k) if k.epoch == record.info.epoch => k,
            _ => OwnSenderKey {
                epoch: record.info.epoch,
                pickle: SenderKey::generate(&mut self.rng).to_pickle(),
                distributed: BTreeSet::new(),
            },
        };
        let mut sender_key = SenderKey::from_pickle(&own.pickle)?;
        // Taken before encrypting so the receiver can read this very message.
        let distribution = Zeroizing::new(sender_key.distribution_message());
        let content = Content::Group {
            group: record.info.clone(),
            text: text.to_owned(),
            sent_ms: now,
        };
        let plaintext = Zeroizing::new(content.encode()?);
        let body = sender_key.encrypt(&plaintext)?;
        let hash = content::body_hash(&body);
        own.pickle = sender_key.to_pickle();

        let targets = self.recipients(&record.info.members).await?;
        let mut recipients = Vec::new();
        let mut newly = Vec::new();
        let mut batch = Batch::new();
        for (mut contact, devices, bundles) in targets {
            let address = contact.address.clone();
            let (have, need): (Vec<DeviceId>, Vec<DeviceId>) = devices.iter().partition(|d| {
                own.distributed.contains(&session_key(&address, **d))
                    && contact.identities.contains_key(&d.0)
            });
            for d in have {
                let identity = contact
                    .identities
                    .get(&d.0)
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or_else(|| Error::Corrupt("pinned identity".into()))?;
                let identity = PublicIdentity::from_bytes(&identity)?;
                let mut payload = Vec::with_capacity(49);
                payload.push(TAG_GROUP);
                payload.extend_from_slice(&gid);
                payload.extend_from_slice(&hash);
                let header = self.seal_payload(&identity, &payload)?;
                recipients.push(RecipientEntry {
                    to: address.clone(),
                    device: d,
                    header,
                });
            }
            let sessions = self.sessions_for(&mut contact, &need, bundles).await?;
            let delivery = GroupKeyDelivery {
                group: gid,
                hash,
                distribution: distribution.clone(),
            }
            .encode();
            for (device, mut s) in sessions {
                let header =
                    self.seal_session(TAG_GROUP_WITH_KEY, &mut s.sessions[0], &delivery)?;
                batch.put(
                    Table::Sessions,
                    session_key(&address, device),
                    json(&s.pickles())?,
                );
                recipients.push(RecipientEntry {
                    to: address.clone(),
                    device,
                    header,
                });
                newly.push(session_key(&address, device));
            }
            batch.put(Table::Contacts, address.to_string(), json(&contact)?);
        }
        batch.put(Table::SenderKeys, own_key_name.clone(), json(&own)?);
        self.store.apply(batch).await?;
        let id = self.new_envelope_id();
        if recipients.is_empty() {
            // Nobody else in the group has a device yet: nothing to submit.
            return Ok(SendReceipt {
                id,
                devices: 0,
                accepted_ms: now,
            });
        }
        let message = OutgoingMessage {
            id,
            body: Bytes(body),
            recipients,
            ttl_secs: self.config.ttl_secs,
        };
        let accepted_ms = self.submit(&message).await?;
        // Only now do those devices hold the key.
        own.distributed.extend(newly);
        let mut batch = Batch::new();
        batch.put(Table::SenderKeys, own_key_name, json(&own)?);
        if !text.is_empty() {
            Self::stage_sent(
                &mut batch,
                &Message {
                    id: message.id.to_string(),
                    from: me.address.clone(),
                    from_device: me.device,
                    to: None,
                    group: Some(record.info.name.clone()),
                    text: text.to_owned(),
                    sent_ms: now,
                    received_ms: now,
                    outgoing: true,
                },
            )?;
        }
        self.store.apply(batch).await?;
        Ok(SendReceipt {
            id: message.id,
            devices: message.recipients.len(),
            accepted_ms,
        })
    }

    async fn approve(&mut self, code: &str) -> Result<DeviceId, Error> {
        let me = self.me()?.account.clone();
        let tr = self.transport.clone();
        let info = authed!(self, |t| tr.link_info(&t, code)).map_err(|e| match e {
            TransportError::Api(api)
                if api.code == ErrorCode::InvalidLinkCode || api.code == ErrorCode::NotFound =>
            {
                Error::Invalid(format!("unknown or expired link code {code}"))
            }
            other => other.into(),
        })?;
        let current = self.contact(&me.address, true).await?;
        let used: BTreeSet<u32> = current.devices.keys().copied().collect();
        if used.len() >= DEVICES_PER_ACCOUNT_MAX {
            return Err(Error::Api(ErrorCode::TooManyDevices.into()));
        }
        let new = (1..=u32::MAX)
            .find(|d| !used.contains(d))
            .ok_or_else(|| Error::Invalid("no free device id".into()))?;
        let mut devices: Vec<DeviceListEntry> = current
            .devices
            .iter()
            .map(|(d, k)| {
                Ok(DeviceListEntry {
                    device: DeviceId(*d),
                    identity_key: Bytes(
                        hex::decode(k).map_err(|_| Error::Corrupt("pinned key".into()))?,
                    ),
                })
            })
            .collect::<Result<_, Error>>()?;
        devices.push(DeviceListEntry {
            device: DeviceId(new),
            identity_key: info.device.identity_key.clone(),
        });
        let list = DeviceList {
            address: me.address.clone(),
            version: current.version + 1,
            devices,
        };
        let signed = sign_list(&self.me()?.identity, list, me.device);
        let req = ApproveLinkRequest {
            device_list: signed.clone(),
        };
        let resp = authed!(self, |t| tr.approve_link(&t, code, &req))?;
        let contact = self.contact_from_list(&signed, Some(&current));
        let mut batch = Batch::new();
        batch.put(Table::Contacts, me.address.to_string(), json(&contact)?);
        self.store.apply(batch).await?;
        Ok(resp.device)
    }

    async fn receive_pending(&mut self) -> Result<usize, Error> {
        let mut processed = 0;
        let mut after = None;
        let mut later: Vec<Envelope> = Vec::new();
        loop {
            let tr = self.transport.clone();
            let page = authed!(self, |t| tr.fetch(&t, after, None))?;
            let mut acks = Vec::new();
            for envelope in &page.envelopes {
                after = Some(envelope.seq);
                match self.process(envelope).await? {
                    Outcome::Done => acks.push(envelope.seq),
                    Outcome::Later => later.push(envelope.clone()),
                }
            }
            // Envelopes that waited for a sender key may be readable now.
            let mut still = Vec::new();
            for envelope in later.drain(..) {
                match self.process(&envelope).await? {
                    Outcome::Done => acks.push(envelope.seq),
                    Outcome::Later => still.push(envelope),
                }
            }
            later = still;
            processed += acks.len();
            if !acks.is_empty() {
                if self.config.fail_before_ack {
                    return Err(Error::FaultInjected);
                }
                let tr = self.transport.clone();
                authed!(self, |t| tr.ack(&t, &acks))?;
            }
            if !page.more || page.envelopes.is_empty() {
                break;
            }
        }
        Ok(processed)
    }

    async fn take_inbox(&self) -> Result<Vec<Message>, Error> {
        let rows = self.store.scan(Table::Inbox, "").await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut batch = Batch::new();
        for (key, _) in rows {
            if let Some(m) = self.get_json::<Message>(Table::Messages, &key).await? {
                out.push(m);
            }
            batch.delete(Table::Inbox, key);
        }
        self.store.apply(batch).await?;
        Ok(out)
    }

    /// Decrypts one envelope and stores everything it changes in one batch.
    async fn process(&mut self, envelope: &Envelope) -> Result<Outcome, Error> {
        let id = envelope.id.to_string();
        if self.store.get(Table::Processed, &id).await?.is_some() {
            return Ok(Outcome::Done);
        }
        let now = self.now();
        let mut batch = Batch::new();
        batch.put(Table::Processed, id.clone(), now.to_be_bytes().to_vec());
        let shown = match envelope.kind {
            EnvelopeKind::DeliveryFailure => Some(self.delivery_failure(envelope)?),
            EnvelopeKind::Message => match self.decrypt(envelope, &mut batch).await {
                Ok(Some(m)) => Some(m),
                Ok(None) => None,
                Err(Error::Crypto(courier_crypto::Error::ChainMismatch))
                | Err(Error::MissingSenderKey) => {
                    return Ok(Outcome::Later);
                }
                Err(Error::IdentityChanged { address }) => {
                    // Surfaced in the conversation, never silently trusted.
                    tracing::warn!(%address, "message from a changed identity refused");
                    let me = self.me()?.account.clone();
                    let mut batch = Batch::new();
                    batch.put(Table::Processed, id.clone(), now.to_be_bytes().to_vec());
                    let m = Message {
                        id: id.clone(),
                        from: address.clone(),
                        from_device: DeviceId(0),
                        to: Some(me.address),
                        group: None,
                        text: format!(
                            "[identity of {address} changed; message refused — run `courier-client trust {address}` after checking]"
                        ),
                        sent_ms: envelope.id.unix_ms(),
                        received_ms: now,
                        outgoing: false,
                    };
                    let key = message_key(now, envelope.seq, &id);
                    batch.put(Table::Messages, key.clone(), json(&m)?);
                    batch.put(Table::Inbox, key, Vec::new());
                    self.store.apply(batch).await?;
                    return Ok(Outcome::Done);
                }
                Err(Error::Crypto(e)) => {
                    // Undecryptable (forged, replayed, or keys lost): dropping
                    // it is all a client can do; it never blocks the mailbox.
                    tracing::warn!(envelope = %id, error = %e, "dropping undecryptable envelope");
                    let mut batch = Batch::new();
                    batch.put(Table::Processed, id.clone(), now.to_be_bytes().to_vec());
                    self.store.apply(batch).await?;
                    return Ok(Outcome::Done);
                }
                Err(e) => return Err(e),
            },
        };
        if let Some(m) = shown {
            let key = message_key(now, envelope.seq, &id);
            batch.put(Table::Messages, key.clone(), json(&m)?);
            batch.put(Table::Inbox, key, Vec::new());
        }
        self.store.apply(batch).await?;
        Ok(Outcome::Done)
    }

    fn delivery_failure(&self, envelope: &Envelope) -> Result<Message, Error> {
        let me = self.me()?.account.clone();
        let notice: courier_protocol::api::DeliveryFailureNotice =
            serde_json::from_slice(envelope.body.as_slice())
                .map_err(|e| Error::BadResponse(format!("delivery failure notice: {e}")))?;
        let who: Vec<String> = notice
            .recipients
            .iter()
            .map(|r| format!("{}/{} ({})", r.to, r.device, r.code))
            .collect();
        Ok(Message {
            id: envelope.id.to_string(),
            from: me.address.clone(),
            from_device: DeviceId(0),
            to: None,
            group: None,
            text: format!(
                "[message {} not delivered to {}]",
                notice.id,
                who.join(", ")
            ),
            sent_ms: envelope.received_ms,
            received_ms: self.now(),
            outgoing: false,
        })
    }

    /// Opens the sealed header, checks the sender against its pinned keys,
    /// decrypts the body; adds the state changes to `batch`.
    async fn decrypt(
        &mut self,
        envelope: &Envelope,
        batch: &mut Batch,
    ) -> Result<Option<Message>, Error> {
        let me = self.me()?.account.clone();
        let unsealed = sealed::open(&self.me()?.identity, envelope.header.as_slice())?;
        let sender = Address::parse(&unsealed.sender.address)
            .map_err(|_| Error::Crypto(courier_crypto::Error::Malformed("sender address")))?;
        let sender_device = DeviceId(unsealed.sender.device);
        if sender == me.address && sender_device == me.device {
            return Err(Error::Crypto(courier_crypto::Error::Malformed(
                "message from this very device",
            )));
        }
        // The sealed identity must be the one pinned for that device.
        let claimed = hexs(&unsealed.sender_identity.signing_key());
        let mut contact = match self
            .get_json::<Contact>(Table::Contacts, &sender.to_string())
            .await?
        {
            Some(c) if c.devices.contains_key(&sender_device.0) => c,
            _ => self.contact(&sender, true).await?,
        };
        match contact.devices.get(&sender_device.0) {
            Some(k) if *k == claimed => {}
            Some(_) => return Err(Error::IdentityChanged { address: sender }),
            None => {
                // Not in the sender's list: maybe it changed since; re-read once.
                contact = self.contact(&sender, true).await?;
                if contact.devices.get(&sender_device.0) != Some(&claimed) {
                    return Err(Error::IdentityChanged { address: sender });
                }
            }
        }
        let (&tag, payload) = unsealed.content.split_first().ok_or(Error::Crypto(
            courier_crypto::Error::Truncated { needed: 1 },
        ))?;
        let now = self.now();
        let (group_ref, group_key) = match tag {
            TAG_DIRECT | TAG_GROUP_WITH_KEY => {
                let plaintext = self
                    .session_decrypt(
                        &sender,
                        sender_device,
                        &unsealed,
                        payload,
                        &mut contact,
                        batch,
                    )
                    .await?;
                if tag == TAG_DIRECT {
                    let key = DirectKey::decode(&plaintext)?;
                    let body = content::open_body(envelope.body.as_slice(), &key)?;
                    let Content::Direct { to, text, sent_ms } = Content::decode(&body)? else {
                        return Err(Error::Crypto(courier_crypto::Error::Malformed(
                            "content kind",
                        )));
                    };
                    let outgoing = sender == me.address;
                    return Ok(Some(Message {
                        id: envelope.id.to_string(),
                        from: sender,
                        from_device: sender_device,
                        to: outgoing.then_some(to),
                        group: None,
                        text,
                        sent_ms,
                        received_ms: now,
                        outgoing,
                    }));
                }
                let d = GroupKeyDelivery::decode(&plaintext)?;
                ((d.group, d.hash), Some(d.distribution))
            }
            TAG_GROUP => (content::decode_group_ref(payload)?, None),
            _ => return Err(Error::Crypto(courier_crypto::Error::UnexpectedType(tag))),
        };
        let (gid, hash) = group_ref;
        if content::body_hash(envelope.body.as_slice()) != hash {
            return Err(Error::Crypto(courier_crypto::Error::Malformed(
                "body does not match its header",
            )));
        }
        let gid_hex = hexs(&gid);
        let rkey = format!("{gid_hex}/{}", session_key(&sender, sender_device));
        let mut receivers: Vec<SenderKeyPickle> = self
            .get_json(Table::SenderKeys, &rkey)
            .await?
            .unwrap_or_default();
        if let Some(dist) = group_key {
            let r = SenderKeyReceiver::from_distribution(&dist)?;
            receivers.retain(|p| p.chain_id != r.chain_id());
            receivers.insert(0, r.to_pickle());
            receivers.truncate(RECEIVERS_PER_DEVICE_MAX);
        }
        let chain = SenderKeyReceiver::message_chain_id(envelope.body.as_slice())?;
        let Some(index) = receivers.iter().position(|p| p.chain_id == chain) else {
            return Err(Error::MissingSenderKey);
        };
        let mut receiver = SenderKeyReceiver::from_pickle(&receivers[index])?;
        let plaintext = Zeroizing::new(receiver.decrypt(envelope.body.as_slice())?);
        receivers[index] = receiver.to_pickle();
        batch.put(Table::SenderKeys, rkey, json(&receivers)?);
        let Content::Group {
            group,
            text,
            sent_ms,
        } = Content::decode(&plaintext)?
        else {
            return Err(Error::Crypto(courier_crypto::Error::Malformed(
                "content kind",
            )));
        };
        if group.id != gid_hex {
            return Err(Error::Crypto(courier_crypto::Error::Malformed(
                "group id mismatch",
            )));
        }
        let (name, member) = self.file_group(&group, &sender, batch).await?;
        if !member {
            // A removed member still holding old keys is not heard.
            tracing::warn!(%sender, group = %name, "group message from a non-member ignored");
            return Ok(None);
        }
        if text.is_empty() {
            return Ok(None);
        }
        let outgoing = sender == me.address;
        Ok(Some(Message {
            id: envelope.id.to_string(),
            from: sender,
            from_device: sender_device,
            to: None,
            group: Some(name),
            text,
            sent_ms,
            received_ms: now,
            outgoing,
        }))
    }

    /// Updates (or creates) the local record of a group from a member's
    /// message; returns its local name and whether the sender is a member.
    async fn file_group(
        &mut self,
        info: &GroupInfo,
        sender: &Address,
        batch: &mut Batch,
    ) -> Result<(String, bool), Error> {
        let me = self.me()?.account.address.clone();
        let groups = self.store.scan(Table::Groups, "").await?;
        let mut existing = None;
        for (name, v) in &groups {
            let g: GroupRecord = serde_json::from_slice(v)?;
            if g.info.id == info.id {
                existing = Some((name.clone(), g));
                break;
            }
        }
        // Only a current member may change the group.
        let (name, mut record) = match existing {
            Some((name, record)) => {
                let member = record.info.members.contains(sender);
                if !member || info.epoch <= record.info.epoch {
                    return Ok((name, member));
                }
                (name, record)
            }
            None => {
                let taken: BTreeSet<&String> = groups.iter().map(|(n, _)| n).collect();
                let mut name = info.name.clone();
                if taken.contains(&name) || name.is_empty() || name.contains('/') {
                    name = format!("{}-{}", info.name.replace('/', "_"), &info.id[..8]);
                }
                let record = GroupRecord {
                    info: info.clone(),
                    left: false,
                };
                (name, record)
            }
        };
        record.info.members = info.members.clone();
        record.info.epoch = info.epoch;
        record.left = !info.members.contains(&me);
        batch.put(Table::Groups, name.clone(), json(&record)?);
        Ok((name, info.members.contains(sender)))
    }

    /// Decrypts a pairwise session message from a device, starting a session
    /// from a prekey message when needed; stages the session in `batch`.
    async fn session_decrypt(
        &mut self,
        sender: &Address,
        device: DeviceId,
        unsealed: &sealed::Unsealed,
        message: &[u8],
        contact: &mut Contact,
        batch: &mut Batch,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let mut sessions = self.load_sessions(sender, device).await?;
        let mut result = None;
        for i in 0..sessions.sessions.len() {
            // Decrypt on a copy: a failed attempt must leave the session unchanged.
            let mut s = Session::from_pickle(&sessions.sessions[i].to_pickle())?;
            if unsealed.verify_sender(s.remote_identity()).is_err() {
                continue;
            }
            if let Ok(p) = s.decrypt(message) {
                sessions.sessions.remove(i);
                sessions.sessions.insert(0, s);
                result = Some(Zeroizing::new(p));
                break;
            }
        }
        let plaintext = match result {
            Some(p) => p,
            None => {
                if MessageKind::of(message)? != MessageKind::PreKey {
                    return Err(Error::Crypto(courier_crypto::Error::DecryptionFailed));
                }
                let prekey = PreKeyMessage::from_bytes(message)?;
                unsealed.verify_sender(prekey.identity())?;
                let spk_pickle: PreKeyPickle = self
                    .get_json(Table::PreKeys, &format!("s/{}", prekey.signed_prekey_id()))
                    .await?
                    .ok_or(Error::Crypto(courier_crypto::Error::PreKeyMismatch {
                        expected: prekey.signed_prekey_id(),
                        supplied: 0,
                    }))?;
                let identity = &self.me.as_ref().ok_or(Error::NotRegistered)?.identity;
                let spk = SignedPreKey::from_pickle(identity, &spk_pickle)?;
                let otk = match prekey.one_time_prekey_id() {
                    Some(id) => {
                        let p: PreKeyPickle = self
                            .get_json(Table::PreKeys, &format!("o/{id}"))
                            .await?
                            .ok_or(Error::Crypto(courier_crypto::Error::OneTimePreKeyMismatch))?;
                        Some((id, OneTimePreKey::from_pickle(&p)?))
                    }
                    None => None,
                };
                let (session, plaintext) =
                    Session::respond(identity, &spk, otk.as_ref().map(|(_, k)| k), &prekey)?;
                if let Some((id, _)) = otk {
                    batch.delete(Table::PreKeys, format!("o/{id}"));
                }
                sessions.sessions.insert(0, session);
                Zeroizing::new(plaintext)
            }
        };
        sessions.sessions.truncate(SESSIONS_PER_DEVICE_MAX);
        contact
            .identities
            .insert(device.0, hexs(&unsealed.sender_identity.to_bytes()));
        batch.put(
            Table::Sessions,
            session_key(sender, device),
            json(&sessions.pickles())?,
        );
        batch.put(Table::Contacts, sender.to_string(), json(&*contact)?);
        Ok(plaintext)
    }
}
