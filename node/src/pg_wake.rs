//! Wake-ups across `courier serve` processes that share one PostgreSQL.
//!
//! Each process pushes to its own WebSocket sessions through its own
//! [`PushHub`]; a message accepted by another process would otherwise reach
//! them only at their next store read. So every new mailbox entry is also
//! announced with `NOTIFY` on a channel of this relay's schema, and every
//! process `LISTEN`s there and wakes its own sessions. A process skips its
//! own announcements (they carry its random instance id): its hub already
//! heard them, with the entry itself.
//!
//! Wake-ups are best effort: if the listener's connection drops, the
//! notifications in between are lost, so on reconnecting it wakes every
//! session it has, and each re-reads its mailbox from the store. Nothing is
//! lost either way (the mailbox is the queue); only the push may be late.

use std::sync::Arc;
use std::time::Duration;

use courier_gateway::PushHub;
use courier_protocol::api::Envelope;
use courier_protocol::{DeviceId, RelayName, Username};
use courier_relay::Notifier;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgListener};
use tokio::sync::mpsc;

/// Announcements waiting to be sent; beyond this they are dropped (best
/// effort, see the module doc) rather than slowing down accepts.
const QUEUE_MAX: usize = 65_536;
/// Most announcements sent with one statement.
const BATCH_MAX: usize = 1_000;

/// The channel for a relay whose tables live in `schema` (`None`: the
/// connection's default). Channels are per database, not per schema, so
/// two relays sharing a database must not hear each other.
pub fn channel(schema: Option<&str>) -> String {
    let mut name = format!("courier_mailbox_{}", schema.unwrap_or("public"));
    // PostgreSQL identifiers stop at 63 bytes (schemas are ASCII); cut
    // here so LISTEN and pg_notify agree.
    name.truncate(63);
    name
}

/// A [`Notifier`] that passes everything to `inner` (this process's hub
/// and drainer) and also announces new mailbox entries to the other
/// processes.
pub struct PgNotifier {
    inner: Arc<dyn Notifier>,
    instance: String,
    announce: mpsc::Sender<String>,
}

impl PgNotifier {
    fn announce(&self, user: &Username, device: DeviceId, seq: u64) {
        let payload = format!("{} {} {} {}", self.instance, user, device.0, seq);
        if self.announce.try_send(payload).is_err() {
            metrics::counter!("courier_pg_wakeups_dropped_total").increment(1);
        }
    }
}

impl Notifier for PgNotifier {
    fn mailbox(&self, user: &Username, device: DeviceId, seq: u64) {
        self.inner.mailbox(user, device, seq);
        self.announce(user, device, seq);
    }

    fn wants_envelopes(&self) -> bool {
        self.inner.wants_envelopes()
    }

    fn envelope(&self, user: &Username, device: DeviceId, seq: u64, make: &dyn Fn() -> Envelope) {
        self.inner.envelope(user, device, seq, make);
        self.announce(user, device, seq);
    }

    fn outbox(&self, relay: &RelayName) {
        self.inner.outbox(relay);
    }

    fn prekeys_low(&self, user: &Username, device: DeviceId, remaining: u32) {
        self.inner.prekeys_low(user, device, remaining);
    }
}

/// Starts announcing and listening on `url`'s database for the relay in
/// `schema`; returns the notifier to build the relay with. Fails if the
/// listener cannot connect at start (the store just connected, so that is
/// a real problem); later connection losses are retried.
pub async fn start(
    url: &str,
    schema: Option<&str>,
    hub: PushHub,
    inner: Arc<dyn Notifier>,
) -> anyhow::Result<Arc<PgNotifier>> {
    let channel = channel(schema);
    let instance = format!("{:016x}", rand::random::<u64>());
    let mut listener = PgListener::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for wake-ups on PostgreSQL: {e}"))?;
    listener
        .listen(&channel)
        .await
        .map_err(|e| anyhow::anyhow!("cannot LISTEN on {channel}: {e}"))?;
    tokio::spawn(listen(listener, instance.clone(), hub));
    let (tx, rx) = mpsc::channel(QUEUE_MAX);
    tokio::spawn(send(url.to_owned(), channel, rx));
    Ok(Arc::new(PgNotifier {
        inner,
        instance,
        announce: tx,
    }))
}

/// Parses `instance user device seq`.
fn parse(payload: &str) -> Option<(&str, Username, DeviceId, u64)> {
    let mut parts = payload.split(' ');
    let instance = parts.next()?;
    let user = Username::parse(parts.next()?).ok()?;
    let device = DeviceId(parts.next()?.parse().ok()?);
    let seq = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((instance, user, device, seq))
}

async fn listen(mut listener: PgListener, instance: String, hub: PushHub) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match parse(notification.payload()) {
                Some((from, user, device, seq)) if from != instance => {
                    hub.notify(&user, device, seq);
                }
                Some(_) => {}
                None => tracing::warn!(payload = notification.payload(), "bad wake-up payload"),
            },
            Ok(None) => {
                // The connection dropped (the next call reconnects):
                // whatever was announced meanwhile is lost, so every
                // session re-reads its mailbox.
                tracing::warn!("PostgreSQL wake-up listener reconnecting");
                hub.wake_all();
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL wake-up listener failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn send(url: String, channel: String, mut rx: mpsc::Receiver<String>) {
    let mut conn: Option<PgConnection> = None;
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(payload) => batch.push(payload),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            match PgConnection::connect(&url).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot send wake-ups to PostgreSQL; dropping {}", batch.len());
                    batch.clear();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .bind(&channel)
                .bind(&batch)
                .execute(&mut *c)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "sending wake-ups failed; reconnecting");
                conn = None;
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_junk_does_not() {
        let (from, user, device, seq) = parse("abc alice 2 17").unwrap();
        assert_eq!(
            (from, user.as_str(), device, seq),
            ("abc", "alice", DeviceId(2), 17)
        );
        for junk in [
            "",
            "abc",
            "abc alice",
            "abc alice x 1",
            "abc alice 1 2 3",
            "abc Al!ce 1 2",
        ] {
            assert!(parse(junk).is_none(), "{junk:?}");
        }
    }

    #[test]
    fn relays_in_other_schemas_use_other_channels() {
        assert_ne!(channel(Some("a")), channel(Some("b")));
        assert_eq!(channel(None), "courier_mailbox_public");
        assert_eq!(channel(Some(&"s".repeat(100))).len(), 63);
    }
}
