//! Security regression tests: mailbox.
//!
//! Audit #13 item 1 (mailbox pinning) and item 5 (envelope-id squatting),
//! each performed against real `courier serve` processes over HTTP (and,
//! for squatting across relays, QUIC federation). Item 14 (what the
//! database reveals of senders) is a store-level test:
//! `store-sql/tests/conformance.rs`,
//! `the_database_does_not_reveal_the_sender_of_an_undelivered_message`.

use std::time::{Duration, Instant};

use crate::common::device::Device;
use courier_protocol::{DeviceId, EnvelopeId};

use crate::common::{Relay, envelope_id};

/// Generous: federation peering and drain in the background.
const WAIT: Duration = Duration::from_secs(30);

/// The error code of a refused send, or `None` if it was accepted.
async fn send_code(from: &Device, id: EnvelopeId, body: &[u8], to: &Device) -> Option<String> {
    match from
        .send_with_status(id, body.to_vec(), &[(to.address.clone(), to.device)])
        .await
    {
        Ok(_) => None,
        Err((status, error)) => Some(format!("{status} {}", error.code)),
    }
}

/// Mallory fills Bob's mailbox with envelopes his client cannot process (so
/// never acks). Without a per-source share that pins the mailbox at
/// `mailbox_depth_max` and every other sender gets `mailbox_full` for as
/// long as the envelopes live; with it Mallory is refused with
/// `mailbox_quota` at her share and Alice still gets through.
#[tokio::test]
async fn one_sender_cannot_pin_a_mailbox_with_mail_that_is_never_acked() {
    let relay = Relay::start(
        &[],
        &[
            ("COURIER_RELAY_MAILBOX_DEPTH_MAX", "12"),
            ("COURIER_RELAY_MAILBOX_PER_SOURCE_MAX", "4"),
        ],
    );
    let bob = relay.user("bob").await;
    let mallory = relay.user("mallory").await;
    let alice = relay.user("alice").await;
    // Unprocessable for Bob's client: a group tag naming a sender-key chain
    // it never received (the relay sees only opaque bytes either way).
    let junk = b"group:unknown-chain-7f3a:ciphertext";
    let mut accepted = 0;
    let refusal = loop {
        match send_code(&mallory, envelope_id(), junk, &bob).await {
            None => accepted += 1,
            Some(code) => break code,
        }
        assert!(accepted <= 12, "never refused: the mailbox is pinned");
    };
    assert_eq!(refusal, "507 mailbox_quota", "after {accepted} accepted");
    assert_eq!(accepted, 4, "refused exactly at her share");
    // A second sender still gets through.
    let hello = envelope_id();
    assert_eq!(send_code(&alice, hello, b"hello bob", &bob).await, None);
    let inbox = bob.fetch(0, 50).await.unwrap();
    assert_eq!(inbox.envelopes.len(), 5);
    let last = inbox.envelopes.last().unwrap();
    assert_eq!(last.id, hello);
    assert_eq!(last.body.as_slice(), b"hello bob");
    // Bob acking (or the entries expiring) gives Mallory her share back.
    bob.ack(vec![inbox.envelopes[0].seq]).await.unwrap();
    assert_eq!(send_code(&mallory, envelope_id(), junk, &bob).await, None);
    assert_eq!(
        send_code(&mallory, envelope_id(), junk, &bob)
            .await
            .as_deref(),
        Some("507 mailbox_quota")
    );
}

/// Mallory learned (or guessed) the id of a message Alice will send Bob
/// and stores it first. Deduplication is per source, so Alice's message is
/// still accepted and delivered; her retry is still a duplicate.
#[tokio::test]
async fn a_squatted_envelope_id_does_not_block_the_real_message() {
    let relay = Relay::start(&[], &[]);
    let bob = relay.user("bob").await;
    let mallory = relay.user("mallory").await;
    let alice = relay.user("alice").await;
    let id = envelope_id();
    assert_eq!(send_code(&mallory, id, b"squat", &bob).await, None);
    let sent = alice
        .send(id, b"real".to_vec(), &[(bob.address.clone(), bob.device)])
        .await
        .expect("the real message is accepted, not a conflict");
    let retry = alice
        .send(id, b"real".to_vec(), &[(bob.address.clone(), bob.device)])
        .await
        .unwrap();
    assert_eq!(
        retry.accepted_ms, sent.accepted_ms,
        "a retry from the same sender stays idempotent"
    );
    assert_eq!(
        send_code(&alice, id, b"changed", &bob).await.as_deref(),
        Some("409 conflict"),
        "the same sender reusing the id for other content is a conflict"
    );
    let inbox = bob.fetch(0, 10).await.unwrap();
    let bodies: Vec<&[u8]> = inbox.envelopes.iter().map(|e| e.body.as_slice()).collect();
    assert_eq!(bodies, [&b"squat"[..], &b"real"[..]], "delivered once");
}

/// Across relays: Mallory, through her account on B, stores for Bob an
/// envelope id that Alice on relay A then uses for a message to Mallory
/// (on A) and Bob (on B) — as a co-recipient who learned the id, or by a
/// guess, she holds it on B before A's delivery arrives. When A delivers, B
/// takes Alice's envelope (source: relay A) as a message of its own, not a
/// conflict: Bob gets it, and Alice gets no delivery-failure notice.
#[tokio::test]
async fn a_co_recipient_cannot_squat_an_id_on_the_destination_relay() {
    let relay_a = Relay::start_federating("relay-a.test", &[]);
    let relay_b = Relay::start_federating("relay-b.test", &[]);
    let alice = relay_a.user("alice").await;
    let mallory_a = relay_a.user("mallory").await;
    let mallory_b = relay_b.user("mallory").await;
    let bob = relay_b.user("bob").await;

    // A sends only to relays it can route to (audit item 4), so peer first.
    let out = relay_a.admin(&["peer", "add", &relay_b.full_address()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Mallory stores the id for Bob on B first: she learned it as a
    // co-recipient of an earlier copy, or guessed it (the relay cannot
    // tell; either way B holds that id from her before A delivers).
    let id = envelope_id();
    assert_eq!(send_code(&mallory_b, id, b"squat", &bob).await, None);
    let to = [
        (mallory_a.address.clone(), mallory_a.device),
        (bob.address.clone(), DeviceId(1)),
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        match alice.send(id, b"real".to_vec(), &to).await {
            Ok(_) => break,
            // The route to B is published once the peer book has it.
            Err(courier_client::TransportError::Api(error))
                if error.code == courier_protocol::ErrorCode::UnknownRelay
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("Alice's send failed: {e}"),
        }
    }
    let copy = mallory_a.fetch(0, 10).await.unwrap();
    assert_eq!(copy.envelopes[0].id, id, "the co-recipient has the id");

    let deadline = Instant::now() + WAIT;
    let inbox = loop {
        let inbox = bob.fetch(0, 10).await.unwrap();
        if inbox.envelopes.len() >= 2 {
            break inbox;
        }
        assert!(
            Instant::now() < deadline,
            "Alice's envelope never reached Bob: {:?}",
            inbox.envelopes
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let real = inbox
        .envelopes
        .iter()
        .find(|e| e.origin.as_str() == "relay-a.test")
        .expect("Alice's envelope was delivered");
    assert_eq!(real.id, id);
    assert_eq!(real.body.as_slice(), b"real");
    // Delivered, so Alice's outbox entry is gone without a failure notice.
    let notices = alice.fetch(0, 10).await.unwrap();
    assert!(
        notices.envelopes.is_empty(),
        "Alice was told her message failed: {:?}",
        notices.envelopes
    );
}
