//! Criterion benchmarks of courier-crypto, with the raw primitives measured
//! in the same run as baselines (AES-256-GCM seal, HMAC-SHA256, X25519,
//! Ed25519 sign/verify). Results are recorded in `docs/performance.md`.
//!
//! Short run: `cargo bench -p courier-crypto -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use courier_crypto::{
    Identity, OneTimePreKey, PreKeyBundle, PreKeyMessage, SenderAddress, SenderKey,
    SenderKeyReceiver, Session, SignedPreKey, sealed, x3dh,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (65536, "64KiB")];

struct Parties {
    alice: Identity,
    bob: Identity,
    spk: SignedPreKey,
    opk: OneTimePreKey,
    bundle: PreKeyBundle,
}

fn parties(rng: &mut ChaCha20Rng) -> Parties {
    let alice = Identity::generate(rng);
    let bob = Identity::generate(rng);
    let spk = SignedPreKey::generate(&bob, 1, 0, rng);
    let opk = OneTimePreKey::generate_batch(1, 1, rng).remove(0);
    let bundle = PreKeyBundle::new(
        bob.public().clone(),
        spk.public().clone(),
        Some(opk.public().clone()),
    )
    .unwrap();
    Parties {
        alice,
        bob,
        spk,
        opk,
        bundle,
    }
}

fn established(rng: &mut ChaCha20Rng) -> (Session, Session, Parties) {
    let p = parties(rng);
    let mut a = Session::initiate(&p.alice, &p.bundle, rng).unwrap();
    let m = a.encrypt(b"hi", rng).unwrap();
    let pm = PreKeyMessage::from_bytes(&m).unwrap();
    let (mut b, _) = Session::respond(&p.bob, &p.spk, Some(&p.opk), &pm).unwrap();
    let r = b.encrypt(b"hi", rng).unwrap();
    a.decrypt(&r).unwrap();
    (a, b, p)
}

fn primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitive");
    for (size, name) in SIZES {
        let pt = vec![0x5Au8; size];
        let key = [7u8; 32];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("aes256gcm_seal/{name}"), |b| {
            b.iter(|| {
                // Key setup included: every ratchet message has a fresh key.
                let cipher = Aes256Gcm::new(&key.into());
                let nonce = [1u8; 12];
                cipher
                    .encrypt(
                        &nonce.into(),
                        Payload {
                            msg: black_box(&pt),
                            aad: &[0u8; 170],
                        },
                    )
                    .unwrap()
            })
        });
    }
    // The goal's yardstick in one measurement: one AES-256-GCM seal plus the
    // two HMAC-SHA256 of KDF_CK, each HMAC keyed separately.
    for (size, name) in SIZES {
        let pt = vec![0x5Au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("aead_plus_2hmac/{name}"), |b| {
            b.iter(|| {
                let mut m1 =
                    <Hmac<Sha256> as KeyInit>::new_from_slice(black_box(&[3u8; 32])).unwrap();
                m1.update(&[1]);
                let mk = m1.finalize().into_bytes();
                let mut m2 =
                    <Hmac<Sha256> as KeyInit>::new_from_slice(black_box(&[3u8; 32])).unwrap();
                m2.update(&[2]);
                black_box(m2.finalize().into_bytes());
                let cipher = Aes256Gcm::new_from_slice(&mk).unwrap();
                cipher
                    .encrypt(
                        &[1u8; 12].into(),
                        Payload {
                            msg: black_box(&pt),
                            aad: &[0u8; 170],
                        },
                    )
                    .unwrap()
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("hmac_sha256", |b| {
        b.iter(|| {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(black_box(&[3u8; 32])).unwrap();
            m.update(&[1]);
            m.finalize().into_bytes()
        })
    });
    let s = StaticSecret::from([9u8; 32]);
    let p = PublicKey::from(&StaticSecret::from([5u8; 32]));
    g.bench_function("x25519_dh", |b| b.iter(|| s.diffie_hellman(black_box(&p))));
    let sk = SigningKey::from_bytes(&[4u8; 32]);
    let vk = sk.verifying_key();
    let msg = [0u8; 64];
    let sig = sk.sign(&msg);
    g.bench_function("ed25519_sign", |b| b.iter(|| sk.sign(black_box(&msg))));
    g.bench_function("ed25519_verify", |b| {
        b.iter(|| vk.verify_strict(black_box(&msg), &sig).unwrap())
    });
    g.finish();
}

fn x3dh_benches(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let p = parties(&mut rng);
    let mut g = c.benchmark_group("x3dh");
    g.bench_function("initiate", |b| {
        b.iter(|| x3dh::initiate(&p.alice, black_box(&p.bundle), &mut rng).unwrap())
    });
    let init = x3dh::initiate(&p.alice, &p.bundle, &mut rng).unwrap();
    g.bench_function("respond", |b| {
        b.iter(|| {
            x3dh::respond(
                &p.bob,
                &p.spk,
                Some(&p.opk),
                p.alice.public(),
                black_box(&init.ephemeral_public),
            )
            .unwrap()
        })
    });
    g.finish();
}

fn ratchet_benches(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut g = c.benchmark_group("ratchet");
    for (size, name) in SIZES {
        let pt = vec![0x5Au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let (mut a, b_session, _) = established(&mut rng);
        // Symmetric steps only: Alice keeps sending on one chain.
        g.bench_function(format!("encrypt/{name}"), |b| {
            b.iter(|| a.encrypt(black_box(&pt), &mut rng).unwrap())
        });
        drop(b_session);
        // The receiver is restored from a pickle outside the timed part, so
        // every iteration measures one symmetric step on the same message.
        let (mut a2, mut b2, _) = established(&mut rng);
        // One message on Alice's new chain first, so the measured one is a
        // symmetric step (no DH) for Bob.
        let first = a2.encrypt(b"first", &mut rng).unwrap();
        b2.decrypt(&first).unwrap();
        let msg2 = a2.encrypt(&pt, &mut rng).unwrap();
        let pickle = b2.to_pickle();
        g.bench_function(format!("decrypt/{name}"), |b| {
            b.iter_batched(
                || Session::from_pickle(&pickle).unwrap(),
                |mut s| s.decrypt(black_box(&msg2)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.throughput(Throughput::Elements(1));
    // One DH ratchet step: decrypting a reply under a new ratchet key, plus
    // the next encrypt generating our new ratchet key pair.
    let (mut a, mut b, _) = established(&mut rng);
    let m = a.encrypt(b"ping", &mut rng).unwrap();
    b.decrypt(&m).unwrap();
    let reply = b.encrypt(&[0u8; 64], &mut rng).unwrap();
    let pickle = a.to_pickle();
    g.bench_function("dh_step/64B", |bench| {
        bench.iter_batched(
            || {
                (
                    Session::from_pickle(&pickle).unwrap(),
                    ChaCha20Rng::seed_from_u64(3),
                )
            },
            |(mut s, mut r)| {
                s.decrypt(black_box(&reply)).unwrap();
                s.encrypt(&[0u8; 64], &mut r).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("restore_pickle", |bench| {
        bench.iter(|| Session::from_pickle(black_box(&pickle)).unwrap())
    });
    g.finish();
}

fn sender_key_benches(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut g = c.benchmark_group("sender_key");
    for (size, name) in SIZES {
        let pt = vec![0x5Au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let mut sk = SenderKey::generate(&mut rng);
        g.bench_function(format!("encrypt/{name}"), |b| {
            b.iter(|| sk.encrypt(black_box(&pt)).unwrap())
        });
        let mut sk = SenderKey::generate(&mut rng);
        let dist2 = sk.distribution_message();
        let m = sk.encrypt(&pt).unwrap();
        g.bench_function(format!("decrypt/{name}"), |b| {
            b.iter_batched(
                || SenderKeyReceiver::from_distribution(&dist2).unwrap(),
                |mut r| r.decrypt(black_box(&m)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn sealed_benches(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let p = parties(&mut rng);
    let from = SenderAddress {
        address: "alice@relay-a.example".into(),
        device: 1,
    };
    let content = vec![0x5Au8; 1024];
    let mut g = c.benchmark_group("sealed");
    g.bench_function("seal/1KiB", |b| {
        b.iter(|| {
            sealed::seal(
                &p.alice,
                &from,
                p.bob.public(),
                black_box(&content),
                &mut rng,
            )
            .unwrap()
        })
    });
    let env = sealed::seal(&p.alice, &from, p.bob.public(), &content, &mut rng).unwrap();
    g.bench_function("open/1KiB", |b| {
        b.iter(|| sealed::open(&p.bob, black_box(&env)).unwrap())
    });
    g.finish();
}

criterion_group!(
    benches,
    primitives,
    x3dh_benches,
    ratchet_benches,
    sender_key_benches,
    sealed_benches
);
criterion_main!(benches);
