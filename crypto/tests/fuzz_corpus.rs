//! Runs the fuzz entry points (`crypto/fuzz/src/targets.rs`) on stable: the
//! committed seed corpus, mutations of it, and random byte strings. None may
//! panic. `cargo test -p courier-crypto --test fuzz_corpus -- --ignored`
//! rewrites the seed corpus.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::PathBuf;

use courier_crypto::{
    Identity, OneTimePreKey, PreKeyBundle, SenderAddress, SenderKey, Session, SignedPreKey, sealed,
};
use proptest::prelude::*;
use targets::{FixtureRng, TARGETS, fixture, run};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn every_target_has_a_seed_corpus() {
    for target in TARGETS {
        assert!(!corpus(target).is_empty(), "{target}");
    }
}

#[test]
fn corpus_and_its_mutations_never_panic() {
    for target in TARGETS {
        for seed in corpus(target) {
            run(target, &seed);
            for len in 0..seed.len() {
                run(target, &seed[..len]);
            }
            for i in (0..seed.len()).step_by(7) {
                let mut m = seed.clone();
                m[i] ^= 0xFF;
                run(target, &m);
            }
            let mut longer = seed.clone();
            longer.extend_from_slice(&[0u8; 3]);
            run(target, &longer);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(target in 0..TARGETS.len(), data in proptest::collection::vec(any::<u8>(), 0..400)) {
        run(TARGETS[target], &data);
    }

    #[test]
    fn random_suffixes_after_valid_headers_never_panic(
        target in 0..TARGETS.len(),
        kind in 0u8..9,
        data in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = vec![1u8, kind];
        bytes.extend_from_slice(&data);
        run(TARGETS[target], &bytes);
    }
}

#[test]
#[ignore = "rewrites crypto/fuzz/corpus"]
fn regenerate_corpus() {
    let f = fixture();
    let mut rng = FixtureRng(99);
    let alice = Identity::from_pickle(&f.alice).unwrap();
    let bob = Identity::from_pickle(&f.bob).unwrap();
    let spk = SignedPreKey::from_pickle(&bob, &f.bob_spk).unwrap();
    let opk = OneTimePreKey::from_pickle(&f.bob_opk).unwrap();
    let with_opk = PreKeyBundle::new(
        bob.public().clone(),
        spk.public().clone(),
        Some(opk.public().clone()),
    )
    .unwrap();
    let without = PreKeyBundle::new(bob.public().clone(), spk.public().clone(), None).unwrap();
    let mut fresh = Session::initiate(&alice, &with_opk, &mut rng).unwrap();
    let mut alice_s = Session::from_pickle(&f.alice_session).unwrap();
    let mut bob_s = Session::from_pickle(&f.bob_session).unwrap();
    let mut sender = SenderKey::from_pickle(&f.sender_key).unwrap();
    let from = SenderAddress {
        address: "alice@relay-a.example".into(),
        device: 1,
    };
    let seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("public_identity", vec![alice.public().to_bytes().to_vec()]),
        (
            "prekey_public",
            vec![
                spk.public().to_bytes().to_vec(),
                opk.public().to_bytes().to_vec(),
            ],
        ),
        (
            "prekey_bundle",
            vec![with_opk.to_bytes(), without.to_bytes()],
        ),
        (
            "prekey_message",
            vec![
                fresh.encrypt(b"first", &mut rng).unwrap(),
                fresh.encrypt(b"", &mut rng).unwrap(),
            ],
        ),
        (
            "session_decrypt",
            vec![
                alice_s.encrypt(b"to bob", &mut rng).unwrap(),
                alice_s.encrypt(&[7u8; 100], &mut rng).unwrap(),
                bob_s.encrypt(b"to alice", &mut rng).unwrap(),
            ],
        ),
        (
            "sender_key_distribution",
            vec![sender.distribution_message()],
        ),
        (
            "sender_key_decrypt",
            vec![
                sender.encrypt(b"group").unwrap(),
                sender.encrypt(b"").unwrap(),
            ],
        ),
        (
            "sealed_open",
            vec![sealed::seal(&alice, &from, bob.public(), b"inner", &mut rng).unwrap()],
        ),
        (
            "session_pickle_json",
            vec![serde_json::to_vec(&f.alice_session).unwrap()],
        ),
    ];
    for (target, files) in seeds {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, bytes) in files.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), bytes).unwrap();
        }
    }
}
