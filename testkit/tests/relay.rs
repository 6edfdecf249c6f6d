//! The kit's transport is the relay's own rules, not a lenient fake.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier_client::transport::Transport;
use courier_client::{TransportError, wire};
use courier_crypto::Identity;
use courier_protocol::api::RegisterRequest;
use courier_protocol::{Address, ErrorCode, Username};
use courier_testkit::Network;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn register_request(identity: &Identity, signer: &Identity) -> RegisterRequest {
    let user = Username::parse("alice").unwrap();
    let keys = wire::device_keys(identity);
    let address = Address::new(user.clone(), "relay-a.example".parse().unwrap());
    RegisterRequest {
        username: user,
        invite: None,
        device: keys.clone(),
        device_list: wire::first_device_list(signer, address, &keys),
    }
}

#[tokio::test]
async fn a_device_list_signed_by_another_key_is_refused_by_the_relay() {
    let net = Network::new();
    let transport = net.transport("relay-a.example").unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let (identity, other) = (Identity::generate(&mut rng), Identity::generate(&mut rng));

    let err = transport
        .register(&register_request(&identity, &other))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Api(e) if e.code == ErrorCode::InvalidSignature),
        "{err}"
    );
    let ok = transport
        .register(&register_request(&identity, &identity))
        .await
        .unwrap();
    assert_eq!(ok.address.to_string(), "alice@relay-a.example");
}

#[tokio::test]
async fn a_down_relay_is_unreachable_and_its_mail_waits_in_the_senders_outbox() {
    let net = Network::new();
    let (alice, _) = courier_testkit::fixtures::user(&net, "alice", "relay-a.example", 1)
        .await
        .unwrap();
    let (bob, b) = courier_testkit::fixtures::user(&net, "bob", "relay-b.example", 2)
        .await
        .unwrap();
    // Alice knows bob's keys before his relay goes away.
    alice.send(&b, "first").await.unwrap();
    assert_eq!(bob.recv().await.unwrap().len(), 1);

    net.set_relay_down("relay-b.example", true).await;
    alice.send(&b, "while down").await.unwrap();
    assert!(matches!(
        bob.recv().await.unwrap_err(),
        courier_client::Error::RelayUnreachable(_)
    ));
    net.set_relay_down("relay-b.example", false).await;
    // The outbox retries with the relay's own backoff, on the relays' clock.
    assert_eq!(net.pending(&b, courier_protocol::DeviceId(1)).await, 0);
    net.advance(60_000).await;
    assert_eq!(net.pending(&b, courier_protocol::DeviceId(1)).await, 1);
    assert_eq!(bob.recv().await.unwrap()[0].text, "while down");
}
