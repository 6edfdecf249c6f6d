//! Pairwise sessions: X3DH + Double Ratchet behaviour.

mod common;

use common::{Device, copy, established, rng};
use courier_crypto::ratchet::{DoubleRatchet, MAX_SKIP};
use courier_crypto::{
    Error, MessageKind, PreKeyBundle, PreKeyMessage, RatchetConfig, Session, SessionPickle,
    SignedPreKey, x3dh,
};

#[test]
fn round_trip_with_and_without_one_time_prekey() {
    for with_opk in [true, false] {
        let mut rng = rng(1);
        let alice = Device::new(&mut rng);
        let bob = Device::new(&mut rng);
        let bundle = bob.bundle(with_opk);
        let mut a = Session::initiate(&alice.identity, &bundle, &mut rng).unwrap();
        let m1 = a.encrypt(b"one", &mut rng).unwrap();
        assert_eq!(MessageKind::of(&m1).unwrap(), MessageKind::PreKey);
        let pm = PreKeyMessage::from_bytes(&m1).unwrap();
        assert_eq!(pm.one_time_prekey_id().is_some(), with_opk);
        assert_eq!(pm.identity(), alice.identity.public());
        let (mut b, pt) = bob.respond(&m1);
        assert_eq!(pt, b"one");
        assert_eq!(b.remote_identity(), alice.identity.public());
        assert_eq!(a.remote_identity(), bob.identity.public());

        // Alice keeps sending prekey messages until she hears back.
        let m2 = a.encrypt(b"two", &mut rng).unwrap();
        assert_eq!(MessageKind::of(&m2).unwrap(), MessageKind::PreKey);
        assert!(b.matches(&PreKeyMessage::from_bytes(&m2).unwrap()));
        assert_eq!(b.decrypt(&m2).unwrap(), b"two");

        let r1 = b.encrypt(b"three", &mut rng).unwrap();
        assert_eq!(MessageKind::of(&r1).unwrap(), MessageKind::Ratchet);
        assert_eq!(a.decrypt(&r1).unwrap(), b"three");
        let m3 = a.encrypt(b"four", &mut rng).unwrap();
        assert_eq!(MessageKind::of(&m3).unwrap(), MessageKind::Ratchet);
        assert_eq!(b.decrypt(&m3).unwrap(), b"four");
    }
}

#[test]
fn x3dh_both_sides_agree() {
    let mut rng = rng(2);
    let alice = Device::new(&mut rng);
    let bob = Device::new(&mut rng);
    for with_opk in [true, false] {
        let init = x3dh::initiate(&alice.identity, &bob.bundle(with_opk), &mut rng).unwrap();
        let opk = with_opk.then(|| &bob.one_time_prekeys[0]);
        let resp = x3dh::respond(
            &bob.identity,
            &bob.signed_prekey,
            opk,
            alice.identity.public(),
            &init.ephemeral_public,
        )
        .unwrap();
        assert_eq!(init.secret.key(), resp.key());
        assert_eq!(init.secret.associated_data(), resp.associated_data());
        assert_eq!(
            &resp.associated_data()[..64],
            &alice.identity.public().encode_keys()
        );
        assert_eq!(
            &resp.associated_data()[64..],
            &bob.identity.public().encode_keys()
        );
    }
}

#[test]
fn long_conversation_in_both_directions() {
    let mut rng = rng(3);
    let (mut a, mut b) = established(&mut rng, true);
    for round in 0..50u32 {
        for i in 0..(round % 4) {
            let text = format!("a{round}-{i}");
            let m = a.encrypt(text.as_bytes(), &mut rng).unwrap();
            assert_eq!(b.decrypt(&m).unwrap(), text.as_bytes());
        }
        for i in 0..(round % 3) {
            let text = format!("b{round}-{i}");
            let m = b.encrypt(text.as_bytes(), &mut rng).unwrap();
            assert_eq!(a.decrypt(&m).unwrap(), text.as_bytes());
        }
    }
    assert_eq!(a.skipped_keys(), 0);
    assert_eq!(b.skipped_keys(), 0);
}

#[test]
fn lost_and_reordered_messages() {
    let mut rng = rng(4);
    let (mut a, mut b) = established(&mut rng, true);
    let msgs: Vec<Vec<u8>> = (0..6)
        .map(|i| a.encrypt(format!("m{i}").as_bytes(), &mut rng).unwrap())
        .collect();
    // m1 is lost for good; the rest arrive out of order.
    for i in [3usize, 0, 5, 2, 4] {
        assert_eq!(b.decrypt(&msgs[i]).unwrap(), format!("m{i}").as_bytes());
    }
    assert_eq!(b.skipped_keys(), 1);

    // Bob replies, Alice ratchets; a late message from Alice's old chain
    // still decrypts after Alice's new chain has arrived.
    let late: Vec<Vec<u8>> = (0..2)
        .map(|i| a.encrypt(format!("late{i}").as_bytes(), &mut rng).unwrap())
        .collect();
    let r = b.encrypt(b"reply", &mut rng).unwrap();
    assert_eq!(a.decrypt(&r).unwrap(), b"reply");
    let new = a.encrypt(b"new chain", &mut rng).unwrap();
    assert_eq!(b.decrypt(&new).unwrap(), b"new chain");
    assert_eq!(b.decrypt(&late[1]).unwrap(), b"late1");
    assert_eq!(b.decrypt(&late[0]).unwrap(), b"late0");
    assert_eq!(b.skipped_keys(), 1, "only the lost m1 remains");
}

#[test]
fn decrypting_the_same_message_twice_fails() {
    let mut rng = rng(5);
    let (mut a, mut b) = established(&mut rng, true);
    let m0 = a.encrypt(b"x", &mut rng).unwrap();
    let m1 = a.encrypt(b"y", &mut rng).unwrap();
    assert_eq!(b.decrypt(&m1).unwrap(), b"y");
    assert!(matches!(
        b.decrypt(&m1),
        Err(Error::DuplicateMessage { index: 1 })
    ));
    assert_eq!(b.decrypt(&m0).unwrap(), b"x"); // from the skipped store
    assert!(matches!(
        b.decrypt(&m0),
        Err(Error::DuplicateMessage { index: 0 })
    ));
    // Still usable.
    let m2 = a.encrypt(b"z", &mut rng).unwrap();
    assert_eq!(b.decrypt(&m2).unwrap(), b"z");
    // After a DH ratchet round trip, replays from the old chain are still duplicates.
    let r = b.encrypt(b"r", &mut rng).unwrap();
    assert_eq!(a.decrypt(&r).unwrap(), b"r");
    let m3 = a.encrypt(b"new chain", &mut rng).unwrap();
    assert_eq!(b.decrypt(&m3).unwrap(), b"new chain");
    assert!(matches!(
        b.decrypt(&m2),
        Err(Error::DuplicateMessage { index: 2 })
    ));
    let mut b = copy(&b);
    assert!(matches!(
        b.decrypt(&m1),
        Err(Error::DuplicateMessage { index: 1 })
    ));
}

#[test]
fn prekey_message_replay_fails() {
    let mut rng = rng(6);
    let alice = Device::new(&mut rng);
    let bob = Device::new(&mut rng);
    let mut a = Session::initiate(&alice.identity, &bob.bundle(true), &mut rng).unwrap();
    let m = a.encrypt(b"hi", &mut rng).unwrap();
    let (mut b, _) = bob.respond(&m);
    assert!(b.decrypt(&m).is_err());
}

#[test]
fn max_skip_exceeded_is_an_error_that_leaves_the_session_usable() {
    let mut rng = rng(7);
    let (mut a, b) = established(&mut rng, true);
    let mut b = b.with_config(RatchetConfig {
        max_skip: 10,
        max_skipped_keys: 20,
    });
    let msgs: Vec<Vec<u8>> = (0..12)
        .map(|i| a.encrypt(&[i as u8], &mut rng).unwrap())
        .collect();
    assert!(matches!(
        b.decrypt(&msgs[11]),
        Err(Error::TooManySkipped { gap: 11, max: 10 })
    ));
    assert_eq!(b.skipped_keys(), 0);
    assert_eq!(b.decrypt(&msgs[10]).unwrap(), [10]);
    assert_eq!(b.decrypt(&msgs[11]).unwrap(), [11]);
    assert_eq!(b.decrypt(&msgs[3]).unwrap(), [3]);
    assert_eq!(b.skipped_keys(), 9);
}

#[test]
fn default_max_skip_is_enforced() {
    let mut rng = rng(8);
    let (mut a, mut b) = established(&mut rng, false);
    let mut last = Vec::new();
    for _ in 0..=MAX_SKIP + 1 {
        last = a.encrypt(b"", &mut rng).unwrap();
    }
    assert!(matches!(
        b.decrypt(&last),
        Err(Error::TooManySkipped { .. })
    ));
}

#[test]
fn skipped_key_store_is_capped_with_eviction() {
    let mut rng = rng(9);
    let (mut a, b) = established(&mut rng, false);
    let mut b = b.with_config(RatchetConfig {
        max_skip: 100,
        max_skipped_keys: 30,
    });
    let msgs: Vec<Vec<u8>> = (0..120)
        .map(|_| a.encrypt(b"m", &mut rng).unwrap())
        .collect();
    for i in [50usize, 100, 119] {
        b.decrypt(&msgs[i]).unwrap();
    }
    assert_eq!(b.skipped_keys(), 30);
    // The oldest skipped keys were evicted; the newest are still there.
    assert!(b.decrypt(&msgs[0]).is_err());
    assert!(b.decrypt(&msgs[118]).is_ok());
}

fn flip(bytes: &[u8], index: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[index] ^= 0x01;
    v
}

#[test]
fn tampered_ciphertext_or_header_is_rejected() {
    let mut rng = rng(10);
    let (mut a, mut b) = established(&mut rng, true);
    let m = a.encrypt(b"secret", &mut rng).unwrap();
    for index in [2, 33, 34, 37, 38, 41, 42, m.len() - 1] {
        assert!(b.decrypt(&flip(&m, index)).is_err(), "byte {index}");
    }
    assert!(b.decrypt(&m[..m.len() - 1]).is_err());
    assert_eq!(b.decrypt(&m).unwrap(), b"secret");
}

#[test]
fn tampered_associated_data_is_rejected() {
    let mut rng = rng(11);
    let (mut alice_r, mut bob_r) = {
        let sk = [7u8; 32];
        let bob_secret = [9u8; 32];
        let bob_public = x25519_public(&bob_secret);
        (
            DoubleRatchet::initiator(&sk, &bob_public, &mut rng).unwrap(),
            DoubleRatchet::responder(&sk, &bob_secret),
        )
    };
    let m = alice_r.encrypt(b"pt", b"ad-one", &mut rng).unwrap();
    assert_eq!(bob_r.decrypt(&m, b"ad-two"), Err(Error::DecryptionFailed));
    assert_eq!(bob_r.decrypt(&m, b"ad-one").unwrap(), b"pt");
}

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    let id = courier_crypto::Identity::from_secret_bytes(&[1; 32], secret);
    id.public().dh_key()
}

#[test]
fn prekey_message_with_another_identity_is_rejected() {
    let mut rng = rng(12);
    let alice = Device::new(&mut rng);
    let mallory = Device::new(&mut rng);
    let bob = Device::new(&mut rng);
    let mut a = Session::initiate(&alice.identity, &bob.bundle(true), &mut rng).unwrap();
    let m = a.encrypt(b"hi", &mut rng).unwrap();
    // Swap the initiator identity for Mallory's: AD and DH1 change, so decryption fails.
    let mut forged = m.clone();
    forged[2..130].copy_from_slice(&mallory.identity.public().to_bytes());
    let pm = PreKeyMessage::from_bytes(&forged).unwrap();
    let opk = &bob.one_time_prekeys[0];
    assert!(Session::respond(&bob.identity, &bob.signed_prekey, Some(opk), &pm).is_err());
}

#[test]
fn bad_bundle_signatures_are_rejected() {
    let mut rng = rng(13);
    let bob = Device::new(&mut rng);
    let other = Device::new(&mut rng);
    // Signed prekey signed by someone else.
    assert!(matches!(
        PreKeyBundle::new(
            bob.identity.public().clone(),
            other.signed_prekey.public().clone(),
            None
        ),
        Err(Error::BadSignature(_))
    ));
    let bytes = bob.bundle(true).to_bytes();
    assert!(PreKeyBundle::from_bytes(&bytes).is_ok());
    // Identity DH-key signature, signed prekey key, signed prekey signature.
    for index in [2 + 40, 2 + 100, 2 + 128 + 20, 2 + 128 + 60] {
        assert!(
            matches!(
                PreKeyBundle::from_bytes(&flip(&bytes, index)),
                Err(Error::BadSignature(_))
            ),
            "byte {index}"
        );
    }
}

#[test]
fn wrong_prekeys_are_reported() {
    let mut rng = rng(14);
    let alice = Device::new(&mut rng);
    let bob = Device::new(&mut rng);
    let mut a = Session::initiate(&alice.identity, &bob.bundle(true), &mut rng).unwrap();
    let pm = PreKeyMessage::from_bytes(&a.encrypt(b"hi", &mut rng).unwrap()).unwrap();
    let other_spk = SignedPreKey::generate(&bob.identity, 2, 0, &mut rng);
    assert!(matches!(
        Session::respond(
            &bob.identity,
            &other_spk,
            Some(&bob.one_time_prekeys[0]),
            &pm
        ),
        Err(Error::PreKeyMismatch {
            expected: 1,
            supplied: 2
        })
    ));
    assert_eq!(
        Session::respond(&bob.identity, &bob.signed_prekey, None, &pm).map(|_| ()),
        Err(Error::OneTimePreKeyMismatch)
    );
    assert!(matches!(
        Session::respond(
            &bob.identity,
            &bob.signed_prekey,
            Some(&bob.one_time_prekeys[1]),
            &pm
        ),
        Err(Error::PreKeyMismatch { .. })
    ));
}

#[test]
fn low_order_keys_are_rejected() {
    let mut rng = rng(15);
    let alice = Device::new(&mut rng);
    let bob = Device::new(&mut rng);
    let mut a = Session::initiate(&alice.identity, &bob.bundle(false), &mut rng).unwrap();
    let m = a.encrypt(b"hi", &mut rng).unwrap();
    let mut forged = m.clone();
    // Zero base key (a low-order point) in the prekey message.
    forged[130..162].copy_from_slice(&[0u8; 32]);
    let pm = PreKeyMessage::from_bytes(&forged).unwrap();
    assert_eq!(
        Session::respond(&bob.identity, &bob.signed_prekey, None, &pm).map(|_| ()),
        Err(Error::WeakKey)
    );
    // A ratchet message carrying a low-order ratchet key.
    let (mut a, mut b) = established(&mut rng, false);
    a.encrypt(b"x", &mut rng).unwrap();
    let r = b.encrypt(b"y", &mut rng).unwrap();
    let mut forged = r.clone();
    forged[2..34].copy_from_slice(&[0u8; 32]);
    assert_eq!(a.decrypt(&forged), Err(Error::WeakKey));
}

#[test]
fn forward_secrecy_state_after_a_message_cannot_decrypt_it() {
    let mut rng = rng(16);
    let (mut a, mut b) = established(&mut rng, true);
    let m1 = a.encrypt(b"earlier", &mut rng).unwrap();
    let m2 = a.encrypt(b"later", &mut rng).unwrap();
    assert_eq!(b.decrypt(&m1).unwrap(), b"earlier");
    assert_eq!(b.decrypt(&m2).unwrap(), b"later");
    let mut stolen = copy(&b);
    assert!(stolen.decrypt(&m1).is_err());
    assert!(stolen.decrypt(&m2).is_err());
    // Also across a DH ratchet: Alice's sending state cannot decrypt what she sent.
    let mut alice_stolen = copy(&a);
    assert!(alice_stolen.decrypt(&m2).is_err());
}

#[test]
fn post_compromise_recovery_after_a_dh_ratchet_round_trip() {
    let mut rng = rng(17);
    let (mut a, mut b) = established(&mut rng, true);
    let mut stolen = copy(&b);
    // The stolen state reads the current chain...
    let before = a.encrypt(b"before", &mut rng).unwrap();
    assert_eq!(stolen.decrypt(&before).unwrap(), b"before");
    assert_eq!(b.decrypt(&before).unwrap(), b"before");
    // ...but after Bob replies (fresh ratchet key) and Alice ratchets, not any more.
    let r = b.encrypt(b"reply", &mut rng).unwrap();
    assert_eq!(a.decrypt(&r).unwrap(), b"reply");
    let after = a.encrypt(b"after", &mut rng).unwrap();
    assert_eq!(b.decrypt(&after).unwrap(), b"after");
    assert!(stolen.decrypt(&after).is_err());
}

#[test]
fn session_pickle_round_trips_mid_conversation() {
    let mut rng = rng(18);
    let (mut a, mut b) = established(&mut rng, true);
    let m0 = a.encrypt(b"skipped", &mut rng).unwrap();
    let m1 = a.encrypt(b"now", &mut rng).unwrap();
    assert_eq!(b.decrypt(&m1).unwrap(), b"now");
    let json = serde_json::to_string(&b.to_pickle()).unwrap();
    let pickle: SessionPickle = serde_json::from_str(&json).unwrap();
    let mut b = Session::from_pickle(&pickle).unwrap();
    assert_eq!(b.skipped_keys(), 1);
    assert_eq!(b.decrypt(&m0).unwrap(), b"skipped");
    let r = b.encrypt(b"back", &mut rng).unwrap();
    assert_eq!(a.decrypt(&r).unwrap(), b"back");

    let mut bad = pickle.clone();
    bad.version = 99;
    assert!(matches!(
        Session::from_pickle(&bad),
        Err(Error::InvalidPickle(_))
    ));
}

#[test]
fn pickle_fields_added_later_default() {
    let mut rng = rng(19);
    let (a, _) = established(&mut rng, true);
    let mut value = serde_json::to_value(a.to_pickle()).unwrap();
    let ratchet = value["ratchet"].as_object_mut().unwrap();
    ratchet.remove("max_skip");
    ratchet.remove("max_skipped_keys");
    ratchet.remove("skipped");
    let pickle: SessionPickle = serde_json::from_value(value).unwrap();
    assert_eq!(pickle.ratchet.max_skip, MAX_SKIP);
    Session::from_pickle(&pickle).unwrap();
}

#[test]
fn debug_output_hides_secrets() {
    let mut rng = rng(20);
    let (a, _) = established(&mut rng, true);
    let pickle = a.to_pickle();
    let root_hex: String = pickle
        .ratchet
        .root_key
        .iter()
        .map(|b| format!("{b}"))
        .collect();
    let debug = format!("{a:?} {pickle:?}");
    assert!(!debug.contains(&root_hex));
    assert!(!debug.contains("root_key"));
}

#[test]
fn keys_rebuilt_from_directory_parts_verify() {
    use courier_crypto::{OneTimePreKeyPublic, PublicIdentity, SignedPreKeyPublic};
    let mut rng = rng(21);
    let bob = Device::new(&mut rng);
    let id = bob.identity.public();
    let rebuilt =
        PublicIdentity::from_parts(&id.signing_key(), &id.dh_key(), &id.dh_key_signature())
            .unwrap();
    assert_eq!(&rebuilt, id);
    let mut bad_sig = id.dh_key_signature();
    bad_sig[0] ^= 1;
    assert!(PublicIdentity::from_parts(&id.signing_key(), &id.dh_key(), &bad_sig).is_err());

    let spk = bob.signed_prekey.public();
    let spk2 =
        SignedPreKeyPublic::from_parts(spk.id(), spk.key(), spk.signature(), spk.timestamp());
    let opk = bob.one_time_prekeys[0].public();
    let opk2 = OneTimePreKeyPublic::from_parts(opk.id(), opk.key());
    let bundle = PreKeyBundle::new(rebuilt.clone(), spk2, Some(opk2)).unwrap();
    assert_eq!(bundle, bob.bundle(true));
    let stale =
        SignedPreKeyPublic::from_parts(spk.id(), spk.key(), spk.signature(), spk.timestamp() + 1);
    assert!(matches!(
        PreKeyBundle::new(rebuilt, stale, None),
        Err(Error::BadSignature(_))
    ));
}
