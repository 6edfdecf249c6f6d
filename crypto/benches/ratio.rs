//! The symmetric-ratchet goal measured robustly on a loaded machine: ratchet
//! encrypt, ratchet decrypt and the yardstick (one AES-256-GCM seal of the
//! same size plus two HMAC-SHA256) are timed in alternating short chunks, so
//! all three see the same load; the per-round ratios' medians are printed.
//!
//! `cargo bench -p courier-crypto --bench ratio`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use courier_crypto::{Identity, OneTimePreKey, PreKeyBundle, PreKeyMessage, Session, SignedPreKey};
use hmac::{Hmac, Mac};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use sha2::Sha256;

fn established(rng: &mut ChaCha20Rng) -> (Session, Session) {
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
    let mut a = Session::initiate(&alice, &bundle, rng).unwrap();
    let m = a.encrypt(b"hi", rng).unwrap();
    let pm = PreKeyMessage::from_bytes(&m).unwrap();
    let (mut b, _) = Session::respond(&bob, &spk, Some(&opk), &pm).unwrap();
    let r = b.encrypt(b"hi", rng).unwrap();
    a.decrypt(&r).unwrap();
    let m = a.encrypt(b"first", rng).unwrap();
    b.decrypt(&m).unwrap();
    (a, b)
}

fn yardstick(pt: &[u8]) -> Vec<u8> {
    let mut m1 = <Hmac<Sha256> as KeyInit>::new_from_slice(black_box(&[3u8; 32])).unwrap();
    m1.update(&[1]);
    let mk = m1.finalize().into_bytes();
    let mut m2 = <Hmac<Sha256> as KeyInit>::new_from_slice(black_box(&[3u8; 32])).unwrap();
    m2.update(&[2]);
    black_box(m2.finalize().into_bytes());
    let cipher = Aes256Gcm::new_from_slice(&mk).unwrap();
    cipher
        .encrypt(
            &[1u8; 12].into(),
            Payload {
                msg: black_box(pt),
                aad: &[0u8; 170],
            },
        )
        .unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    println!(
        "| size | yardstick (AEAD + 2 HMAC) | ratchet encrypt | ratio | ratchet decrypt | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for (size, name, chunk) in [
        (64usize, "64 B", 200usize),
        (1024, "1 KiB", 200),
        (65536, "64 KiB", 10),
    ] {
        let pt = vec![0x5Au8; size];
        let (mut enc, _) = established(&mut rng);
        let (mut src, mut dec) = established(&mut rng);
        let (mut base_t, mut enc_t, mut dec_t) = (Vec::new(), Vec::new(), Vec::new());
        let (mut enc_r, mut dec_r) = (Vec::new(), Vec::new());
        for round in 0..60 {
            let msgs: Vec<Vec<u8>> = (0..chunk)
                .map(|_| src.encrypt(&pt, &mut rng).unwrap())
                .collect();
            let t = Instant::now();
            for _ in 0..chunk {
                black_box(yardstick(&pt));
            }
            let base = t.elapsed().as_secs_f64() / chunk as f64;
            let t = Instant::now();
            for _ in 0..chunk {
                black_box(enc.encrypt(black_box(&pt), &mut rng).unwrap());
            }
            let e = t.elapsed().as_secs_f64() / chunk as f64;
            let t = Instant::now();
            for m in &msgs {
                black_box(dec.decrypt(black_box(m)).unwrap());
            }
            let d = t.elapsed().as_secs_f64() / chunk as f64;
            if round >= 5 {
                base_t.push(base);
                enc_t.push(e);
                dec_t.push(d);
                enc_r.push(e / base);
                dec_r.push(d / base);
            }
        }
        let us = |s: f64| format!("{:.2} µs", s * 1e6);
        println!(
            "| {name} | {} | {} | {:.2}× | {} | {:.2}× |",
            us(median(&mut base_t)),
            us(median(&mut enc_t)),
            median(&mut enc_r),
            us(median(&mut dec_t)),
            median(&mut dec_r),
        );
    }
}
