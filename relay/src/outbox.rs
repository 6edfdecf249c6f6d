//! Outbox: messages for devices on other relays, one entry per (message,
//! destination relay), drained by the federation.
//!
//! The federation driver loops: [`Relay::outbox_destinations`] →
//! [`Relay::outbox_take_batch`] → deliver → [`Relay::outbox_mark_delivered`]
//! for accepted/duplicate acks, [`Relay::outbox_reschedule`] for failures
//! worth retrying, [`Relay::outbox_fail`] for permanent rejections; and
//! periodically [`Relay::outbox_expire`].

use courier_protocol::{Address, ErrorCode, RelayName};

use crate::error::Result;
use crate::relay::Relay;
use crate::store::{LocalRecipient, NewMessage, OutboxDestination, OutboxEntry, OutboxId};
use crate::types::{DeliveryFailureNotice, EnvelopeKind, FailedRecipient, FedEnvelope};

/// How long a delivery-failure notice waits in its mailbox.
const NOTICE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

impl OutboxEntry {
    /// The entry as it crosses the federation.
    pub fn to_fed_envelope(&self) -> FedEnvelope {
        FedEnvelope {
            id: self.envelope,
            body: self.body.clone(),
            recipients: self.recipients.clone(),
            expires_ms: self.expires_ms,
            kind: self.kind,
        }
    }
}

impl Relay {
    /// Destinations with a backlog, with the earliest due time.
    pub async fn outbox_destinations(&self) -> Result<Vec<OutboxDestination>> {
        self.store.outbox_destinations().await
    }

    /// Up to `max` due entries for `relay`, oldest first. They are leased for
    /// `outbox_lease_ms`: if the caller crashes before marking them, they are
    /// offered again after the lease.
    pub async fn outbox_take_batch(&self, relay: &RelayName, max: u32) -> Result<Vec<OutboxEntry>> {
        let now = self.now_ms();
        self.store
            .outbox_take(relay, max, now, now + self.config.outbox_lease_ms)
            .await
    }

    /// Makes `relay`'s backlog due now, for when the relay comes back after
    /// an outage: entries backing off (up to `outbox_backoff_max_ms`) would
    /// otherwise wait out their backoff although the peer is reachable again.
    /// Entries leased to an attempt in flight are not touched. Returns how
    /// many entries were woken; the notifier hears of any.
    pub async fn outbox_wake(&self, relay: &RelayName) -> Result<u64> {
        let now = self.now_ms();
        let woken = self
            .store
            .outbox_wake(relay, now, now + self.config.outbox_lease_ms)
            .await?;
        if woken > 0 {
            self.notifier.outbox(relay);
        }
        Ok(woken)
    }

    /// Deletes entries the destination acknowledged (accepted or duplicate).
    pub async fn outbox_mark_delivered(&self, ids: &[OutboxId]) -> Result<u32> {
        self.store.outbox_delete(ids).await
    }

    /// Schedules another attempt with exponential backoff and jitter:
    /// `base · 2^attempts`, capped, times a random factor in [0.5, 1).
    /// Returns the time of the next attempt.
    pub async fn outbox_reschedule(&self, entry: &OutboxEntry) -> Result<u64> {
        let c = &self.config;
        let exp = entry.attempts.min(30);
        let backoff = c
            .outbox_backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(c.outbox_backoff_max_ms);
        // Jitter spreads retries of many entries so a recovering peer is not
        // hit by all of them at once.
        let jitter = 0.5 + (self.random_u64() >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        let next = self.now_ms() + ((backoff as f64 * jitter) as u64).max(1);
        self.store.outbox_reschedule(entry.id, next).await?;
        Ok(next)
    }

    /// Gives up on an entry the destination rejected for good: deletes it
    /// and tells the submitting device.
    pub async fn outbox_fail(&self, entry: &OutboxEntry, code: ErrorCode) -> Result<()> {
        let notice = self.failure_notice(entry, code)?;
        let delivered = self.store.outbox_expire(entry.id, notice).await?;
        self.outbox_release(entry);
        self.notify(&delivered);
        Ok(())
    }

    /// Removes entries whose expiry has passed, each with a delivery-failure
    /// notice to the device that submitted it. Returns how many.
    pub async fn outbox_expire(&self) -> Result<u32> {
        let mut n = 0;
        loop {
            let batch = self.store.outbox_expired(self.now_ms(), 100).await?;
            if batch.is_empty() {
                return Ok(n);
            }
            for entry in &batch {
                self.outbox_fail(entry, ErrorCode::Expired).await?;
                n += 1;
            }
        }
    }

    fn failure_notice(&self, entry: &OutboxEntry, code: ErrorCode) -> Result<Option<NewMessage>> {
        let Some(sealed) = &entry.sender else {
            return Ok(None);
        };
        // Sealed under another secret (the operator replaced store.key) or
        // damaged: the notice cannot be addressed, so none is sent.
        let Some((user, device)) = self.config.store_secret.open_sender(sealed.as_slice()) else {
            return Ok(None);
        };
        if entry.kind != EnvelopeKind::Message {
            // Never answer a notice with a notice.
            return Ok(None);
        }
        let body = DeliveryFailureNotice {
            id: entry.envelope,
            recipients: entry
                .recipients
                .iter()
                .map(|r| FailedRecipient {
                    to: Address::new(r.user.clone(), entry.relay.clone()),
                    device: r.device,
                    code,
                })
                .collect(),
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| crate::error::RelayError::Store(e.to_string()))?;
        let now = self.now_ms();
        let id = courier_protocol::EnvelopeId::new(now, self.random_bytes::<10>());
        let source = format!("notice:{}", entry.id);
        Ok(Some(NewMessage {
            id,
            key: self.config.store_secret.message_key(&source, &id, None),
            source,
            digest: [0; 32],
            origin: self.config.name.clone(),
            kind: EnvelopeKind::DeliveryFailure,
            body: body.into(),
            received_ms: now,
            expires_ms: now + NOTICE_TTL_MS,
            local: vec![LocalRecipient {
                user,
                device,
                header: Default::default(),
                // Counted against nobody's share: it is the relay's own.
                quota_key: None,
            }],
            remote: Vec::new(),
            sender: None,
            // A notice is small and must not be lost to a full mailbox.
            depth_max: u32::MAX,
            bytes_max: u64::MAX,
            per_source_max: u32::MAX,
            per_source_bytes_max: u64::MAX,
            skip_unknown: true,
        }))
    }
}
