//! The peer book: which relays this relay knows (verified descriptors),
//! which PeerId each relay name is pinned to, which peers the operator
//! added or removed, and the federation policy.
//!
//! Plain data and rules; the event loop feeds it and persists it with
//! [`PeerBook::save`] to `<data-dir>/peers.json` (written to a temporary
//! file, synced, then renamed, so a crash leaves the old or the new file).
//!
//! The book holds at most `peers_max` relays (see [`PeerBook::admit`] for
//! who gets evicted when it is full), so a peer sharing descriptors of
//! made-up relays cannot grow it, or `peers.json`, without bound.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use courier_protocol::{RelayName, SignedDescriptor};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::descriptor::{self, DescriptorError};

/// Name of the peer book file inside the data directory.
pub const PEERS_FILE: &str = "peers.json";

/// Default of `[federation] peers_max`: most relays the book holds.
pub const PEERS_MAX_DEFAULT: usize = 1000;

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
    /// The book is full and nothing in it may make room.
    #[error("peer book is full ({max} relays): refusing relay {name} ({peer})")]
    BookFull {
        /// The relay name.
        name: RelayName,
        /// Its PeerId (base58).
        peer: String,
        /// The cap (`peers_max`).
        max: usize,
    },
}

impl Refusal {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> courier_protocol::ErrorCode {
        use courier_protocol::ErrorCode;
        match self {
            Refusal::Descriptor(DescriptorError::Invalid(code)) => *code,
            Refusal::Descriptor(_) => ErrorCode::InvalidSignature,
            Refusal::PinnedKeyMismatch { .. } => ErrorCode::PinnedKeyMismatch,
            Refusal::Policy { .. }
            | Refusal::Removed { .. }
            | Refusal::Ourselves
            | Refusal::BookFull { .. } => ErrorCode::FederationRefused,
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

/// Where a descriptor came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The relay itself, in a hello over a connection authenticated as it.
    Direct,
    /// Shared by this peer in its hello (`known`): hearsay about a relay
    /// we may never have talked to. It never pins: for a name nobody
    /// pinned it is kept as a hint (dialled when there is mail for that
    /// name), and the relay's own hello replaces it whatever key it names.
    Gossip(PeerId),
    /// The name-to-key binding was checked out of band (the hook for the
    /// `https://NAME/.well-known/courier` document of the federation
    /// resilience work; nothing produces it yet): pins like
    /// [`Source::Direct`] and also replaces a trust-on-first-use pin with
    /// another key. An operator pin still wins.
    Verified,
}

/// Bookkeeping of one relay in the book, for the cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Entry {
    /// The relay itself completed a hello with us at least once.
    pub connected: bool,
    /// For a relay first learned through gossip: the peer (base58) that
    /// shared it.
    pub learned_from: Option<String>,
    /// Last time a hello carried its descriptor (its own or shared), Unix
    /// milliseconds; written to disk with the next change of the book.
    pub seen_ms: u64,
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
    /// How each relay got into the book and when it was last heard of;
    /// a relay without an entry (a book from before the cap) counts as
    /// connected.
    pub entries: BTreeMap<RelayName, Entry>,
    /// Relay names the operator pinned with `courier peer pin`.
    pub operator_pins: BTreeSet<RelayName>,
    /// Descriptors shared by gossip for names nobody pinned: unverified
    /// hints, used to dial, never pins (see [`Source::Gossip`]).
    pub hints: BTreeMap<RelayName, SignedDescriptor>,
}

impl PeerFile {
    /// Operator override: pins `name` to `peer` (for good: never evicted),
    /// dropping a descriptor signed by another key.
    pub fn pin(&mut self, name: RelayName, peer: PeerId) {
        let keep = self
            .descriptors
            .get(&name)
            .is_some_and(|d| d.descriptor.peer_id == peer.to_base58());
        if !keep {
            self.descriptors.remove(&name);
            self.entries.remove(&name);
        }
        if let Some(hint) = self.hints.remove(&name)
            && hint.descriptor.peer_id == peer.to_base58()
        {
            self.descriptors.insert(name.clone(), hint);
        }
        self.pins.insert(name.clone(), peer.to_base58());
        self.operator_pins.insert(name);
    }
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
    /// Most relays held (`peers_max`).
    max: usize,
    /// Peers (base58, as the file keeps them) with a federating
    /// connection now: never evicted.
    live: HashSet<String>,
}

impl PeerBook {
    /// A book for the relay `own_name` with key `own_peer`, starting from
    /// what was persisted, holding at most [`PEERS_MAX_DEFAULT`] relays
    /// (see [`PeerBook::set_max`]).
    pub fn new(own_name: RelayName, own_peer: PeerId, policy: Policy, mut file: PeerFile) -> Self {
        // Every descriptor was admitted with its name pinned; a hand-edited
        // file may lack the pin. Pinning it here keeps `len` a count of pins.
        for (name, d) in &file.descriptors {
            if !file.pins.contains_key(name) {
                file.pins.insert(name.clone(), d.descriptor.peer_id.clone());
            }
        }
        // Books from before hints pinned gossip on first sight: a relay
        // that was only ever heard of (never connected, not the
        // operator's) holds a hint, not a pin, so it cannot lock out the
        // genuine relay.
        let heard: Vec<RelayName> = file
            .entries
            .iter()
            .filter(|(name, e)| {
                !e.connected
                    && e.learned_from.is_some()
                    && !file.operator_pins.contains(*name)
                    && file
                        .pins
                        .get(*name)
                        .is_some_and(|p| !file.added.contains_key(p))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in heard {
            file.pins.remove(&name);
            if let Some(d) = file.descriptors.remove(&name) {
                file.hints.insert(name, d);
            }
        }
        let pins = &file.pins;
        file.hints.retain(|name, _| !pins.contains_key(name));
        PeerBook {
            own_name,
            own_peer,
            policy,
            file,
            max: PEERS_MAX_DEFAULT,
            live: HashSet::new(),
        }
    }

    /// Sets the cap and evicts down to it (a book saved under a larger
    /// cap); returns the relays evicted. Operator peers stay even if they
    /// alone exceed the cap.
    pub fn set_max(&mut self, max: usize) -> Vec<RelayName> {
        self.max = max;
        let mut evicted = Vec::new();
        while self.len() > self.max {
            match self.victim(None) {
                Some(name) => {
                    self.evict(&name);
                    evicted.push(name);
                }
                None => break,
            }
        }
        evicted
    }

    /// How many relays the book holds: pinned (described or not) or
    /// hinted.
    pub fn len(&self) -> usize {
        self.file.pins.len() + self.file.hints.len()
    }

    /// Whether the book holds no relay.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `peer` as federating now (never evicted) or not.
    pub fn set_live(&mut self, peer: PeerId, live: bool) {
        if live {
            self.live.insert(peer.to_base58());
        } else {
            self.live.remove(&peer.to_base58());
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
    /// pin) and, if acceptable, records it. A relay's own descriptor
    /// ([`Source::Direct`]) pins its name on first sight and replaces any
    /// hint for that name; a shared one ([`Source::Gossip`]) for a name
    /// nobody pinned is only a hint (see [`PeerFile::hints`]), so gossip
    /// never locks a genuine relay out.
    ///
    /// A relay new to a full book needs room, made by evicting one relay:
    ///
    /// - never an operator peer (added with `peer add` or pinned with
    ///   `peer pin`), nor a peer federating right now;
    /// - first a gossip-learned relay that never connected to us, taken
    ///   from the peer that shared the most of them (the newcomer's own
    ///   source on a tie), least recently seen first: a peer flooding us
    ///   with made-up relays churns only its own share;
    /// - for a relay that is itself talking to us ([`Source::Direct`])
    ///   and no such hearsay left, the least recently seen relay that once
    ///   connected and is not connected now.
    ///
    /// With nothing evictable the descriptor is refused
    /// ([`Refusal::BookFull`]); an operator-added peer is admitted anyway.
    pub fn admit(
        &mut self,
        signed: &SignedDescriptor,
        source: Source,
        now_ms: u64,
    ) -> Result<(PeerId, Admitted), Refusal> {
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
        let pinned = self.pinned(name);
        if let Some(pinned) = pinned
            && pinned != peer
        {
            // Only out-of-band evidence outranks a pin, and never the
            // operator's own.
            let overridable = source == Source::Verified && !self.file.operator_pins.contains(name);
            if !overridable {
                return Err(Refusal::PinnedKeyMismatch {
                    name: name.clone(),
                    pinned: pinned.to_base58(),
                    offered: peer.to_base58(),
                });
            }
            self.file.descriptors.remove(name);
            self.file.pins.remove(name);
        }
        let gossip = match source {
            Source::Gossip(from) => Some(from),
            Source::Direct | Source::Verified => None,
        };
        // Gossip about a name nobody pinned is a hint: kept for dialling,
        // never a pin. The first hint stays (a later, different key is no
        // better evidence); the relay itself replaces it below.
        let hint = gossip.is_some() && self.pinned(name).is_none();
        if hint
            && let Some(held) = self.file.hints.get(name)
            && held.descriptor.peer_id != signed.descriptor.peer_id
        {
            return Ok((peer, Admitted::Known));
        }
        let known = self.file.pins.contains_key(name)
            || self.file.descriptors.contains_key(name)
            || self.file.hints.contains_key(name);
        if !known && self.len() >= self.max {
            let gossip_source = gossip.map(|from| from.to_base58());
            let victim = self.victim(Some(gossip_source.as_deref()));
            match victim {
                Some(victim) => self.evict(&victim),
                None if self.file.added.contains_key(&peer.to_base58()) => {}
                None => {
                    return Err(Refusal::BookFull {
                        name: name.clone(),
                        peer: peer.to_base58(),
                        max: self.max,
                    });
                }
            }
        }
        if !hint {
            // The relay itself (or verified evidence): pinned now, and a
            // hint under its name, whatever key it named, gives way.
            if self.file.hints.remove(name).is_some() {
                self.file.entries.remove(name);
            }
            self.file
                .pins
                .entry(name.clone())
                .or_insert_with(|| peer.to_base58());
        }
        let entry = self
            .file
            .entries
            .entry(name.clone())
            .or_insert_with(|| Entry {
                // Known without an entry: kept from before the cap, when
                // nothing told hearsay from peers apart.
                connected: known,
                learned_from: match gossip {
                    Some(from) if !known => Some(from.to_base58()),
                    _ => None,
                },
                seen_ms: now_ms,
            });
        entry.seen_ms = entry.seen_ms.max(now_ms);
        if gossip.is_none() {
            entry.connected = true;
        }
        let held = if hint {
            &mut self.file.hints
        } else {
            &mut self.file.descriptors
        };
        let newer = held
            .get(name)
            .is_none_or(|old| old.descriptor.issued_ms < signed.descriptor.issued_ms);
        if newer {
            held.insert(name.clone(), signed.clone());
            return Ok((peer, Admitted::New));
        }
        Ok((peer, Admitted::Known))
    }

    /// The PeerId a name is pinned to.
    pub fn pinned(&self, name: &RelayName) -> Option<PeerId> {
        self.file.pins.get(name).and_then(|p| p.parse().ok())
    }

    /// Operator override: pins `name` to `peer` (never evicted), dropping
    /// a descriptor signed by another key.
    pub fn pin(&mut self, name: RelayName, peer: PeerId) {
        self.file.pin(name, peer);
    }

    /// Whether `name` may be evicted: not an operator peer, not live. A
    /// descriptor's key is always its pin (admit refuses others, `pin`
    /// drops them), so the pin names the peer.
    fn evictable(&self, name: &RelayName) -> bool {
        !self.file.operator_pins.contains(name)
            && self
                .file
                .pins
                .get(name)
                .is_none_or(|p| !self.file.added.contains_key(p) && !self.live.contains(p))
    }

    /// The relay to evict for a newcomer (see [`PeerBook::admit`]).
    /// `gossip` is `Some(source)` for a shared descriptor (`Some(None)`
    /// for one from the relay itself) and `None` when trimming.
    ///
    /// One pass over the book: a full book under a flood runs this for
    /// every descriptor of every hello.
    fn victim(&self, gossip: Option<Option<&str>>) -> Option<RelayName> {
        // Hearsay first, grouped by who told us: per source, how many and
        // the least recently seen.
        let mut groups: HashMap<Option<&str>, (usize, (u64, &RelayName))> = HashMap::new();
        for (name, entry) in &self.file.entries {
            if !entry.connected && self.evictable(name) {
                let candidate = (entry.seen_ms, name);
                groups
                    .entry(entry.learned_from.as_deref())
                    .and_modify(|(n, oldest)| {
                        *n += 1;
                        *oldest = (*oldest).min(candidate);
                    })
                    .or_insert((1, candidate));
            }
        }
        let largest = groups.values().map(|g| g.0).max().unwrap_or(0);
        let own = gossip
            .flatten()
            .and_then(|from| groups.get(&Some(from)))
            .filter(|own| own.0 >= largest);
        let group = own.or_else(|| {
            groups
                .values()
                .filter(|g| g.0 == largest)
                .min_by_key(|g| g.1)
        });
        if let Some((_, (_, oldest))) = group {
            return Some((*oldest).clone());
        }
        if gossip.is_some_and(|source| source.is_some()) {
            // Hearsay never displaces a relay that talked to us.
            return None;
        }
        self.file
            .pins
            .keys()
            .filter(|name| self.evictable(name))
            .map(|name| {
                let seen = self.file.entries.get(name).map_or(0, |e| e.seen_ms);
                (seen, name)
            })
            .min()
            .map(|(_, name)| name.clone())
    }

    fn evict(&mut self, name: &RelayName) {
        tracing::debug!(%name, "peer book full: relay evicted");
        self.file.descriptors.remove(name);
        self.file.pins.remove(name);
        self.file.hints.remove(name);
        self.file.entries.remove(name);
    }

    /// The descriptor to reach a relay by: its pinned one, else a hint.
    pub fn descriptor(&self, name: &RelayName) -> Option<&SignedDescriptor> {
        self.file
            .descriptors
            .get(name)
            .or_else(|| self.file.hints.get(name))
    }

    /// The descriptor naming `peer` as its key, pinned or hinted: the
    /// addresses to dial it at.
    pub fn descriptor_of(&self, peer: &PeerId) -> Option<&SignedDescriptor> {
        let text = peer.to_base58();
        match self.name_of(peer) {
            Some(name) => self.file.descriptors.get(&name),
            None => self
                .file
                .hints
                .values()
                .find(|d| d.descriptor.peer_id == text),
        }
    }

    /// Whether mail for `name` can be routed: a pin (the operator's or a
    /// relay's own hello), a descriptor or a hint.
    pub fn routable(&self, name: &RelayName) -> bool {
        self.file.pins.contains_key(name) || self.file.hints.contains_key(name)
    }

    /// Every routable relay name (see [`PeerBook::routable`]).
    pub fn routable_names(&self) -> impl Iterator<Item = &RelayName> {
        self.file.pins.keys().chain(self.file.hints.keys())
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
            .chain(&self.file.hints)
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
        assert_eq!(book.pinned(&name), Some(b.public().to_peer_id()));
        assert_eq!(book.name_of(&evil.public().to_peer_id()), None);

        // The operator re-pins; now the new key is accepted.
        book.pin(name.clone(), evil.public().to_peer_id());
        assert_eq!(
            book.admit(&signed(&evil, "relay-b.example", 3), Source::Direct, 0)
                .unwrap()
                .1,
            Admitted::New
        );
        assert_eq!(book.name_of(&evil.public().to_peer_id()), Some(name));
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
            deny: [c.public().to_peer_id().to_base58()].into(),
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
        let b_id = b.public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{b_id}")
            .parse()
            .unwrap();
        book.add(b_id, &addr, 1);
        book.admit(&signed(&b, "relay-b.example", 1), Source::Direct, 0)
            .unwrap();
        book.save(&path).unwrap();
        let reloaded = PeerBook::load(&path).unwrap();
        assert_eq!(&reloaded, book.file());

        assert!(book.remove(&b_id));
        assert!(matches!(
            book.admit(&signed(&b, "relay-b.example", 2), Source::Direct, 0),
            Err(Refusal::Removed { .. })
        ));
        assert!(book.added().is_empty());
        book.add(b_id, &addr, 2);
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
        let from = Source::Gossip(from.public().to_peer_id());
        (0..n)
            .map(|i| {
                let relay = format!("{prefix}-{i}.example");
                let d = signed(&Keypair::generate_ed25519(), &relay, 1);
                match book.admit(&d, from, t0 + i as u64) {
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
        let o_id = o.public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{o_id}")
            .parse()
            .unwrap();
        book.add(o_id, &addr, 0);
        book.admit(&signed(&o, "relay-o.example", 1), Source::Direct, 0)
            .unwrap();
        let p = Keypair::generate_ed25519().public().to_peer_id();
        book.pin(name("relay-p.example"), p);
        let l = Keypair::generate_ed25519();
        book.admit(&signed(&l, "relay-l.example", 1), Source::Direct, 0)
            .unwrap();
        book.set_live(l.public().to_peer_id(), true);
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
        let gossiper = Keypair::generate_ed25519().public().to_peer_id();
        let shared = signed(&Keypair::generate_ed25519(), "relay-x.example", 1);
        assert!(matches!(
            book.admit(&shared, Source::Gossip(gossiper), 10),
            Err(Refusal::BookFull { max: 3, .. })
        ));
        assert_eq!(
            book.admit(&shared, Source::Gossip(gossiper), 10)
                .unwrap_err()
                .code(),
            courier_protocol::ErrorCode::FederationRefused
        );
        // A relay that talks to us itself takes the place of the one
        // heard of least recently, unless that one is connected now.
        book.set_live(keys[0].public().to_peer_id(), true);
        let d = Keypair::generate_ed25519();
        book.admit(&signed(&d, "relay-d.example", 1), Source::Direct, 20)
            .unwrap();
        assert_eq!(book.len(), 3);
        assert!(book.descriptor(&name("relay-0.example")).is_some());
        assert!(book.descriptor(&name("relay-1.example")).is_none());

        // Only live and operator peers left: a newcomer is refused, an
        // operator-added one is admitted over the cap.
        for key in [&keys[2], &d] {
            book.set_live(key.public().to_peer_id(), true);
        }
        let e = Keypair::generate_ed25519();
        assert!(matches!(
            book.admit(&signed(&e, "relay-e.example", 1), Source::Direct, 30),
            Err(Refusal::BookFull { .. })
        ));
        let e_id = e.public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{e_id}")
            .parse()
            .unwrap();
        book.add(e_id, &addr, 30);
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
        book.pin(
            name("relay-p.example"),
            Keypair::generate_ed25519().public().to_peer_id(),
        );
        gossip(&mut book, &Keypair::generate_ed25519(), "heard", 20, 50);
        book.save(&path).unwrap();
        let file = PeerBook::load(&path).unwrap();
        assert_eq!(&file, book.file());
        assert!(file.operator_pins.contains(&name("relay-p.example")));

        let mut reloaded = PeerBook::new(
            name("relay-a.example"),
            Keypair::generate_ed25519().public().to_peer_id(),
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
            "pins": {"relay-b.example": b.public().to_peer_id().to_base58()},
            "descriptors": {"relay-b.example": signed(&b, "relay-b.example", 1)},
        }))
        .unwrap();
        let mut legacy = PeerBook::new(
            name("relay-a.example"),
            Keypair::generate_ed25519().public().to_peer_id(),
            Policy::default(),
            legacy,
        );
        legacy.set_max(1);
        let shared = signed(&Keypair::generate_ed25519(), "relay-x.example", 1);
        let from = Source::Gossip(Keypair::generate_ed25519().public().to_peer_id());
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
        let liar = Source::Gossip(Keypair::generate_ed25519().public().to_peer_id());
        // A liar's descriptor for a name nobody pinned: a hint, not a pin.
        book.admit(&signed(&forged, "relay-c.example", 1), liar, 1)
            .unwrap();
        assert_eq!(book.pinned(&c), None);
        assert!(book.routable(&c));
        assert_eq!(
            book.descriptor(&c).unwrap().descriptor.peer_id,
            forged.public().to_peer_id().to_base58()
        );
        assert_eq!(book.name_of(&forged.public().to_peer_id()), None);
        // The genuine relay says hello itself with another key: it wins.
        book.admit(&signed(&genuine, "relay-c.example", 1), Source::Direct, 2)
            .unwrap();
        assert_eq!(book.pinned(&c), Some(genuine.public().to_peer_id()));
        assert!(book.file().hints.is_empty());
        assert_eq!(
            book.name_of(&genuine.public().to_peer_id()),
            Some(c.clone())
        );
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
        assert_eq!(book.pinned(&c), Some(rotated.public().to_peer_id()));
    }

    #[test]
    fn a_gossip_pin_from_an_older_book_loads_as_a_hint() {
        let forged = Keypair::generate_ed25519();
        let direct = Keypair::generate_ed25519();
        let liar = Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_base58();
        let old: PeerFile = serde_json::from_value(serde_json::json!({
            "pins": {
                "relay-c.example": forged.public().to_peer_id().to_base58(),
                "relay-d.example": direct.public().to_peer_id().to_base58(),
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
        let book = PeerBook::new(
            name("relay-a.example"),
            Keypair::generate_ed25519().public().to_peer_id(),
            Policy::default(),
            old,
        );
        assert_eq!(book.pinned(&name("relay-c.example")), None);
        assert!(book.file().hints.contains_key(&name("relay-c.example")));
        assert_eq!(
            book.pinned(&name("relay-d.example")),
            Some(direct.public().to_peer_id())
        );
        assert_eq!(book.len(), 2);
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
