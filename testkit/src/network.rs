//! A set of in-process relays that share one virtual clock and reach each
//! other through [`InProcessFederation`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use courier_protocol::{Address, DeviceId, OutgoingMessage, RelayName};
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

#[derive(Default)]
struct State {
    relays: BTreeMap<RelayName, Arc<Relay>>,
    down: BTreeSet<RelayName>,
    sent: Vec<OutgoingMessage>,
    seed: u64,
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

    /// Envelopes waiting in `address`'s device mailbox on its home relay.
    pub async fn pending(&self, address: &Address, device: DeviceId) -> usize {
        let Some(relay) = self.existing(&address.relay) else {
            return 0;
        };
        let who = AuthedDevice {
            user: address.user.clone(),
            device,
            session: String::new(),
            prekeys_low: None,
        };
        let mut count = 0;
        let mut after = 0;
        loop {
            let Ok(page) = relay.fetch(&who, after, DRAIN_BATCH_MAX).await else {
                return count;
            };
            count += page.envelopes.len();
            match page.envelopes.last() {
                Some(last) if page.more => after = last.seq,
                _ => return count,
            }
        }
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
