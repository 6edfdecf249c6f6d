//! Security regression tests: fed — attacks by federation peers and by
//! senders against the federation (audit items 4, 11, 12, 13).
//!
//! The victim is a real `courier serve`; the attacking peer is an in-process
//! federation swarm ([`courier_node::federation::spawn`]) speaking the real
//! protocol over QUIC on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use courier_node::federation::{self, Handle, Inbound};
use courier_protocol::{
    AckStatus, BundleRequest, BundleResponse, Bytes, DeliveryAcks, DeliveryBatch, DeviceId,
    EnvelopeKind, ErrorCode, FedEnvelope, FedRecipient, RelayName,
};
use courier_relay::federation::Federation;
use libp2p::Multiaddr;
use libp2p::identity::Keypair;

use crate::common::{Relay, envelope_id, expect_error};

const WAIT: Duration = Duration::from_secs(30);

/// A `courier serve` named `name` with open registration, listening for
/// federation on a known port; returns it and its `/p2p/` multiaddr.
fn victim(name: &str, envs: &[(&str, &str)]) -> (Relay, Multiaddr) {
    // The outbox depth these tests read from /metrics must be current, not
    // the stats cache's (item 16) figure of up to 5 s ago.
    let mut envs = envs.to_vec();
    envs.push(("COURIER_HTTP_STATS_CACHE_MS", "0"));
    let relay = Relay::start_federating(name, &envs);
    let addr = relay.full_address().parse().unwrap();
    (relay, addr)
}

/// An attacking peer's inbound side: answers nothing useful.
struct Mute;

#[async_trait::async_trait]
impl Inbound for Mute {
    async fn deliver(&self, _from: RelayName, batch: DeliveryBatch) -> DeliveryAcks {
        courier_relay::federation::reject_all(&batch, ErrorCode::Unavailable)
    }

    async fn bundle(&self, _from: RelayName, _request: BundleRequest) -> BundleResponse {
        Err(courier_protocol::ApiError::new(ErrorCode::Unavailable))
    }
}

/// An in-process federation peer called `name` with its own key.
async fn peer(name: &str, key: Keypair) -> Handle {
    let config = federation::Config::new(RelayName::parse(name).unwrap(), key);
    federation::spawn(config, Arc::new(Mute)).await.unwrap().0
}

fn envelope(to: &str, kind: EnvelopeKind) -> FedEnvelope {
    let now = courier_relay::Clock::now_ms(&courier_relay::SystemClock);
    FedEnvelope {
        id: envelope_id(),
        body: Bytes::from(br#"{"id":"forged","recipients":[]}"#.to_vec()),
        recipients: vec![FedRecipient {
            user: to.parse().unwrap(),
            device: DeviceId(1),
            header: Bytes::default(),
        }],
        expires_ms: now + 60_000,
        kind,
    }
}

/// Item 12: a peer delivering a `delivery_failure` "notice" over QUIC gets
/// it refused with `envelope_kind_refused`, and the victim's mailbox stays
/// empty; a real message in the same batch is still stored.
#[tokio::test]
async fn peer_delivering_a_forged_delivery_failure_notice_is_refused_and_nothing_is_stored() {
    let (relay, addr) = victim("relay-v.test", &[]);
    let bob = relay.user("bob").await;
    let mallory = peer("relay-m.test", Keypair::generate_ed25519()).await;
    mallory.add_peer(addr).await.unwrap();

    let batch = DeliveryBatch {
        origin: RelayName::parse("relay-m.test").unwrap(),
        envelopes: vec![
            envelope("bob", EnvelopeKind::DeliveryFailure),
            envelope("bob", EnvelopeKind::Message),
        ],
    };
    let acks = tokio::time::timeout(WAIT, mallory.deliver(&relay.name, batch))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        acks.acks[0].status,
        AckStatus::Rejected(ErrorCode::EnvelopeKindRefused)
    );
    assert_eq!(acks.acks[1].status, AckStatus::Accepted);
    let mailbox = bob.fetch(0, 100).await.unwrap().envelopes;
    assert_eq!(mailbox.len(), 1, "only the message is stored");
    assert_eq!(mailbox[0].kind, EnvelopeKind::Message);
    mallory.shutdown().await;
}

/// The victim's outbox depth, from its `/metrics` (read from the store).
async fn outbox_depth(relay: &Relay) -> u64 {
    let text = relay.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("courier_outbox_depth "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or_else(|| panic!("no courier_outbox_depth in:\n{text}"))
}

/// POSTs a message from `from` to `to` (device 1 each) and returns the
/// response.
async fn send_to(
    relay: &Relay,
    from: &crate::common::device::Device,
    to: &[&str],
) -> reqwest::Response {
    let to: Vec<(courier_protocol::Address, DeviceId)> = to
        .iter()
        .map(|a| (courier_protocol::Address::parse(a).unwrap(), DeviceId(1)))
        .collect();
    relay
        .req(reqwest::Method::POST, "/v1/messages")
        .bearer_auth(from.access_token())
        .json(&crate::common::device::message(
            envelope_id(),
            b"x".to_vec(),
            &to,
        ))
        .send()
        .await
        .unwrap()
}

/// Item 4: one send naming 1,000 recipients on 1,000 invented relays (the
/// audit's attack named 5,000 over five requests and kept a core busy for
/// a quarter of an hour) is refused with `unknown_relay`, naming the
/// relays, and puts nothing in the outbox; a mixed send is refused whole.
#[tokio::test]
async fn a_send_to_invented_relays_is_refused_with_unknown_relay_and_queues_nothing() {
    let (relay, addr) = victim("relay-v.test", &[]);
    let alice = relay.user("alice").await;
    relay.user("bob").await;
    let real = peer("relay-p.test", Keypair::generate_ed25519()).await;
    real.add_peer(addr).await.unwrap();

    let invented: Vec<String> = (0..1000).map(|i| format!("bob@fake-{i}.test")).collect();
    let to: Vec<&str> = invented.iter().map(String::as_str).collect();
    let body = expect_error(send_to(&relay, &alice, &to).await, 404, "unknown_relay").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("fake-0.test"), "{message}");
    assert!(message.contains("(and 995 more)"), "{message}");
    assert_eq!(outbox_depth(&relay).await, 0);

    // One invented relay among real recipients: refused whole, nothing
    // stored anywhere (not even for the local or the routable recipient).
    let mixed = ["bob@relay-v.test", "carol@relay-p.test", "dave@fake-x.test"];
    let body = expect_error(send_to(&relay, &alice, &mixed).await, 404, "unknown_relay").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fake-x.test")
    );
    assert_eq!(outbox_depth(&relay).await, 0);

    // A relay in the peer book is routable: accepted into the outbox.
    let response = send_to(&relay, &alice, &["carol@relay-p.test"]).await;
    assert_eq!(response.status(), 201);
    assert_eq!(outbox_depth(&relay).await, 1);
    real.shutdown().await;
}

/// Item 4: outbox entries and destination relays are capped per account
/// (`outbox_quota`) and in total (`outbox_full`), with mail for peers that
/// keep refusing it piling up in the outbox.
#[tokio::test]
async fn outbox_caps_refuse_sends_beyond_the_account_and_relay_limits() {
    let (relay, addr) = victim(
        "relay-v.test",
        &[
            ("COURIER_RELAY_OUTBOX_PER_ACCOUNT_MAX", "3"),
            ("COURIER_RELAY_OUTBOX_DESTINATIONS_PER_ACCOUNT_MAX", "1"),
            ("COURIER_RELAY_OUTBOX_MAX", "5"),
            ("COURIER_RELAY_OUTBOX_DESTINATIONS_MAX", "2"),
        ],
    );
    let alice = relay.user("alice").await;
    let carol = relay.user("carol").await;
    let dave = relay.user("dave").await;
    // Two real peers that answer every delivery with a passing refusal:
    // the entries stay in the outbox, retried.
    let p = peer("relay-p.test", Keypair::generate_ed25519()).await;
    let q = peer("relay-q.test", Keypair::generate_ed25519()).await;
    let r = peer("relay-r.test", Keypair::generate_ed25519()).await;
    for peer in [&p, &q, &r] {
        peer.add_peer(addr.clone()).await.unwrap();
    }

    let accepted = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    };
    for _ in 0..3 {
        accepted(send_to(&relay, &alice, &["x@relay-p.test"]).await).await;
    }
    // A fourth entry for alice.
    expect_error(
        send_to(&relay, &alice, &["x@relay-p.test"]).await,
        507,
        "outbox_quota",
    )
    .await;
    // Carol's first destination, then a second one for her.
    accepted(send_to(&relay, &carol, &["x@relay-q.test"]).await).await;
    expect_error(
        send_to(&relay, &carol, &["x@relay-p.test"]).await,
        507,
        "outbox_quota",
    )
    .await;
    // A third destination relay overall; then the fifth and last entry.
    expect_error(
        send_to(&relay, &dave, &["x@relay-r.test"]).await,
        507,
        "outbox_full",
    )
    .await;
    accepted(send_to(&relay, &dave, &["x@relay-q.test"]).await).await;
    expect_error(
        send_to(&relay, &dave, &["x@relay-q.test"]).await,
        507,
        "outbox_full",
    )
    .await;
    assert_eq!(outbox_depth(&relay).await, 5);
    // Local mail is not the outbox's: still accepted.
    let local = format!("dave@{}", relay.name);
    accepted(send_to(&relay, &carol, &[local.as_str()]).await).await;
    for peer in [p, q, r] {
        peer.shutdown().await;
    }
}
