//! The peer book on this node: [`courier_relay::peering::book`] holds it
//! (descriptors, pins, policy, eviction); this module is its edge — the
//! file `<data-dir>/peers.json` (written to a temporary file, synced, then
//! renamed, so a crash leaves the old or the new file), signatures checked
//! with libp2p keys, and conversions between libp2p's `PeerId`/`Multiaddr`
//! and peering's [`PeerKey`]/[`PeerAddr`].

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use courier_protocol::{RelayName, SignedDescriptor};
pub use courier_relay::peering::book::*;
pub use courier_relay::peering::{DescriptorError, PeerAddr, PeerKey, Verify};
use libp2p::{Multiaddr, PeerId};

use super::descriptor;

/// Peering's name for a libp2p peer: its base58 text.
pub fn key(peer: &PeerId) -> PeerKey {
    PeerKey::new(peer.to_base58())
}

/// The libp2p peer a peering key names (`None` for text that is not one).
pub fn peer_id(key: &PeerKey) -> Option<PeerId> {
    key.as_str().parse().ok()
}

/// Peering's form of a multiaddr: its text.
pub fn addr(addr: &Multiaddr) -> PeerAddr {
    PeerAddr::new(addr.to_string())
}

/// Descriptor signatures checked with libp2p Ed25519 keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct Libp2pVerify;

impl Verify for Libp2pVerify {
    fn verify(&self, signed: &SignedDescriptor) -> Result<PeerKey, DescriptorError> {
        descriptor::verify(signed).map(|peer| key(&peer))
    }
}

/// A book for relay `own_name` with key `own_peer` over `file`, checking
/// signatures with libp2p keys.
pub fn new_book(own_name: RelayName, own_peer: PeerId, policy: Policy, file: PeerFile) -> PeerBook {
    PeerBook::new(
        own_name,
        key(&own_peer),
        policy,
        file,
        Arc::new(Libp2pVerify),
    )
}

/// Why the peer book could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PeerFileError {
    /// File IO failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a peer book.
    #[error("{path}: not a peer book: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The error.
        source: serde_json::Error,
    },
}

/// Loads `path`, or an empty file if it does not exist.
pub fn load(path: &Path) -> Result<PeerFile, PeerFileError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PeerFile::default()),
        Err(source) => {
            return Err(PeerFileError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    serde_json::from_slice(&text).map_err(|source| PeerFileError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `file` to `path` atomically (temp file, fsync, rename).
pub fn save(file: &PeerFile, path: &Path) -> Result<(), PeerFileError> {
    let io = |source| PeerFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let json = serde_json::to_vec_pretty(file).map_err(|source| PeerFileError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&json).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use courier_protocol::RelayDescriptor;
    use libp2p::identity::Keypair;

    use super::*;

    fn signed(key: &Keypair, name: &str, issued_ms: u64) -> SignedDescriptor {
        descriptor::sign(
            key,
            RelayDescriptor {
                name: name.parse().unwrap(),
                peer_id: id(key).to_string(),
                addresses: vec![],
                http_url: String::new(),
                version: "0.1.0".into(),
                features: vec![],
                issued_ms,
            },
        )
    }

    fn id(key: &Keypair) -> PeerKey {
        super::key(&key.public().to_peer_id())
    }

    /// A book checking signatures with libp2p keys, keyed by peering keys.
    fn new_book(name: RelayName, peer: PeerKey, policy: Policy, file: PeerFile) -> PeerBook {
        PeerBook::new(name, peer, policy, file, Arc::new(Libp2pVerify))
    }

    fn book(policy: Policy) -> PeerBook {
        let own = Keypair::generate_ed25519();
        new_book(
            "relay-a.example".parse().unwrap(),
            id(&own),
            policy,
            PeerFile::default(),
        )
    }

    #[test]
    fn first_key_seen_for_a_name_is_pinned_and_another_key_is_refused() {
        let mut book = book(Policy::default());
        let b = Keypair::generate_ed25519();
        let evil = Keypair::generate_ed25519();
        assert_eq!(
            book.admit(&signed(&b, "relay-b.example", 1), Source::Direct, 0)
                .unwrap()
                .1,
            Admitted::New
        );
        let err = book
            .admit(&signed(&evil, "relay-b.example", 2), Source::Direct, 0)
            .unwrap_err();
        assert!(matches!(err, Refusal::PinnedKeyMismatch { .. }));
        assert_eq!(err.code(), courier_protocol::ErrorCode::PinnedKeyMismatch);
        // Nothing changed: still B's key and descriptor.
        let name = "relay-b.example".parse().unwrap();
        assert_eq!(book.pinned(&name), Some(id(&b)));
        assert_eq!(book.name_of(&id(&evil)), None);

        // The operator re-pins; now the new key is accepted.
        book.pin(name.clone(), id(&evil));
        assert_eq!(
            book.admit(&signed(&evil, "relay-b.example", 3), Source::Direct, 0)
                .unwrap()
                .1,
            Admitted::New
        );
        assert_eq!(book.name_of(&id(&evil)), Some(name));
    }

    #[test]
    fn older_or_same_descriptor_is_not_news() {
        let mut book = book(Policy::default());
        let b = Keypair::generate_ed25519();
        assert_eq!(
            book.admit(&signed(&b, "relay-b.example", 5), Source::Direct, 0)
                .unwrap()
                .1,
            Admitted::New
        );
        assert_eq!(
            book.admit(&signed(&b, "relay-b.example", 5), Source::Direct, 0)
                .unwrap()
                .1,
            Admitted::Known
        );
        assert_eq!(
            book.admit(&signed(&b, "relay-b.example", 4), Source::Direct, 0)
                .unwrap()
                .1,
            Admitted::Known
        );
        assert_eq!(
            book.admit(&signed(&b, "relay-b.example", 6), Source::Direct, 0)
                .unwrap()
                .1,
            Admitted::New
        );
    }

    #[test]
    fn allowlist_refuses_unlisted_relays_and_denylist_refuses_listed_ones() {
        let b = Keypair::generate_ed25519();
        let c = Keypair::generate_ed25519();
        let mut allow = book(Policy {
            mode: PolicyMode::Allowlist,
            allow: ["relay-b.example".to_owned()].into(),
            deny: BTreeSet::new(),
        });
        assert!(
            allow
                .admit(&signed(&b, "relay-b.example", 1), Source::Direct, 0)
                .is_ok()
        );
        assert!(matches!(
            allow.admit(&signed(&c, "relay-c.example", 1), Source::Direct, 0),
            Err(Refusal::Policy { .. })
        ));
        let mut deny = book(Policy {
            mode: PolicyMode::Denylist,
            allow: BTreeSet::new(),
            deny: [id(&c).to_string()].into(),
        });
        assert!(
            deny.admit(&signed(&b, "relay-b.example", 1), Source::Direct, 0)
                .is_ok()
        );
        assert!(matches!(
            deny.admit(&signed(&c, "relay-c.example", 1), Source::Direct, 0),
            Err(Refusal::Policy { .. })
        ));
    }

    #[test]
    fn removed_peer_is_refused_until_added_again_and_book_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEERS_FILE);
        let mut book = book(Policy::default());
        let b = Keypair::generate_ed25519();
        let b_id = id(&b);
        let addr: PeerAddr = format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{b_id}")
            .parse()
            .unwrap();
        book.add(b_id.clone(), &addr, 1);
        book.admit(&signed(&b, "relay-b.example", 1), Source::Direct, 0)
            .unwrap();
        save(book.file(), &path).unwrap();
        let reloaded = load(&path).unwrap();
        assert_eq!(&reloaded, book.file());

        assert!(book.remove(&b_id));
        assert!(matches!(
            book.admit(&signed(&b, "relay-b.example", 2), Source::Direct, 0),
            Err(Refusal::Removed { .. })
        ));
        assert!(book.added().is_empty());
        book.add(b_id.clone(), &addr, 2);
        assert!(
            book.admit(&signed(&b, "relay-b.example", 2), Source::Direct, 0)
                .is_ok()
        );
    }

    #[test]
    fn own_name_or_key_is_refused() {
        let mut book = book(Policy::default());
        let x = Keypair::generate_ed25519();
        assert_eq!(
            book.admit(&signed(&x, "relay-a.example", 1), Source::Direct, 0),
            Err(Refusal::Ourselves)
        );
    }

    fn name(text: &str) -> RelayName {
        text.parse().unwrap()
    }

    fn gossip(book: &mut PeerBook, from: &Keypair, prefix: &str, n: usize, t0: u64) -> Vec<String> {
        let from = Source::Gossip(id(from));
        (0..n)
            .map(|i| {
                let relay = format!("{prefix}-{i}.example");
                let d = signed(&Keypair::generate_ed25519(), &relay, 1);
                match book.admit(&d, from.clone(), t0 + i as u64) {
                    Ok(_) | Err(Refusal::BookFull { .. }) => relay,
                    Err(e) => panic!("{e}"),
                }
            })
            .collect()
    }

    #[test]
    fn full_book_evicts_hearsay_of_the_loudest_source_and_never_operator_or_live_peers() {
        let mut book = book(Policy::default());
        book.set_max(10);
        // An operator-added peer, an operator pin without descriptor and a
        // relay federating right now.
        let o = Keypair::generate_ed25519();
        let o_id = id(&o);
        let addr: PeerAddr = format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{o_id}")
            .parse()
            .unwrap();
        book.add(o_id.clone(), &addr, 0);
        book.admit(&signed(&o, "relay-o.example", 1), Source::Direct, 0)
            .unwrap();
        let p = id(&Keypair::generate_ed25519());
        book.pin(name("relay-p.example"), p.clone());
        let l = Keypair::generate_ed25519();
        book.admit(&signed(&l, "relay-l.example", 1), Source::Direct, 0)
            .unwrap();
        book.set_live(id(&l), true);
        // An honest peer shares three relays, then another floods 500.
        let honest = gossip(&mut book, &Keypair::generate_ed25519(), "honest", 3, 10);
        let flood = gossip(&mut book, &Keypair::generate_ed25519(), "flood", 500, 100);

        assert_eq!(book.len(), 10);
        assert_eq!(book.pinned(&name("relay-o.example")), Some(o_id));
        assert_eq!(book.pinned(&name("relay-p.example")), Some(p));
        assert!(book.descriptor(&name("relay-l.example")).is_some());
        for relay in &honest {
            assert!(book.descriptor(&name(relay)).is_some(), "{relay} evicted");
        }
        // The flood churned only its own share, keeping its newest four.
        let kept: Vec<&String> = flood
            .iter()
            .filter(|r| book.descriptor(&name(r)).is_some())
            .collect();
        assert_eq!(kept, flood[496..].iter().collect::<Vec<_>>());
        // The pins of evicted relays went with them: no hidden growth.
        assert_eq!(book.file().pins.len() + book.file().hints.len(), 10);
        assert_eq!(book.file().entries.len(), 9);
    }

    #[test]
    fn hearsay_never_displaces_a_relay_that_connected_but_a_relay_talking_to_us_may() {
        let mut book = book(Policy::default());
        book.set_max(3);
        let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
        for (i, key) in keys.iter().enumerate() {
            book.admit(
                &signed(key, &format!("relay-{i}.example"), 1),
                Source::Direct,
                i as u64,
            )
            .unwrap();
        }
        let gossiper = id(&Keypair::generate_ed25519());
        let shared = signed(&Keypair::generate_ed25519(), "relay-x.example", 1);
        assert!(matches!(
            book.admit(&shared, Source::Gossip(gossiper.clone()), 10),
            Err(Refusal::BookFull { max: 3, .. })
        ));
        assert_eq!(
            book.admit(&shared, Source::Gossip(gossiper.clone()), 10)
                .unwrap_err()
                .code(),
            courier_protocol::ErrorCode::FederationRefused
        );
        // A relay that talks to us itself takes the place of the one
        // heard of least recently, unless that one is connected now.
        book.set_live(id(&keys[0]), true);
        let d = Keypair::generate_ed25519();
        book.admit(&signed(&d, "relay-d.example", 1), Source::Direct, 20)
            .unwrap();
        assert_eq!(book.len(), 3);
        assert!(book.descriptor(&name("relay-0.example")).is_some());
        assert!(book.descriptor(&name("relay-1.example")).is_none());

        // Only live and operator peers left: a newcomer is refused, an
        // operator-added one is admitted over the cap.
        for key in [&keys[2], &d] {
            book.set_live(id(key), true);
        }
        let e = Keypair::generate_ed25519();
        assert!(matches!(
            book.admit(&signed(&e, "relay-e.example", 1), Source::Direct, 30),
            Err(Refusal::BookFull { .. })
        ));
        let e_id = id(&e);
        let addr: PeerAddr = format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{e_id}")
            .parse()
            .unwrap();
        book.add(e_id.clone(), &addr, 30);
        book.admit(&signed(&e, "relay-e.example", 1), Source::Direct, 30)
            .unwrap();
        assert_eq!(book.len(), 4);
    }

    #[test]
    fn a_book_over_a_lowered_cap_is_trimmed_at_load_hearsay_first_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEERS_FILE);
        let mut book = book(Policy::default());
        let b = Keypair::generate_ed25519();
        book.admit(&signed(&b, "relay-b.example", 1), Source::Direct, 1)
            .unwrap();
        book.pin(name("relay-p.example"), id(&Keypair::generate_ed25519()));
        gossip(&mut book, &Keypair::generate_ed25519(), "heard", 20, 50);
        save(book.file(), &path).unwrap();
        let file = load(&path).unwrap();
        assert_eq!(&file, book.file());
        assert!(file.operator_pins.contains(&name("relay-p.example")));

        let mut reloaded = new_book(
            name("relay-a.example"),
            id(&Keypair::generate_ed25519()),
            Policy::default(),
            file,
        );
        let evicted = reloaded.set_max(5);
        assert_eq!(evicted.len(), 17);
        assert_eq!(reloaded.len(), 5);
        assert!(reloaded.descriptor(&name("relay-b.example")).is_some());
        assert!(reloaded.pinned(&name("relay-p.example")).is_some());
        assert!(evicted.iter().all(|n| n.as_str().starts_with("heard-")));

        // A book written before the cap (no entries): its relays count as
        // connected, so hearsay cannot push them out.
        let legacy: PeerFile = serde_json::from_value(serde_json::json!({
            "pins": {"relay-b.example": id(&b).to_string()},
            "descriptors": {"relay-b.example": signed(&b, "relay-b.example", 1)},
        }))
        .unwrap();
        let mut legacy = new_book(
            name("relay-a.example"),
            id(&Keypair::generate_ed25519()),
            Policy::default(),
            legacy,
        );
        legacy.set_max(1);
        let shared = signed(&Keypair::generate_ed25519(), "relay-x.example", 1);
        let from = Source::Gossip(id(&Keypair::generate_ed25519()));
        assert!(matches!(
            legacy.admit(&shared, from, 1),
            Err(Refusal::BookFull { .. })
        ));
    }

    #[test]
    fn gossip_only_hints_and_the_relay_itself_replaces_a_forged_hint() {
        let mut book = book(Policy::default());
        let c = name("relay-c.example");
        let genuine = Keypair::generate_ed25519();
        let forged = Keypair::generate_ed25519();
        let liar = Source::Gossip(id(&Keypair::generate_ed25519()));
        // A liar's descriptor for a name nobody pinned: a hint, not a pin.
        book.admit(&signed(&forged, "relay-c.example", 1), liar.clone(), 1)
            .unwrap();
        assert_eq!(book.pinned(&c), None);
        assert!(book.routable(&c));
        assert_eq!(
            book.descriptor(&c).unwrap().descriptor.peer_id,
            id(&forged).to_string()
        );
        assert_eq!(book.name_of(&id(&forged)), None);
        // The genuine relay says hello itself with another key: it wins.
        book.admit(&signed(&genuine, "relay-c.example", 1), Source::Direct, 2)
            .unwrap();
        assert_eq!(book.pinned(&c), Some(id(&genuine)));
        assert!(book.file().hints.is_empty());
        assert_eq!(book.name_of(&id(&genuine)), Some(c.clone()));
        assert_eq!(book.len(), 1);
        // Gossip now contradicting the pin is refused.
        assert!(matches!(
            book.admit(&signed(&forged, "relay-c.example", 9), liar, 3),
            Err(Refusal::PinnedKeyMismatch { .. })
        ));
        // Out-of-band evidence (the `.well-known` hook) outranks a TOFU pin.
        let rotated = Keypair::generate_ed25519();
        book.admit(&signed(&rotated, "relay-c.example", 1), Source::Verified, 4)
            .unwrap();
        assert_eq!(book.pinned(&c), Some(id(&rotated)));
    }

    #[test]
    fn a_gossip_pin_from_an_older_book_loads_as_a_hint() {
        let forged = Keypair::generate_ed25519();
        let direct = Keypair::generate_ed25519();
        let liar = id(&Keypair::generate_ed25519()).to_string();
        let old: PeerFile = serde_json::from_value(serde_json::json!({
            "pins": {
                "relay-c.example": id(&forged).to_string(),
                "relay-d.example": id(&direct).to_string(),
            },
            "descriptors": {
                "relay-c.example": signed(&forged, "relay-c.example", 1),
                "relay-d.example": signed(&direct, "relay-d.example", 1),
            },
            "entries": {
                "relay-c.example": {"connected": false, "learned_from": liar, "seen_ms": 1},
                "relay-d.example": {"connected": true, "seen_ms": 1},
            },
        }))
        .unwrap();
        let book = new_book(
            name("relay-a.example"),
            id(&Keypair::generate_ed25519()),
            Policy::default(),
            old,
        );
        assert_eq!(book.pinned(&name("relay-c.example")), None);
        assert!(book.file().hints.contains_key(&name("relay-c.example")));
        assert_eq!(book.pinned(&name("relay-d.example")), Some(id(&direct)));
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn corrupt_peer_file_is_an_error_not_an_empty_book() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEERS_FILE);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(load(&path), Err(PeerFileError::Parse { .. })));
        assert_eq!(
            load(&dir.path().join("missing.json")).unwrap(),
            PeerFile::default()
        );
    }
}
