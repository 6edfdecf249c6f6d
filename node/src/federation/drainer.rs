//! Drives the relay's outbox delivery ([`drain_worker`]) with tokio: wakes on
//! new outbox entries and on due retries, runs a few workers per
//! destination relay, and expires entries past their deadline (each with a
//! delivery-failure notice to the sender).
//!
//! When to do which is [`DrainScheduler`]'s (relay, sans-IO); this module
//! carries its actions out and tells it what happened.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use courier_protocol::{DeviceId, RelayName, Username};
use courier_relay::drain_scheduler::{DrainSchedule, DrainScheduler, perform};
use courier_relay::federation::{Federation, drain_worker};
use courier_relay::{Notifier, Relay};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Settings of the outbox drainer.
#[derive(Debug, Clone)]
pub struct DrainerConfig {
    /// Entries taken per round (at most `BATCH_ENVELOPES_MAX`).
    pub batch_max: u32,
    /// Concurrent rounds per destination while it has a backlog (batches in
    /// flight to one peer).
    pub workers_per_destination: usize,
    /// Longest sleep between looks at the outbox when nothing wakes us.
    pub idle_poll: Duration,
    /// How often expired entries are turned into failure notices.
    pub expire_every: Duration,
    /// Most due entries one look at the outbox reads (over all
    /// destinations, earliest due first): the look costs this much however
    /// large the outbox is.
    pub due_entries_max: u32,
    /// Most destinations one look at the outbox starts rounds for.
    pub due_destinations_max: u32,
    /// How often the outbox totals the send path's limits count against
    /// are re-read from the store.
    pub budget_sync_every: Duration,
    /// Shortest time between two looks at the outbox while every woken
    /// destination already has a worker: those workers take the new
    /// entries themselves, and a relay accepting thousands of messages a
    /// second would otherwise look once per accept.
    pub scan_gap: Duration,
}

impl Default for DrainerConfig {
    /// [`DrainSchedule::default`], the one set of shipped values.
    fn default() -> Self {
        let d = DrainSchedule::default();
        let ms = Duration::from_millis;
        DrainerConfig {
            batch_max: d.batch_max,
            workers_per_destination: d.workers_per_destination,
            idle_poll: ms(d.idle_poll_ms),
            expire_every: ms(d.expire_every_ms),
            due_entries_max: d.due_entries_max,
            due_destinations_max: d.due_destinations_max,
            budget_sync_every: ms(d.budget_sync_every_ms),
            scan_gap: ms(d.scan_gap_ms),
        }
    }
}

impl DrainerConfig {
    /// The scheduler's settings, in milliseconds.
    pub fn schedule(&self) -> DrainSchedule {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        DrainSchedule {
            batch_max: self.batch_max,
            workers_per_destination: self.workers_per_destination,
            idle_poll_ms: ms(self.idle_poll),
            expire_every_ms: ms(self.expire_every),
            budget_sync_every_ms: ms(self.budget_sync_every),
            scan_gap_ms: ms(self.scan_gap),
            due_entries_max: self.due_entries_max,
            due_destinations_max: self.due_destinations_max,
        }
    }
}

/// What wakes the drainer: a wake-up, and the destinations that got
/// outbox entries since the drainer last looked.
#[derive(Default)]
pub struct OutboxWake {
    notify: Notify,
    woken: Mutex<HashSet<RelayName>>,
}

impl OutboxWake {
    /// Notes that `relay` has new outbox entries and wakes the drainer.
    pub fn wake(&self, relay: &RelayName) {
        {
            let mut woken = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
            if !woken.contains(relay) {
                woken.insert(relay.clone());
            }
        }
        self.notify.notify_one();
    }

    fn take(&self) -> HashSet<RelayName> {
        std::mem::take(&mut *self.woken.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A [`Notifier`] that wakes the drainer when the outbox gets entries and
/// passes everything else to the notifier it wraps (the gateway's push hub).
pub struct OutboxNotifier {
    inner: Arc<dyn Notifier>,
    wake: Arc<OutboxWake>,
}

impl OutboxNotifier {
    /// Wraps `inner`; `wake` is the drainer's [`Drainer::waker`].
    pub fn new(inner: Arc<dyn Notifier>, wake: Arc<OutboxWake>) -> Self {
        OutboxNotifier { inner, wake }
    }
}

impl Notifier for OutboxNotifier {
    fn mailbox(&self, user: &Username, device: DeviceId, seq: u64) {
        self.inner.mailbox(user, device, seq);
    }

    fn wants_envelopes(&self) -> bool {
        self.inner.wants_envelopes()
    }

    fn envelope(
        &self,
        user: &Username,
        device: DeviceId,
        seq: u64,
        make: &dyn Fn() -> courier_relay::types::Envelope,
    ) {
        self.inner.envelope(user, device, seq, make);
    }

    fn outbox(&self, relay: &RelayName) {
        self.inner.outbox(relay);
        self.wake.wake(relay);
    }

    fn prekeys_low(&self, user: &Username, device: DeviceId, remaining: u32) {
        self.inner.prekeys_low(user, device, remaining);
    }

    fn revoked(&self, revocation: &courier_relay::Revocation) {
        self.inner.revoked(revocation);
    }
}

/// The running drainer.
pub struct Drainer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drainer {
    /// A waker to hand to [`OutboxNotifier::new`] before building the relay.
    pub fn waker() -> Arc<OutboxWake> {
        Arc::new(OutboxWake::default())
    }

    /// Starts draining `relay`'s outbox through `federation`.
    pub fn spawn(
        relay: Arc<Relay>,
        federation: Arc<dyn Federation>,
        wake: Arc<OutboxWake>,
        config: DrainerConfig,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(relay, federation, wake, config, stopped));
        Drainer { stop, task }
    }

    /// Stops after the rounds in flight finish (their entries are settled
    /// or, if cut short, offered again after their lease).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    relay: Arc<Relay>,
    federation: Arc<dyn Federation>,
    wake: Arc<OutboxWake>,
    config: DrainerConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let mut workers: JoinSet<RelayName> = JoinSet::new();
    let mut schedule = DrainScheduler::new(config.schedule(), relay.now_ms());
    loop {
        if *stopped.borrow() {
            break;
        }
        schedule.woken(&wake.take());
        while let Some(action) = schedule.poll_action(relay.now_ms()) {
            let done = perform(&relay, &mut schedule, action, relay.now_ms()).await;
            if let Some(e) = &done.error {
                tracing::warn!(error = %e, ?action, "outbox drain action failed");
            }
            if done.expired > 0 {
                tracing::info!(
                    expired = done.expired,
                    "outbox entries expired; senders notified"
                );
            }
            for dest in done.start {
                workers.spawn(worker(
                    relay.clone(),
                    federation.clone(),
                    dest,
                    config.batch_max,
                ));
            }
        }
        let now = relay.now_ms();
        let sleep = Duration::from_millis(schedule.poll_timeout(now).saturating_sub(now).max(1));
        tokio::select! {
            _ = wake.notify.notified() => {}
            _ = tokio::time::sleep(sleep) => schedule.timer_fired(relay.now_ms()),
            Some(done) = workers.join_next(), if !workers.is_empty() => {
                schedule.worker_finished(done.ok().as_ref());
            }
            _ = stopped.changed() => {}
        }
    }
    while workers.join_next().await.is_some() {}
}

/// Drains `dest` round after round while rounds come back full and answered.
async fn worker(
    relay: Arc<Relay>,
    federation: Arc<dyn Federation>,
    dest: RelayName,
    batch_max: u32,
) -> RelayName {
    match drain_worker(&relay, federation.as_ref(), &dest, batch_max).await {
        Ok(report) => {
            if let Some(e) = &report.error {
                tracing::debug!(%dest, error = %e, retried = report.retried, "delivery failed; backing off");
            }
        }
        Err(e) => tracing::warn!(%dest, error = %e, "outbox round failed"),
    }
    dest
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use courier_protocol::{
        AckStatus, Address, BundleRequest, BundleResponse, Bytes, DeliveryAcks, DeliveryBatch,
        EnvelopeAck, EnvelopeId, OutgoingMessage, RecipientEntry,
    };
    use courier_relay::federation::FederationError;
    use courier_relay::{MemoryStore, NoNotifier, SystemClock};
    use rand::SeedableRng;
    use tokio::sync::Semaphore;

    use super::super::tests::{name, register};
    use super::*;

    /// Holds every delivery until the test lets one through, and records
    /// what it delivered.
    struct Gated {
        gate: Semaphore,
        entered: Notify,
        delivered: StdMutex<Vec<EnvelopeId>>,
    }

    #[async_trait::async_trait]
    impl Federation for Gated {
        async fn deliver(
            &self,
            _dest: &RelayName,
            batch: DeliveryBatch,
        ) -> Result<DeliveryAcks, FederationError> {
            self.entered.notify_one();
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
            let ids: Vec<EnvelopeId> = batch.envelopes.iter().map(|e| e.id).collect();
            self.delivered.lock().unwrap().extend(&ids);
            Ok(DeliveryAcks {
                acks: ids
                    .into_iter()
                    .map(|id| EnvelopeAck {
                        id,
                        status: AckStatus::Accepted,
                    })
                    .collect(),
            })
        }

        async fn fetch_bundle(
            &self,
            dest: &RelayName,
            _request: BundleRequest,
        ) -> Result<BundleResponse, FederationError> {
            Err(FederationError::UnknownRelay(dest.clone()))
        }
    }

    fn message(n: u8) -> OutgoingMessage {
        OutgoingMessage {
            id: EnvelopeId::new(1_800_000_000_000, [n; 10]),
            body: Bytes::from(vec![n; 16]),
            recipients: vec![RecipientEntry {
                to: Address::parse("bob@relay-b.example").unwrap(),
                device: DeviceId(1),
                header: Bytes::from(vec![n; 8]),
            }],
            ttl_secs: 3600,
        }
    }

    /// A message that arrives while its destination's worker is mid-round
    /// is not left for the idle poll or the scan gap (both an hour here):
    /// the worker's end makes the drainer look again at once.
    #[tokio::test]
    async fn entry_woken_during_a_round_leaves_when_that_round_ends() {
        let wake = Drainer::waker();
        let relay = Arc::new(
            Relay::new(
                courier_relay::Config::new(name("relay-a.example")),
                Arc::new(MemoryStore::new()),
                Arc::new(SystemClock),
                Box::new(rand::rngs::StdRng::seed_from_u64(7)),
            )
            .with_notifier(Arc::new(OutboxNotifier::new(
                Arc::new(NoNotifier),
                wake.clone(),
            ))),
        );
        let alice = register(relay.store().as_ref(), relay.name(), "alice").await;
        let federation = Arc::new(Gated {
            gate: Semaphore::new(0),
            entered: Notify::new(),
            delivered: StdMutex::new(Vec::new()),
        });
        let hour = Duration::from_secs(3600);
        let drainer = Drainer::spawn(
            relay.clone(),
            federation.clone(),
            wake,
            DrainerConfig {
                idle_poll: hour,
                scan_gap: hour,
                ..DrainerConfig::default()
            },
        );
        let delivered = |n: usize| {
            let federation = federation.clone();
            async move {
                for _ in 0..500 {
                    if federation.delivered.lock().unwrap().len() >= n {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                false
            }
        };
        let first = relay.accept_message(&alice, message(1)).await.unwrap();
        // The first round has taken its entry and is held at the gate.
        tokio::time::timeout(Duration::from_secs(5), federation.entered.notified())
            .await
            .expect("the first message was looked at at once");
        let second = relay.accept_message(&alice, message(2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        federation.gate.add_permits(2);
        assert!(delivered(2).await, "the second entry waited for a timer");
        assert_eq!(
            *federation.delivered.lock().unwrap(),
            vec![first.id, second.id]
        );
        drainer.stop().await;
    }
}
