//! A set of in-process relays that share one virtual clock and reach each
//! other through [`InProcessFederation`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use courier_protocol::api::Envelope;
use courier_protocol::{Address, DeviceId, OutgoingMessage, RelayName, Username};
use courier_relay::federation::drain_once;
use courier_relay::{AuthedDevice, Config, ManualClock, MemoryStore, Relay};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::Notify;

use crate::{InProcessFederation, RelayTransport};

/// Unix ms the relays' clock starts at.
pub const START_MS: u64 = 1_700_000_000_000;

/// Most outbox entries one drain round hands to a destination.
const DRAIN_BATCH_MAX: u32 = 500;

/// Rounds of draining after a change: a delivery can make a notice (a
/// delivery failure) that itself needs delivering.
const DRAIN_ROUNDS_MAX: usize = 4;

/// In-process relays by name, federated with each other. Cheap to clone
/// (a handle).
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    clock: Arc<ManualClock>,
    state: Mutex<State>,
    /// Woken whenever a mailbox may have changed or a relay went down or
    /// up, so push subscriptions look again.
    pub(crate) notify: Notify,
}

/// A device mailbox, for what a misbehaving relay adds to it.
pub(crate) type MailboxKey = (RelayName, Username, DeviceId);

/// Sequence numbers of injected envelopes start here, above anything a
/// relay's store hands out, so they come after the relay's own.
pub(crate) const INJECTED_SEQ_MIN: u64 = 1 << 62;

#[derive(Default)]
struct State {
    relays: BTreeMap<RelayName, Arc<Relay>>,
    down: BTreeSet<RelayName>,
    sent: Vec<OutgoingMessage>,
    seed: u64,
    /// Envelopes served as if the relay held them (see [`Network::inject`]).
    injected: BTreeMap<MailboxKey, BTreeMap<u64, Envelope>>,
    next_injected: u64,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").finish_non_exhaustive()
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Network {
    /// No relays yet; the clock reads [`START_MS`].
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                clock: Arc::new(ManualClock::new(START_MS)),
                state: Mutex::new(State::default()),
                notify: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is maps and flags, consistent after any panic.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The relay named `name`, created (default config, memory store) the
    /// first time it is asked for.
    pub fn relay(&self, name: &RelayName) -> Arc<Relay> {
        let mut state = self.state();
        if let Some(relay) = state.relays.get(name) {
            return relay.clone();
        }
        let relay = Arc::new(self.build(&mut state, Config::new(name.clone())));
        state.relays.insert(name.clone(), relay.clone());
        relay
    }

    /// Adds (or replaces) a relay with its own configuration.
    pub fn add_relay(&self, config: Config) -> Arc<Relay> {
        let mut state = self.state();
        let name = config.name.clone();
        let relay = Arc::new(self.build(&mut state, config));
        state.relays.insert(name, relay.clone());
        relay
    }

    /// Replaces relay `name` with a fresh one of the same name and an
    /// empty store: what a relay that lost its data looks like to its
    /// contacts (usernames can be registered again with new keys).
    pub fn reset_relay(&self, name: &RelayName) -> Arc<Relay> {
        self.add_relay(Config::new(name.clone()))
    }

    fn build(&self, state: &mut State, config: Config) -> Relay {
        state.seed += 1;
        let rng = StdRng::seed_from_u64(state.seed);
        Relay::new(
            config,
            Arc::new(MemoryStore::new()),
            self.inner.clock.clone(),
            Box::new(rng),
        )
    }

    pub(crate) fn existing(&self, name: &RelayName) -> Option<Arc<Relay>> {
        self.state().relays.get(name).cloned()
    }

    /// The SDK transport of a device whose home relay is `name` (parsed;
    /// the relay is created if new).
    pub fn transport(&self, name: &str) -> Result<RelayTransport, courier_protocol::AddressError> {
        let name = RelayName::parse(name)?;
        self.relay(&name);
        Ok(RelayTransport::new(self.clone(), name))
    }

    /// The relays' clock (one for all of them).
    pub fn clock(&self) -> &Arc<ManualClock> {
        &self.inner.clock
    }

    /// Moves the relays' clock on (token expiry, outbox backoff, link and
    /// challenge lifetimes) and delivers what became due.
    pub async fn advance(&self, ms: u64) {
        self.inner.clock.advance(ms);
        self.drain().await;
    }

    /// Moves the relays' clock past the access token lifetime: every
    /// access token has expired, refresh tokens still work.
    pub async fn expire_access_tokens(&self) {
        let ms = self.lifetime_max(|c| c.access_token_ms);
        self.advance(ms + 1).await;
    }

    /// Moves the relays' clock past the refresh token lifetime: every
    /// token has expired and devices must answer a new challenge.
    pub async fn expire_all_tokens(&self) {
        let ms = self.lifetime_max(|c| c.refresh_token_ms.max(c.access_token_ms));
        self.advance(ms + 1).await;
    }

    fn lifetime_max(&self, of: impl Fn(&Config) -> u64) -> u64 {
        self.state()
            .relays
            .values()
            .map(|r| of(r.config()))
            .max()
            .unwrap_or(0)
    }

    /// Makes relay `name` unreachable (`true`) for its clients and its
    /// peers, or reachable again.
    pub async fn set_relay_down(&self, name: &str, down: bool) {
        if let Ok(name) = RelayName::parse(name) {
            let mut state = self.state();
            if down {
                state.down.insert(name);
            } else {
                state.down.remove(&name);
            }
        }
        self.inner.notify.notify_waiters();
        if !down {
            self.drain().await;
        }
    }

    /// Makes every relay unreachable, or reachable again.
    pub async fn set_down(&self, down: bool) {
        let names: Vec<RelayName> = self.state().relays.keys().cloned().collect();
        for name in names {
            self.set_relay_down(name.as_str(), down).await;
        }
    }

    /// Whether relay `name` is down.
    pub fn is_down(&self, name: &RelayName) -> bool {
        self.state().down.contains(name)
    }

    pub(crate) fn record_sent(&self, message: &OutgoingMessage) {
        self.state().sent.push(message.clone());
    }

    /// Every message a relay accepted from a client, in order.
    pub fn sent(&self) -> Vec<OutgoingMessage> {
        self.state().sent.clone()
    }

    /// Envelopes waiting in `address`'s device mailbox on its home relay
    /// (injected ones included).
    pub async fn pending(&self, address: &Address, device: DeviceId) -> usize {
        let injected = self
            .state()
            .injected
            .get(&mailbox_key(address, device))
            .map_or(0, BTreeMap::len);
        self.stored(address, device).await.len() + injected
    }

    /// The envelopes the relay's store holds for `address`'s device.
    async fn stored(&self, address: &Address, device: DeviceId) -> Vec<Envelope> {
        let Some(relay) = self.existing(&address.relay) else {
            return Vec::new();
        };
        let who = device_of(address, device);
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let Ok(page) = relay.fetch(&who, after, DRAIN_BATCH_MAX).await else {
                return out;
            };
            let more = page.more;
            out.extend(page.envelopes);
            match out.last() {
                Some(last) if more => after = last.seq,
                _ => return out,
            }
        }
    }

    /// Serves `envelope` (under a new sequence number) to `address`'s device
    /// exactly as given, origin and kind included, after what its relay
    /// stores: what a hostile or broken home relay could hand a client.
    /// Acks of it are taken as a relay would. Returns false if the relay is
    /// unknown.
    pub fn inject(&self, address: &Address, device: DeviceId, mut envelope: Envelope) -> bool {
        let mut state = self.state();
        if !state.relays.contains_key(&address.relay) {
            return false;
        }
        envelope.seq = INJECTED_SEQ_MIN + state.next_injected;
        state.next_injected += 1;
        state
            .injected
            .entry(mailbox_key(address, device))
            .or_default()
            .insert(envelope.seq, envelope);
        drop(state);
        self.inner.notify.notify_waiters();
        true
    }

    /// Delivers the newest envelope of `address`'s device again, under a
    /// new sequence number: a duplicate delivery. False if there is none.
    pub async fn duplicate_last(&self, address: &Address, device: DeviceId) -> bool {
        let last = {
            let state = self.state();
            state
                .injected
                .get(&mailbox_key(address, device))
                .and_then(|m| m.values().next_back().cloned())
        };
        let last = match last {
            Some(e) => Some(e),
            None => self.stored(address, device).await.pop(),
        };
        match last {
            Some(envelope) => self.inject(address, device, envelope),
            None => false,
        }
    }

    /// Hands `address`'s device its stored envelopes newest first (taken
    /// off the relay and served again in reverse order): reordering.
    pub async fn reverse_mailbox(&self, address: &Address, device: DeviceId) {
        let Some(relay) = self.existing(&address.relay) else {
            return;
        };
        let stored = self.stored(address, device).await;
        let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
        if relay.ack(&device_of(address, device), &seqs).await.is_err() {
            return;
        }
        for envelope in stored.into_iter().rev() {
            self.inject(address, device, envelope);
        }
    }

    /// Injected envelopes of a mailbox with a seq above `after`, at most `limit`.
    pub(crate) fn injected_after(
        &self,
        key: &MailboxKey,
        after: u64,
        limit: usize,
    ) -> (Vec<Envelope>, bool) {
        let state = self.state();
        let Some(mailbox) = state.injected.get(key) else {
            return (Vec::new(), false);
        };
        let mut rest = mailbox
            .range(after.saturating_add(1)..)
            .map(|(_, e)| e.clone());
        let page: Vec<Envelope> = rest.by_ref().take(limit).collect();
        (page, rest.next().is_some())
    }

    /// Takes acks of injected envelopes; returns how many it removed.
    pub(crate) fn ack_injected(&self, key: &MailboxKey, seqs: &[u64]) -> u32 {
        let mut state = self.state();
        let Some(mailbox) = state.injected.get_mut(key) else {
            return 0;
        };
        seqs.iter().filter(|s| mailbox.remove(s).is_some()).count() as u32
    }

    /// Runs the outbox of every reachable relay towards every other until
    /// nothing more moves (what the node's drainer does continuously).
    pub async fn drain(&self) {
        for _ in 0..DRAIN_ROUNDS_MAX {
            let relays: Vec<(RelayName, Arc<Relay>)> = self
                .state()
                .relays
                .iter()
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
            let mut moved = 0;
            for (from, relay) in &relays {
                if self.is_down(from) {
                    continue;
                }
                let federation = InProcessFederation::new(self.clone(), from.clone());
                for (dest, _) in &relays {
                    if dest == from {
                        continue;
                    }
                    if let Ok(report) = drain_once(relay, &federation, dest, DRAIN_BATCH_MAX).await
                    {
                        moved += report.delivered + report.failed;
                    }
                }
            }
            if moved == 0 {
                break;
            }
            self.inner.notify.notify_waiters();
        }
    }
}

fn mailbox_key(address: &Address, device: DeviceId) -> MailboxKey {
    (address.relay.clone(), address.user.clone(), device)
}

/// The relay-side identity of a device, for reading its mailbox as the
/// test's observer (no token: the kit is the relay's operator here).
fn device_of(address: &Address, device: DeviceId) -> AuthedDevice {
    AuthedDevice {
        user: address.user.clone(),
        device,
        session: String::new(),
        prekeys_low: None,
    }
}
