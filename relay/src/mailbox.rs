//! Mailboxes: accepting messages (local and federated), fetching, acking,
//! expiry.

use std::collections::BTreeMap;

use courier_protocol::limits::{ACK_SEQS_MAX, FETCH_LIMIT_MAX, MESSAGE_TTL_SECS_MAX};
use courier_protocol::{
    Bytes, DeviceId, EnvelopeId, OutgoingMessage, RelayName, Username, Validate,
};

use crate::error::{RelayError, Result};
use crate::relay::{AuthedDevice, Notifier, Relay};
use crate::store::{
    AcceptOutcome, LocalRecipient, MailboxRef, NewMessage, PurgeReport, RemoteRecipients,
};
use crate::types::{
    AckResponse, AckStatus, Envelope, EnvelopeAck, EnvelopeKind, FedEnvelope, FedRecipient,
    FetchResponse,
};

/// Most header and body bytes one [`Relay::fetch`] returns (beyond its first
/// envelope): base64 and JSON framing of this much stay well under
/// `courier_protocol::limits::FETCH_RESPONSE_BYTES_MAX`.
pub const FETCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// What [`Relay::accept_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The envelope id.
    pub id: EnvelopeId,
    /// When it was (first) accepted: the `accepted_ms` of the send response.
    pub accepted_ms: u64,
    /// True if this was a retry of an accepted message: nothing changed.
    pub duplicate: bool,
    /// New local mailbox entries (empty for a duplicate); the notifier has
    /// been told about each.
    pub delivered: Vec<MailboxRef>,
    /// Relays whose outbox got an entry (empty for a duplicate).
    pub remote: Vec<RelayName>,
}

/// What the relay keeps of an accepted message to hand new mailbox entries
/// to a notifier that pushes them ([`crate::Notifier::wants_envelopes`]).
struct Pushable {
    id: EnvelopeId,
    origin: RelayName,
    kind: EnvelopeKind,
    body: Bytes,
    received_ms: u64,
    expires_ms: u64,
    /// (user, device, header) of each local recipient, in store order.
    headers: Vec<(Username, DeviceId, Bytes)>,
}

impl Pushable {
    fn of(message: &NewMessage) -> Pushable {
        Pushable {
            id: message.id,
            origin: message.origin.clone(),
            kind: message.kind,
            body: message.body.clone(),
            received_ms: message.received_ms,
            expires_ms: message.expires_ms,
            headers: message
                .local
                .iter()
                .map(|r| (r.user.clone(), r.device, r.header.clone()))
                .collect(),
        }
    }
}

/// Tells `notifier` of new entries, with the entries themselves when it
/// asked for them and we kept a copy.
fn notify_new(notifier: &dyn Notifier, delivered: &[MailboxRef], pushable: Option<&Pushable>) {
    let Some(p) = pushable else {
        for d in delivered {
            notifier.mailbox(&d.user, d.device, d.seq);
        }
        return;
    };
    // `delivered` follows the recipients' order (skipping unknown devices
    // of a federated delivery), so one forward scan pairs them.
    let mut headers = p.headers.iter();
    for d in delivered {
        let Some((_, _, header)) = headers
            .by_ref()
            .find(|(user, device, _)| *user == d.user && *device == d.device)
        else {
            notifier.mailbox(&d.user, d.device, d.seq);
            continue;
        };
        let make = || Envelope {
            seq: d.seq,
            id: p.id,
            origin: p.origin.clone(),
            header: header.clone(),
            body: p.body.clone(),
            received_ms: p.received_ms,
            expires_ms: p.expires_ms,
            kind: p.kind,
        };
        notifier.envelope(&d.user, d.device, d.seq, &make);
    }
}

impl Relay {
    /// Accepts a message from a local device: one body, a mailbox entry per
    /// local recipient device, an outbox entry per other relay (body once,
    /// that relay's recipients inside). Returns only once stored durably.
    /// A retry with the same id from the same device with the same content
    /// changes nothing and reports the first acceptance.
    pub async fn accept_message(
        &self,
        sender: &AuthedDevice,
        message: OutgoingMessage,
    ) -> Result<Accepted> {
        OutgoingMessage::validate(&message)?;
        let now = self.now_ms();
        let source = format!("local:{}/{}", sender.user, sender.device);
        // A mailbox's share is per account, not per device: more devices
        // must not buy a sender more of someone's mailbox.
        let quota_source = format!("local:{}", sender.user);
        let secret = &self.config.store_secret;
        let key = secret.message_key(&source, &message.id, None);
        let digest = secret.digest(
            &source,
            message.body.as_slice(),
            message
                .recipients
                .iter()
                .map(|r| (r.to.to_string(), r.device.0, r.header.0.clone())),
        );
        let mut local = Vec::new();
        let mut remote: BTreeMap<RelayName, Vec<FedRecipient>> = BTreeMap::new();
        for r in message.recipients {
            if r.to.relay == self.config.name {
                local.push(LocalRecipient {
                    quota_key: Some(secret.quota_key(&r.to.user, r.device, &quota_source)),
                    user: r.to.user,
                    device: r.device,
                    header: r.header,
                });
            } else {
                remote.entry(r.to.relay).or_default().push(FedRecipient {
                    user: r.to.user,
                    device: r.device,
                    header: r.header,
                });
            }
        }
        let remote: Vec<RemoteRecipients> = remote
            .into_iter()
            .map(|(relay, recipients)| RemoteRecipients { relay, recipients })
            .collect();
        let relays: Vec<RelayName> = remote.iter().map(|r| r.relay.clone()).collect();
        // Routability and outbox limits, before anything is stored (or
        // sealed).
        let reserved = self.outbox_reserve(&sender.user, &relays)?;
        // Only outbox entries need the sender (for a failure notice); sealed,
        // so the database does not name it.
        let sealed = (!remote.is_empty())
            .then(|| Bytes(secret.seal_sender(self.random_bytes(), &sender.user, sender.device)));
        let new = NewMessage {
            id: message.id,
            source,
            key,
            digest,
            origin: self.config.name.clone(),
            kind: EnvelopeKind::Message,
            body: message.body,
            received_ms: now,
            expires_ms: now + message.ttl_secs * 1000,
            local,
            remote,
            sender: sealed,
            depth_max: self.config.mailbox_depth_max,
            bytes_max: self.config.mailbox_bytes_max,
            per_source_max: self.config.mailbox_per_source_max,
            per_source_bytes_max: self.config.mailbox_per_source_bytes_max,
            skip_unknown: false,
        };
        match self.accept_and_notify(new).await? {
            AcceptOutcome::Accepted { delivered } => {
                reserved.keep();
                for relay in &relays {
                    self.notifier.outbox(relay);
                }
                Ok(Accepted {
                    id: message.id,
                    accepted_ms: now,
                    duplicate: false,
                    delivered,
                    remote: relays,
                })
            }
            AcceptOutcome::Duplicate { accepted_ms } => Ok(Accepted {
                id: message.id,
                accepted_ms,
                duplicate: true,
                delivered: Vec::new(),
                remote: Vec::new(),
            }),
        }
    }

    pub(crate) fn notify(&self, delivered: &[MailboxRef]) {
        notify_new(&*self.notifier, delivered, None);
    }

    /// Stores `new` and tells the notifier of its new mailbox entries (with
    /// the entries themselves if it wants them). The store tells it on its
    /// commit path, in commit order, so each mailbox's entries reach the
    /// notifier in seq order.
    async fn accept_and_notify(&self, new: NewMessage) -> Result<AcceptOutcome> {
        let pushable = self.notifier.wants_envelopes().then(|| Pushable::of(&new));
        let notifier = self.notifier.clone();
        let committed = Box::new(move |outcome: &AcceptOutcome| {
            if let AcceptOutcome::Accepted { delivered } = outcome {
                notify_new(&*notifier, delivered, pushable.as_ref());
            }
        });
        self.store.accept_then(new, committed).await
    }

    /// Accepts envelopes a peer relay delivered (the caller has checked that
    /// the peer is `origin`). Each envelope is stored for the recipients that
    /// exist here, deduplicated by envelope id, and answered on its own.
    pub async fn accept_federated(
        &self,
        origin: &RelayName,
        envelopes: Vec<FedEnvelope>,
    ) -> Vec<EnvelopeAck> {
        // All at once: the store gathers them into one transaction (one
        // commit for the batch instead of one per envelope). The store keeps
        // their order, so a device's entries keep the batch's order.
        let accepts = envelopes.into_iter().map(|envelope| async move {
            let id = envelope.id;
            let status = match self.accept_one_federated(origin, envelope).await {
                Ok(true) => AckStatus::Accepted,
                Ok(false) => AckStatus::Duplicate,
                Err(e) => AckStatus::Rejected(e.code()),
            };
            EnvelopeAck { id, status }
        });
        futures::future::join_all(accepts).await
    }

    async fn accept_one_federated(
        &self,
        origin: &RelayName,
        envelope: FedEnvelope,
    ) -> Result<bool> {
        if origin == &self.config.name {
            return Err(RelayError::Forbidden("an envelope from ourselves"));
        }
        envelope.validate()?;
        let now = self.now_ms();
        if envelope.expires_ms <= now {
            return Err(RelayError::BadRequest("expired".into()));
        }
        // A peer cannot make us keep a message longer than any sender could.
        let expires_ms = envelope.expires_ms.min(now + MESSAGE_TTL_SECS_MAX * 1000);
        // The source of federated mail is the relay it came from: that is
        // all we know of its sender, and what dedup and quotas are scoped to.
        let source = format!("relay:{origin}");
        let secret = &self.config.store_secret;
        let digest = secret.digest(
            &source,
            envelope.body.as_slice(),
            envelope
                .recipients
                .iter()
                .map(|r| (r.user.to_string(), r.device.0, r.header.0.clone())),
        );
        // A relay speaks for all its users, and two of them may send the
        // same id to the same destination (one of them having learned it as
        // a co-recipient). Scoping the key to the content too keeps their
        // messages apart: only a true retry (same origin, id and content) is
        // a duplicate; a relay's own outbox never resends an id with other
        // content, so no conflict is lost that a correct origin could cause.
        let key = secret.message_key(&source, &envelope.id, Some(&digest));
        let new = NewMessage {
            id: envelope.id,
            key,
            digest,
            origin: origin.clone(),
            kind: envelope.kind,
            body: envelope.body,
            received_ms: now,
            expires_ms,
            local: envelope
                .recipients
                .into_iter()
                .map(|r| LocalRecipient {
                    quota_key: Some(secret.quota_key(&r.user, r.device, &source)),
                    user: r.user,
                    device: r.device,
                    header: r.header,
                })
                .collect(),
            source,
            remote: Vec::new(),
            sender: None,
            depth_max: self.config.mailbox_depth_max,
            bytes_max: self.config.mailbox_bytes_max,
            per_source_max: self.config.mailbox_per_source_max,
            per_source_bytes_max: self.config.mailbox_per_source_bytes_max,
            skip_unknown: true,
        };
        match self.accept_and_notify(new).await? {
            AcceptOutcome::Accepted { .. } => Ok(true),
            AcceptOutcome::Duplicate { .. } => Ok(false),
        }
    }

    /// The caller's unexpired mailbox entries with `seq > after`, in order,
    /// at most `limit` (clamped to 1..=`FETCH_LIMIT_MAX`) and at most
    /// [`FETCH_BYTES_MAX`] bytes of headers and bodies (so the JSON answer
    /// stays under `FETCH_RESPONSE_BYTES_MAX`).
    pub async fn fetch(
        &self,
        device: &AuthedDevice,
        after: u64,
        limit: u32,
    ) -> Result<FetchResponse> {
        self.fetch_bounded(device, after, limit, FETCH_BYTES_MAX)
            .await
    }

    /// Like [`Relay::fetch`] with a byte cap of the caller's: entries stop
    /// before the one that would take their header and body bytes past
    /// `bytes_max`, except that the first entry always comes (however big),
    /// so a reader always progresses. `more` is true if anything was left.
    pub async fn fetch_bounded(
        &self,
        device: &AuthedDevice,
        after: u64,
        limit: u32,
        bytes_max: usize,
    ) -> Result<FetchResponse> {
        let limit = limit.clamp(1, FETCH_LIMIT_MAX as u32);
        let mut envelopes = self
            .store
            .fetch(
                &device.user,
                device.device,
                after,
                limit + 1,
                bytes_max,
                self.now_ms(),
            )
            .await?;
        let mut keep = 0usize;
        let mut bytes = 0usize;
        for envelope in &envelopes {
            bytes += envelope.header.len() + envelope.body.len();
            if keep == limit as usize || (keep > 0 && bytes > bytes_max) {
                break;
            }
            keep += 1;
        }
        // Past the cap, the store stopped reading: there may be more even
        // if nothing was trimmed here (a first entry bigger than the cap).
        let more = envelopes.len() > keep || bytes > bytes_max;
        envelopes.truncate(keep);
        Ok(FetchResponse { envelopes, more })
    }

    /// Deletes the caller's entries with these sequence numbers. Unknown or
    /// already acked numbers are ignored, so acks may repeat and come in any
    /// order.
    pub async fn ack(&self, device: &AuthedDevice, seqs: &[u64]) -> Result<AckResponse> {
        if seqs.len() > ACK_SEQS_MAX {
            return Err(RelayError::PayloadTooLarge(
                "too many seqs in one ack".into(),
            ));
        }
        let acked = self.store.ack(&device.user, device.device, seqs).await?;
        Ok(AckResponse { acked })
    }

    /// Deletes expired mailbox entries, bodies nobody references, and expired
    /// auth records. Call periodically.
    pub async fn purge_expired(&self) -> Result<PurgeReport> {
        self.store.purge_expired(self.now_ms()).await
    }
}
