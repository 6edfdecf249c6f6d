//! The peer book: which relays this relay knows (verified descriptors),
//! which PeerId each relay name is pinned to, which peers the operator
//! added or removed, and the federation policy.
//!
//! Plain data and rules; the event loop feeds it and persists it with
//! [`PeerBook::save`] to `<data-dir>/peers.json` (written to a temporary
//! file, synced, then renamed, so a crash leaves the old or the new file).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use courier_protocol::{RelayName, SignedDescriptor};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::descriptor::{self, DescriptorError};

/// Name of the peer book file inside the data directory.
pub const PEERS_FILE: &str = "peers.json";

/// Which relays may federate with this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// Any relay not in `deny`.
    #[default]
    Open,
    /// Only relays in `allow` (and not in `deny`).
    Allowlist,
    /// Any relay not in `deny` (same as `open`, said explicitly).
    Denylist,
}

/// Federation policy: a mode and lists of relay names or PeerIds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The mode.
    pub mode: PolicyMode,
    /// Relay names or PeerIds (base58) allowed under `allowlist`.
    pub allow: BTreeSet<String>,
    /// Relay names or PeerIds (base58) always refused.
    pub deny: BTreeSet<String>,
}

impl Policy {
    /// Whether the relay `name` with key `peer` may federate with us.
    pub fn allows(&self, name: &RelayName, peer: &PeerId) -> bool {
        let peer = peer.to_base58();
        let listed = |set: &BTreeSet<String>| set.contains(name.as_str()) || set.contains(&peer);
        if listed(&self.deny) {
            return false;
        }
        match self.mode {
            PolicyMode::Open | PolicyMode::Denylist => true,
            PolicyMode::Allowlist => listed(&self.allow),
        }
    }
}

/// Why a descriptor was not taken into the book.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Bad limits, PeerId or signature.
    #[error(transparent)]
    Descriptor(#[from] DescriptorError),
    /// The name is pinned to another key.
    #[error("relay {name} is pinned to {pinned}, refusing descriptor signed by {offered}")]
    PinnedKeyMismatch {
        /// The relay name.
        name: RelayName,
        /// The pinned PeerId (base58).
        pinned: String,
        /// The PeerId of the refused descriptor (base58).
        offered: String,
    },
    /// Federation policy refuses it.
    #[error("relay {name} ({peer}) is refused by federation policy")]
    Policy {
        /// The relay name.
        name: RelayName,
        /// Its PeerId (base58).
        peer: String,
    },
    /// The operator removed this peer.
    #[error("relay {name} ({peer}) was removed by the operator")]
    Removed {
        /// The relay name.
        name: RelayName,
        /// Its PeerId (base58).
        peer: String,
    },
    /// The descriptor claims our own name or key.
    #[error("descriptor claims this relay's own name or key")]
    Ourselves,
}

impl Refusal {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> courier_protocol::ErrorCode {
        use courier_protocol::ErrorCode;
        match self {
            Refusal::Descriptor(DescriptorError::Invalid(code)) => *code,
            Refusal::Descriptor(_) => ErrorCode::InvalidSignature,
            Refusal::PinnedKeyMismatch { .. } => ErrorCode::PinnedKeyMismatch,
            Refusal::Policy { .. } | Refusal::Removed { .. } | Refusal::Ourselves => {
                ErrorCode::FederationRefused
            }
        }
    }
}

/// What [`PeerBook::admit`] did with an acceptable descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A relay we did not know, or a newer descriptor of one we did.
    New,
    /// Nothing new (same or older descriptor).
    Known,
}

/// A peer the operator added with `courier peer add`: dialled at start and
/// redialled with backoff whenever the connection drops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedPeer {
    /// The multiaddr given (including `/p2p/PeerId`).
    pub address: String,
    /// When it was added, Unix milliseconds.
    pub added_ms: u64,
}

/// The persistent part of the book, as stored in `peers.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerFile {
    /// Relay name → pinned PeerId (base58).
    pub pins: BTreeMap<RelayName, String>,
    /// Verified descriptors by relay name.
    pub descriptors: BTreeMap<RelayName, SignedDescriptor>,
    /// Operator-added peers by PeerId (base58).
    pub added: BTreeMap<String, AddedPeer>,
    /// Operator-removed PeerIds (base58): refused until added again.
    pub removed: BTreeSet<String>,
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

/// Descriptors, pins, operator choices and policy.
#[derive(Debug, Clone)]
pub struct PeerBook {
    own_name: RelayName,
    own_peer: PeerId,
    policy: Policy,
    file: PeerFile,
}

impl PeerBook {
    /// A book for the relay `own_name` with key `own_peer`, starting from
    /// what was persisted.
    pub fn new(own_name: RelayName, own_peer: PeerId, policy: Policy, file: PeerFile) -> Self {
        PeerBook {
            own_name,
            own_peer,
            policy,
            file,
        }
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

    /// Writes the persistent part to `path` atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), PeerFileError> {
        let io = |source| PeerFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let json =
            serde_json::to_vec_pretty(&self.file).map_err(|source| PeerFileError::Parse {
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

    /// The persistent part.
    pub fn file(&self) -> &PeerFile {
        &self.file
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks a descriptor (signature, limits, ourselves, policy, removal,
    /// pin) and, if acceptable, records it and pins its name on first sight.
    pub fn admit(&mut self, signed: &SignedDescriptor) -> Result<(PeerId, Admitted), Refusal> {
        let peer = descriptor::verify(signed)?;
        let name = &signed.descriptor.name;
        if name == &self.own_name || peer == self.own_peer {
            return Err(Refusal::Ourselves);
        }
        if !self.policy.allows(name, &peer) {
            return Err(Refusal::Policy {
                name: name.clone(),
                peer: peer.to_base58(),
            });
        }
        if self.file.removed.contains(&peer.to_base58()) {
            return Err(Refusal::Removed {
                name: name.clone(),
                peer: peer.to_base58(),
            });
        }
        if let Some(pinned) = self.pinned(name)
            && pinned != peer
        {
            return Err(Refusal::PinnedKeyMismatch {
                name: name.clone(),
                pinned: pinned.to_base58(),
                offered: peer.to_base58(),
            });
        }
        self.file
            .pins
            .entry(name.clone())
            .or_insert_with(|| peer.to_base58());
        let newer = self
            .file
            .descriptors
            .get(name)
            .is_none_or(|old| old.descriptor.issued_ms < signed.descriptor.issued_ms);
        if newer {
            self.file.descriptors.insert(name.clone(), signed.clone());
            return Ok((peer, Admitted::New));
        }
        Ok((peer, Admitted::Known))
    }

    /// The PeerId a name is pinned to.
    pub fn pinned(&self, name: &RelayName) -> Option<PeerId> {
        self.file.pins.get(name).and_then(|p| p.parse().ok())
    }

    /// Operator override: pins `name` to `peer`, dropping a descriptor
    /// signed by another key.
    pub fn pin(&mut self, name: RelayName, peer: PeerId) {
        let keep = self
            .file
            .descriptors
            .get(&name)
            .is_some_and(|d| d.descriptor.peer_id == peer.to_base58());
        if !keep {
            self.file.descriptors.remove(&name);
        }
        self.file.pins.insert(name, peer.to_base58());
    }

    /// The verified descriptor of a relay, if known and still allowed.
    pub fn descriptor(&self, name: &RelayName) -> Option<&SignedDescriptor> {
        self.file.descriptors.get(name)
    }

    /// The relay name a PeerId speaks for (from its admitted descriptor).
    pub fn name_of(&self, peer: &PeerId) -> Option<RelayName> {
        let text = peer.to_base58();
        self.file
            .pins
            .iter()
            .find(|(name, p)| **p == text && self.file.descriptors.contains_key(*name))
            .map(|(name, _)| name.clone())
    }

    /// Whether federation with `peer` (known as `name`) is currently allowed.
    pub fn allowed(&self, name: &RelayName, peer: &PeerId) -> bool {
        self.policy.allows(name, peer) && !self.file.removed.contains(&peer.to_base58())
    }

    /// All verified descriptors except `except`'s, for sharing in a Hello.
    pub fn shareable(&self, except: Option<&RelayName>, max: usize) -> Vec<SignedDescriptor> {
        self.file
            .descriptors
            .iter()
            .filter(|(name, _)| Some(*name) != except)
            .filter(|(name, d)| {
                d.descriptor
                    .peer_id
                    .parse::<PeerId>()
                    .is_ok_and(|p| self.allowed(name, &p))
            })
            .take(max)
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Records an operator-added peer (and lifts an earlier removal).
    pub fn add(&mut self, peer: PeerId, address: &Multiaddr, now_ms: u64) {
        let key = peer.to_base58();
        self.file.removed.remove(&key);
        self.file.added.insert(
            key,
            AddedPeer {
                address: address.to_string(),
                added_ms: now_ms,
            },
        );
    }

    /// Stops federation with `peer`: it is no longer dialled, and its
    /// hellos and deliveries are refused until added again. Returns whether
    /// it was known at all.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let key = peer.to_base58();
        let added = self.file.added.remove(&key).is_some();
        let known = self.name_of(peer).is_some();
        self.file.removed.insert(key);
        added || known
    }

    /// Drops an operator-added peer without refusing it (a failed add).
    pub fn forget_added(&mut self, peer: &PeerId) {
        self.file.added.remove(&peer.to_base58());
    }

    /// Operator-added peers with their dial addresses.
    pub fn added(&self) -> Vec<(PeerId, Multiaddr)> {
        self.file
            .added
            .iter()
            .filter_map(|(p, a)| Some((p.parse().ok()?, a.address.parse().ok()?)))
            .collect()
    }

    /// Whether the operator added `peer`.
    pub fn is_added(&self, peer: &PeerId) -> bool {
        self.file.added.contains_key(&peer.to_base58())
    }
}

#[cfg(test)]
mod tests {
    use courier_protocol::RelayDescriptor;
    use libp2p::identity::Keypair;

    use super::*;

    fn signed(key: &Keypair, name: &str, issued_ms: u64) -> SignedDescriptor {
        descriptor::sign(
            key,
            RelayDescriptor {
                name: name.parse().unwrap(),
                peer_id: key.public().to_peer_id().to_base58(),
                addresses: vec![],
                http_url: String::new(),
                version: "0.1.0".into(),
                features: vec![],
                issued_ms,
            },
        )
    }

    fn book(policy: Policy) -> PeerBook {
        let own = Keypair::generate_ed25519();
        PeerBook::new(
            "relay-a.example".parse().unwrap(),
            own.public().to_peer_id(),
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
            book.admit(&signed(&b, "relay-b.example", 1)).unwrap().1,
            Admitted::New
        );
        let err = book
            .admit(&signed(&evil, "relay-b.example", 2))
            .unwrap_err();
        assert!(matches!(err, Refusal::PinnedKeyMismatch { .. }));
        assert_eq!(err.code(), courier_protocol::ErrorCode::PinnedKeyMismatch);
        // Nothing changed: still B's key and descriptor.
        let name = "relay-b.example".parse().unwrap();
        assert_eq!(book.pinned(&name), Some(b.public().to_peer_id()));
        assert_eq!(book.name_of(&evil.public().to_peer_id()), None);

        // The operator re-pins; now the new key is accepted.
        book.pin(name.clone(), evil.public().to_peer_id());
        assert_eq!(
            book.admit(&signed(&evil, "relay-b.example", 3)).unwrap().1,
            Admitted::New
        );
        assert_eq!(book.name_of(&evil.public().to_peer_id()), Some(name));
    }

    #[test]
    fn older_or_same_descriptor_is_not_news() {
        let mut book = book(Policy::default());
        let b = Keypair::generate_ed25519();
        assert_eq!(
            book.admit(&signed(&b, "relay-b.example", 5)).unwrap().1,
            Admitted::New
        );
        assert_eq!(
            book.admit(&signed(&b, "relay-b.example", 5)).unwrap().1,
            Admitted::Known
        );
        assert_eq!(
            book.admit(&signed(&b, "relay-b.example", 4)).unwrap().1,
            Admitted::Known
        );
        assert_eq!(
            book.admit(&signed(&b, "relay-b.example", 6)).unwrap().1,
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
        assert!(allow.admit(&signed(&b, "relay-b.example", 1)).is_ok());
        assert!(matches!(
            allow.admit(&signed(&c, "relay-c.example", 1)),
            Err(Refusal::Policy { .. })
        ));
        let mut deny = book(Policy {
            mode: PolicyMode::Denylist,
            allow: BTreeSet::new(),
            deny: [c.public().to_peer_id().to_base58()].into(),
        });
        assert!(deny.admit(&signed(&b, "relay-b.example", 1)).is_ok());
        assert!(matches!(
            deny.admit(&signed(&c, "relay-c.example", 1)),
            Err(Refusal::Policy { .. })
        ));
    }

    #[test]
    fn removed_peer_is_refused_until_added_again_and_book_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEERS_FILE);
        let mut book = book(Policy::default());
        let b = Keypair::generate_ed25519();
        let b_id = b.public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{b_id}")
            .parse()
            .unwrap();
        book.add(b_id, &addr, 1);
        book.admit(&signed(&b, "relay-b.example", 1)).unwrap();
        book.save(&path).unwrap();
        let reloaded = PeerBook::load(&path).unwrap();
        assert_eq!(&reloaded, book.file());

        assert!(book.remove(&b_id));
        assert!(matches!(
            book.admit(&signed(&b, "relay-b.example", 2)),
            Err(Refusal::Removed { .. })
        ));
        assert!(book.added().is_empty());
        book.add(b_id, &addr, 2);
        assert!(book.admit(&signed(&b, "relay-b.example", 2)).is_ok());
    }

    #[test]
    fn own_name_or_key_is_refused() {
        let mut book = book(Policy::default());
        let x = Keypair::generate_ed25519();
        assert_eq!(
            book.admit(&signed(&x, "relay-a.example", 1)),
            Err(Refusal::Ourselves)
        );
    }

    #[test]
    fn corrupt_peer_file_is_an_error_not_an_empty_book() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEERS_FILE);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            PeerBook::load(&path),
            Err(PeerFileError::Parse { .. })
        ));
        assert_eq!(
            PeerBook::load(&dir.path().join("missing.json")).unwrap(),
            PeerFile::default()
        );
    }
}
