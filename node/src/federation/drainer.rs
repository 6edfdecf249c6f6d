//! Drives the relay's outbox delivery ([`drain_once`]) with tokio: wakes on
//! new outbox entries and on due retries, runs a few workers per
//! destination relay, and expires entries past their deadline (each with a
//! delivery-failure notice to the sender).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier_protocol::{DeviceId, RelayName, Username};
use courier_relay::federation::{Federation, drain_once};
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
}

impl Default for DrainerConfig {
    fn default() -> Self {
        DrainerConfig {
            batch_max: 256,
            // Each round waits for two commits here and one at the peer;
            // 4 rounds in flight left the outbox behind A's accept rate
            // (docs/performance.md, federation), 8 keep up.
            workers_per_destination: 8,
            idle_poll: Duration::from_millis(500),
            expire_every: Duration::from_secs(5),
            due_entries_max: 4096,
            due_destinations_max: 64,
            budget_sync_every: Duration::from_secs(60),
        }
    }
}

/// A [`Notifier`] that wakes the drainer when the outbox gets entries and
/// passes everything else to the notifier it wraps (the gateway's push hub).
pub struct OutboxNotifier {
    inner: Arc<dyn Notifier>,
    wake: Arc<Notify>,
}

impl OutboxNotifier {
    /// Wraps `inner`; `wake` is the drainer's [`Drainer::waker`].
    pub fn new(inner: Arc<dyn Notifier>, wake: Arc<Notify>) -> Self {
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
        self.wake.notify_one();
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
    pub fn waker() -> Arc<Notify> {
        Arc::new(Notify::new())
    }

    /// Starts draining `relay`'s outbox through `federation`.
    pub fn spawn(
        relay: Arc<Relay>,
        federation: Arc<dyn Federation>,
        wake: Arc<Notify>,
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
    wake: Arc<Notify>,
    config: DrainerConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let mut workers: JoinSet<RelayName> = JoinSet::new();
    let mut active: HashMap<RelayName, usize> = HashMap::new();
    let mut last_expire = tokio::time::Instant::now();
    // Due at once: the first pass counts what is already in the outbox.
    let mut last_sync: Option<tokio::time::Instant> = None;
    loop {
        if *stopped.borrow() {
            break;
        }
        if last_sync.is_none_or(|t| t.elapsed() >= config.budget_sync_every) {
            last_sync = Some(tokio::time::Instant::now());
            if let Err(e) = relay.outbox_budget_sync().await {
                tracing::warn!(error = %e, "cannot count the outbox");
            }
        }
        if last_expire.elapsed() >= config.expire_every {
            last_expire = tokio::time::Instant::now();
            match relay.outbox_expire().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "outbox entries expired; senders notified"),
                Err(e) => tracing::warn!(error = %e, "outbox expiry failed"),
            }
        }
        let mut sleep = config.idle_poll;
        let now = relay.now_ms();
        // A bounded, due-ordered look (not every destination every round):
        // a backlog for thousands of unreachable relays costs nothing
        // until its entries fall due.
        match relay
            .store()
            .outbox_due(now, config.due_entries_max, config.due_destinations_max)
            .await
        {
            Ok(due) => {
                if let Some(next) = due.next_due_ms {
                    sleep = sleep.min(Duration::from_millis(next.saturating_sub(now)));
                }
                for d in due.destinations {
                    let running = active.get(&d.relay).copied().unwrap_or(0);
                    let wanted = (d.pending.div_ceil(u64::from(config.batch_max.max(1))) as usize)
                        .clamp(1, config.workers_per_destination.max(1));
                    for _ in running..wanted {
                        *active.entry(d.relay.clone()).or_default() += 1;
                        workers.spawn(worker(
                            relay.clone(),
                            federation.clone(),
                            d.relay.clone(),
                            config.batch_max,
                        ));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep.max(Duration::from_millis(1))) => {}
            Some(done) = workers.join_next(), if !workers.is_empty() => {
                if let Ok(dest) = done
                    && let Some(n) = active.get_mut(&dest)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        active.remove(&dest);
                    }
                }
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
    loop {
        match drain_once(&relay, federation.as_ref(), &dest, batch_max).await {
            Ok(report) => {
                if let Some(e) = &report.error {
                    tracing::debug!(%dest, error = %e, retried = report.retried, "delivery failed; backing off");
                    break;
                }
                if report.taken < batch_max {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(%dest, error = %e, "outbox round failed");
                break;
            }
        }
    }
    dest
}
