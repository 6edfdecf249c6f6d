//! Committed JSON test vectors (`tests/vectors/*.json`).
//!
//! Every secret comes from `key(label) = SHA-256("courier-vectors/" || label)`
//! and every random draw from [`VectorRng`]: draw `i` (from 0) of `n <= 32`
//! bytes is the first `n` bytes of `SHA-256(rng_label || u32_be(i))`. The
//! draws are recorded in the JSON too, so another implementation can replay
//! them. `vectors_match_committed` recomputes everything and compares;
//! `cargo test -p courier-crypto --test vectors -- --ignored` rewrites the files.

#![allow(clippy::unwrap_used)] // generator helpers outside #[test] fns

use std::convert::Infallible;
use std::path::PathBuf;

use courier_crypto::rand_core::{TryCryptoRng, TryRng};
use courier_crypto::{
    Identity, OneTimePreKey, PreKeyBundle, PreKeyMessage, SenderAddress, SenderKey,
    SenderKeyReceiver, Session, SignedPreKey, sealed, x3dh,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn key(label: &str) -> [u8; 32] {
    Sha256::digest(format!("courier-vectors/{label}").as_bytes()).into()
}

/// Deterministic, replayable RNG for vectors (not a CSPRNG for real use).
struct VectorRng {
    label: String,
    counter: u32,
    draws: Vec<String>,
}

impl VectorRng {
    fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            counter: 0,
            draws: Vec::new(),
        }
    }
}

impl TryRng for VectorRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(dst.len() <= 32, "vector draws are at most 32 bytes");
        let mut h = Sha256::new();
        h.update(self.label.as_bytes());
        h.update(self.counter.to_be_bytes());
        let block: [u8; 32] = h.finalize().into();
        dst.copy_from_slice(&block[..dst.len()]);
        self.counter += 1;
        self.draws.push(hex::encode(&dst));
        Ok(())
    }
}

impl TryCryptoRng for VectorRng {}

struct Keys {
    identity: Identity,
    spk: SignedPreKey,
    opk: OneTimePreKey,
}

/// Alice's and Bob's fixed long-term keys.
fn party(name: &str) -> (Identity, Value) {
    let seed = key(&format!("{name}/identity/ed25519"));
    let dh = key(&format!("{name}/identity/x25519"));
    let identity = Identity::from_secret_bytes(&seed, &dh);
    let v = json!({
        "ed25519_seed": hex::encode(seed),
        "x25519_secret": hex::encode(dh),
        "public_identity": hex::encode(identity.public().to_bytes()),
    });
    (identity, v)
}

fn bob_prekeys(identity: &Identity) -> (Keys, Value) {
    // Prekeys come from an RNG so the test uses the public constructors.
    let mut rng = VectorRng::new("bob/prekeys");
    let spk = SignedPreKey::generate(identity, 7, 1_700_000_000_000, &mut rng);
    let opk = OneTimePreKey::generate_batch(42, 1, &mut rng).remove(0);
    let v = json!({
        "rng_label": "bob/prekeys",
        "rng_draws": rng.draws,
        "signed_prekey": hex::encode(spk.public().to_bytes()),
        "one_time_prekey": hex::encode(opk.public().to_bytes()),
    });
    let (id2, _) = party("bob");
    (
        Keys {
            identity: id2,
            spk,
            opk,
        },
        v,
    )
}

fn x3dh_vectors() -> Value {
    let (alice, alice_v) = party("alice");
    let (bob, bob_v) = party("bob");
    let (bob_keys, prekeys_v) = bob_prekeys(&bob);
    let mut cases = Vec::new();
    for with_opk in [true, false] {
        let bundle = PreKeyBundle::new(
            bob.public().clone(),
            bob_keys.spk.public().clone(),
            with_opk.then(|| bob_keys.opk.public().clone()),
        )
        .unwrap();
        let eph = key(&format!("alice/x3dh/ephemeral/{with_opk}"));
        let init = x3dh::initiate_with_ephemeral(&alice, &bundle, &eph).unwrap();
        let resp = x3dh::respond(
            &bob_keys.identity,
            &bob_keys.spk,
            with_opk.then_some(&bob_keys.opk),
            alice.public(),
            &init.ephemeral_public,
        )
        .unwrap();
        assert_eq!(init.secret.key(), resp.key());
        cases.push(json!({
            "with_one_time_prekey": with_opk,
            "bundle": hex::encode(bundle.to_bytes()),
            "ephemeral_secret": hex::encode(eph),
            "ephemeral_public": hex::encode(init.ephemeral_public),
            "shared_secret": hex::encode(init.secret.key()),
            "associated_data": hex::encode(init.secret.associated_data()),
        }));
    }
    json!({
        "description": "X3DH with fixed identities and prekeys; SK = HKDF-SHA256(salt=0^32, ikm=FF^32||DH1||DH2||DH3[||DH4], info=\"Courier_X3DH_v1\", L=32)",
        "alice": alice_v,
        "bob": bob_v,
        "bob_prekeys": prekeys_v,
        "cases": cases,
    })
}

fn ratchet_vectors() -> Value {
    let (alice, alice_v) = party("alice");
    let (bob, bob_v) = party("bob");
    let (bob_keys, prekeys_v) = bob_prekeys(&bob);
    let bundle = PreKeyBundle::new(
        bob.public().clone(),
        bob_keys.spk.public().clone(),
        Some(bob_keys.opk.public().clone()),
    )
    .unwrap();
    let mut arng = VectorRng::new("alice/session");
    let mut brng = VectorRng::new("bob/session");
    let mut a = Session::initiate(&alice, &bundle, &mut arng).unwrap();

    let send = |s: &mut Session, rng: &mut VectorRng, id: &str, from: &'static str| {
        let pt = format!("message {id}");
        let wire = s.encrypt(pt.as_bytes(), rng).unwrap();
        (id.to_owned(), from, pt.into_bytes(), wire)
    };
    let mut events = Vec::new();
    let mut record = |msg: &(String, &str, Vec<u8>, Vec<u8>)| {
        events.push(json!({
            "id": msg.0, "from": msg.1,
            "plaintext": hex::encode(&msg.2), "wire": hex::encode(&msg.3),
        }));
    };
    // Alice sends A0..A2 (prekey messages); A1 is delayed.
    let a0 = send(&mut a, &mut arng, "A0", "alice");
    let a1 = send(&mut a, &mut arng, "A1", "alice");
    let a2 = send(&mut a, &mut arng, "A2", "alice");
    for m in [&a0, &a1, &a2] {
        record(m);
    }
    // Bob receives A2 first (A0, A1 skipped), responding to the prekey message.
    let pm = PreKeyMessage::from_bytes(&a2.3).unwrap();
    let (mut b, pt) =
        Session::respond(&bob_keys.identity, &bob_keys.spk, Some(&bob_keys.opk), &pm).unwrap();
    assert_eq!(pt, a2.2);
    assert_eq!(b.decrypt(&a0.3).unwrap(), a0.2);
    // Bob replies B0, B1; Alice gets B1 then B0.
    let b0 = send(&mut b, &mut brng, "B0", "bob");
    let b1 = send(&mut b, &mut brng, "B1", "bob");
    record(&b0);
    record(&b1);
    assert_eq!(a.decrypt(&b1.3).unwrap(), b1.2);
    assert_eq!(a.decrypt(&b0.3).unwrap(), b0.2);
    // Alice's new chain A3, A4; Bob gets A4, then the late A1, then A3.
    let a3 = send(&mut a, &mut arng, "A3", "alice");
    let a4 = send(&mut a, &mut arng, "A4", "alice");
    record(&a3);
    record(&a4);
    assert_eq!(b.decrypt(&a4.3).unwrap(), a4.2);
    assert_eq!(b.decrypt(&a1.3).unwrap(), a1.2);
    assert_eq!(b.decrypt(&a3.3).unwrap(), a3.2);
    // Bob's second chain.
    let b2 = send(&mut b, &mut brng, "B2", "bob");
    record(&b2);
    assert_eq!(a.decrypt(&b2.3).unwrap(), b2.2);
    json!({
        "description": "A conversation: Alice initiates with a one-time prekey; Bob receives in the order given by delivery_order (A1 arrives last of Alice's first chain, after Alice's second chain started).",
        "alice": alice_v,
        "bob": bob_v,
        "bob_prekeys": prekeys_v,
        "alice_rng": {"label": "alice/session", "draws": arng.draws},
        "bob_rng": {"label": "bob/session", "draws": brng.draws},
        "messages": events,
        "delivery_order": ["A2", "A0", "B1", "B0", "A4", "A1", "A3", "B2"],
    })
}

fn sender_key_vectors() -> Value {
    let mut rng = VectorRng::new("alice/sender-key");
    let mut sk = SenderKey::generate(&mut rng);
    let dist = sk.distribution_message();
    let mut r = SenderKeyReceiver::from_distribution(&dist).unwrap();
    let msgs: Vec<(Vec<u8>, Vec<u8>)> = (0..4)
        .map(|i| {
            let pt = format!("group message {i}").into_bytes();
            let wire = sk.encrypt(&pt).unwrap();
            (pt, wire)
        })
        .collect();
    for i in [2usize, 0, 3, 1] {
        assert_eq!(r.decrypt(&msgs[i].1).unwrap(), msgs[i].0);
    }
    json!({
        "description": "Sender key from VectorRng(\"alice/sender-key\"): draws are chain id (4 bytes), chain key (32), Ed25519 seed (32). Messages decrypt in any order.",
        "rng": {"label": "alice/sender-key", "draws": rng.draws},
        "distribution": hex::encode(dist),
        "messages": msgs.iter().map(|(p, w)| json!({"plaintext": hex::encode(p), "wire": hex::encode(w)})).collect::<Vec<_>>(),
    })
}

fn sealed_vectors() -> Value {
    let (alice, alice_v) = party("alice");
    let (bob, bob_v) = party("bob");
    let from = SenderAddress {
        address: "alice@relay-a.example".into(),
        device: 3,
    };
    let eph = key("alice/sealed/ephemeral");
    let content = b"inner session message";
    let envelope = sealed::seal_with_ephemeral(&alice, &from, bob.public(), content, &eph).unwrap();
    let opened = sealed::open(&bob, &envelope).unwrap();
    assert_eq!(opened.content, content);
    assert_eq!(opened.sender, from);
    json!({
        "description": "Sealed sender envelope from alice@relay-a.example device 3 to Bob.",
        "alice": alice_v,
        "bob": bob_v,
        "sender_address": from.address,
        "sender_device": from.device,
        "ephemeral_secret": hex::encode(eph),
        "content": hex::encode(content),
        "envelope": hex::encode(envelope),
    })
}

fn all() -> Vec<(&'static str, Value)> {
    vec![
        ("x3dh.json", x3dh_vectors()),
        ("ratchet.json", ratchet_vectors()),
        ("sender_key.json", sender_key_vectors()),
        ("sealed_sender.json", sealed_vectors()),
    ]
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[test]
fn vectors_match_committed() {
    for (name, value) in all() {
        let text = std::fs::read_to_string(dir().join(name)).unwrap();
        let committed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(committed, value, "{name} differs from the code");
    }
}

#[test]
fn committed_wire_bytes_decrypt() {
    // Independent of regeneration: Bob's side from the committed bytes alone.
    let text = std::fs::read_to_string(dir().join("ratchet.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let (bob, _) = party("bob");
    let (bob_keys, _) = bob_prekeys(&bob);
    let msgs = v["messages"].as_array().unwrap();
    let find = |id: &str| {
        let m = msgs.iter().find(|m| m["id"] == id).unwrap();
        (
            hex::decode(m["wire"].as_str().unwrap()).unwrap(),
            hex::decode(m["plaintext"].as_str().unwrap()).unwrap(),
        )
    };
    let (a2, p2) = find("A2");
    let pm = PreKeyMessage::from_bytes(&a2).unwrap();
    let (mut b, pt) =
        Session::respond(&bob_keys.identity, &bob_keys.spk, Some(&bob_keys.opk), &pm).unwrap();
    assert_eq!(pt, p2);
    let (a0, p0) = find("A0");
    assert_eq!(b.decrypt(&a0).unwrap(), p0);
    // Bob's replies, with the recorded randomness, reproduce the committed bytes.
    let mut brng = VectorRng::new("bob/session");
    for id in ["B0", "B1"] {
        let (w, p) = find(id);
        assert_eq!(b.encrypt(&p, &mut brng).unwrap(), w, "{id}");
    }
    for id in ["A4", "A1", "A3"] {
        let (w, p) = find(id);
        assert_eq!(b.decrypt(&w).unwrap(), p, "{id}");
    }

    let text = std::fs::read_to_string(dir().join("sealed_sender.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let envelope = hex::decode(v["envelope"].as_str().unwrap()).unwrap();
    let opened = sealed::open(&bob, &envelope).unwrap();
    assert_eq!(hex::encode(opened.content), v["content"].as_str().unwrap());
}

#[test]
#[ignore = "rewrites tests/vectors/*.json"]
fn regenerate_vectors() {
    std::fs::create_dir_all(dir()).unwrap();
    for (name, value) in all() {
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        std::fs::write(dir().join(name), text).unwrap();
    }
}

/// Recomputes the committed vectors from `docs/crypto.md` with the raw
/// primitives only (no `courier-crypto` internals): a check that the
/// document, not just the code, is what the vectors pin.
#[test]
fn vectors_follow_the_documented_spec() {
    use aes_gcm::Aes256Gcm;
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use hkdf::Hkdf;
    use hmac::{Hmac, Mac};
    use x25519_dalek::{PublicKey, StaticSecret};

    fn h(v: &Value) -> Vec<u8> {
        hex::decode(v.as_str().unwrap()).unwrap()
    }
    fn a32(v: &[u8]) -> [u8; 32] {
        v.try_into().unwrap()
    }
    fn dh(secret: &[u8], public: &[u8]) -> [u8; 32] {
        StaticSecret::from(a32(secret))
            .diffie_hellman(&PublicKey::from(a32(public)))
            .to_bytes()
    }
    fn public(secret: &[u8]) -> [u8; 32] {
        PublicKey::from(&StaticSecret::from(a32(secret))).to_bytes()
    }
    fn hmac(key: &[u8], m: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(m);
        mac.finalize().into_bytes().to_vec()
    }
    fn open(keys: &[u8], ct: &[u8], aad: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new_from_slice(&keys[..32]).unwrap();
        let nonce: [u8; 12] = keys[32..44].try_into().unwrap();
        cipher
            .decrypt(&nonce.into(), Payload { msg: ct, aad })
            .unwrap()
    }
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
    };

    // X3DH.
    let v = read("x3dh.json");
    let ik_a = h(&v["alice"]["x25519_secret"]);
    let ik_b = h(&v["bob"]["x25519_secret"]);
    let spk = h(&v["bob_prekeys"]["rng_draws"][0]);
    let opk = h(&v["bob_prekeys"]["rng_draws"][1]);
    for case in v["cases"].as_array().unwrap() {
        let ek = h(&case["ephemeral_secret"]);
        let mut ikm = vec![0xFF; 32];
        ikm.extend(dh(&ik_a, &public(&spk)));
        ikm.extend(dh(&ek, &public(&ik_b)));
        ikm.extend(dh(&ek, &public(&spk)));
        if case["with_one_time_prekey"] == true {
            ikm.extend(dh(&ek, &public(&opk)));
        }
        let mut sk = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm)
            .expand(b"Courier_X3DH_v1", &mut sk)
            .unwrap();
        assert_eq!(hex::encode(sk), case["shared_secret"].as_str().unwrap());
        let pa = h(&v["alice"]["public_identity"]);
        let pb = h(&v["bob"]["public_identity"]);
        let ad = [&pa[..64], &pb[..64]].concat();
        assert_eq!(hex::encode(ad), case["associated_data"].as_str().unwrap());
    }

    // First ratchet message A0: Alice's draws are EK_A, then her first DHs.
    let v = read("ratchet.json");
    let ek = h(&v["alice_rng"]["draws"][0]);
    let dhs = h(&v["alice_rng"]["draws"][1]);
    let mut ikm = vec![0xFF; 32];
    ikm.extend(dh(&ik_a, &public(&spk)));
    ikm.extend(dh(&ek, &public(&ik_b)));
    ikm.extend(dh(&ek, &public(&spk)));
    ikm.extend(dh(&ek, &public(&opk)));
    let mut sk = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm)
        .expand(b"Courier_X3DH_v1", &mut sk)
        .unwrap();
    let mut rk_ck = [0u8; 64];
    Hkdf::<Sha256>::new(Some(&sk), &dh(&dhs, &public(&spk)))
        .expand(b"Courier_Ratchet_Root_v1", &mut rk_ck)
        .unwrap();
    let mk = hmac(&rk_ck[32..], &[0x01]);
    let mut keys = [0u8; 44];
    Hkdf::<Sha256>::from_prk(&mk)
        .unwrap()
        .expand(b"Courier_Ratchet_MK_v1", &mut keys)
        .unwrap();
    let a0 = &v["messages"][0];
    assert_eq!(a0["id"], "A0");
    let wire = h(&a0["wire"]);
    // Prekey message: 2 + 128 + 32 + 4 + 1 + 4 bytes, then the ratchet message.
    let inner = &wire[171..];
    assert_eq!(&inner[..2], &[1, 1]);
    assert_eq!(&inner[2..34], &public(&dhs));
    let pa = h(&v["alice"]["public_identity"]);
    let pb = h(&v["bob"]["public_identity"]);
    let aad = [&pa[..64], &pb[..64], &inner[..42]].concat();
    assert_eq!(open(&keys, &inner[42..], &aad), h(&a0["plaintext"]));

    // Sender key message 0: draws are chain id, chain key, signing seed.
    let v = read("sender_key.json");
    let ck = h(&v["rng"]["draws"][1]);
    let mk = hmac(&ck, &[0x01]);
    let mut keys = [0u8; 44];
    Hkdf::<Sha256>::from_prk(&mk)
        .unwrap()
        .expand(b"Courier_Group_MK_v1", &mut keys)
        .unwrap();
    let m0 = &v["messages"][0];
    let wire = h(&m0["wire"]);
    assert_eq!(&wire[2..6], h(&v["rng"]["draws"][0]).as_slice());
    let ct = &wire[10..wire.len() - 64];
    assert_eq!(open(&keys, ct, &wire[..10]), h(&m0["plaintext"]));

    // Sealed sender.
    let v = read("sealed_sender.json");
    let env = h(&v["envelope"]);
    let eph_pub = &env[2..34];
    assert_eq!(eph_pub, public(&h(&v["ephemeral_secret"])));
    let ik_b_pub = public(&ik_b);
    let mut keys = [0u8; 44];
    Hkdf::<Sha256>::new(
        Some(&[eph_pub, &ik_b_pub[..]].concat()),
        &dh(&ik_b, eph_pub),
    )
    .expand(b"Courier_SealedSender_v1", &mut keys)
    .unwrap();
    let pb = h(&v["bob"]["public_identity"]);
    let aad = [&env[..34], &pb[..64]].concat();
    let content = open(&keys, &env[34..], &aad);
    assert_eq!(&content[..2], &[1, 7]);
    assert_eq!(content[2..130], h(&v["alice"]["public_identity"])[..]);
    let len = usize::from(u16::from_be_bytes([content[130], content[131]]));
    assert_eq!(
        &content[132..132 + len],
        v["sender_address"].as_str().unwrap().as_bytes()
    );
    assert_eq!(&content[132 + len..136 + len], &3u32.to_be_bytes());
    assert_eq!(content[136 + len..], h(&v["content"])[..]);
}
