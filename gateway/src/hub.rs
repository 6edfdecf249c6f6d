//! The push hub: wakes the WebSocket connections of a device when something
//! is enqueued in its mailbox.
//!
//! The mailbox in the store is the queue; the hub only says that it grew.
//! Each connection reads its mailbox at its own pace, which is what keeps a
//! slow reader from growing memory and from losing anything. As a shortcut
//! the hub also keeps, per connected device, the last few entries the relay
//! handed it with the notification ([`PushHub::envelope`], bounded by count
//! and bytes): a connection that is caught up pushes those without reading
//! the store, as long as they continue exactly where it is (`seq == sent +
//! 1`, [`Catchup::Run`]). The relay hands over each mailbox's entries in
//! seq order (the store calls it on its commit path, in commit order), so
//! when the next entry is missing ([`Catchup::Gap`]) it is not coming —
//! evicted, too big, a notice that came without its entry, an enqueue in
//! another process — and the connection reads the store. Every path that
//! enqueues — a local send, a federation delivery, a delivery-failure
//! notice — notifies.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use courier_protocol::api::Envelope;
use courier_protocol::{DeviceId, Username};
use courier_relay::{AuthedDevice, Revocation};
use tokio::sync::Notify;

type DeviceKey = (Username, DeviceId);

/// Most entries kept per device.
const RECENT_MAX: usize = 256;
/// Most bytes of entries (header + body) kept per device.
const RECENT_BYTES_MAX: usize = 64 * 1024;

/// What the connections of one device share: the wake-up, a pending
/// "prekeys low" notice (`NO_NOTICE` when none), the newest seq notified,
/// and the recent entries handed over with their notification.
#[derive(Debug)]
struct Device {
    notify: Notify,
    prekeys_low: AtomicU32,
    newest: AtomicU64,
    recent: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    entries: BTreeMap<u64, Arc<Envelope>>,
    bytes: usize,
}

impl Recent {
    fn insert(&mut self, envelope: Envelope) {
        let size = envelope_bytes(&envelope);
        if size > RECENT_BYTES_MAX {
            return;
        }
        if let Some(old) = self.entries.insert(envelope.seq, Arc::new(envelope)) {
            self.bytes -= envelope_bytes(&old);
        }
        self.bytes += size;
        while self.entries.len() > RECENT_MAX || self.bytes > RECENT_BYTES_MAX {
            match self.entries.pop_first() {
                Some((_, old)) => self.bytes -= envelope_bytes(&old),
                None => break,
            }
        }
    }

    fn forget_upto(&mut self, seq: u64) {
        while let Some(entry) = self.entries.first_entry() {
            if *entry.key() > seq {
                break;
            }
            self.bytes -= envelope_bytes(entry.get());
            entry.remove();
        }
    }
}

fn envelope_bytes(envelope: &Envelope) -> usize {
    envelope.header.len() + envelope.body.len()
}

const NO_NOTICE: u32 = u32::MAX;

impl Default for Device {
    fn default() -> Self {
        Device {
            notify: Notify::new(),
            prekeys_low: AtomicU32::new(NO_NOTICE),
            newest: AtomicU64::new(0),
            recent: Mutex::new(Recent::default()),
        }
    }
}

/// Per-device wake-ups for connected receivers. Cheap to clone.
#[derive(Clone, Default)]
pub struct PushHub {
    devices: Arc<Mutex<HashMap<DeviceKey, Arc<Device>>>>,
    connections: Arc<Mutex<Registry>>,
}

/// Most live connections, per device, per account and in total (one
/// process; `[websocket]` in `courier.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Per device.
    pub per_device: usize,
    /// Per account, over all its devices.
    pub per_account: usize,
    /// In total.
    pub total: usize,
}

impl Caps {
    /// No limit at all.
    pub const NONE: Caps = Caps {
        per_device: usize::MAX,
        per_account: usize::MAX,
        total: usize::MAX,
    };
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The device has [`Caps::per_device`] connections.
    Device,
    /// The account has [`Caps::per_account`] connections.
    Account,
    /// The relay has [`Caps::total`] connections.
    Relay,
}

/// Live connections: counted for the caps, and indexed by login session so
/// a revocation reaches exactly the connections it concerns.
#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    live: HashMap<u64, Live>,
    accounts: HashMap<Username, usize>,
    devices: HashMap<DeviceKey, usize>,
    sessions: HashMap<String, Vec<u64>>,
}

#[derive(Debug)]
struct Live {
    key: DeviceKey,
    session: String,
    recheck: Arc<Notify>,
}

impl Registry {
    fn admit(&mut self, device: &AuthedDevice, caps: Caps) -> Result<(u64, Arc<Notify>), Refused> {
        let key = (device.user.clone(), device.device);
        if self.live.len() >= caps.total {
            return Err(Refused::Relay);
        }
        if self.accounts.get(&device.user).copied().unwrap_or(0) >= caps.per_account {
            return Err(Refused::Account);
        }
        if self.devices.get(&key).copied().unwrap_or(0) >= caps.per_device {
            return Err(Refused::Device);
        }
        self.next_id += 1;
        let id = self.next_id;
        let recheck = Arc::new(Notify::new());
        *self.accounts.entry(device.user.clone()).or_default() += 1;
        *self.devices.entry(key.clone()).or_default() += 1;
        self.sessions
            .entry(device.session.clone())
            .or_default()
            .push(id);
        self.live.insert(
            id,
            Live {
                key,
                session: device.session.clone(),
                recheck: recheck.clone(),
            },
        );
        Ok((id, recheck))
    }

    fn leave(&mut self, id: u64) {
        let Some(live) = self.live.remove(&id) else {
            return;
        };
        fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        decrement(&mut self.accounts, &live.key.0);
        decrement(&mut self.devices, &live.key);
        if let Some(ids) = self.sessions.get_mut(&live.session) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.sessions.remove(&live.session);
            }
        }
    }
}

impl std::fmt::Debug for PushHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushHub")
            .field("devices", &self.devices_connected())
            .finish()
    }
}

impl PushHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells every connection of `(user, device)` that its mailbox has new
    /// envelopes, up to `seq`. A device with no connection costs one map
    /// lookup.
    pub fn notify(&self, user: &Username, device: DeviceId, seq: u64) {
        // Woken under the lock (cheap: it only marks waiters) so that the
        // reference count `Subscription::drop` reads is never inflated.
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = devices.get(&(user.clone(), device)) {
            entry.newest.fetch_max(seq, Ordering::SeqCst);
            entry.notify.notify_waiters();
        }
    }

    /// Like [`PushHub::notify`], handing over the new entry so a caught-up
    /// connection can push it without reading the store. `make` is only
    /// called when the device has a connection.
    pub fn envelope(
        &self,
        user: &Username,
        device: DeviceId,
        seq: u64,
        make: &dyn Fn() -> Envelope,
    ) {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = devices.get(&(user.clone(), device)) {
            // Stored before `newest` moves, so a connection that sees the
            // new `newest` also finds the entry (or a gap, and reads).
            entry
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(make());
            entry.newest.fetch_max(seq, Ordering::SeqCst);
            entry.notify.notify_waiters();
        }
    }

    /// Wakes every connection, each to re-read its mailbox from the store
    /// (after wake-ups from elsewhere may have been lost).
    pub fn wake_all(&self) {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in devices.values() {
            entry.notify.notify_waiters();
        }
    }

    /// Tells the connections of `(user, device)` that only `remaining`
    /// one-time prekeys are left; they send a `prekeys_low` frame.
    pub fn prekeys_low(&self, user: &Username, device: DeviceId, remaining: u32) {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = devices.get(&(user.clone(), device)) {
            entry
                .prekeys_low
                .store(remaining.min(NO_NOTICE - 1), Ordering::SeqCst);
            entry.notify.notify_waiters();
        }
    }

    /// Registers a connection of `(user, device)`; it is unregistered when the
    /// returned [`Subscription`] drops. Counted against no cap and reached by
    /// no revocation: connections of clients use [`PushHub::admit`].
    pub fn subscribe(&self, user: Username, device: DeviceId) -> Subscription {
        let key = (user, device);
        let device = self
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        Subscription {
            hub: self.clone(),
            key,
            device,
            admission: None,
        }
    }

    /// Registers a connection of `device` (its login session included) if
    /// the device, its account and the relay are under `caps`. The
    /// connection's [`Subscription::recheck`] is woken when its session or
    /// device is revoked ([`PushHub::revoked`]).
    pub fn admit(&self, device: &AuthedDevice, caps: Caps) -> Result<Subscription, Refused> {
        let (id, recheck) = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(device, caps)?;
        let mut subscription = self.subscribe(device.user.clone(), device.device);
        subscription.admission = Some(Admission { id, recheck });
        Ok(subscription)
    }

    /// Tells the connections a revocation may concern to check their access
    /// token again (the relay has already dropped the revoked tokens from
    /// its cache, so the check reads the store): those whose token is gone
    /// close, a connection that already uses the session's new token (after
    /// a refresh) stays. A lookup in the session index, not a scan, except
    /// for a whole device or everything.
    pub fn revoked(&self, revocation: &Revocation) {
        let registry = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let wake = |id: &u64| {
            if let Some(live) = registry.live.get(id) {
                // `notify_one` keeps a permit for a connection that is busy
                // writing, so the check is never missed.
                live.recheck.notify_one();
            }
        };
        match revocation {
            Revocation::Session(session) => {
                registry
                    .sessions
                    .get(session)
                    .into_iter()
                    .flatten()
                    .for_each(wake);
            }
            Revocation::Device(user, device) => registry
                .live
                .iter()
                .filter(|(_, live)| live.key.0 == *user && live.key.1 == *device)
                .for_each(|(id, _)| wake(id)),
            Revocation::All => registry.live.keys().for_each(wake),
        }
    }

    /// How many connections were admitted and are still open.
    pub fn connections(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .len()
    }

    /// How many distinct devices have at least one connection.
    pub fn devices_connected(&self) -> usize {
        self.devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// What [`Subscription::recent_after`] found.
#[derive(Debug)]
pub enum Catchup {
    /// The entries right after the connection's last seq, in order.
    /// `complete` when they reach the newest seq notified; otherwise more
    /// follow (the limit was reached, or a gap comes after them).
    Run {
        /// The entries, gapless from the connection's last seq + 1.
        entries: Vec<Arc<Envelope>>,
        /// Nothing newer was notified.
        complete: bool,
    },
    /// Something newer was notified, but the next entry is not here (it was
    /// evicted or too big, came without its entry, or was enqueued by
    /// another process): read the store.
    Gap,
    /// Nothing newer was notified: only the store can tell (a new
    /// connection, a wake-up that came without entries).
    Unknown,
}

/// A connection's registration with the [`PushHub`].
pub struct Subscription {
    hub: PushHub,
    key: DeviceKey,
    device: Arc<Device>,
    admission: Option<Admission>,
}

/// A connection counted against the caps and reached by revocations.
struct Admission {
    id: u64,
    recheck: Arc<Notify>,
}

impl Subscription {
    /// The wake-up shared by the device's connections. Create and `enable` a
    /// `notified()` future *before* reading the mailbox so that an enqueue
    /// between the read and the wait is not missed.
    pub fn notify(&self) -> &Notify {
        &self.device.notify
    }

    /// What the hub holds for a connection that has pushed everything up
    /// to `sent`: the entries right after it (`seq == sent + 1, sent + 2,
    /// …`, at most `limit`), a gap, or nothing it knows of. A connection
    /// that is the device's only one drops what it takes (nobody else will
    /// want it).
    pub fn recent_after(&self, sent: u64, limit: usize) -> Catchup {
        let newest = self.device.newest.load(Ordering::SeqCst);
        if newest <= sent || limit == 0 {
            return Catchup::Unknown;
        }
        let mut recent = self
            .device
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut entries = Vec::new();
        let mut next = sent + 1;
        for (&seq, envelope) in recent.entries.range(next..) {
            if seq != next || entries.len() == limit {
                break;
            }
            entries.push(Arc::clone(envelope));
            next += 1;
        }
        if entries.is_empty() {
            return Catchup::Gap;
        }
        // Two holders means the hub's map and this subscription.
        if Arc::strong_count(&self.device) <= 2 {
            recent.forget_upto(next - 1);
        }
        Catchup::Run {
            entries,
            complete: next > newest,
        }
    }

    /// Woken (with a stored permit) when a revocation may concern this
    /// connection: it must check its access token again.
    pub async fn recheck(&self) {
        match &self.admission {
            Some(admission) => admission.recheck.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Takes the pending "prekeys low" notice, if any.
    pub fn take_prekeys_low(&self) -> Option<u32> {
        match self.device.prekeys_low.swap(NO_NOTICE, Ordering::SeqCst) {
            NO_NOTICE => None,
            remaining => Some(remaining),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(admission) = &self.admission {
            self.hub
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .leave(admission.id);
        }
        let mut devices = self
            .hub
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Two holders left means the map and this subscription: the last one.
        if Arc::strong_count(&self.device) <= 2 {
            devices.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;

    fn alice() -> Username {
        Username::parse("alice").unwrap()
    }

    #[tokio::test]
    async fn notify_wakes_a_waiting_subscriber() {
        let hub = PushHub::new();
        let sub = hub.subscribe(alice(), DeviceId(1));
        let notified = sub.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        hub.notify(&alice(), DeviceId(1), 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), notified)
            .await
            .expect("woken");
    }

    #[test]
    fn last_subscription_unregisters_the_device() {
        let hub = PushHub::new();
        let a = hub.subscribe(alice(), DeviceId(1));
        let b = hub.subscribe(alice(), DeviceId(1));
        assert_eq!(hub.devices_connected(), 1);
        drop(a);
        assert_eq!(hub.devices_connected(), 1);
        drop(b);
        assert_eq!(hub.devices_connected(), 0);
        // Notifying a device nobody listens to is a no-op, and builds nothing.
        hub.notify(&alice(), DeviceId(1), 1);
        hub.envelope(&alice(), DeviceId(1), 1, &|| unreachable!("nobody listens"));
    }

    fn authed(user: &str, device: u32, session: &str) -> AuthedDevice {
        AuthedDevice {
            user: Username::parse(user).unwrap(),
            device: DeviceId(device),
            session: session.to_owned(),
            prekeys_low: None,
        }
    }

    #[test]
    fn connections_are_capped_per_device_account_and_relay_and_freed_on_drop() {
        let hub = PushHub::new();
        let caps = Caps {
            per_device: 2,
            per_account: 3,
            total: 4,
        };
        let a1 = hub.admit(&authed("alice", 1, "s1"), caps).unwrap();
        let _a2 = hub.admit(&authed("alice", 1, "s1"), caps).unwrap();
        assert_eq!(
            hub.admit(&authed("alice", 1, "s1"), caps).err(),
            Some(Refused::Device)
        );
        let _a3 = hub.admit(&authed("alice", 2, "s2"), caps).unwrap();
        assert_eq!(
            hub.admit(&authed("alice", 3, "s3"), caps).err(),
            Some(Refused::Account)
        );
        let _b1 = hub.admit(&authed("bob", 1, "s4"), caps).unwrap();
        assert_eq!(
            hub.admit(&authed("carol", 1, "s5"), caps).err(),
            Some(Refused::Relay)
        );
        drop(a1);
        assert_eq!(hub.connections(), 3);
        hub.admit(&authed("alice", 1, "s1"), caps).unwrap();
    }

    #[tokio::test]
    async fn a_revocation_wakes_exactly_the_connections_it_concerns() {
        let hub = PushHub::new();
        let a = hub.admit(&authed("alice", 1, "s1"), Caps::NONE).unwrap();
        let b = hub.admit(&authed("alice", 1, "s2"), Caps::NONE).unwrap();
        let c = hub.admit(&authed("bob", 1, "s3"), Caps::NONE).unwrap();
        let woken = |sub: &Subscription| sub.recheck().now_or_never().is_some();
        hub.revoked(&Revocation::Session("s1".into()));
        assert!(woken(&a), "its session");
        assert!(!woken(&b), "another session of the same device");
        assert!(!woken(&c));
        hub.revoked(&Revocation::Device(
            Username::parse("alice").unwrap(),
            DeviceId(1),
        ));
        assert!(woken(&a) && woken(&b) && !woken(&c));
        hub.revoked(&Revocation::All);
        assert!(woken(&a) && woken(&b) && woken(&c));
        // The permit was taken: nothing left to wake for.
        assert!(!woken(&a));
    }

    fn envelope(seq: u64, body: usize) -> Envelope {
        Envelope {
            seq,
            id: courier_protocol::EnvelopeId([seq as u8; 16]),
            origin: courier_protocol::RelayName::parse("relay.example").unwrap(),
            header: courier_protocol::Bytes(vec![1; 8]),
            body: courier_protocol::Bytes(vec![2; body]),
            received_ms: 1,
            expires_ms: 2,
            kind: courier_protocol::api::EnvelopeKind::Message,
        }
    }

    /// The seqs of a run, `Err("gap")` or `Err("unknown")`, and whether
    /// the run was complete.
    fn seqs(found: Catchup) -> Result<(Vec<u64>, bool), &'static str> {
        match found {
            Catchup::Run { entries, complete } => {
                Ok((entries.iter().map(|e| e.seq).collect(), complete))
            }
            Catchup::Gap => Err("gap"),
            Catchup::Unknown => Err("unknown"),
        }
    }

    #[test]
    fn recent_entries_serve_gapless_runs_and_report_gaps() {
        let hub = PushHub::new();
        let sub = hub.subscribe(alice(), DeviceId(1));
        let _other = hub.subscribe(alice(), DeviceId(1));
        assert_eq!(
            seqs(sub.recent_after(0, 10)),
            Err("unknown"),
            "nothing notified"
        );
        for seq in [5, 6, 7] {
            hub.envelope(&alice(), DeviceId(1), seq, &|| envelope(seq, 10));
        }
        assert_eq!(seqs(sub.recent_after(4, 10)), Ok((vec![5, 6, 7], true)));
        assert_eq!(seqs(sub.recent_after(5, 10)), Ok((vec![6, 7], true)));
        assert_eq!(seqs(sub.recent_after(7, 10)), Err("unknown"), "caught up");
        // Entry 4 was never handed over: from 3 there is a gap.
        assert_eq!(seqs(sub.recent_after(3, 10)), Err("gap"));
        // A window smaller than the run: the part that fits, more to come.
        assert_eq!(seqs(sub.recent_after(4, 2)), Ok((vec![5, 6], false)));
        // A notice without its entry (seq 8) leaves the run short of the
        // newest, and a gap after it.
        hub.notify(&alice(), DeviceId(1), 8);
        assert_eq!(seqs(sub.recent_after(4, 10)), Ok((vec![5, 6, 7], false)));
        hub.envelope(&alice(), DeviceId(1), 9, &|| envelope(9, 10));
        assert_eq!(
            seqs(sub.recent_after(7, 10)),
            Err("gap"),
            "8 is only in the store"
        );
        assert_eq!(seqs(sub.recent_after(8, 10)), Ok((vec![9], true)));
        // Handed over out of order (another store's commit order): a gap
        // until the late one arrives.
        hub.envelope(&alice(), DeviceId(1), 11, &|| envelope(11, 10));
        assert_eq!(seqs(sub.recent_after(9, 10)), Err("gap"));
        hub.envelope(&alice(), DeviceId(1), 10, &|| envelope(10, 10));
        assert_eq!(seqs(sub.recent_after(9, 10)), Ok((vec![10, 11], true)));
    }

    #[test]
    fn recent_entries_are_bounded_and_dropped_once_taken_by_the_only_connection() {
        let hub = PushHub::new();
        let sub = hub.subscribe(alice(), DeviceId(1));
        for seq in 1..=(RECENT_MAX as u64 + 10) {
            hub.envelope(&alice(), DeviceId(1), seq, &|| envelope(seq, 10));
        }
        {
            let recent = sub.device.recent.lock().unwrap();
            assert_eq!(recent.entries.len(), RECENT_MAX);
            assert_eq!(recent.entries.keys().next(), Some(&11));
        }
        // Big entries: the byte cap wins; one over the cap is never kept.
        let big = RECENT_MAX as u64 + 100;
        hub.envelope(&alice(), DeviceId(1), big, &|| {
            envelope(big, RECENT_BYTES_MAX / 2)
        });
        hub.envelope(&alice(), DeviceId(1), big + 1, &|| {
            envelope(big + 1, RECENT_BYTES_MAX / 2)
        });
        hub.envelope(&alice(), DeviceId(1), big + 2, &|| {
            envelope(big + 2, RECENT_BYTES_MAX + 1)
        });
        {
            let recent = sub.device.recent.lock().unwrap();
            assert!(recent.bytes <= RECENT_BYTES_MAX);
            assert!(!recent.entries.contains_key(&(big + 2)));
        }
        assert_eq!(
            seqs(sub.recent_after(big + 1, 10)),
            Err("gap"),
            "must come from the store"
        );
        hub.envelope(&alice(), DeviceId(1), big + 3, &|| envelope(big + 3, 10));
        assert_eq!(
            seqs(sub.recent_after(big + 2, 10)),
            Ok((vec![big + 3], true))
        );
        let recent = sub.device.recent.lock().unwrap();
        assert!(recent.entries.is_empty(), "the only connection took them");
        assert_eq!(recent.bytes, 0);
    }
}
