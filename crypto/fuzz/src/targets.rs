//! The fuzz entry points, shared by the cargo-fuzz targets (`fuzz_targets/`)
//! and the stable `crypto/tests/fuzz_corpus.rs`, which runs the committed
//! corpus and random inputs through the same functions. Every function
//! feeds arbitrary bytes to one parse/decrypt entry point and must never panic.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::OnceLock;

use courier_crypto::rand_core::{TryCryptoRng, TryRng};
use courier_crypto::{
    Identity, IdentityPickle, MessageKind, OneTimePreKey, PreKeyBundle, PreKeyMessage,
    PublicIdentity, SenderKey, SenderKeyPickle, SenderKeyReceiver, Session, SessionPickle,
    SignedPreKey, sealed,
};

/// Names of all targets, also the corpus directory names.
pub const TARGETS: &[&str] = &[
    "public_identity",
    "prekey_public",
    "prekey_bundle",
    "prekey_message",
    "session_decrypt",
    "sender_key_distribution",
    "sender_key_decrypt",
    "sealed_open",
    "session_pickle_json",
];

/// Runs the target called `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "public_identity" => public_identity(data),
        "prekey_public" => prekey_public(data),
        "prekey_bundle" => prekey_bundle(data),
        "prekey_message" => prekey_message(data),
        "session_decrypt" => session_decrypt(data),
        "sender_key_distribution" => sender_key_distribution(data),
        "sender_key_decrypt" => sender_key_decrypt(data),
        "sealed_open" => sealed_open(data),
        "session_pickle_json" => session_pickle_json(data),
        _ => {}
    }
}

/// A small deterministic RNG for fixtures (never for real keys).
pub struct FixtureRng(pub u64);

impl TryRng for FixtureRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

impl TryCryptoRng for FixtureRng {}

/// Fixed state the decrypt targets run against.
pub struct Fixture {
    pub alice: IdentityPickle,
    pub bob: IdentityPickle,
    pub bob_spk: courier_crypto::PreKeyPickle,
    pub bob_opk: courier_crypto::PreKeyPickle,
    pub alice_session: SessionPickle,
    pub bob_session: SessionPickle,
    pub sender_key: SenderKeyPickle,
    pub receiver: SenderKeyPickle,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = FixtureRng(0xC0FFEE);
        let alice = Identity::generate(&mut rng);
        let bob = Identity::generate(&mut rng);
        let spk = SignedPreKey::generate(&bob, 1, 0, &mut rng);
        let opk = OneTimePreKey::generate_batch(1, 1, &mut rng).remove(0);
        let bundle = PreKeyBundle::new(
            bob.public().clone(),
            spk.public().clone(),
            Some(opk.public().clone()),
        )
        .expect("fixture bundle");
        let mut a = Session::initiate(&alice, &bundle, &mut rng).expect("fixture");
        let m = a.encrypt(b"fixture", &mut rng).expect("fixture");
        let pm = PreKeyMessage::from_bytes(&m).expect("fixture");
        let (mut b, _) = Session::respond(&bob, &spk, Some(&opk), &pm).expect("fixture");
        let r = b.encrypt(b"reply", &mut rng).expect("fixture");
        a.decrypt(&r).expect("fixture");
        let sender = SenderKey::generate(&mut rng);
        let receiver =
            SenderKeyReceiver::from_distribution(&sender.distribution_message()).expect("fixture");
        Fixture {
            alice: alice.to_pickle(),
            bob: bob.to_pickle(),
            bob_spk: spk.to_pickle(),
            bob_opk: opk.to_pickle(),
            alice_session: a.to_pickle(),
            bob_session: b.to_pickle(),
            sender_key: sender.to_pickle(),
            receiver: receiver.to_pickle(),
        }
    })
}

pub fn public_identity(data: &[u8]) {
    if let Ok(id) = PublicIdentity::from_bytes(data) {
        assert_eq!(id.to_bytes().as_slice(), data);
    }
}

pub fn prekey_public(data: &[u8]) {
    if let Ok(spk) = courier_crypto::SignedPreKeyPublic::from_bytes(data) {
        assert_eq!(spk.to_bytes().as_slice(), data);
        let bob = Identity::from_pickle(&fixture().bob).expect("fixture");
        let _ = spk.verify(bob.public());
    }
    if let Ok(opk) = courier_crypto::OneTimePreKeyPublic::from_bytes(data) {
        assert_eq!(opk.to_bytes().as_slice(), data);
    }
}

pub fn prekey_bundle(data: &[u8]) {
    if let Ok(bundle) = PreKeyBundle::from_bytes(data) {
        assert_eq!(bundle.to_bytes(), data);
        let f = fixture();
        let alice = Identity::from_pickle(&f.alice).expect("fixture");
        let _ = Session::initiate(&alice, &bundle, &mut FixtureRng(1));
    }
}

pub fn prekey_message(data: &[u8]) {
    let _ = MessageKind::of(data);
    if let Ok(pm) = PreKeyMessage::from_bytes(data) {
        assert_eq!(pm.to_bytes(), data);
        let f = fixture();
        let bob = Identity::from_pickle(&f.bob).expect("fixture");
        let spk = SignedPreKey::from_pickle(&bob, &f.bob_spk).expect("fixture");
        let opk = OneTimePreKey::from_pickle(&f.bob_opk).expect("fixture");
        let _ = Session::respond(&bob, &spk, Some(&opk), &pm);
        let _ = Session::respond(&bob, &spk, None, &pm);
    }
}

pub fn session_decrypt(data: &[u8]) {
    let f = fixture();
    for pickle in [&f.alice_session, &f.bob_session] {
        let mut session = Session::from_pickle(pickle).expect("fixture");
        if session.decrypt(data).is_ok() {
            // Accepted once, never twice.
            assert!(session.decrypt(data).is_err());
        }
    }
}

pub fn sender_key_distribution(data: &[u8]) {
    if let Ok(mut r) = SenderKeyReceiver::from_distribution(data) {
        let _ = r.decrypt(data);
    }
}

pub fn sender_key_decrypt(data: &[u8]) {
    let _ = SenderKeyReceiver::message_chain_id(data);
    let mut r = SenderKeyReceiver::from_pickle(&fixture().receiver).expect("fixture");
    if r.decrypt(data).is_ok() {
        assert!(r.decrypt(data).is_err());
    }
}

pub fn sealed_open(data: &[u8]) {
    let bob = Identity::from_pickle(&fixture().bob).expect("fixture");
    let _ = sealed::open(&bob, data);
}

pub fn session_pickle_json(data: &[u8]) {
    if let Ok(pickle) = serde_json::from_slice::<SessionPickle>(data)
        && let Ok(mut s) = Session::from_pickle(&pickle)
    {
        let _ = s.decrypt(data);
        let _ = s.encrypt(data, &mut FixtureRng(2));
    }
}
