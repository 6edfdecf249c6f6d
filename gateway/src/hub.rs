//! The push hub: wakes the WebSocket connections of a device when something
//! is enqueued in its mailbox.
//!
//! The hub carries no envelopes, only the fact that a mailbox changed; each
//! connection then reads its mailbox from the store at its own pace. That is
//! what keeps a slow reader from growing memory (nothing queues in the hub)
//! and from losing anything (the mailbox is the queue). Every path that
//! enqueues — a local send, a federation delivery, a delivery-failure notice —
//! calls [`PushHub::notify`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use courier_protocol::{DeviceId, Username};
use tokio::sync::Notify;

type DeviceKey = (Username, DeviceId);

/// What the connections of one device share: the wake-up, and a pending
/// "prekeys low" notice (`NO_NOTICE` when none).
#[derive(Debug)]
struct Device {
    notify: Notify,
    prekeys_low: AtomicU32,
}

const NO_NOTICE: u32 = u32::MAX;

impl Default for Device {
    fn default() -> Self {
        Device {
            notify: Notify::new(),
            prekeys_low: AtomicU32::new(NO_NOTICE),
        }
    }
}

/// Per-device wake-ups for connected receivers. Cheap to clone.
#[derive(Clone, Default)]
pub struct PushHub {
    devices: Arc<Mutex<HashMap<DeviceKey, Arc<Device>>>>,
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
    /// envelopes. A device with no connection costs one map lookup.
    pub fn notify(&self, user: &Username, device: DeviceId) {
        // Woken under the lock (cheap: it only marks waiters) so that the
        // reference count `Subscription::drop` reads is never inflated.
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = devices.get(&(user.clone(), device)) {
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
    /// returned [`Subscription`] drops.
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
        }
    }

    /// How many distinct devices have at least one connection.
    pub fn devices_connected(&self) -> usize {
        self.devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A connection's registration with the [`PushHub`].
pub struct Subscription {
    hub: PushHub,
    key: DeviceKey,
    device: Arc<Device>,
}

impl Subscription {
    /// The wake-up shared by the device's connections. Create and `enable` a
    /// `notified()` future *before* reading the mailbox so that an enqueue
    /// between the read and the wait is not missed.
    pub fn notify(&self) -> &Notify {
        &self.device.notify
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
        hub.notify(&alice(), DeviceId(1));
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
        // Notifying a device nobody listens to is a no-op.
        hub.notify(&alice(), DeviceId(1));
    }
}
