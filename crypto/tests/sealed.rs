//! Sealed sender.

mod common;

use common::{Device, established, rng};
use courier_crypto::{Error, PreKeyMessage, SenderAddress, Session, sealed};

fn alice_address() -> SenderAddress {
    SenderAddress {
        address: "alice@relay-a.example".into(),
        device: 3,
    }
}

#[test]
fn seal_open_and_check_against_the_new_session() {
    let mut rng = rng(40);
    let alice = Device::new(&mut rng);
    let bob = Device::new(&mut rng);
    let mut a = Session::initiate(&alice.identity, &bob.bundle(true), &mut rng).unwrap();
    let m = a.encrypt(b"sealed hello", &mut rng).unwrap();
    let envelope = sealed::seal(
        &alice.identity,
        &alice_address(),
        bob.identity.public(),
        &m,
        &mut rng,
    )
    .unwrap();
    // Nothing about the sender is visible in the envelope.
    let alice_key = alice.identity.public().signing_key();
    assert!(!envelope.windows(32).any(|w| w == alice_key));
    assert!(!envelope.windows(5).any(|w| w == b"alice"));

    let unsealed = sealed::open(&bob.identity, &envelope).unwrap();
    assert_eq!(unsealed.sender, alice_address());
    let pm = PreKeyMessage::from_bytes(&unsealed.content).unwrap();
    let (mut b, pt) = Session::respond(
        &bob.identity,
        &bob.signed_prekey,
        Some(&bob.one_time_prekeys[0]),
        &pm,
    )
    .unwrap();
    assert_eq!(pt, b"sealed hello");
    unsealed.verify_sender(b.remote_identity()).unwrap();

    // Later messages: Unsealed::decrypt checks the sender itself.
    let m2 = a.encrypt(b"second", &mut rng).unwrap();
    let env2 = sealed::seal(
        &alice.identity,
        &alice_address(),
        bob.identity.public(),
        &m2,
        &mut rng,
    )
    .unwrap();
    assert_eq!(
        sealed::open(&bob.identity, &env2)
            .unwrap()
            .decrypt(&mut b)
            .unwrap(),
        b"second"
    );
}

#[test]
fn a_sealed_sender_that_differs_from_the_session_identity_is_rejected() {
    let mut rng = rng(41);
    let (mut a, mut b) = established(&mut rng, true);
    let mallory = Device::new(&mut rng);
    let m = a.encrypt(b"from alice", &mut rng).unwrap();
    // Mallory re-seals Alice's message under her own identity.
    let unsealed = courier_crypto::Unsealed {
        sender: alice_address(),
        sender_identity: mallory.identity.public().clone(),
        content: m.clone(),
    };
    assert_eq!(unsealed.decrypt(&mut b), Err(Error::SenderMismatch));
    // The session is untouched and the genuine message still decrypts.
    assert_eq!(b.decrypt(&m).unwrap(), b"from alice");
}

#[test]
fn envelopes_for_someone_else_or_tampered_fail_to_open() {
    let mut rng = rng(42);
    let alice = Device::new(&mut rng);
    let bob = Device::new(&mut rng);
    let carol = Device::new(&mut rng);
    let envelope = sealed::seal(
        &alice.identity,
        &alice_address(),
        bob.identity.public(),
        b"content",
        &mut rng,
    )
    .unwrap();
    assert_eq!(
        sealed::open(&carol.identity, &envelope),
        Err(Error::DecryptionFailed)
    );
    for index in 0..envelope.len() {
        let mut t = envelope.clone();
        t[index] ^= 0x04;
        assert!(sealed::open(&bob.identity, &t).is_err(), "byte {index}");
    }
    let mut low_order = envelope.clone();
    low_order[2..34].copy_from_slice(&[0; 32]);
    assert_eq!(sealed::open(&bob.identity, &low_order), Err(Error::WeakKey));
    let unsealed = sealed::open(&bob.identity, &envelope).unwrap();
    assert_eq!(unsealed.content, b"content");
    assert_eq!(&unsealed.sender_identity, alice.identity.public());
}

#[test]
fn overlong_addresses_are_refused() {
    let mut rng = rng(43);
    let alice = Device::new(&mut rng);
    let bob = Device::new(&mut rng);
    let from = SenderAddress {
        address: "a".repeat(sealed::ADDRESS_LEN_MAX + 1),
        device: 1,
    };
    assert!(matches!(
        sealed::seal(
            &alice.identity,
            &from,
            bob.identity.public(),
            b"x",
            &mut rng
        ),
        Err(Error::Malformed(_))
    ));
}
