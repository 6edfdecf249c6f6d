//! Federation as the relay logic sees it: a [`Federation`] trait to reach
//! other relays, and the plain-Rust rules of relay-to-relay delivery —
//! which envelopes a peer may hand us ([`check_batch_origin`]), how fast
//! ([`PeerLimiter`]), how long to wait before retrying ([`retry_delay_ms`]),
//! and which acknowledgements end an outbox entry ([`AckDisposition`]).
//!
//! What it deliberately does not do: no sockets, no libp2p, no clock of its
//! own. `courier-node` implements [`Federation`] over a libp2p swarm on QUIC;
//! simulations implement it over a simulated network, and both run the same
//! delivery logic ([`drain_once`], [`accept_batch`], [`answer_bundle`],
//! [`fetch_remote_bundle`]).

use std::collections::HashMap;

use courier_protocol::limits::{BATCH_BYTES_MAX, BATCH_ENVELOPES_MAX};
use courier_protocol::{
    AckStatus, Address, ApiError, BundleRequest, BundleResponse, DeliveryAcks, DeliveryBatch,
    DeviceId, EnvelopeId, ErrorCode, KeyBundleResponse, RelayName, Validate,
};

use crate::error::RelayError;
use crate::relay::Relay;
use crate::store::{OutboxEntry, OutboxId};

/// Why a request to another relay did not get an answer.
///
/// An answer that says "no" (a rejected envelope, an unknown user) is not an
/// error here: it arrives inside [`DeliveryAcks`] or [`BundleResponse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    /// No descriptor for that relay name is known (no peer shared it yet).
    #[error("relay {0} is not known to this relay's federation")]
    UnknownRelay(RelayName),
    /// The relay is known but could not be reached or did not answer in time.
    #[error("relay {relay} is unreachable: {reason}")]
    Unreachable {
        /// The destination.
        relay: RelayName,
        /// What went wrong (dial failure, timeout, closed connection, …).
        reason: String,
    },
    /// Federation policy (allowlist, denylist, removed peer, key pin)
    /// forbids talking to that relay.
    #[error("federation with relay {0} is refused by policy")]
    Refused(RelayName),
    /// The peer answered with something that breaks the protocol (e.g. acks
    /// for envelopes it was not sent).
    #[error("relay {relay} answered out of protocol: {reason}")]
    Protocol {
        /// The destination.
        relay: RelayName,
        /// What was wrong with the answer.
        reason: String,
    },
    /// The federation service is stopping.
    #[error("federation is shutting down")]
    ShuttingDown,
}

impl FederationError {
    /// The stable code to report to a client whose request needed the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            FederationError::UnknownRelay(_) => ErrorCode::UnknownRelay,
            FederationError::Unreachable { .. } | FederationError::Protocol { .. } => {
                ErrorCode::RelayUnreachable
            }
            FederationError::Refused(_) => ErrorCode::FederationRefused,
            FederationError::ShuttingDown => ErrorCode::Unavailable,
        }
    }
}

/// How the relay logic reaches other relays. Implementations resolve the
/// relay name to a peer (descriptor, pinned key), connect and send; they do
/// not retry — retrying is the outbox's job, with backoff.
///
/// Object-safe (`Arc<dyn Federation>`), like [`Store`](crate::store::Store),
/// so the gateway and the outbox drainer can share one without generics.
#[async_trait::async_trait]
pub trait Federation: Send + Sync {
    /// Delivers one batch (all of it for `dest`, body once per envelope) and
    /// returns the per-envelope acknowledgements.
    async fn deliver(
        &self,
        dest: &RelayName,
        batch: DeliveryBatch,
    ) -> Result<DeliveryAcks, FederationError>;

    /// Fetches a key bundle from the relay that homes `request.address`.
    /// A one-time prekey in the answer was consumed on that relay.
    async fn fetch_bundle(
        &self,
        dest: &RelayName,
        request: BundleRequest,
    ) -> Result<BundleResponse, FederationError>;
}

/// A relay that federates with nobody: every remote relay is unknown.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFederation;

#[async_trait::async_trait]
impl Federation for NoFederation {
    async fn deliver(
        &self,
        dest: &RelayName,
        _batch: DeliveryBatch,
    ) -> Result<DeliveryAcks, FederationError> {
        Err(FederationError::UnknownRelay(dest.clone()))
    }

    async fn fetch_bundle(
        &self,
        dest: &RelayName,
        _request: BundleRequest,
    ) -> Result<BundleResponse, FederationError> {
        Err(FederationError::UnknownRelay(dest.clone()))
    }
}

/// Checks that a batch received from the peer authenticated as `peer` claims
/// that peer as its origin. A relay may only hand over envelopes its own
/// users sent; anything else is [`ErrorCode::OriginMismatch`] and the whole
/// batch is refused.
pub fn check_batch_origin(peer: &RelayName, batch: &DeliveryBatch) -> Result<(), ErrorCode> {
    if &batch.origin != peer {
        return Err(ErrorCode::OriginMismatch);
    }
    Ok(())
}

/// Checks that a peer may hand us an envelope of this kind: only
/// [`EnvelopeKind::Message`](courier_protocol::EnvelopeKind::Message). A
/// `delivery_failure` notice is made by a device's own home relay for its
/// own mailboxes and never crosses the federation; one arriving from a peer
/// is a forgery clients would show as a notice from their relay, so it is
/// refused ([`ErrorCode::EnvelopeKindRefused`]) and not stored.
pub fn check_federated_kind(envelope: &courier_protocol::FedEnvelope) -> Result<(), ErrorCode> {
    match envelope.kind {
        courier_protocol::EnvelopeKind::Message => Ok(()),
        courier_protocol::EnvelopeKind::DeliveryFailure => Err(ErrorCode::EnvelopeKindRefused),
    }
}

/// Acknowledgements that refuse every envelope of `batch` with `code` (an
/// origin mismatch, a rate limit, an unknown peer).
pub fn reject_all(batch: &DeliveryBatch, code: ErrorCode) -> DeliveryAcks {
    DeliveryAcks {
        acks: batch
            .envelopes
            .iter()
            .map(|e| courier_protocol::EnvelopeAck {
                id: e.id,
                status: AckStatus::Rejected(code),
            })
            .collect(),
    }
}

/// What the origin does with an outbox entry after the destination answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckDisposition {
    /// The destination holds it (stored now or before): delete the entry.
    Done,
    /// A passing condition (rate limit, full mailbox, destination busy):
    /// keep the entry and retry after a backoff.
    Retry,
    /// Refused for good: delete the entry and tell the sender.
    Failed(ErrorCode),
}

impl AckDisposition {
    /// Classifies one acknowledgement.
    pub fn of(status: AckStatus) -> Self {
        match status {
            AckStatus::Accepted | AckStatus::Duplicate => AckDisposition::Done,
            AckStatus::Rejected(code) if is_transient(code) => AckDisposition::Retry,
            AckStatus::Rejected(code) => AckDisposition::Failed(code),
        }
    }
}

/// Codes after which the same envelope may succeed later.
pub fn is_transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RateLimited
            | ErrorCode::MailboxFull
            | ErrorCode::InsufficientStorage
            | ErrorCode::MailboxQuota
            | ErrorCode::Unavailable
            | ErrorCode::Internal
            | ErrorCode::RelayUnreachable
            | ErrorCode::UnknownRelay
    )
}

/// Delay before retry number `attempts` (1 for the first retry): exponential
/// from `base_ms`, capped at `max_ms`, with "equal jitter" — half the delay
/// fixed, half drawn from `random` — so peers that failed together do not
/// retry together.
pub fn retry_delay_ms(attempts: u32, base_ms: u64, max_ms: u64, random: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(32);
    let delay = base_ms.saturating_mul(1u64 << exp).min(max_ms).max(1);
    let half = delay / 2;
    half + random % (delay - half + 1)
}

/// Per-peer limits on what a peer may hand us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Most envelopes in one batch (at most [`BATCH_ENVELOPES_MAX`]).
    pub batch_envelopes_max: usize,
    /// Sustained envelopes per second from one peer.
    pub envelopes_per_sec: u32,
    /// Envelopes one peer may send in a burst above the sustained rate.
    pub burst_envelopes: u32,
    /// Sustained bytes per second (bodies and headers) from one peer: a
    /// budget in envelopes alone let a peer send 256 × 256 KiB batches as
    /// cheaply as 256 tiny ones.
    pub bytes_per_sec: u64,
    /// Bytes one peer may send in a burst above the sustained rate.
    pub burst_bytes: u64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            batch_envelopes_max: BATCH_ENVELOPES_MAX,
            envelopes_per_sec: 50_000,
            burst_envelopes: 100_000,
            bytes_per_sec: 64 * 1024 * 1024,
            burst_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Token buckets over envelopes and bytes for one peer; time comes in as
/// `now_ms`.
#[derive(Debug, Clone)]
pub struct PeerLimiter {
    limits: PeerLimits,
    /// Tokens in thousandths, so slow refill rates do not round to zero.
    tokens_milli: u64,
    /// Byte tokens in thousandths.
    bytes_milli: u64,
    last_ms: u64,
}

impl PeerLimiter {
    /// A full bucket at `now_ms`.
    pub fn new(limits: PeerLimits, now_ms: u64) -> Self {
        PeerLimiter {
            limits,
            tokens_milli: u64::from(limits.burst_envelopes) * 1000,
            bytes_milli: limits.burst_bytes.saturating_mul(1000),
            last_ms: now_ms,
        }
    }

    /// Admits a batch of `envelopes` or says why not: a batch over the batch
    /// limit is [`ErrorCode::PayloadTooLarge`], one over the rate is
    /// [`ErrorCode::RateLimited`] (and takes no tokens).
    pub fn admit(&mut self, envelopes: usize, now_ms: u64) -> Result<(), ErrorCode> {
        self.admit_cost(envelopes, envelopes as u64, 0, now_ms)
    }

    /// Admits `batch` weighed by what it costs us to store: each recipient
    /// of each envelope takes an envelope token (a mailbox entry each), and
    /// its bodies and headers take byte tokens. Refused like
    /// [`PeerLimiter::admit`], taking no tokens.
    pub fn admit_batch(&mut self, batch: &DeliveryBatch, now_ms: u64) -> Result<(), ErrorCode> {
        let recipients = batch
            .envelopes
            .iter()
            .map(|e| e.recipients.len().max(1) as u64)
            .sum();
        let bytes = batch
            .envelopes
            .iter()
            .map(|e| {
                e.body.len() as u64
                    + e.recipients
                        .iter()
                        .map(|r| r.header.len() as u64)
                        .sum::<u64>()
            })
            .sum();
        self.admit_cost(batch.envelopes.len(), recipients, bytes, now_ms)
    }

    fn admit_cost(
        &mut self,
        envelopes: usize,
        deliveries: u64,
        bytes: u64,
        now_ms: u64,
    ) -> Result<(), ErrorCode> {
        if envelopes > self.limits.batch_envelopes_max {
            return Err(ErrorCode::PayloadTooLarge);
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = u64::from(self.limits.burst_envelopes) * 1000;
        let refill = elapsed.saturating_mul(u64::from(self.limits.envelopes_per_sec));
        self.tokens_milli = self.tokens_milli.saturating_add(refill).min(cap);
        let byte_cap = self.limits.burst_bytes.saturating_mul(1000);
        let byte_refill = elapsed.saturating_mul(self.limits.bytes_per_sec);
        self.bytes_milli = self.bytes_milli.saturating_add(byte_refill).min(byte_cap);
        let need = deliveries.saturating_mul(1000);
        let need_bytes = bytes.saturating_mul(1000);
        if need > self.tokens_milli || need_bytes > self.bytes_milli {
            return Err(ErrorCode::RateLimited);
        }
        self.tokens_milli -= need;
        self.bytes_milli -= need_bytes;
        Ok(())
    }
}

/// What one [`drain_once`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Entries taken from the outbox.
    pub taken: u32,
    /// Batches sent (an outbox take is split by [`BATCH_BYTES_MAX`]).
    pub batches: u32,
    /// Entries the destination acknowledged (accepted or duplicate): deleted.
    pub delivered: u32,
    /// Entries rescheduled with backoff (unreachable peer, transient refusal,
    /// missing ack).
    pub retried: u32,
    /// Entries refused for good: deleted, sender notified.
    pub failed: u32,
    /// The last delivery error, if a batch got no answer.
    pub error: Option<FederationError>,
}

/// Rough encoded size of an entry in a batch, for splitting by
/// [`BATCH_BYTES_MAX`] (postcard overhead is a few bytes per field; 64 per
/// entry and 48 per recipient is generous).
fn entry_bytes(entry: &OutboxEntry) -> usize {
    64 + entry.body.len()
        + entry
            .recipients
            .iter()
            .map(|r| 48 + r.header.len())
            .sum::<usize>()
}

/// One round of outbox delivery to `dest`: takes up to `max` due entries
/// (leased, so a crash mid-delivery retries them), sends them in batches of
/// at most [`BATCH_BYTES_MAX`] bytes — one envelope per message, body once,
/// that relay's recipients inside — and settles each entry by its ack:
/// delivered entries are deleted, transient failures and unanswered batches
/// are rescheduled with backoff and jitter, permanent refusals are deleted
/// with a delivery-failure notice to the sending device.
///
/// Time and randomness come from the relay (its clock and RNG), so a
/// simulation drives this deterministically over its own [`Federation`].
pub async fn drain_once(
    relay: &Relay,
    federation: &dyn Federation,
    dest: &RelayName,
    max: u32,
) -> Result<DrainReport, RelayError> {
    let max = max.clamp(1, BATCH_ENVELOPES_MAX as u32);
    let entries = relay.outbox_take_batch(dest, max).await?;
    let mut report = DrainReport {
        taken: entries.len() as u32,
        ..DrainReport::default()
    };
    let mut start = 0;
    while start < entries.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < entries.len()
            && (end == start || bytes + entry_bytes(&entries[end]) <= BATCH_BYTES_MAX)
        {
            bytes += entry_bytes(&entries[end]);
            end += 1;
        }
        let chunk = &entries[start..end];
        start = end;
        let batch = DeliveryBatch {
            origin: relay.name().clone(),
            envelopes: chunk.iter().map(OutboxEntry::to_fed_envelope).collect(),
        };
        report.batches += 1;
        let acks = match federation.deliver(dest, batch).await {
            Ok(acks) => acks,
            Err(e) => {
                for entry in chunk {
                    relay.outbox_reschedule(entry).await?;
                }
                report.retried += chunk.len() as u32;
                report.error = Some(e);
                continue;
            }
        };
        let status: HashMap<EnvelopeId, AckStatus> =
            acks.acks.iter().map(|a| (a.id, a.status)).collect();
        let mut done: Vec<&OutboxEntry> = Vec::new();
        for entry in chunk {
            match status.get(&entry.envelope).copied().map(AckDisposition::of) {
                Some(AckDisposition::Done) => done.push(entry),
                // A missing ack is the peer's bug; retrying is safe because
                // the receiver deduplicates by envelope id.
                Some(AckDisposition::Retry) | None => {
                    relay.outbox_reschedule(entry).await?;
                    report.retried += 1;
                }
                Some(AckDisposition::Failed(code)) => {
                    relay.outbox_fail(entry, code).await?;
                    report.failed += 1;
                }
            }
        }
        if !done.is_empty() {
            let ids: Vec<OutboxId> = done.iter().map(|e| e.id).collect();
            relay.outbox_mark_delivered(&ids).await?;
            for entry in done.iter().copied() {
                relay.outbox_release(entry);
            }
        }
        report.delivered += done.len() as u32;
    }
    Ok(report)
}

/// A delivery worker: rounds of [`drain_once`] to `dest` while they come
/// back full and answered. Returns the last round's report (its `error` set
/// when the destination did not answer, so the worker backs off), or the
/// store error that ended it. The node's drainer and the simulator run it.
pub async fn drain_worker(
    relay: &Relay,
    federation: &dyn Federation,
    dest: &RelayName,
    max: u32,
) -> Result<DrainReport, RelayError> {
    loop {
        let report = drain_once(relay, federation, dest, max).await?;
        if report.error.is_some() || report.taken < max {
            return Ok(report);
        }
    }
}

/// Answers a peer's delivery: checks that `peer` (the authenticated relay)
/// is the batch's origin and the batch's limits, then stores each envelope
/// for its recipients here, deduplicated by envelope id.
pub async fn accept_batch(relay: &Relay, peer: &RelayName, batch: DeliveryBatch) -> DeliveryAcks {
    if let Err(code) = check_batch_origin(peer, &batch).and_then(|()| batch.validate()) {
        return reject_all(&batch, code);
    }
    // Envelopes are independent: storing them concurrently lets the store's
    // group commit put a whole batch in one transaction instead of one
    // commit (and fsync) per envelope. Acks stay in batch order.
    let acks = join_all(batch.envelopes.into_iter().map(|e| async move {
        match check_federated_kind(&e) {
            Ok(()) => relay.accept_federated(peer, vec![e]).await,
            Err(code) => vec![courier_protocol::EnvelopeAck {
                id: e.id,
                status: AckStatus::Rejected(code),
            }],
        }
    }))
    .await;
    DeliveryAcks {
        acks: acks.into_iter().flatten().collect(),
    }
}

/// Runs `futures` concurrently on the current task; outputs in input order.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Answers the key bundle request of `peer` (the authenticated relay) for
/// one of our users. The one-time prekey handed out is consumed here, once,
/// within that peer's budget ([`crate::prekey_budget`]).
pub async fn answer_bundle(
    relay: &Relay,
    peer: &RelayName,
    request: BundleRequest,
) -> BundleResponse {
    let requester = crate::prekey_budget::Requester::Peer(peer.clone());
    relay
        .key_bundle(&requester, &request.address, request.device)
        .await
        .map_err(|e| e.to_api_error())
}

/// Fetches the key bundle of `address` from its home relay over
/// `federation`, checking that the answer is about the address asked for
/// (a relay cannot answer for another relay's users).
pub async fn fetch_remote_bundle(
    federation: &dyn Federation,
    address: &Address,
    device: Option<DeviceId>,
) -> Result<KeyBundleResponse, ApiError> {
    let request = BundleRequest {
        address: address.clone(),
        device,
    };
    let bundle = federation
        .fetch_bundle(&address.relay, request)
        .await
        .map_err(|e| ApiError::with_message(e.code(), e.to_string()))??;
    if !bundle_answers(address, device, &bundle) {
        return Err(ApiError::with_message(
            ErrorCode::RelayUnreachable,
            format!("relay {} answered for another address", address.relay),
        ));
    }
    Ok(bundle)
}

/// Whether `bundle` answers a request for `address` (and only `device`, if
/// given): a relay must not pass off keys of another account, or a device
/// list of another address, as the ones asked for.
pub fn bundle_answers(
    address: &Address,
    device: Option<DeviceId>,
    bundle: &KeyBundleResponse,
) -> bool {
    let wrong_device = device.is_some_and(|d| bundle.bundles.iter().any(|b| b.device != d));
    &bundle.address == address && &bundle.device_list.list.address == address && !wrong_device
}

#[cfg(test)]
pub(crate) mod tests {
    use courier_protocol::{Bytes, DeviceId, EnvelopeId, EnvelopeKind, FedEnvelope, FedRecipient};

    use super::*;

    /// A batch of `n` small envelopes from `origin` (shared with the
    /// peering tests).
    pub(crate) fn batch(origin: &str, n: usize) -> DeliveryBatch {
        DeliveryBatch {
            origin: RelayName::parse(origin).unwrap(),
            envelopes: (0..n)
                .map(|i| FedEnvelope {
                    id: EnvelopeId::new(1, [i as u8; 10]),
                    body: Bytes::from(vec![1, 2, 3]),
                    recipients: vec![FedRecipient {
                        user: "bob".parse().unwrap(),
                        device: DeviceId(1),
                        header: Bytes::from(vec![9]),
                    }],
                    expires_ms: 10,
                    kind: EnvelopeKind::Message,
                })
                .collect(),
        }
    }

    #[test]
    fn batch_claiming_another_origin_is_refused() {
        let peer = RelayName::parse("relay-b.example").unwrap();
        assert_eq!(
            check_batch_origin(&peer, &batch("relay-b.example", 1)),
            Ok(())
        );
        assert_eq!(
            check_batch_origin(&peer, &batch("relay-c.example", 1)),
            Err(ErrorCode::OriginMismatch)
        );
        let acks = reject_all(&batch("relay-c.example", 3), ErrorCode::OriginMismatch);
        assert_eq!(acks.acks.len(), 3);
        assert!(
            acks.acks
                .iter()
                .all(|a| a.status == AckStatus::Rejected(ErrorCode::OriginMismatch))
        );
    }

    #[test]
    fn retry_delay_grows_exponentially_with_bounded_jitter() {
        for attempts in 1..40 {
            for random in [0, 1, 12345, u64::MAX] {
                let d = retry_delay_ms(attempts, 1000, 600_000, random);
                let full = (1000u64 << (attempts - 1).min(32)).min(600_000);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempts}: {d} vs {full}"
                );
            }
        }
        assert!(retry_delay_ms(1, 1000, 600_000, 0) >= 500);
        assert_eq!(retry_delay_ms(30, 1000, 600_000, 0), 300_000);
    }

    #[test]
    fn limiter_refuses_bursts_over_the_rate_and_refills_with_time() {
        let limits = PeerLimits {
            batch_envelopes_max: 10,
            envelopes_per_sec: 100,
            burst_envelopes: 20,
            ..PeerLimits::default()
        };
        let mut l = PeerLimiter::new(limits, 0);
        assert_eq!(l.admit(11, 0), Err(ErrorCode::PayloadTooLarge));
        assert_eq!(l.admit(10, 0), Ok(()));
        assert_eq!(l.admit(10, 0), Ok(()));
        assert_eq!(l.admit(1, 0), Err(ErrorCode::RateLimited));
        // 100/s refills one envelope every 10 ms.
        assert_eq!(l.admit(5, 49), Err(ErrorCode::RateLimited));
        assert_eq!(l.admit(5, 50), Ok(()));
    }

    #[test]
    fn limiter_weighs_batches_by_recipients_and_bytes() {
        let limits = PeerLimits {
            batch_envelopes_max: 10,
            envelopes_per_sec: 100,
            burst_envelopes: 20,
            bytes_per_sec: 1000,
            burst_bytes: 100,
        };
        let mut l = PeerLimiter::new(limits, 0);
        // One envelope for 20 recipients takes the whole envelope burst.
        let mut wide = batch("relay-b.example", 1);
        wide.envelopes[0].recipients = (0..20u32)
            .map(|i| FedRecipient {
                user: "bob".parse().unwrap(),
                device: DeviceId(i + 1),
                header: Bytes::default(),
            })
            .collect();
        wide.envelopes[0].body = Bytes::default();
        assert_eq!(l.admit_batch(&wide, 0), Ok(()));
        assert_eq!(
            l.admit_batch(&batch("relay-b.example", 1), 0),
            Err(ErrorCode::RateLimited)
        );
        // 101 bytes is over the byte burst whatever the envelope count.
        let mut l = PeerLimiter::new(limits, 0);
        let mut big = batch("relay-b.example", 1);
        big.envelopes[0].body = Bytes::from(vec![0; 100]);
        assert_eq!(l.admit_batch(&big, 0), Err(ErrorCode::RateLimited));
        big.envelopes[0].body = Bytes::from(vec![0; 99]);
        assert_eq!(l.admit_batch(&big, 0), Ok(()), "99 + 1 header byte");
        assert_eq!(l.admit_batch(&big, 50), Err(ErrorCode::RateLimited));
        assert_eq!(
            l.admit_batch(&big, 100),
            Ok(()),
            "1000 B/s refills 100 B in 100 ms"
        );
    }

    #[test]
    fn acks_map_to_done_retry_or_failed() {
        assert_eq!(
            AckDisposition::of(AckStatus::Accepted),
            AckDisposition::Done
        );
        assert_eq!(
            AckDisposition::of(AckStatus::Duplicate),
            AckDisposition::Done
        );
        assert_eq!(
            AckDisposition::of(AckStatus::Rejected(ErrorCode::MailboxFull)),
            AckDisposition::Retry
        );
        assert_eq!(
            AckDisposition::of(AckStatus::Rejected(ErrorCode::UnknownUser)),
            AckDisposition::Failed(ErrorCode::UnknownUser)
        );
    }
}

/// Two or more real relays (memory stores, manual clocks) joined by an
/// in-process [`Federation`]: the delivery logic end to end without sockets.
#[cfg(test)]
mod in_process {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use courier_protocol::api::{DeviceKeys, DeviceList, DeviceListEntry, SignedDeviceList};
    use courier_protocol::{Bytes, FedEnvelope, OutgoingMessage, RecipientEntry, Username};
    use rand::SeedableRng;

    use super::*;
    use crate::clock::ManualClock;
    use crate::relay::{AuthedDevice, Config};
    use crate::store::{DeviceRecord, MemoryStore, NewAccount};

    const T0: u64 = 1_700_000_000_000;

    /// The network: relays by name; each delivery is recorded.
    #[derive(Default)]
    struct Net {
        relays: Mutex<BTreeMap<RelayName, Arc<Relay>>>,
        down: AtomicBool,
        deliveries: Mutex<Vec<(RelayName, RelayName, usize, usize)>>,
        calls: AtomicU32,
    }

    /// One relay's view of the network.
    struct Link {
        from: RelayName,
        net: Arc<Net>,
    }

    #[async_trait::async_trait]
    impl Federation for Link {
        async fn deliver(
            &self,
            dest: &RelayName,
            batch: DeliveryBatch,
        ) -> Result<DeliveryAcks, FederationError> {
            self.net.calls.fetch_add(1, Ordering::SeqCst);
            if self.net.down.load(Ordering::SeqCst) {
                return Err(FederationError::Unreachable {
                    relay: dest.clone(),
                    reason: "down".into(),
                });
            }
            let relay = self.net.relays.lock().unwrap().get(dest).cloned();
            let relay = relay.ok_or_else(|| FederationError::UnknownRelay(dest.clone()))?;
            let recipients = batch.envelopes.iter().map(|e| e.recipients.len()).sum();
            self.net.deliveries.lock().unwrap().push((
                self.from.clone(),
                dest.clone(),
                batch.envelopes.len(),
                recipients,
            ));
            Ok(accept_batch(&relay, &self.from, batch).await)
        }

        async fn fetch_bundle(
            &self,
            dest: &RelayName,
            request: BundleRequest,
        ) -> Result<BundleResponse, FederationError> {
            let relay = self.net.relays.lock().unwrap().get(dest).cloned();
            let relay = relay.ok_or_else(|| FederationError::UnknownRelay(dest.clone()))?;
            Ok(answer_bundle(&relay, &self.from, request).await)
        }
    }

    fn relay(net: &Arc<Net>, name: &str, clock: &Arc<ManualClock>) -> (Arc<Relay>, Link) {
        let name = RelayName::parse(name).unwrap();
        let mut config = Config::new(name.clone());
        config.outbox_backoff_base_ms = 100;
        config.outbox_backoff_max_ms = 1000;
        let relay = Arc::new(Relay::new(
            config,
            Arc::new(MemoryStore::new()),
            clock.clone(),
            Box::new(rand::rngs::StdRng::seed_from_u64(7)),
        ));
        net.relays
            .lock()
            .unwrap()
            .insert(name.clone(), relay.clone());
        (
            relay,
            Link {
                from: name,
                net: net.clone(),
            },
        )
    }

    /// Registers `user` with device 1 straight in the store (the keys are
    /// opaque to delivery).
    async fn user(relay: &Relay, user: &str) -> AuthedDevice {
        let username = Username::parse(user).unwrap();
        let keys = DeviceKeys {
            identity_key: Bytes::from(vec![1; 32]),
            dh_key: Bytes::from(vec![2; 32]),
            dh_key_signature: Bytes::from(vec![3; 64]),
        };
        relay
            .store()
            .register(NewAccount {
                device: DeviceRecord {
                    user: username.clone(),
                    device: DeviceId(1),
                    keys: keys.clone(),
                    signed_prekey: None,
                    one_time_count: 0,
                    created_ms: T0,
                },
                device_list: SignedDeviceList {
                    list: DeviceList {
                        address: Address::new(username.clone(), relay.name().clone()),
                        version: 1,
                        devices: vec![DeviceListEntry {
                            device: DeviceId(1),
                            identity_key: keys.identity_key,
                        }],
                    },
                    signer: DeviceId(1),
                    signature: Bytes::from(vec![4; 64]),
                },
                invite: None,
                now_ms: T0,
            })
            .await
            .unwrap();
        AuthedDevice {
            user: username,
            device: DeviceId(1),
            session: "s".into(),
            prekeys_low: None,
        }
    }

    fn message(n: u8, to: &[&str], ttl_secs: u64) -> OutgoingMessage {
        OutgoingMessage {
            id: EnvelopeId::new(T0, [n; 10]),
            body: Bytes::from(vec![0xc1; 100]),
            recipients: to
                .iter()
                .map(|a| RecipientEntry {
                    to: Address::parse(a).unwrap(),
                    device: DeviceId(1),
                    header: Bytes::from(vec![0xee; 16]),
                })
                .collect(),
            ttl_secs,
        }
    }

    async fn mailbox(relay: &Relay, device: &AuthedDevice) -> Vec<crate::types::Envelope> {
        relay.fetch(device, 0, 500).await.unwrap().envelopes
    }

    #[test]
    fn message_reaches_the_remote_mailbox_and_leaves_the_outbox() {
        futures::executor::block_on(async {
            let net = Arc::new(Net::default());
            let clock = Arc::new(ManualClock::new(T0));
            let (a, link_a) = relay(&net, "relay-a.example", &clock);
            let (b, _) = relay(&net, "relay-b.example", &clock);
            let alice = user(&a, "alice").await;
            let bob = user(&b, "bob").await;
            a.accept_message(&alice, message(1, &["bob@relay-b.example"], 60))
                .await
                .unwrap();
            let dest = RelayName::parse("relay-b.example").unwrap();
            let report = drain_once(&a, &link_a, &dest, 256).await.unwrap();
            assert_eq!((report.delivered, report.retried, report.failed), (1, 0, 0));
            let got = mailbox(&b, &bob).await;
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].origin.as_str(), "relay-a.example");
            assert_eq!(got[0].body.as_slice(), &[0xc1; 100][..]);
            assert!(a.outbox_destinations().await.unwrap().is_empty());
            assert_eq!(drain_once(&a, &link_a, &dest, 256).await.unwrap().taken, 0);
        });
    }

    #[test]
    fn unreachable_peer_is_retried_after_backoff_and_delivered_exactly_once() {
        futures::executor::block_on(async {
            let net = Arc::new(Net::default());
            let clock = Arc::new(ManualClock::new(T0));
            let (a, link_a) = relay(&net, "relay-a.example", &clock);
            let (b, _) = relay(&net, "relay-b.example", &clock);
            let alice = user(&a, "alice").await;
            let bob = user(&b, "bob").await;
            for n in 0..10 {
                a.accept_message(&alice, message(n, &["bob@relay-b.example"], 60))
                    .await
                    .unwrap();
            }
            let dest = RelayName::parse("relay-b.example").unwrap();
            net.down.store(true, Ordering::SeqCst);
            let report = drain_once(&a, &link_a, &dest, 256).await.unwrap();
            assert_eq!((report.delivered, report.retried), (0, 10));
            assert!(report.error.is_some());
            // Backing off: nothing is due right away.
            assert_eq!(drain_once(&a, &link_a, &dest, 256).await.unwrap().taken, 0);
            net.down.store(false, Ordering::SeqCst);
            clock.advance(1000);
            let report = drain_once(&a, &link_a, &dest, 256).await.unwrap();
            assert_eq!(report.delivered, 10);
            // The same batch delivered again (a retry after a lost ack) is
            // acknowledged as duplicate and stores nothing new.
            let replay = DeliveryBatch {
                origin: a.name().clone(),
                envelopes: vec![FedEnvelope {
                    id: EnvelopeId::new(T0, [3; 10]),
                    body: Bytes::from(vec![0xc1; 100]),
                    recipients: vec![courier_protocol::FedRecipient {
                        user: bob.user.clone(),
                        device: DeviceId(1),
                        header: Bytes::from(vec![0xee; 16]),
                    }],
                    expires_ms: T0 + 60_000,
                    kind: courier_protocol::EnvelopeKind::Message,
                }],
            };
            let acks = accept_batch(&b, a.name(), replay).await;
            assert_eq!(acks.acks[0].status, AckStatus::Duplicate);
            assert_eq!(mailbox(&b, &bob).await.len(), 10);
        });
    }

    #[test]
    fn undeliverable_message_yields_a_failure_notice_to_the_sender() {
        futures::executor::block_on(async {
            let net = Arc::new(Net::default());
            let clock = Arc::new(ManualClock::new(T0));
            let (a, link_a) = relay(&net, "relay-a.example", &clock);
            let alice = user(&a, "alice").await;
            a.accept_message(&alice, message(1, &["bob@relay-z.example"], 5))
                .await
                .unwrap();
            let dest = RelayName::parse("relay-z.example").unwrap();
            let report = drain_once(&a, &link_a, &dest, 256).await.unwrap();
            assert_eq!(report.retried, 1);
            assert!(matches!(
                report.error,
                Some(FederationError::UnknownRelay(_))
            ));
            clock.advance(6000);
            assert_eq!(a.outbox_expire().await.unwrap(), 1);
            let notices = mailbox(&a, &alice).await;
            assert_eq!(notices.len(), 1);
            assert_eq!(
                notices[0].kind,
                courier_protocol::EnvelopeKind::DeliveryFailure
            );
            assert!(a.outbox_destinations().await.unwrap().is_empty());
        });
    }

    #[test]
    fn permanent_refusal_fails_the_entry_with_a_notice() {
        futures::executor::block_on(async {
            let net = Arc::new(Net::default());
            let clock = Arc::new(ManualClock::new(T0));
            let (a, link_a) = relay(&net, "relay-a.example", &clock);
            // Kept alive: the link delivers to it.
            let (_b, _) = relay(&net, "relay-b.example", &clock);
            let alice = user(&a, "alice").await;
            // Nobody of that name on B: no retry can fix it. (A squatted id
            // no longer is a refusal: B deduplicates per origin and content.)
            a.accept_message(&alice, message(1, &["nobody@relay-b.example"], 60))
                .await
                .unwrap();
            let dest = RelayName::parse("relay-b.example").unwrap();
            let report = drain_once(&a, &link_a, &dest, 256).await.unwrap();
            assert_eq!((report.delivered, report.retried, report.failed), (0, 0, 1));
            assert!(a.outbox_destinations().await.unwrap().is_empty());
            let notices = mailbox(&a, &alice).await;
            assert_eq!(notices.len(), 1);
            assert_eq!(
                notices[0].kind,
                courier_protocol::EnvelopeKind::DeliveryFailure
            );
        });
    }

    #[test]
    fn group_message_crosses_once_per_destination_relay_with_body_once() {
        futures::executor::block_on(async {
            let net = Arc::new(Net::default());
            let clock = Arc::new(ManualClock::new(T0));
            let (a, link_a) = relay(&net, "relay-a.example", &clock);
            let (b, _) = relay(&net, "relay-b.example", &clock);
            let (c, _) = relay(&net, "relay-c.example", &clock);
            let alice = user(&a, "alice").await;
            let mut members = Vec::new();
            for (r, names) in [(&b, ["b1", "b2", "b3"]), (&c, ["c1", "c2", "c3"])] {
                for n in names {
                    members.push((r.clone(), user(r, n).await));
                }
            }
            let to = [
                "b1@relay-b.example",
                "b2@relay-b.example",
                "b3@relay-b.example",
                "c1@relay-c.example",
                "c2@relay-c.example",
                "c3@relay-c.example",
            ];
            a.accept_message(&alice, message(1, &to, 60)).await.unwrap();
            for dest in ["relay-b.example", "relay-c.example"] {
                let dest = RelayName::parse(dest).unwrap();
                drain_once(&a, &link_a, &dest, 256).await.unwrap();
            }
            let deliveries = net.deliveries.lock().unwrap().clone();
            assert_eq!(deliveries.len(), 2, "one delivery per destination relay");
            for (_, _, envelopes, recipients) in deliveries {
                assert_eq!((envelopes, recipients), (1, 3));
            }
            for (r, m) in &members {
                assert_eq!(mailbox(r, m).await.len(), 1);
            }
        });
    }

    #[test]
    fn batch_from_a_peer_claiming_another_origin_changes_nothing() {
        futures::executor::block_on(async {
            let net = Arc::new(Net::default());
            let clock = Arc::new(ManualClock::new(T0));
            let (b, _) = relay(&net, "relay-b.example", &clock);
            let bob = user(&b, "bob").await;
            let forged = DeliveryBatch {
                origin: RelayName::parse("relay-c.example").unwrap(),
                envelopes: vec![FedEnvelope {
                    id: EnvelopeId::new(T0, [1; 10]),
                    body: Bytes::from(vec![1]),
                    recipients: vec![courier_protocol::FedRecipient {
                        user: bob.user.clone(),
                        device: DeviceId(1),
                        header: Bytes::from(vec![2]),
                    }],
                    expires_ms: T0 + 60_000,
                    kind: courier_protocol::EnvelopeKind::Message,
                }],
            };
            let peer = RelayName::parse("relay-a.example").unwrap();
            let acks = accept_batch(&b, &peer, forged).await;
            assert_eq!(
                acks.acks[0].status,
                AckStatus::Rejected(ErrorCode::OriginMismatch)
            );
            assert!(mailbox(&b, &bob).await.is_empty());
        });
    }

    #[test]
    fn remote_bundle_for_another_address_is_refused() {
        futures::executor::block_on(async {
            let net = Arc::new(Net::default());
            let clock = Arc::new(ManualClock::new(T0));
            let (_a, link_a) = relay(&net, "relay-a.example", &clock);
            let (b, _) = relay(&net, "relay-b.example", &clock);
            user(&b, "bob").await;
            let bob = Address::parse("bob@relay-b.example").unwrap();
            // Bob has no signed prekey yet: an empty bundle list, but the signed
            // device list travels with it.
            let bundle = fetch_remote_bundle(&link_a, &bob, None).await.unwrap();
            assert_eq!(bundle.device_list.list.address, bob);
            let nobody = Address::parse("nobody@relay-b.example").unwrap();
            let err = fetch_remote_bundle(&link_a, &nobody, None)
                .await
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::UnknownUser);
            let unknown = Address::parse("x@relay-q.example").unwrap();
            let err = fetch_remote_bundle(&link_a, &unknown, None)
                .await
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::UnknownRelay);
        });
    }
}
