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
//! Revocations travel the same way: a logout, a refresh or a reused refresh
//! token in one process makes every other process drop the revoked access
//! tokens from its token cache at once, instead of trusting them for up to
//! `access_cache_ms`, and close its WebSockets that authenticated with them
//! (each connection of the session re-checks its token).
//!
//! Wake-ups are best effort: if the listener's connection drops, the
//! notifications in between are lost, so on reconnecting it wakes every
//! session it has (each re-reads its mailbox from the store) and empties
//! its token cache. Nothing is lost either way (the mailbox is the queue);
//! only the push may be late.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use courier_gateway::PushHub;
use courier_protocol::api::Envelope;
use courier_protocol::{DeviceId, RelayName, Username};
use courier_relay::{Notifier, Relay, Revocation};
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
    relay: Arc<OnceLock<Weak<Relay>>>,
}

impl PgNotifier {
    /// Gives the listener the relay built with this notifier, so it can
    /// apply other processes' revocations to its token cache.
    pub fn attach(&self, relay: &Arc<Relay>) {
        let _ = self.relay.set(Arc::downgrade(relay));
    }

    fn send(&self, message: Message) {
        let payload = format!("{} {}", self.instance, message.encode());
        if self.announce.try_send(payload).is_err() {
            metrics::counter!("courier_pg_wakeups_dropped_total").increment(1);
        }
    }

    fn announce(&self, user: &Username, device: DeviceId, seq: u64) {
        self.send(Message::Mail(user.clone(), device, seq));
    }
}

/// What one process tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Message {
    /// `m USER DEVICE SEQ`: a new mailbox entry.
    Mail(Username, DeviceId, u64),
    /// `r s SESSION`, `r d USER DEVICE`, `r a`: revoked access tokens.
    Revoked(Revocation),
}

impl Message {
    fn encode(&self) -> String {
        match self {
            Message::Mail(user, device, seq) => format!("m {user} {} {seq}", device.0),
            Message::Revoked(Revocation::Session(session)) => format!("r s {session}"),
            Message::Revoked(Revocation::Device(user, device)) => {
                format!("r d {user} {}", device.0)
            }
            Message::Revoked(Revocation::All) => "r a".to_owned(),
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

    fn revoked(&self, revocation: &Revocation) {
        self.inner.revoked(revocation);
        self.send(Message::Revoked(revocation.clone()));
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
    let relay = Arc::new(OnceLock::new());
    tokio::spawn(listen(listener, instance.clone(), hub, relay.clone()));
    let (tx, rx) = mpsc::channel(QUEUE_MAX);
    tokio::spawn(send(url.to_owned(), channel, rx));
    Ok(Arc::new(PgNotifier {
        inner,
        instance,
        announce: tx,
        relay,
    }))
}

/// Parses `INSTANCE MESSAGE` (see [`Message`]).
fn parse(payload: &str) -> Option<(&str, Message)> {
    let mut parts = payload.split(' ');
    let instance = parts.next()?;
    let user = |text: Option<&str>| Username::parse(text?).ok();
    let device = |text: Option<&str>| text?.parse().ok().map(DeviceId);
    let message = match (parts.next()?, parts.next()) {
        ("m", first) => Message::Mail(
            user(first)?,
            device(parts.next())?,
            parts.next()?.parse().ok()?,
        ),
        ("r", Some("s")) => {
            let session = parts.next()?;
            if session.is_empty() {
                return None;
            }
            Message::Revoked(Revocation::Session(session.to_owned()))
        }
        ("r", Some("d")) => Message::Revoked(Revocation::Device(
            user(parts.next())?,
            device(parts.next())?,
        )),
        ("r", Some("a")) => Message::Revoked(Revocation::All),
        _ => return None,
    };
    parts.next().is_none().then_some((instance, message))
}

async fn listen(
    mut listener: PgListener,
    instance: String,
    hub: PushHub,
    relay: Arc<OnceLock<Weak<Relay>>>,
) {
    let relay = || relay.get().and_then(Weak::upgrade);
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match parse(notification.payload()) {
                Some((from, _)) if from == instance => {}
                Some((_, Message::Mail(user, device, seq))) => hub.notify(&user, device, seq),
                Some((_, Message::Revoked(revocation))) => {
                    // Cache first, so the connections the hub then tells to
                    // re-check their token read the store.
                    if let Some(relay) = relay() {
                        relay.forget_revoked(&revocation);
                    }
                    hub.revoked(&revocation);
                }
                None => tracing::warn!(payload = notification.payload(), "bad wake-up payload"),
            },
            Ok(None) => {
                // The connection dropped (the next call reconnects):
                // whatever was announced meanwhile is lost, so every
                // session re-reads its mailbox and no cached token is
                // trusted without a store read.
                tracing::warn!("PostgreSQL wake-up listener reconnecting");
                hub.wake_all();
                if let Some(relay) = relay() {
                    relay.forget_revoked(&Revocation::All);
                }
                // A logout announced meanwhile must still close its
                // sockets here: every connection re-checks its token.
                hub.revoked(&Revocation::All);
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
    fn messages_round_trip_and_junk_does_not_parse() {
        let alice = Username::parse("alice").unwrap();
        for message in [
            Message::Mail(alice.clone(), DeviceId(2), 17),
            Message::Revoked(Revocation::Session("s-3_x".into())),
            Message::Revoked(Revocation::Device(alice, DeviceId(4))),
            Message::Revoked(Revocation::All),
        ] {
            let payload = format!("abc {}", message.encode());
            assert_eq!(parse(&payload), Some(("abc", message)), "{payload}");
        }
        for junk in [
            "",
            "abc",
            "abc m alice",
            "abc m alice x 1",
            "abc m alice 1 2 3",
            "abc m Al!ce 1 2",
            "abc r",
            "abc r s",
            "abc r d alice",
            "abc r a extra",
            "abc x 1",
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
