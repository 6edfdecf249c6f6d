//! [`Relay`]: configuration, store, clock, randomness and notifications tied
//! together. The operations live in the modules named for what they touch
//! (`account`, `auth`, `device`, `directory`, `mailbox`, `outbox`).

use std::sync::{Arc, Mutex};

use courier_protocol::limits::{DEVICES_PER_ACCOUNT_MAX, ONE_TIME_PREKEYS_PER_DEVICE_MAX};
use courier_protocol::{DeviceId, RelayName, Username};
use rand_core::CryptoRng;

use crate::access_cache::AccessCache;
use crate::clock::Clock;
use crate::prekey_budget::{PrekeyBudget, PrekeyBudgetConfig};
use crate::secret::StoreSecret;
use crate::store::Store;

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Anyone.
    Open,
    /// Only holders of an operator-created invite code (single use, expiring).
    Invite,
}

/// Relay settings. Durations end in `_ms`, limits in `_max`.
#[derive(Debug, Clone)]
pub struct Config {
    /// This relay's name (the part after `@` of its users' addresses).
    pub name: RelayName,
    /// Who may register.
    pub registration: Registration,
    /// Lifetime of an access token.
    pub access_token_ms: u64,
    /// Most access tokens kept in the in-process cache that spares each
    /// request a store read (0 turns the cache off).
    pub access_cache_max: usize,
    /// How long a cached access token is trusted before it is read from
    /// the store again. Within one process revocation is immediate anyway;
    /// this bounds how long a logout made through another process sharing
    /// the database goes unseen here.
    pub access_cache_ms: u64,
    /// Lifetime of a refresh token (each rotation starts a new one).
    pub refresh_token_ms: u64,
    /// Lifetime of a login challenge.
    pub challenge_ms: u64,
    /// Lifetime of a device link request.
    pub link_ms: u64,
    /// Below this many one-time prekeys a device is told to upload more.
    pub prekeys_low_water: u32,
    /// Most one-time prekeys one device may hold.
    pub prekeys_per_device_max: u32,
    /// Most entries one device mailbox may hold.
    pub mailbox_depth_max: u32,
    /// Most bytes (body + header of each entry) one device mailbox may
    /// hold; beyond, `mailbox_full`.
    pub mailbox_bytes_max: u64,
    /// Most entries one source (a local account, or a remote relay for
    /// federated mail) may have waiting in one device mailbox; beyond,
    /// `mailbox_quota`, while other sources still get through.
    pub mailbox_per_source_max: u32,
    /// Most bytes one source may have waiting in one device mailbox.
    pub mailbox_per_source_bytes_max: u64,
    /// Keys what the store keeps about senders (see [`crate::secret`]).
    /// The default is a fixed, public value for tests and simulations: a
    /// real relay sets its own (the node reads `<data-dir>/store.key`).
    pub store_secret: StoreSecret,
    /// Most devices per account.
    pub devices_per_account_max: u32,
    /// How long an outbox entry handed to the federation stays leased before
    /// it is offered again (covers a crash mid-delivery).
    pub outbox_lease_ms: u64,
    /// First retry delay of an outbox entry.
    pub outbox_backoff_base_ms: u64,
    /// Longest retry delay of an outbox entry.
    pub outbox_backoff_max_ms: u64,
    /// Bounds on outbox entries and destination relays, per account and in
    /// total (see [`crate::outbox_budget`]).
    pub outbox_limits: crate::outbox_budget::OutboxLimits,
    /// How many one-time prekeys bundle requests may take, per requester
    /// and device and per device ([`crate::prekey_budget`]).
    pub prekey_budget: PrekeyBudgetConfig,
}

impl Config {
    /// Defaults for a relay called `name`: open registration, 15-minute access
    /// tokens (up to 100 000 cached for 30 s), 30-day refresh tokens, low water 20, 10 000 entries
    /// and 1 GiB per mailbox, a quarter of each per source, and the public
    /// test store secret.
    pub fn new(name: RelayName) -> Self {
        Config {
            name,
            registration: Registration::Open,
            access_token_ms: 15 * 60 * 1000,
            access_cache_max: 100_000,
            access_cache_ms: 30 * 1000,
            refresh_token_ms: 30 * 24 * 3600 * 1000,
            challenge_ms: 60 * 1000,
            link_ms: 10 * 60 * 1000,
            prekeys_low_water: 20,
            prekeys_per_device_max: ONE_TIME_PREKEYS_PER_DEVICE_MAX as u32,
            mailbox_depth_max: 10_000,
            mailbox_bytes_max: 1 << 30,
            // A quarter each: one source (or three) cannot fill a mailbox
            // and lock everyone else out.
            mailbox_per_source_max: 10_000 / 4,
            mailbox_per_source_bytes_max: (1 << 30) / 4,
            store_secret: StoreSecret::new([0; 32]),
            devices_per_account_max: DEVICES_PER_ACCOUNT_MAX as u32,
            outbox_lease_ms: 30 * 1000,
            outbox_backoff_base_ms: 1000,
            outbox_backoff_max_ms: 10 * 60 * 1000,
            outbox_limits: crate::outbox_budget::OutboxLimits::default(),
            prekey_budget: PrekeyBudgetConfig::default(),
        }
    }
}

/// Told about changes the relay's callers push to clients or peers. Called
/// after the change is committed; must not block (hand off to a channel).
///
/// One process: the gateway implements it to wake WebSocket sessions. Several
/// processes on one PostgreSQL: the node implements it with `NOTIFY`, and each
/// instance's listener wakes its own sessions.
pub trait Notifier: Send + Sync {
    /// A device mailbox got an entry with sequence number `seq`.
    fn mailbox(&self, _user: &Username, _device: DeviceId, _seq: u64) {}
    /// True if this notifier wants the new entries themselves
    /// ([`Notifier::envelope`]); the relay then keeps a copy of each
    /// accepted message's body and headers until the store has answered.
    fn wants_envelopes(&self) -> bool {
        false
    }
    /// A device mailbox got this entry; `make` builds it (only call it for
    /// a device that has someone to push to). Without an override this is
    /// [`Notifier::mailbox`].
    fn envelope(
        &self,
        user: &Username,
        device: DeviceId,
        seq: u64,
        _make: &dyn Fn() -> crate::types::Envelope,
    ) {
        self.mailbox(user, device, seq);
    }
    /// The outbox for `relay` got entries.
    fn outbox(&self, _relay: &RelayName) {}
    /// A device's one-time prekey pool fell below the low-water mark.
    fn prekeys_low(&self, _user: &Username, _device: DeviceId, _remaining: u32) {}
    /// Access tokens were revoked (already dropped from this relay's token
    /// cache); other processes sharing the store should call
    /// [`Relay::forget_revoked`] with it.
    fn revoked(&self, _revocation: &Revocation) {}
}

/// Which cached access tokens a revocation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Every token of this session (logout).
    Session(String),
    /// Every token of this device (its refresh token was rotated).
    Device(Username, DeviceId),
    /// Every token (a reused refresh token revoked a session, which one is
    /// not known here).
    All,
}

/// A [`Notifier`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNotifier;

impl Notifier for NoNotifier {}

/// The randomness a relay draws tokens, nonces, codes and jitter from.
pub type Random = Box<dyn CryptoRng + Send>;

/// A device that presented a valid access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedDevice {
    /// The account.
    pub user: Username,
    /// The device.
    pub device: DeviceId,
    /// The login session (for logout).
    pub session: String,
    /// `Some(remaining)` when the device's one-time prekey pool is below the
    /// low-water mark: tell the client (`Courier-Prekeys-Low`).
    pub prekeys_low: Option<u32>,
}

/// The relay's logic. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Relay {
    pub(crate) config: Config,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Mutex<Random>,
    pub(crate) notifier: Arc<dyn Notifier>,
    pub(crate) access_cache: AccessCache,
    /// Which relays the outbox may take mail for.
    pub(crate) routes: Arc<dyn crate::routes::Routes>,
    pub(crate) outbox_budget: crate::outbox_budget::OutboxBudget,
    pub(crate) prekey_budget: PrekeyBudget,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay over `store`, reading time from `clock` and drawing
    /// randomness from `rng`, with no notifier.
    pub fn new(config: Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>, rng: Random) -> Self {
        let access_cache = AccessCache::new(config.access_cache_max, config.access_cache_ms);
        let prekey_budget = PrekeyBudget::new(config.prekey_budget);
        Relay {
            prekey_budget,
            config,
            access_cache,
            store,
            clock,
            rng: Mutex::new(rng),
            notifier: Arc::new(NoNotifier),
            routes: Arc::new(crate::routes::AnyRelay),
            outbox_budget: Default::default(),
        }
    }

    /// Sets who says which relays mail can be routed to (every relay
    /// without it: [`crate::routes::AnyRelay`]).
    pub fn with_routes(mut self, routes: Arc<dyn crate::routes::Routes>) -> Self {
        self.routes = routes;
        self
    }

    /// Sets the notifier.
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This relay's name.
    pub fn name(&self) -> &RelayName {
        &self.config.name
    }

    /// The store (for callers that need raw access, e.g. the node's admin CLI).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Now, from the injected clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(crate) fn random_bytes<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        // A poisoned lock only means another thread panicked mid-draw; the
        // generator state is still usable.
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.fill_bytes(&mut out);
        out
    }

    pub(crate) fn random_u64(&self) -> u64 {
        u64::from_le_bytes(self.random_bytes::<8>())
    }
}
