//! What peering knows of one peer in this run (not persisted).

use serde::{Deserialize, Serialize};

use crate::federation::PeerLimiter;

/// Counters of one peer since the relay started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerCounters {
    /// Batches sent to it.
    pub batches_sent: u64,
    /// Envelopes it acknowledged as accepted or duplicate.
    pub delivered: u64,
    /// Envelopes it refused for now (rate, full mailbox) or that did not
    /// get an answer (unreachable, timeout): retried later.
    pub retried: u64,
    /// Envelopes it refused for good.
    pub failed: u64,
    /// Batches received from it.
    pub batches_received: u64,
    /// Envelopes received from it.
    pub envelopes_received: u64,
    /// Batches from it refused whole (origin mismatch, rate, policy).
    pub batches_refused: u64,
    /// Its hellos refused (signature, pin, policy, removal, full book).
    pub hellos_refused: u64,
    /// Descriptors it shared that a full book had no room for.
    pub gossip_book_full: u64,
    /// Descriptors it shared that were refused otherwise (pin, policy, …).
    pub gossip_refused: u64,
}

/// One peer's state in this run.
#[derive(Debug, Default)]
pub struct Runtime {
    /// Open connections.
    pub connections: u32,
    /// A hello completed on the current connections.
    pub helloed: bool,
    /// Our hello is on its way.
    pub hello_inflight: bool,
    /// A hello was re-sent after its connection closed under it.
    pub hello_retried: bool,
    /// Blocked for this run.
    pub blocked: bool,
    /// A dial is under way.
    pub dialing: bool,
    /// Dials since the last connection (the backoff's exponent).
    pub dial_attempts: u32,
    /// Dials failed in a row (reset by a connection).
    pub dial_failures: u32,
    /// Why the last dial failed (cleared by a connection).
    pub last_error: Option<String>,
    /// When an operator peer that is down may be dialled next, ms.
    pub next_dial_ms: Option<u64>,
    /// Last time we heard from it, ms.
    pub last_seen_ms: Option<u64>,
    /// Counters since start.
    pub counters: PeerCounters,
    /// Its rate limiter, made on its first batch.
    pub(crate) limiter: Option<PeerLimiter>,
}

impl Runtime {
    /// Connected and helloed: requests go out at once.
    pub fn federating(&self) -> bool {
        self.helloed && self.connections > 0
    }
}
