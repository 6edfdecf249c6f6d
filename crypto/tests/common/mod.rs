//! Shared test helpers.
#![allow(dead_code, clippy::unwrap_used)]

use courier_crypto::{Identity, OneTimePreKey, PreKeyBundle, PreKeyMessage, Session, SignedPreKey};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub struct Device {
    pub identity: Identity,
    pub signed_prekey: SignedPreKey,
    pub one_time_prekeys: Vec<OneTimePreKey>,
}

impl Device {
    pub fn new(rng: &mut ChaCha20Rng) -> Self {
        let identity = Identity::generate(rng);
        let signed_prekey = SignedPreKey::generate(&identity, 1, 1_700_000_000_000, rng);
        let one_time_prekeys = OneTimePreKey::generate_batch(1, 4, rng);
        Self {
            identity,
            signed_prekey,
            one_time_prekeys,
        }
    }

    pub fn bundle(&self, with_one_time: bool) -> PreKeyBundle {
        PreKeyBundle::new(
            self.identity.public().clone(),
            self.signed_prekey.public().clone(),
            with_one_time.then(|| self.one_time_prekeys[0].public().clone()),
        )
        .unwrap()
    }

    pub fn respond(&self, message: &[u8]) -> (Session, Vec<u8>) {
        let pm = PreKeyMessage::from_bytes(message).unwrap();
        let opk = self
            .one_time_prekeys
            .iter()
            .find(|k| Some(k.id()) == pm.one_time_prekey_id());
        Session::respond(&self.identity, &self.signed_prekey, opk, &pm).unwrap()
    }
}

/// Alice initiates to Bob, sends "hello", Bob responds; returns both sessions
/// after a full round trip (Bob replied, Alice decrypted).
pub fn established(rng: &mut ChaCha20Rng, with_one_time: bool) -> (Session, Session) {
    let alice = Device::new(rng);
    let bob = Device::new(rng);
    let mut a = Session::initiate(&alice.identity, &bob.bundle(with_one_time), rng).unwrap();
    let m = a.encrypt(b"hello", rng).unwrap();
    let (mut b, pt) = bob.respond(&m);
    assert_eq!(pt, b"hello");
    let r = b.encrypt(b"welcome", rng).unwrap();
    assert_eq!(a.decrypt(&r).unwrap(), b"welcome");
    (a, b)
}

/// A copy of a session through its pickle (an attacker's stolen copy, or a restart).
pub fn copy(session: &Session) -> Session {
    Session::from_pickle(&session.to_pickle()).unwrap()
}
