//! An in-memory stand-in for a set of federated relays, for simulations and
//! the SDK's own tests: accounts, device lists, prekey bundles (one-time
//! prekeys handed out once), per-device mailboxes with sequence numbers and
//! acks, device linking and tokens. It routes a message to the relay named in
//! each recipient address, storing the body once per relay, like the real
//! federation. It does not check signatures or limits; the real relay does.
//!
//! Every accepted [`OutgoingMessage`] is kept in a log ([`MemoryNetwork::sent`])
//! so tests can inspect exactly what relays would hold.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use courier_protocol::api::{
    AckResponse, ApproveLinkRequest, ApproveLinkResponse, ChallengeRequest, ChallengeResponse,
    DeviceBundle, DeviceKeys, Envelope, EnvelopeKind, FetchResponse, KeyBundleResponse, LinkInfo,
    LinkRequest, LinkResponse, LinkStatus, LoginRequest, OneTimePreKey, PreKeyCount,
    RefreshRequest, RegisterRequest, RegisterResponse, SendResponse, SignedDeviceList,
    SignedPreKey, TokenResponse, UploadOneTimePreKeys,
};
use courier_protocol::ws::ServerFrame;
use courier_protocol::{
    Address, ApiError, Bytes, DeviceId, EnvelopeId, ErrorCode, OutgoingMessage, RelayName, Username,
};
use tokio::sync::Notify;

use super::{Subscription, Transport, TransportError};

/// The one-time prekey count below which the memory relay reports "low".
pub const MEMORY_LOW_WATER: u32 = 10;

#[derive(Default)]
struct Device {
    keys: Option<DeviceKeys>,
    signed_prekey: Option<SignedPreKey>,
    one_time: VecDeque<OneTimePreKey>,
    mailbox: BTreeMap<u64, Envelope>,
}

struct Account {
    list: SignedDeviceList,
    devices: BTreeMap<DeviceId, Device>,
}

struct Link {
    username: Username,
    device: DeviceKeys,
    secret: String,
    approved: Option<DeviceId>,
}

#[derive(Default)]
struct Relay {
    accounts: BTreeMap<Username, Account>,
    challenges: BTreeMap<String, (Username, DeviceId)>,
    tokens: BTreeMap<String, (Username, DeviceId)>,
    links: BTreeMap<String, Link>,
    seen: BTreeMap<EnvelopeId, u64>,
    next_seq: u64,
}

#[derive(Default)]
struct Net {
    relays: BTreeMap<RelayName, Relay>,
    sent: Vec<OutgoingMessage>,
    counter: u64,
    now_ms: u64,
    down: bool,
    down_relays: std::collections::BTreeSet<RelayName>,
}

/// A set of in-memory relays that reach each other. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<Net>>,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryNetwork")
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a relay (idempotent) and returns a transport for its users.
    pub fn relay(&self, name: &str) -> Result<MemoryTransport, TransportError> {
        let relay = RelayName::parse(name)
            .map_err(|e| TransportError::BadResponse(format!("relay name: {e}")))?;
        self.lock()?.relays.entry(relay.clone()).or_default();
        Ok(MemoryTransport {
            net: self.clone(),
            relay,
        })
    }

    /// Every message accepted so far, in order: what relays stored.
    pub fn sent(&self) -> Vec<OutgoingMessage> {
        self.lock().map(|n| n.sent.clone()).unwrap_or_default()
    }

    /// Makes every relay unreachable (`true`) or reachable again.
    pub fn set_down(&self, down: bool) {
        if let Ok(mut n) = self.lock() {
            n.down = down;
        }
        // Open subscriptions notice at once, as a dropped connection would.
        self.notify.notify_waiters();
    }

    /// Delivers a copy of an envelope already in `address`'s device mailbox
    /// again under a new sequence number: a duplicate delivery.
    pub fn duplicate_last(&self, address: &Address, device: DeviceId) -> bool {
        let Ok(mut n) = self.lock() else { return false };
        let Some(relay) = n.relays.get_mut(&address.relay) else {
            return false;
        };
        relay.next_seq += 1;
        let seq = relay.next_seq;
        let Some(dev) = relay
            .accounts
            .get_mut(&address.user)
            .and_then(|a| a.devices.get_mut(&device))
        else {
            return false;
        };
        let Some(mut env) = dev.mailbox.values().next_back().cloned() else {
            return false;
        };
        env.seq = seq;
        dev.mailbox.insert(seq, env);
        self.notify.notify_waiters();
        true
    }

    /// Places `envelope` (under a new sequence number) in `address`'s device
    /// mailbox exactly as given, origin and kind included: what a hostile or
    /// broken relay could put there. Returns whether the device exists.
    pub fn inject(&self, address: &Address, device: DeviceId, mut envelope: Envelope) -> bool {
        let Ok(mut n) = self.lock() else { return false };
        let Some(relay) = n.relays.get_mut(&address.relay) else {
            return false;
        };
        relay.next_seq += 1;
        envelope.seq = relay.next_seq;
        let Some(dev) = relay
            .accounts
            .get_mut(&address.user)
            .and_then(|a| a.devices.get_mut(&device))
        else {
            return false;
        };
        dev.mailbox.insert(envelope.seq, envelope);
        self.notify.notify_waiters();
        true
    }

    /// Reverses the mailbox order of `address`'s device: later envelopes get
    /// lower sequence numbers, so they are delivered first (reordering).
    pub fn reverse_mailbox(&self, address: &Address, device: DeviceId) {
        let Ok(mut n) = self.lock() else { return };
        let Some(dev) = n
            .relays
            .get_mut(&address.relay)
            .and_then(|r| r.accounts.get_mut(&address.user))
            .and_then(|a| a.devices.get_mut(&device))
        else {
            return;
        };
        let seqs: Vec<u64> = dev.mailbox.keys().copied().collect();
        let envs: Vec<Envelope> = dev.mailbox.values().rev().cloned().collect();
        dev.mailbox.clear();
        for (seq, mut env) in seqs.into_iter().zip(envs) {
            env.seq = seq;
            dev.mailbox.insert(seq, env);
        }
    }

    /// Envelopes waiting for `address`'s device.
    pub fn pending(&self, address: &Address, device: DeviceId) -> usize {
        self.lock()
            .ok()
            .and_then(|n| {
                n.relays
                    .get(&address.relay)?
                    .accounts
                    .get(&address.user)?
                    .devices
                    .get(&device)
                    .map(|d| d.mailbox.len())
            })
            .unwrap_or(0)
    }

    /// Forgets every token of every relay, as if they all expired or were
    /// revoked: devices must log in again with a challenge.
    pub fn revoke_tokens(&self) {
        if let Ok(mut n) = self.lock() {
            for relay in n.relays.values_mut() {
                relay.tokens.clear();
            }
        }
    }

    /// Forgets access tokens only (they expired); refresh tokens still work.
    pub fn expire_access_tokens(&self) {
        if let Ok(mut n) = self.lock() {
            for relay in n.relays.values_mut() {
                relay.tokens.retain(|t, _| t.starts_with("refresh-"));
            }
        }
    }

    /// Makes one relay unreachable (`true`) or reachable again: its users'
    /// calls fail as unreachable and other relays answer `relay_unreachable`
    /// for anything that needs it.
    pub fn set_relay_down(&self, name: &str, down: bool) {
        let Ok(name) = RelayName::parse(name) else {
            return;
        };
        if let Ok(mut n) = self.lock() {
            if down {
                n.down_relays.insert(name);
            } else {
                n.down_relays.remove(&name);
            }
        }
        self.notify.notify_waiters();
    }

    /// Drops an account entirely so its username can be registered again
    /// (with new keys): what a relay reset looks like to contacts.
    pub fn forget_account(&self, address: &Address) {
        if let Ok(mut n) = self.lock()
            && let Some(relay) = n.relays.get_mut(&address.relay)
        {
            relay.accounts.remove(&address.user);
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Net>, TransportError> {
        self.inner
            .lock()
            .map_err(|_| TransportError::Unreachable("memory network poisoned".into()))
    }
}

/// A device's view of one relay in a [`MemoryNetwork`].
#[derive(Clone, Debug)]
pub struct MemoryTransport {
    net: MemoryNetwork,
    relay: RelayName,
}

fn api(code: ErrorCode) -> TransportError {
    TransportError::Api(ApiError::new(code))
}

impl MemoryTransport {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut Net, &RelayName) -> Result<R, TransportError>,
    ) -> Result<R, TransportError> {
        let mut net = self.net.lock()?;
        if net.down || net.down_relays.contains(&self.relay) {
            return Err(TransportError::Unreachable(format!("{}: down", self.relay)));
        }
        net.counter += 1;
        net.now_ms += 1;
        let r = f(&mut net, &self.relay);
        drop(net);
        self.net.notify.notify_waiters();
        r
    }

    fn who(
        net: &Net,
        relay: &RelayName,
        token: &str,
    ) -> Result<(Username, DeviceId), TransportError> {
        net.relays
            .get(relay)
            .and_then(|r| r.tokens.get(token).cloned())
            .ok_or_else(|| api(ErrorCode::Unauthenticated))
    }
}

fn relay_mut<'a>(net: &'a mut Net, name: &RelayName) -> Result<&'a mut Relay, TransportError> {
    if net.down_relays.contains(name) {
        return Err(api(ErrorCode::RelayUnreachable));
    }
    net.relays
        .get_mut(name)
        .ok_or_else(|| api(ErrorCode::UnknownRelay))
}

fn device_mut<'a>(
    net: &'a mut Net,
    relay: &RelayName,
    user: &Username,
    device: DeviceId,
) -> Result<&'a mut Device, TransportError> {
    relay_mut(net, relay)?
        .accounts
        .get_mut(user)
        .ok_or_else(|| api(ErrorCode::UnknownUser))?
        .devices
        .get_mut(&device)
        .ok_or_else(|| api(ErrorCode::UnknownDevice))
}

fn tokens(
    net: &mut Net,
    relay: &RelayName,
    who: (Username, DeviceId),
) -> Result<TokenResponse, TransportError> {
    let n = net.counter;
    let r = relay_mut(net, relay)?;
    let access = format!("access-{n}");
    let refresh = format!("refresh-{n}");
    r.tokens.insert(access.clone(), who.clone());
    r.tokens.insert(refresh.clone(), who);
    Ok(TokenResponse {
        access_token: access,
        access_expires_ms: u64::MAX / 2,
        refresh_token: refresh,
        refresh_expires_ms: u64::MAX / 2,
    })
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn relay_info(&self) -> Result<Option<courier_protocol::api::RelayInfo>, TransportError> {
        Ok(Some(courier_protocol::api::RelayInfo {
            name: self.relay.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            registration: courier_protocol::api::RegistrationPolicy::Open,
        }))
    }

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, TransportError> {
        self.with(|net, relay| {
            let r = relay_mut(net, relay)?;
            if r.accounts.contains_key(&req.username) {
                return Err(api(ErrorCode::UsernameTaken));
            }
            let mut devices = BTreeMap::new();
            devices.insert(
                DeviceId(1),
                Device {
                    keys: Some(req.device.clone()),
                    ..Device::default()
                },
            );
            let mut list = req.device_list.clone();
            list.list.address = Address::new(req.username.clone(), relay.clone());
            r.accounts
                .insert(req.username.clone(), Account { list, devices });
            Ok(RegisterResponse {
                address: Address::new(req.username.clone(), relay.clone()),
                device: DeviceId(1),
            })
        })
    }

    async fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, TransportError> {
        self.with(|net, relay| {
            let n = net.counter;
            let r = relay_mut(net, relay)?;
            let id = format!("challenge-{n}");
            r.challenges
                .insert(id.clone(), (req.username.clone(), req.device));
            Ok(ChallengeResponse {
                challenge_id: id,
                nonce: Bytes(vec![7; 32]),
                expires_ms: u64::MAX / 2,
            })
        })
    }

    async fn login(&self, req: &LoginRequest) -> Result<TokenResponse, TransportError> {
        self.with(|net, relay| {
            let who = relay_mut(net, relay)?
                .challenges
                .remove(&req.challenge_id)
                .ok_or_else(|| api(ErrorCode::InvalidChallenge))?;
            tokens(net, relay, who)
        })
    }

    async fn refresh(&self, req: &RefreshRequest) -> Result<TokenResponse, TransportError> {
        self.with(|net, relay| {
            let who = relay_mut(net, relay)?
                .tokens
                .remove(&req.refresh_token)
                .ok_or_else(|| api(ErrorCode::InvalidRefreshToken))?;
            tokens(net, relay, who)
        })
    }

    async fn device_list(&self, username: &Username) -> Result<SignedDeviceList, TransportError> {
        self.with(|net, relay| {
            relay_mut(net, relay)?
                .accounts
                .get(username)
                .map(|a| a.list.clone())
                .ok_or_else(|| api(ErrorCode::UnknownUser))
        })
    }

    async fn create_link(&self, req: &LinkRequest) -> Result<LinkResponse, TransportError> {
        self.with(|net, relay| {
            let n = net.counter;
            let r = relay_mut(net, relay)?;
            if !r.accounts.contains_key(&req.username) {
                return Err(api(ErrorCode::UnknownUser));
            }
            let code = format!("L{n:07}");
            let secret = format!("secret-{n}");
            r.links.insert(
                code.clone(),
                Link {
                    username: req.username.clone(),
                    device: req.device.clone(),
                    secret: secret.clone(),
                    approved: None,
                },
            );
            Ok(LinkResponse {
                code,
                secret,
                expires_ms: u64::MAX / 2,
            })
        })
    }

    async fn link_status(&self, code: &str, secret: &str) -> Result<LinkStatus, TransportError> {
        self.with(|net, relay| {
            let link = relay_mut(net, relay)?
                .links
                .get(code)
                .filter(|l| l.secret == secret)
                .ok_or_else(|| api(ErrorCode::InvalidLinkCode))?;
            Ok(LinkStatus {
                approved: link.approved.is_some(),
                device: link.approved,
            })
        })
    }

    async fn link_info(&self, token: &str, code: &str) -> Result<LinkInfo, TransportError> {
        self.with(|net, relay| {
            let (user, _) = Self::who(net, relay, token)?;
            let link = relay_mut(net, relay)?
                .links
                .get(code)
                .filter(|l| l.username == user && l.approved.is_none())
                .ok_or_else(|| api(ErrorCode::InvalidLinkCode))?;
            Ok(LinkInfo {
                username: link.username.clone(),
                device: link.device.clone(),
                expires_ms: u64::MAX / 2,
            })
        })
    }

    async fn approve_link(
        &self,
        token: &str,
        code: &str,
        req: &ApproveLinkRequest,
    ) -> Result<ApproveLinkResponse, TransportError> {
        self.with(|net, relay| {
            let (user, _) = Self::who(net, relay, token)?;
            let r = relay_mut(net, relay)?;
            let link = r
                .links
                .get_mut(code)
                .filter(|l| l.username == user && l.approved.is_none())
                .ok_or_else(|| api(ErrorCode::InvalidLinkCode))?;
            let new = req
                .device_list
                .list
                .devices
                .iter()
                .find(|e| e.identity_key == link.device.identity_key)
                .map(|e| e.device)
                .ok_or_else(|| api(ErrorCode::BadRequest))?;
            link.approved = Some(new);
            let keys = link.device.clone();
            let account = r
                .accounts
                .get_mut(&user)
                .ok_or_else(|| api(ErrorCode::UnknownUser))?;
            if req.device_list.list.version <= account.list.list.version {
                return Err(api(ErrorCode::Conflict));
            }
            account.list = req.device_list.clone();
            account.devices.insert(
                new,
                Device {
                    keys: Some(keys),
                    ..Device::default()
                },
            );
            Ok(ApproveLinkResponse { device: new })
        })
    }

    async fn put_signed_prekey(
        &self,
        token: &str,
        key: &SignedPreKey,
    ) -> Result<(), TransportError> {
        self.with(|net, relay| {
            let (user, device) = Self::who(net, relay, token)?;
            device_mut(net, relay, &user, device)?.signed_prekey = Some(key.clone());
            Ok(())
        })
    }

    async fn upload_one_time_prekeys(
        &self,
        token: &str,
        req: &UploadOneTimePreKeys,
    ) -> Result<PreKeyCount, TransportError> {
        self.with(|net, relay| {
            let (user, device) = Self::who(net, relay, token)?;
            let d = device_mut(net, relay, &user, device)?;
            d.one_time.extend(req.prekeys.iter().cloned());
            Ok(PreKeyCount {
                one_time: d.one_time.len() as u32,
                low_water: MEMORY_LOW_WATER,
            })
        })
    }

    async fn prekey_count(&self, token: &str) -> Result<PreKeyCount, TransportError> {
        self.with(|net, relay| {
            let (user, device) = Self::who(net, relay, token)?;
            let d = device_mut(net, relay, &user, device)?;
            Ok(PreKeyCount {
                one_time: d.one_time.len() as u32,
                low_water: MEMORY_LOW_WATER,
            })
        })
    }

    async fn key_bundle(
        &self,
        token: &str,
        address: &Address,
        device: Option<DeviceId>,
    ) -> Result<KeyBundleResponse, TransportError> {
        self.with(|net, relay| {
            Self::who(net, relay, token)?;
            let account = relay_mut(net, &address.relay)?
                .accounts
                .get_mut(&address.user)
                .ok_or_else(|| api(ErrorCode::UnknownUser))?;
            let mut bundles = Vec::new();
            for (id, d) in account.devices.iter_mut() {
                if device.is_some_and(|want| want != *id) {
                    continue;
                }
                let (Some(keys), Some(spk)) = (&d.keys, &d.signed_prekey) else {
                    continue;
                };
                bundles.push(DeviceBundle {
                    device: *id,
                    keys: keys.clone(),
                    signed_prekey: spk.clone(),
                    one_time_prekey: d.one_time.pop_front(),
                });
            }
            if device.is_some() && bundles.is_empty() {
                return Err(api(ErrorCode::UnknownDevice));
            }
            Ok(KeyBundleResponse {
                address: address.clone(),
                device_list: account.list.clone(),
                bundles,
            })
        })
    }

    async fn send(
        &self,
        token: &str,
        message: &OutgoingMessage,
    ) -> Result<SendResponse, TransportError> {
        self.with(|net, relay| {
            Self::who(net, relay, token)?;
            message.validate().map_err(api)?;
            let now = net.now_ms;
            if let Some(&accepted_ms) = relay_mut(net, relay)?.seen.get(&message.id) {
                return Ok(SendResponse {
                    id: message.id,
                    accepted_ms,
                });
            }
            for r in &message.recipients {
                device_mut(net, &r.to.relay, &r.to.user, r.device)?;
            }
            for r in &message.recipients {
                let dest = relay_mut(net, &r.to.relay)?;
                dest.next_seq += 1;
                let seq = dest.next_seq;
                let envelope = Envelope {
                    seq,
                    id: message.id,
                    origin: relay.clone(),
                    header: r.header.clone(),
                    body: message.body.clone(),
                    received_ms: now,
                    expires_ms: now + message.ttl_secs * 1000,
                    kind: EnvelopeKind::Message,
                };
                device_mut(net, &r.to.relay, &r.to.user, r.device)?
                    .mailbox
                    .insert(seq, envelope);
            }
            relay_mut(net, relay)?.seen.insert(message.id, now);
            net.sent.push(message.clone());
            Ok(SendResponse {
                id: message.id,
                accepted_ms: now,
            })
        })
    }

    async fn fetch(
        &self,
        token: &str,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<FetchResponse, TransportError> {
        self.with(|net, relay| {
            let (user, device) = Self::who(net, relay, token)?;
            let d = device_mut(net, relay, &user, device)?;
            let limit = limit.unwrap_or(100) as usize;
            let start = after.map_or(0, |a| a + 1);
            let mut envelopes: Vec<Envelope> =
                d.mailbox.range(start..).map(|(_, e)| e.clone()).collect();
            let more = envelopes.len() > limit;
            envelopes.truncate(limit);
            Ok(FetchResponse { envelopes, more })
        })
    }

    async fn ack(&self, token: &str, seqs: &[u64]) -> Result<AckResponse, TransportError> {
        self.with(|net, relay| {
            let (user, device) = Self::who(net, relay, token)?;
            let d = device_mut(net, relay, &user, device)?;
            let acked = seqs
                .iter()
                .filter(|s| d.mailbox.remove(s).is_some())
                .count();
            Ok(AckResponse {
                acked: acked as u32,
            })
        })
    }

    async fn subscribe(&self, token: &str) -> Result<Box<dyn Subscription>, TransportError> {
        let who = self.with(|net, relay| Self::who(net, relay, token))?;
        Ok(Box::new(MemorySubscription {
            transport: self.clone(),
            token: token.to_owned(),
            who,
            cursor: 0,
            low_reported: false,
        }))
    }
}

struct MemorySubscription {
    transport: MemoryTransport,
    token: String,
    who: (Username, DeviceId),
    cursor: u64,
    low_reported: bool,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<Option<ServerFrame>, TransportError> {
        loop {
            let notified = self.transport.net.notify.notified();
            {
                let mut net = self.transport.net.lock()?;
                if net.down {
                    return Err(TransportError::Unreachable("down".into()));
                }
                let d = device_mut(&mut net, &self.transport.relay, &self.who.0, self.who.1)?;
                if !self.low_reported && (d.one_time.len() as u32) < MEMORY_LOW_WATER {
                    self.low_reported = true;
                    return Ok(Some(ServerFrame::PrekeysLow {
                        remaining: d.one_time.len() as u32,
                    }));
                }
                if let Some((seq, env)) = d.mailbox.range(self.cursor + 1..).next() {
                    self.cursor = *seq;
                    return Ok(Some(ServerFrame::Envelope {
                        envelope: env.clone(),
                    }));
                }
            }
            notified.await;
        }
    }

    async fn ack(&mut self, seqs: &[u64]) -> Result<(), TransportError> {
        self.transport.ack(&self.token, seqs).await.map(|_| ())
    }
}
