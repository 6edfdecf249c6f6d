//! The peer book: which relays this relay knows (verified descriptors),
//! which PeerKey each relay name is pinned to, which peers the operator
//! added or removed, and the federation policy.
//!
//! Plain data and rules; [`super::Peering`] feeds it and asks the adapter
//! to persist [`PeerBook::file`] (the `peers.json` format) whenever it
//! changes. File IO is the adapter's.
//!
//! The book holds at most `peers_max` relays (see [`PeerBook::admit`] for
//! who gets evicted when it is full), so a peer sharing descriptors of
//! made-up relays cannot grow it, or `peers.json`, without bound.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use courier_protocol::{RelayName, SignedDescriptor};
use serde::{Deserialize, Serialize};

use super::key::{PeerAddr, PeerKey};
use super::verify::{DescriptorError, Verify};

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

/// Federation policy: a mode and lists of relay names or PeerKeys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The mode.
    pub mode: PolicyMode,
    /// Relay names or PeerKeys (base58) allowed under `allowlist`.
    pub allow: BTreeSet<String>,
    /// Relay names or PeerKeys (base58) always refused.
    pub deny: BTreeSet<String>,
}

impl Policy {
    /// Whether the relay `name` with key `peer` may federate with us.
    pub fn allows(&self, name: &RelayName, peer: &PeerKey) -> bool {
        let peer = peer.to_string();
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
    /// Bad limits, PeerKey or signature.
    #[error(transparent)]
    Descriptor(#[from] DescriptorError),
    /// The name is pinned to another key.
    #[error("relay {name} is pinned to {pinned}, refusing descriptor signed by {offered}")]
    PinnedKeyMismatch {
        /// The relay name.
        name: RelayName,
        /// The pinned PeerKey (base58).
        pinned: String,
        /// The PeerKey of the refused descriptor (base58).
        offered: String,
    },
    /// Federation policy refuses it.
    #[error("relay {name} ({peer}) is refused by federation policy")]
    Policy {
        /// The relay name.
        name: RelayName,
        /// Its PeerKey (base58).
        peer: String,
    },
    /// The operator removed this peer.
    #[error("relay {name} ({peer}) was removed by the operator")]
    Removed {
        /// The relay name.
        name: RelayName,
        /// Its PeerKey (base58).
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
        /// Its PeerKey (base58).
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The relay itself, in a hello over a connection authenticated as it.
    Direct,
    /// Shared by this peer in its hello (`known`): hearsay about a relay
    /// we may never have talked to. It never pins: for a name nobody
    /// pinned it is kept as a hint (dialled when there is mail for that
    /// name), and the relay's own hello replaces it whatever key it names.
    Gossip(PeerKey),
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
    /// The multiaddr given (including `/p2p/PeerKey`).
    pub address: String,
    /// When it was added, Unix milliseconds.
    pub added_ms: u64,
}

/// The persistent part of the book, as stored in `peers.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerFile {
    /// Relay name → pinned PeerKey (base58).
    pub pins: BTreeMap<RelayName, String>,
    /// Verified descriptors by relay name.
    pub descriptors: BTreeMap<RelayName, SignedDescriptor>,
    /// Operator-added peers by PeerKey (base58).
    pub added: BTreeMap<String, AddedPeer>,
    /// Operator-removed PeerKeys (base58): refused until added again.
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
    pub fn pin(&mut self, name: RelayName, peer: PeerKey) {
        let keep = self
            .descriptors
            .get(&name)
            .is_some_and(|d| d.descriptor.peer_id == peer.to_string());
        if !keep {
            self.descriptors.remove(&name);
            self.entries.remove(&name);
        }
        if let Some(hint) = self.hints.remove(&name)
            && hint.descriptor.peer_id == peer.to_string()
        {
            self.descriptors.insert(name.clone(), hint);
        }
        self.pins.insert(name.clone(), peer.to_string());
        self.operator_pins.insert(name);
    }
}

/// Descriptors, pins, operator choices and policy.
#[derive(Debug, Clone)]
pub struct PeerBook {
    own_name: RelayName,
    own_peer: PeerKey,
    policy: Policy,
    verify: Arc<dyn Verify>,
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
    pub fn new(
        own_name: RelayName,
        own_peer: PeerKey,
        policy: Policy,
        mut file: PeerFile,
        verify: Arc<dyn Verify>,
    ) -> Self {
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
            verify,
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
    pub fn set_live(&mut self, peer: PeerKey, live: bool) {
        if live {
            self.live.insert(peer.to_string());
        } else {
            self.live.remove(&peer.to_string());
        }
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
    ) -> Result<(PeerKey, Admitted), Refusal> {
        let peer = self.verify.verify(signed)?;
        let name = &signed.descriptor.name;
        if name == &self.own_name || peer == self.own_peer {
            return Err(Refusal::Ourselves);
        }
        if !self.policy.allows(name, &peer) {
            return Err(Refusal::Policy {
                name: name.clone(),
                peer: peer.to_string(),
            });
        }
        if self.file.removed.contains(&peer.to_string()) {
            return Err(Refusal::Removed {
                name: name.clone(),
                peer: peer.to_string(),
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
                    pinned: pinned.to_string(),
                    offered: peer.to_string(),
                });
            }
            self.file.descriptors.remove(name);
            self.file.pins.remove(name);
        }
        let gossip = match &source {
            Source::Gossip(from) => Some(from.to_string()),
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
            let gossip_source = gossip.clone();
            let victim = self.victim(Some(gossip_source.as_deref()));
            match victim {
                Some(victim) => self.evict(&victim),
                None if self.file.added.contains_key(&peer.to_string()) => {}
                None => {
                    return Err(Refusal::BookFull {
                        name: name.clone(),
                        peer: peer.to_string(),
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
                .or_insert_with(|| peer.to_string());
        }
        let entry = self
            .file
            .entries
            .entry(name.clone())
            .or_insert_with(|| Entry {
                // Known without an entry: kept from before the cap, when
                // nothing told hearsay from peers apart.
                connected: known,
                learned_from: match &gossip {
                    Some(from) if !known => Some(from.clone()),
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

    /// The PeerKey a name is pinned to.
    pub fn pinned(&self, name: &RelayName) -> Option<PeerKey> {
        self.file.pins.get(name).and_then(|p| p.parse().ok())
    }

    /// Operator override: pins `name` to `peer` (never evicted), dropping
    /// a descriptor signed by another key.
    pub fn pin(&mut self, name: RelayName, peer: PeerKey) {
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
    pub fn descriptor_of(&self, peer: &PeerKey) -> Option<&SignedDescriptor> {
        let text = peer.to_string();
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

    /// The relay name a PeerKey speaks for (from its admitted descriptor).
    pub fn name_of(&self, peer: &PeerKey) -> Option<RelayName> {
        let text = peer.to_string();
        self.file
            .pins
            .iter()
            .find(|(name, p)| **p == text && self.file.descriptors.contains_key(*name))
            .map(|(name, _)| name.clone())
    }

    /// Whether federation with `peer` (known as `name`) is currently allowed.
    pub fn allowed(&self, name: &RelayName, peer: &PeerKey) -> bool {
        self.policy.allows(name, peer) && !self.file.removed.contains(&peer.to_string())
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
                    .parse::<PeerKey>()
                    .is_ok_and(|p| self.allowed(name, &p))
            })
            .take(max)
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Records an operator-added peer (and lifts an earlier removal).
    pub fn add(&mut self, peer: PeerKey, address: &PeerAddr, now_ms: u64) {
        let key = peer.to_string();
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
    pub fn remove(&mut self, peer: &PeerKey) -> bool {
        let key = peer.to_string();
        let added = self.file.added.remove(&key).is_some();
        let known = self.name_of(peer).is_some();
        self.file.removed.insert(key);
        added || known
    }

    /// Drops an operator-added peer without refusing it (a failed add).
    pub fn forget_added(&mut self, peer: &PeerKey) {
        self.file.added.remove(&peer.to_string());
    }

    /// Operator-added peers with their dial addresses.
    pub fn added(&self) -> Vec<(PeerKey, PeerAddr)> {
        self.file
            .added
            .iter()
            .filter_map(|(p, a)| Some((p.parse().ok()?, a.address.parse().ok()?)))
            .collect()
    }

    /// Whether the operator added `peer`.
    pub fn is_added(&self, peer: &PeerKey) -> bool {
        self.file.added.contains_key(&peer.to_string())
    }
}
