//! Sender keys for groups.

mod common;

use common::rng;
use courier_crypto::{Error, RatchetConfig, SenderKey, SenderKeyPickle, SenderKeyReceiver};

#[test]
fn group_round_trip_to_many_receivers() {
    let mut rng = rng(30);
    let mut sender = SenderKey::generate(&mut rng);
    let dist = sender.distribution_message();
    let mut receivers: Vec<SenderKeyReceiver> = (0..5)
        .map(|_| SenderKeyReceiver::from_distribution(&dist).unwrap())
        .collect();
    for i in 0..20u8 {
        let m = sender.encrypt(&[i; 33]).unwrap();
        assert_eq!(
            SenderKeyReceiver::message_chain_id(&m).unwrap(),
            sender.chain_id()
        );
        for r in &mut receivers {
            assert_eq!(r.decrypt(&m).unwrap(), [i; 33]);
        }
    }
}

#[test]
fn out_of_order_replay_and_late_joiner() {
    let mut rng = rng(31);
    let mut sender = SenderKey::generate(&mut rng);
    let mut early = SenderKeyReceiver::from_distribution(&sender.distribution_message()).unwrap();
    let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| sender.encrypt(&[i]).unwrap()).collect();
    let mut late = SenderKeyReceiver::from_distribution(&sender.distribution_message()).unwrap();
    for i in [4usize, 1, 3, 0, 2] {
        assert_eq!(early.decrypt(&msgs[i]).unwrap(), [i as u8]);
        assert!(matches!(
            early.decrypt(&msgs[i]),
            Err(Error::DuplicateMessage { .. })
        ));
    }
    // A member who joined later cannot read earlier messages.
    assert!(late.decrypt(&msgs[0]).is_err());
    let m = sender.encrypt(b"now").unwrap();
    assert_eq!(late.decrypt(&m).unwrap(), b"now");
}

#[test]
fn max_skip_is_enforced_and_leaves_the_receiver_usable() {
    let mut rng = rng(32);
    let mut sender = SenderKey::generate(&mut rng);
    let mut r = SenderKeyReceiver::from_distribution(&sender.distribution_message())
        .unwrap()
        .with_config(RatchetConfig {
            max_skip: 5,
            max_skipped_keys: 10,
        });
    let msgs: Vec<Vec<u8>> = (0..7u8).map(|i| sender.encrypt(&[i]).unwrap()).collect();
    assert!(matches!(
        r.decrypt(&msgs[6]),
        Err(Error::TooManySkipped { .. })
    ));
    assert_eq!(r.decrypt(&msgs[5]).unwrap(), [5]);
    assert_eq!(r.decrypt(&msgs[6]).unwrap(), [6]);
}

#[test]
fn tampered_group_messages_are_rejected() {
    let mut rng = rng(33);
    let mut sender = SenderKey::generate(&mut rng);
    let mut r = SenderKeyReceiver::from_distribution(&sender.distribution_message()).unwrap();
    let m = sender.encrypt(b"group secret").unwrap();
    for index in 0..m.len() {
        let mut t = m.clone();
        t[index] ^= 0x80;
        assert!(r.decrypt(&t).is_err(), "byte {index}");
    }
    // Signed by a key other than the distributed one.
    let mut impostor = SenderKey::from_pickle(&{
        let mut p: SenderKeyPickle = sender.to_pickle();
        p.signing_seed = Some([42; 32]);
        p
    })
    .unwrap();
    let forged = impostor.encrypt(b"forged").unwrap();
    assert_eq!(
        r.decrypt(&forged),
        Err(Error::BadSignature("group message"))
    );
    assert_eq!(r.decrypt(&m).unwrap(), b"group secret");
}

#[test]
fn rotation_locks_out_a_removed_member() {
    let mut rng = rng(34);
    let mut sender = SenderKey::generate(&mut rng);
    let dist = sender.distribution_message();
    let mut stays = SenderKeyReceiver::from_distribution(&dist).unwrap();
    let mut removed = SenderKeyReceiver::from_distribution(&dist).unwrap();
    let m = sender.encrypt(b"before").unwrap();
    assert_eq!(removed.decrypt(&m).unwrap(), b"before");
    assert_eq!(stays.decrypt(&m).unwrap(), b"before");

    // Membership changes: a fresh key goes to the remaining members only.
    let mut sender = SenderKey::generate(&mut rng);
    let mut stays = SenderKeyReceiver::from_distribution(&sender.distribution_message()).unwrap();
    let m = sender.encrypt(b"after").unwrap();
    assert_eq!(stays.decrypt(&m).unwrap(), b"after");
    assert_eq!(removed.decrypt(&m), Err(Error::ChainMismatch));
}

#[test]
fn sender_key_pickles_round_trip() {
    let mut rng = rng(35);
    let mut sender = SenderKey::generate(&mut rng);
    let mut r = SenderKeyReceiver::from_distribution(&sender.distribution_message()).unwrap();
    let m0 = sender.encrypt(b"0").unwrap();
    let m1 = sender.encrypt(b"1").unwrap();
    assert_eq!(r.decrypt(&m1).unwrap(), b"1");
    let json = serde_json::to_string(&r.to_pickle()).unwrap();
    let mut r = SenderKeyReceiver::from_pickle(&serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(r.decrypt(&m0).unwrap(), b"0");
    let json = serde_json::to_string(&sender.to_pickle()).unwrap();
    let mut sender = SenderKey::from_pickle(&serde_json::from_str(&json).unwrap()).unwrap();
    let m2 = sender.encrypt(b"2").unwrap();
    assert_eq!(r.decrypt(&m2).unwrap(), b"2");
    // A receiver's pickle cannot become a sender.
    assert!(SenderKey::from_pickle(&r.to_pickle()).is_err());
}
