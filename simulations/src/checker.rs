//! The invariant checker: a ledger of what clients sent and what devices
//! received, and the delivery invariants judged against it. The safety
//! invariants (`at_most_once`, `decrypts_to_sent`, `per_sender_order`,
//! `no_plaintext_at_rest`) are checked as each fact arrives, i.e. after
//! every step of the run, and each verdict keeps the step and virtual time
//! of its first violation (with the report's seed, enough to replay up to
//! it); `no_loss` is a liveness property and is judged at the end. The
//! checker owns the verdict; the harness only reports facts.
//!
//! Invariants (each reported pass/fail with counterexamples):
//! - `no_loss`: every message a home relay accepted reached every intended
//!   device, after the drain that heals every fault;
//! - `at_most_once`: no device received a message from two different mailbox
//!   entries (re-fetching the same entry after a lost ack is not a
//!   duplicate);
//! - `decrypts_to_sent`: every delivered message decrypted to the exact
//!   plaintext sent;
//! - `no_plaintext_at_rest`: no relay store ever held a plaintext;
//! - `per_sender_order`: where the design promises order — sender and
//!   recipient on the same relay, whose mailbox is FIFO — a device receives a
//!   sender's messages of one conversation in the order they were sent.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// A device anywhere in the simulation, numbered densely from 0.
pub type DeviceIx = u32;

/// Most counterexamples kept per invariant.
pub const COUNTEREXAMPLES_MAX: usize = 20;

/// What a message was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Conversation {
    /// A direct conversation with one user (the recipient's user index).
    Direct(u32),
    /// A group (the group index).
    Group(u32),
}

/// The checker's view of one message.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    /// The sending device.
    pub sender: DeviceIx,
    /// The conversation.
    pub conversation: Conversation,
    /// The devices the message was addressed to, sorted.
    pub recipients: Box<[DeviceIx]>,
    /// Per-sender-device counter, increasing in send order.
    pub sender_seq: u64,
    /// When the client started sending.
    pub started_ms: u64,
    /// When the home relay accepted it, if it did.
    pub accepted_ms: Option<u64>,
    /// Digest of the plaintext.
    pub plaintext_digest: u64,
    receipts: Vec<Receipt>,
}

#[derive(Debug, Clone, Copy)]
struct Receipt {
    device: DeviceIx,
    /// The mailbox entry (relay-assigned sequence number).
    entry: u64,
    at_ms: u64,
    /// `None` until the device has tried to decrypt it.
    decrypted: Option<bool>,
}

/// How one received copy turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Decrypted; digest of the plaintext.
    Plaintext(u64),
    /// Decryption failed.
    Failed,
}

/// One invariant's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Short name, e.g. `no_loss`.
    pub name: String,
    /// What it asserts.
    pub description: String,
    /// True when nothing violated it.
    pub passed: bool,
    /// Cases checked.
    pub checked: u64,
    /// Cases that violated it.
    pub violations: u64,
    /// Up to [`COUNTEREXAMPLES_MAX`] violating cases, described.
    pub counterexamples: Vec<String>,
    /// The step (events handled, counted from 1) at which the first
    /// violation was seen; `None` when it passed, or for an invariant only
    /// judged at the end (`no_loss`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_violation_step: Option<u64>,
    /// The virtual time (ms since the run started) of that step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_violation_ms: Option<u64>,
}

impl Verdict {
    fn new(name: &str, description: &str) -> Self {
        Verdict {
            name: name.to_string(),
            description: description.to_string(),
            passed: true,
            checked: 0,
            violations: 0,
            counterexamples: Vec::new(),
            first_violation_step: None,
            first_violation_ms: None,
        }
    }

    fn violate(&mut self, example: impl FnOnce() -> String) {
        self.passed = false;
        self.violations += 1;
        if self.counterexamples.len() < COUNTEREXAMPLES_MAX {
            self.counterexamples.push(example());
        }
    }
}

/// Digest of a plaintext (FNV-1a, 64 bit): enough to tell a wrong
/// decryption from the right one without keeping every plaintext.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Delivery statistics the report shows beside the verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryStats {
    /// Messages clients started to send.
    pub messages_started: u64,
    /// Messages a home relay accepted.
    pub messages_accepted: u64,
    /// (message, device) pairs owed, over accepted messages.
    pub deliveries_expected: u64,
    /// (message, device) pairs delivered (first copies).
    pub deliveries: u64,
    /// Copies of an already processed mailbox entry (after a lost ack).
    pub refetches: u64,
    /// Copies delivered out of send order where order is not promised
    /// (sender and recipient on different relays).
    pub reordered_remote: u64,
    /// Delivery-failure notices clients received (expired or refused
    /// envelopes).
    pub failure_notices: u64,
    /// Sends the home relay refused for good.
    pub rejected_sends: u64,
}

/// The ledger and the invariants.
#[derive(Debug, Default)]
pub struct Checker {
    messages: Vec<MessageRecord>,
    /// (sender, recipient, conversation) → highest sender_seq received,
    /// for the order check. Never iterated, so hash order cannot leak.
    last_seq: HashMap<(DeviceIx, DeviceIx, Conversation), u64>,
    order: Verdict,
    plaintext: Verdict,
    stats: DeliveryStats,
    unknown_receipts: u64,
    /// The step being handled and its virtual time, set by the harness.
    step: u64,
    step_ms: u64,
    /// First (step, ms) at which a device held two entries of one message,
    /// or one it was not addressed to; and at which a copy failed to decrypt.
    first_duplicate: Option<(u64, u64)>,
    first_undecryptable: Option<(u64, u64)>,
}

/// Facts about a copy reaching a device, before decryption.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The message index (as returned by [`Checker::record_send`]).
    pub message: usize,
    /// The receiving device.
    pub device: DeviceIx,
    /// The mailbox entry it came from.
    pub entry: u64,
    /// When it arrived.
    pub at_ms: u64,
    /// True when sender and recipient share a home relay, where the
    /// mailbox promises FIFO order.
    pub order_promised: bool,
}

/// Facts about a received copy, reported by the harness.
#[derive(Debug, Clone, Copy)]
pub struct ReceiptFacts {
    /// The message index (as returned by [`Checker::record_send`]).
    pub message: usize,
    /// The receiving device.
    pub device: DeviceIx,
    /// The mailbox entry it came from.
    pub entry: u64,
    /// When it was processed.
    pub at_ms: u64,
    /// What decryption gave.
    pub opened: Opened,
    /// True when sender and recipient share a home relay, where the
    /// mailbox promises FIFO order.
    pub order_promised: bool,
}

impl Checker {
    /// An empty ledger.
    pub fn new() -> Self {
        Checker {
            order: Verdict::new(
                "per_sender_order",
                "a device receives a same-relay sender's messages of one conversation in send order",
            ),
            plaintext: Verdict::new(
                "no_plaintext_at_rest",
                "no relay store holds any message plaintext",
            ),
            ..Default::default()
        }
    }

    /// Tells the checker which step of the run the facts that follow
    /// belong to (`ms`: virtual time since the run started).
    pub fn at_step(&mut self, step: u64, ms: u64) {
        self.step = step;
        self.step_ms = ms;
    }

    /// Records a send the client started; returns the message index.
    pub fn record_send(
        &mut self,
        sender: DeviceIx,
        conversation: Conversation,
        mut recipients: Vec<DeviceIx>,
        sender_seq: u64,
        started_ms: u64,
        plaintext: &[u8],
    ) -> usize {
        recipients.sort_unstable();
        self.messages.push(MessageRecord {
            sender,
            conversation,
            recipients: recipients.into_boxed_slice(),
            sender_seq,
            started_ms,
            accepted_ms: None,
            plaintext_digest: digest(plaintext),
            receipts: Vec::new(),
        });
        self.stats.messages_started += 1;
        self.messages.len() - 1
    }

    /// Records that the home relay accepted message `ix` (first time only).
    pub fn record_accept(&mut self, ix: usize, at_ms: u64) {
        if let Some(m) = self.messages.get_mut(ix)
            && m.accepted_ms.is_none()
        {
            m.accepted_ms = Some(at_ms);
            self.stats.messages_accepted += 1;
        }
    }

    /// Records a received copy. Returns the send-to-deliver latency of a
    /// first delivery, `None` for a re-fetch or an unknown message.
    pub fn record_receipt(&mut self, r: ReceiptFacts) -> Option<u64> {
        let latency = self.record_arrival(Arrival {
            message: r.message,
            device: r.device,
            entry: r.entry,
            at_ms: r.at_ms,
            order_promised: r.order_promised,
        });
        self.record_opened(r.message, r.device, r.entry, r.opened);
        latency
    }

    /// Records that a copy reached a device; what it decrypts to follows
    /// with [`Checker::record_opened`] (deterministic mode decrypts in
    /// batches, in parallel). Returns the send-to-deliver latency of a first
    /// delivery, `None` for a re-fetch or an unknown message.
    pub fn record_arrival(&mut self, r: Arrival) -> Option<u64> {
        let Some(m) = self.messages.get_mut(r.message) else {
            self.unknown_receipts += 1;
            return None;
        };
        if m.receipts
            .iter()
            .any(|x| x.device == r.device && x.entry == r.entry)
        {
            self.stats.refetches += 1;
            return None;
        }
        let first = !m.receipts.iter().any(|x| x.device == r.device);
        if (!first || !m.recipients.contains(&r.device)) && self.first_duplicate.is_none() {
            self.first_duplicate = Some((self.step, self.step_ms));
        }
        m.receipts.push(Receipt {
            device: r.device,
            entry: r.entry,
            at_ms: r.at_ms,
            decrypted: None,
        });
        if first {
            self.stats.deliveries += 1;
        }
        let key = (m.sender, r.device, m.conversation);
        let seq = m.sender_seq;
        let sender = m.sender;
        let conversation = m.conversation;
        let message = r.message;
        if let Some(&last) = self.last_seq.get(&key)
            && seq < last
        {
            if r.order_promised {
                if self.order.first_violation_step.is_none() {
                    (
                        self.order.first_violation_step,
                        self.order.first_violation_ms,
                    ) = (Some(self.step), Some(self.step_ms));
                }
                self.order.violate(|| {
                    format!(
                        "device {} got message {message} (sender {sender} seq {seq}, {conversation:?}) after seq {last}",
                        r.device
                    )
                });
            } else {
                self.stats.reordered_remote += 1;
            }
        }
        if r.order_promised {
            self.order.checked += 1;
        }
        let e = self.last_seq.entry(key).or_insert(seq);
        *e = (*e).max(seq);
        first.then(|| r.at_ms.saturating_sub(m.started_ms))
    }

    /// Records what decrypting the copy from `entry` at `device` gave.
    pub fn record_opened(&mut self, message: usize, device: DeviceIx, entry: u64, opened: Opened) {
        let Some(m) = self.messages.get_mut(message) else {
            return;
        };
        let ok = opened == Opened::Plaintext(m.plaintext_digest);
        if !ok && self.first_undecryptable.is_none() {
            self.first_undecryptable = Some((self.step, self.step_ms));
        }
        if let Some(r) = m
            .receipts
            .iter_mut()
            .find(|x| x.device == device && x.entry == entry)
        {
            r.decrypted = Some(ok);
        }
    }

    /// Records a copy of an already processed mailbox entry (fetched again
    /// after a lost ack or a late reply); the client skips it.
    pub fn note_refetch(&mut self) {
        self.stats.refetches += 1;
    }

    /// Records an envelope that names no message the simulation sent.
    pub fn note_unknown_receipt(&mut self) {
        self.unknown_receipts += 1;
    }

    /// Records that a relay store was scanned; `found` describes any
    /// plaintext found (empty when clean).
    pub fn record_store_scan(&mut self, relay: usize, found: &[String]) {
        self.plaintext.checked += 1;
        if !found.is_empty() && self.plaintext.first_violation_step.is_none() {
            (
                self.plaintext.first_violation_step,
                self.plaintext.first_violation_ms,
            ) = (Some(self.step), Some(self.step_ms));
        }
        for f in found {
            self.plaintext
                .violate(|| format!("relay r{relay} store holds plaintext: {f}"));
        }
    }

    /// Number of messages recorded.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// The record of message `ix`.
    pub fn message(&self, ix: usize) -> Option<&MessageRecord> {
        self.messages.get(ix)
    }

    /// Judges every invariant. `describe_device` names a device in
    /// counterexamples (e.g. `u3@r1/d2`).
    pub fn verdicts(&mut self, describe_device: &dyn Fn(DeviceIx) -> String) -> Vec<Verdict> {
        let mut no_loss = Verdict::new(
            "no_loss",
            "every accepted message reached every intended device once faults healed",
        );
        let mut once = Verdict::new(
            "at_most_once",
            "no device received a message from two mailbox entries",
        );
        let mut decrypts = Verdict::new(
            "decrypts_to_sent",
            "every delivered copy decrypted to the plaintext sent",
        );
        let mut expected = 0u64;
        for (ix, m) in self.messages.iter().enumerate() {
            // Per device: how many distinct entries, and did each decrypt.
            let mut per_device: BTreeMap<DeviceIx, (u32, u64)> = BTreeMap::new();
            for r in &m.receipts {
                let e = per_device.entry(r.device).or_insert((0, r.at_ms));
                e.0 += 1;
                decrypts.checked += 1;
                if r.decrypted != Some(true) {
                    let what = if r.decrypted.is_none() {
                        "could not be decrypted (no key arrived)"
                    } else {
                        "did not decrypt to what was sent"
                    };
                    decrypts.violate(|| {
                        format!(
                            "message {ix} from {} to {} (entry {}) {what}",
                            describe_device(m.sender),
                            describe_device(r.device),
                            r.entry
                        )
                    });
                }
            }
            for (&device, &(count, _)) in &per_device {
                once.checked += 1;
                if count > 1 {
                    once.violate(|| {
                        format!(
                            "message {ix} from {} reached {} {count} times",
                            describe_device(m.sender),
                            describe_device(device)
                        )
                    });
                }
                if !m.recipients.contains(&device) {
                    once.violate(|| {
                        format!(
                            "message {ix} reached {}, which it was not addressed to",
                            describe_device(device)
                        )
                    });
                }
            }
            let Some(accepted) = m.accepted_ms else {
                continue;
            };
            for &device in m.recipients.iter() {
                expected += 1;
                no_loss.checked += 1;
                if !per_device.contains_key(&device) {
                    no_loss.violate(|| {
                        format!(
                            "message {ix} from {} ({:?}, accepted at {accepted} ms) never reached {}",
                            describe_device(m.sender),
                            m.conversation,
                            describe_device(device)
                        )
                    });
                }
            }
        }
        self.stats.deliveries_expected = expected;
        if self.unknown_receipts > 0 {
            let n = self.unknown_receipts;
            once.violate(|| format!("{n} received envelopes matched no message sent"));
        }
        for (verdict, first) in [
            (&mut once, self.first_duplicate),
            (&mut decrypts, self.first_undecryptable),
        ] {
            if !verdict.passed {
                (verdict.first_violation_step, verdict.first_violation_ms) =
                    (first.map(|f| f.0), first.map(|f| f.1));
            }
        }
        vec![
            no_loss,
            once,
            decrypts,
            self.plaintext.clone(),
            self.order.clone(),
        ]
    }

    /// The delivery statistics (complete after [`Checker::verdicts`]).
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// Delivery times of first copies, for the delivery-over-time plot.
    pub fn first_delivery_times(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for m in &self.messages {
            let mut seen: Vec<DeviceIx> = Vec::new();
            for r in &m.receipts {
                if !seen.contains(&r.device) {
                    seen.push(r.device);
                    out.push(r.at_ms);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(d: DeviceIx) -> String {
        format!("d{d}")
    }

    fn receipt(message: usize, device: DeviceIx, entry: u64, opened: Opened) -> ReceiptFacts {
        ReceiptFacts {
            message,
            device,
            entry,
            at_ms: 10,
            opened,
            order_promised: true,
        }
    }

    /// Safety violations carry the step they were first seen at (set by
    /// the harness before each event); a clean invariant carries none.
    #[test]
    fn violations_name_the_step_they_were_first_seen_at() {
        let mut c = Checker::new();
        let d = digest(b"hi");
        let first = c.record_send(0, Conversation::Direct(1), vec![1], 0, 0, b"hi");
        let second = c.record_send(0, Conversation::Direct(1), vec![1], 1, 0, b"hi");
        c.record_accept(first, 1);
        c.record_accept(second, 1);
        c.at_step(3, 30);
        c.record_receipt(receipt(second, 1, 1, Opened::Plaintext(d)));
        c.at_step(5, 50);
        // Seq 0 after seq 1 on one relay: order broken here.
        c.record_receipt(receipt(first, 1, 2, Opened::Plaintext(d)));
        c.at_step(8, 80);
        // The same message from a second entry: a duplicate, and garbage.
        c.record_receipt(receipt(first, 1, 9, Opened::Failed));
        c.at_step(9, 90);
        c.record_receipt(receipt(first, 1, 10, Opened::Failed));
        let verdicts = c.verdicts(&name);
        let step = |n: &str| {
            let v = verdicts.iter().find(|v| v.name == n).unwrap();
            (v.passed, v.first_violation_step, v.first_violation_ms)
        };
        assert_eq!(step("per_sender_order"), (false, Some(5), Some(50)));
        assert_eq!(step("at_most_once"), (false, Some(8), Some(80)));
        assert_eq!(step("decrypts_to_sent"), (false, Some(8), Some(80)));
        assert_eq!(step("no_plaintext_at_rest"), (true, None, None));
        assert_eq!(step("no_loss"), (true, None, None));
    }

    #[test]
    fn clean_run_passes_every_invariant() {
        let mut c = Checker::new();
        let m = c.record_send(0, Conversation::Direct(1), vec![1, 2], 0, 0, b"hi");
        c.record_accept(m, 1);
        let d = digest(b"hi");
        assert_eq!(
            c.record_receipt(receipt(m, 1, 7, Opened::Plaintext(d))),
            Some(10)
        );
        c.record_receipt(receipt(m, 2, 3, Opened::Plaintext(d)));
        // Same entry again after a lost ack: a re-fetch, not a duplicate.
        assert_eq!(
            c.record_receipt(receipt(m, 2, 3, Opened::Plaintext(d))),
            None
        );
        c.record_store_scan(0, &[]);
        let v = c.verdicts(&name);
        assert!(v.iter().all(|v| v.passed), "{v:#?}");
        assert_eq!(c.stats().refetches, 1);
    }

    #[test]
    fn missing_duplicate_and_garbled_deliveries_fail_with_counterexamples() {
        let mut c = Checker::new();
        let d = digest(b"x");
        let lost = c.record_send(0, Conversation::Direct(1), vec![1], 0, 0, b"x");
        c.record_accept(lost, 1);
        let dup = c.record_send(0, Conversation::Direct(1), vec![1], 1, 0, b"x");
        c.record_accept(dup, 1);
        c.record_receipt(receipt(dup, 1, 1, Opened::Plaintext(d)));
        c.record_receipt(receipt(dup, 1, 2, Opened::Plaintext(d)));
        let bad = c.record_send(0, Conversation::Direct(1), vec![1], 2, 0, b"x");
        c.record_accept(bad, 1);
        c.record_receipt(receipt(bad, 1, 3, Opened::Failed));
        c.record_store_scan(2, &["mailbox entry 5".to_string()]);
        let v = c.verdicts(&name);
        let failed: Vec<_> = v
            .iter()
            .filter(|v| !v.passed)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            failed,
            [
                "no_loss",
                "at_most_once",
                "decrypts_to_sent",
                "no_plaintext_at_rest"
            ]
        );
        assert!(v[0].counterexamples[0].contains("never reached d1"));
    }

    #[test]
    fn out_of_order_is_a_violation_only_where_promised() {
        let mut c = Checker::new();
        let d = digest(b"x");
        let a = c.record_send(0, Conversation::Direct(1), vec![1], 0, 0, b"x");
        let b = c.record_send(0, Conversation::Direct(1), vec![1], 1, 0, b"x");
        let mut rb = receipt(b, 1, 1, Opened::Plaintext(d));
        rb.order_promised = false;
        let mut ra = receipt(a, 1, 2, Opened::Plaintext(d));
        ra.order_promised = false;
        c.record_receipt(rb);
        c.record_receipt(ra);
        assert_eq!(c.stats.reordered_remote, 1);
        let x = c.record_send(5, Conversation::Direct(6), vec![6], 0, 0, b"x");
        let y = c.record_send(5, Conversation::Direct(6), vec![6], 1, 0, b"x");
        c.record_receipt(receipt(y, 6, 1, Opened::Plaintext(d)));
        c.record_receipt(receipt(x, 6, 2, Opened::Plaintext(d)));
        let v = c.verdicts(&name);
        assert!(!v[4].passed);
    }
}
