//! Peering: the federation's policy as a sans-IO state machine.
//!
//! [`Peering`] owns the peer book ([`book::PeerBook`]: descriptors, pins,
//! policy, eviction), what this run knows of each peer (connections,
//! redial backoff, hello retries, counters, its rate limiter) and the
//! requests waiting for a peer's hello. It opens no socket, reads no clock
//! and draws no randomness of its own: the adapter (node's libp2p event
//! loop, the simulator) reports what happened through `handle_*(…, now)`,
//! carries out what [`Peering::poll_action`] asks, and calls it again at
//! [`Peering::poll_timeout`] at the latest. Modelled on `quinn-proto`.
//!
//! Every rule is checked here once: whether a hello is acceptable (the
//! signature through the adapter's [`Verify`], then the book's checks),
//! when to dial and redial ([`retry_delay_ms`], the one backoff), how many
//! requests may wait ([`Config::queued_per_peer_max`]) and whether a
//! peer's batch fits its rate ([`PeerLimiter`]).

pub mod book;
mod key;
mod runtime;
mod verify;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use courier_protocol::limits::HELLO_KNOWN_MAX;
use courier_protocol::{DeliveryBatch, ErrorCode, Hello, RelayName, SignedDescriptor};

use crate::federation::{
    FederationError, PeerLimiter, PeerLimits, check_batch_origin, retry_delay_ms,
};

pub use book::{Admitted, PeerBook, Policy, PolicyMode, Refusal, Source};
pub use key::{PeerAddr, PeerKey};
pub use runtime::{PeerCounters, Runtime};
pub use verify::{DescriptorError, Verify};

/// Most requests queued for one peer while its connection comes up.
pub const QUEUED_PER_PEER_MAX: usize = 4096;

/// What peering needs to know besides the book.
#[derive(Debug, Clone)]
pub struct Config {
    /// This relay's name (names the failure of a request to an unnamed peer).
    pub name: RelayName,
    /// First redial delay of an operator-added peer, ms.
    pub redial_base_ms: u64,
    /// Longest redial delay, ms.
    pub redial_max_ms: u64,
    /// Most requests waiting for one peer's hello; more fail at once.
    pub queued_per_peer_max: usize,
    /// What each peer may hand us ([`Peering::admit_batch`]).
    pub limits: PeerLimits,
}

/// Something the adapter must do.
#[derive(Debug)]
pub enum Action<R> {
    /// Connect to `peer` at `addrs` (tell [`Peering::handle_connected`] or
    /// [`Peering::handle_dial_failed`] how it went).
    Dial {
        /// The peer.
        peer: PeerKey,
        /// Where to reach it, the operator's address first.
        addrs: Vec<PeerAddr>,
    },
    /// Send `hello` to `peer` (dialling it if need be, at `addrs`); its
    /// answer goes to [`Peering::handle_hello_response`], its failure to
    /// [`Peering::handle_hello_failed`].
    SendHello {
        /// The peer.
        peer: PeerKey,
        /// Our hello, with what we know to share.
        hello: Hello,
        /// Where to reach it.
        addrs: Vec<PeerAddr>,
    },
    /// Answer the hello `peer` sent us with `hello`.
    AnswerHello {
        /// The peer.
        peer: PeerKey,
        /// Our hello.
        hello: Hello,
    },
    /// Send a request that waited for, or is ready for, `peer`.
    Send {
        /// The peer.
        peer: PeerKey,
        /// The adapter's request.
        request: R,
    },
    /// A request will not be sent: answer its caller with `error`.
    Fail {
        /// The adapter's request.
        request: R,
        /// Why.
        error: FederationError,
    },
    /// Close every connection to `peer`.
    Disconnect {
        /// The peer.
        peer: PeerKey,
    },
    /// `peer` completed a hello as relay `name`: its backlog may go now.
    PeerUp {
        /// The peer.
        peer: PeerKey,
        /// Its relay name.
        name: RelayName,
    },
    /// The book changed: write [`Peering::book`]'s file.
    SavePeerFile,
}

/// A request and how many envelopes it carries (for the counters).
struct Queued<R> {
    request: R,
    envelopes: usize,
}

/// The federation core of one relay; `R` is the adapter's request (with
/// whatever it needs to answer its caller).
pub struct Peering<R> {
    config: Config,
    book: PeerBook,
    own: SignedDescriptor,
    peers: BTreeMap<PeerKey, Runtime>,
    queues: BTreeMap<PeerKey, Vec<Queued<R>>>,
    actions: VecDeque<Action<R>>,
    random: Box<dyn FnMut() -> u64 + Send>,
    dirty: bool,
}

impl<R> Peering<R> {
    /// Peering over `book`, introducing itself with `own`, drawing redial
    /// jitter from `random`.
    pub fn new(
        config: Config,
        book: PeerBook,
        own: SignedDescriptor,
        random: Box<dyn FnMut() -> u64 + Send>,
    ) -> Self {
        Peering {
            config,
            book,
            own,
            peers: BTreeMap::new(),
            queues: BTreeMap::new(),
            actions: VecDeque::new(),
            random,
            dirty: false,
        }
    }

    /// The peer book.
    pub fn book(&self) -> &PeerBook {
        &self.book
    }

    /// What this run knows of `peer`, if anything.
    pub fn runtime(&self, peer: &PeerKey) -> Option<&Runtime> {
        self.peers.get(peer)
    }

    /// Every peer this run knows something of.
    pub fn runtimes(&self) -> impl Iterator<Item = (&PeerKey, &Runtime)> {
        self.peers.iter()
    }

    /// Requests waiting for `peer`'s hello.
    pub fn queued(&self, peer: &PeerKey) -> usize {
        self.queues.get(peer).map_or(0, Vec::len)
    }

    /// Replaces our own descriptor (new listen addresses).
    pub fn set_own(&mut self, own: SignedDescriptor) {
        self.own = own;
    }

    /// Whether `peer` is connected and has completed a hello.
    pub fn is_federating(&self, peer: &PeerKey) -> bool {
        self.peers.get(peer).is_some_and(Runtime::federating)
    }

    fn rt(&mut self, peer: &PeerKey) -> &mut Runtime {
        self.peers.entry(peer.clone()).or_default()
    }

    fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Our hello for `peer`: our descriptor and what we know, but its own.
    pub fn hello_for(&self, peer: &PeerKey) -> Hello {
        let except = self.book.name_of(peer);
        Hello {
            descriptor: self.own.clone(),
            known: self.book.shareable(except.as_ref(), HELLO_KNOWN_MAX),
        }
    }

    /// Where to reach `peer`: the operator's address, then its descriptor's.
    pub fn addresses_of(&self, peer: &PeerKey) -> Vec<PeerAddr> {
        let mut out = Vec::new();
        if let Some(added) = self.book.file().added.get(peer.as_str()) {
            out.push(PeerAddr::new(added.address.clone()));
        }
        if let Some(d) = self.book.descriptor_of(peer) {
            out.extend(d.descriptor.addresses.iter().map(PeerAddr::new));
        }
        out
    }

    fn send_hello(&mut self, peer: &PeerKey) {
        let rt = self.rt(peer);
        if rt.blocked || rt.hello_inflight {
            return;
        }
        rt.hello_inflight = true;
        let hello = self.hello_for(peer);
        let addrs = self.addresses_of(peer);
        self.actions.push_back(Action::SendHello {
            peer: peer.clone(),
            hello,
            addrs,
        });
    }

    // --- operator inputs ---

    /// The operator added `peer` at `addr`: hello now (refreshing
    /// descriptors both ways if already federating), and redialled with
    /// backoff whenever it drops.
    pub fn add_peer(&mut self, peer: PeerKey, addr: &PeerAddr, now_ms: u64) {
        self.book.add(peer.clone(), addr, now_ms);
        let rt = self.rt(&peer);
        rt.next_dial_ms = None;
        rt.dial_attempts = 0;
        rt.helloed = false;
        self.mark_dirty();
        self.send_hello(&peer);
    }

    /// The operator removed `peer`: no longer dialled, its hellos refused
    /// and its queued requests failed. Returns whether it was known.
    pub fn remove_peer(&mut self, peer: &PeerKey) -> bool {
        let known = self.book.remove(peer);
        self.mark_dirty();
        self.actions
            .push_back(Action::Disconnect { peer: peer.clone() });
        self.fail_queued(peer, |name| FederationError::Refused(name.clone()));
        if let Some(rt) = self.peers.get_mut(peer) {
            rt.helloed = false;
        }
        self.book.set_live(peer.clone(), false);
        known
    }

    /// The operator pinned `name` to `peer`.
    pub fn pin(&mut self, name: RelayName, peer: PeerKey) {
        self.book.pin(name, peer);
        self.mark_dirty();
    }

    /// Blocks or unblocks `peer` for this run: a blocked peer is
    /// disconnected, not dialled, and requests to it fail.
    pub fn set_blocked(&mut self, peer: &PeerKey, blocked: bool) {
        let rt = self.rt(peer);
        rt.blocked = blocked;
        if !blocked {
            rt.next_dial_ms = None;
            rt.dial_attempts = 0;
            return;
        }
        rt.helloed = false;
        {
            self.actions
                .push_back(Action::Disconnect { peer: peer.clone() });
            self.fail_queued(peer, |name| FederationError::Unreachable {
                relay: name.clone(),
                reason: "blocked".into(),
            });
        }
    }

    /// Forgets a failed `peer add` (not refused, just no longer dialled).
    pub fn forget_added(&mut self, peer: &PeerKey) {
        self.book.forget_added(peer);
        self.mark_dirty();
    }

    /// Sets the book's cap; returns the relays evicted to fit it.
    pub fn set_peers_max(&mut self, max: usize) -> Vec<RelayName> {
        let evicted = self.book.set_max(max);
        if !evicted.is_empty() {
            self.mark_dirty();
        }
        evicted
    }

    // --- requests ---

    /// The peer that speaks for relay `dest`, if policy lets us talk to it.
    pub fn route(&self, dest: &RelayName) -> Result<PeerKey, FederationError> {
        let d = self
            .book
            .descriptor(dest)
            .ok_or_else(|| FederationError::UnknownRelay(dest.clone()))?;
        let peer = PeerKey::new(d.descriptor.peer_id.clone());
        if !self.book.allowed(dest, &peer) {
            return Err(FederationError::Refused(dest.clone()));
        }
        if self.peers.get(&peer).is_some_and(|rt| rt.blocked) {
            return Err(FederationError::Unreachable {
                relay: dest.clone(),
                reason: "blocked".into(),
            });
        }
        Ok(peer)
    }

    /// Sends `request` (carrying `envelopes` envelopes) to `peer` now if it
    /// is federating, else queues it and says hello; a full queue fails it.
    pub fn send(&mut self, peer: &PeerKey, request: R, envelopes: usize) {
        if self.is_federating(peer) {
            self.send_now(peer, request, envelopes);
            return;
        }
        if self.queued(peer) >= self.config.queued_per_peer_max {
            let relay = self
                .book
                .name_of(peer)
                .unwrap_or_else(|| self.config.name.clone());
            self.actions.push_back(Action::Fail {
                request,
                error: FederationError::Unreachable {
                    relay,
                    reason: "too many requests waiting for the connection".into(),
                },
            });
            return;
        }
        self.queues
            .entry(peer.clone())
            .or_default()
            .push(Queued { request, envelopes });
        self.send_hello(peer);
    }

    fn send_now(&mut self, peer: &PeerKey, request: R, envelopes: usize) {
        if envelopes > 0 {
            self.rt(peer).counters.batches_sent += 1;
        }
        self.actions.push_back(Action::Send {
            peer: peer.clone(),
            request,
        });
    }

    fn flush_queued(&mut self, peer: &PeerKey) {
        for q in self.queues.remove(peer).unwrap_or_default() {
            self.send_now(peer, q.request, q.envelopes);
        }
    }

    fn fail_queued(&mut self, peer: &PeerKey, error: impl Fn(&RelayName) -> FederationError) {
        let items = self.queues.remove(peer).unwrap_or_default();
        if items.is_empty() {
            return;
        }
        let name = self
            .book
            .name_of(peer)
            .unwrap_or_else(|| self.config.name.clone());
        let retried: usize = items.iter().map(|q| q.envelopes).sum();
        self.rt(peer).counters.retried += retried as u64;
        for q in items {
            self.actions.push_back(Action::Fail {
                request: q.request,
                error: error(&name),
            });
        }
    }

    /// The relay name of an admitted, allowed, unblocked peer: one that may
    /// send us requests.
    pub fn federating_name(&self, peer: &PeerKey) -> Option<RelayName> {
        if self.peers.get(peer).is_some_and(|rt| rt.blocked) {
            return None;
        }
        self.book
            .name_of(peer)
            .filter(|name| self.book.allowed(name, peer))
    }

    /// Admits a batch from `peer`: it must be federating
    /// ([`ErrorCode::FederationRefused`]), claim its own origin
    /// ([`ErrorCode::OriginMismatch`]) and fit its size and rate limits
    /// (the limiter is made on the peer's first batch). Returns the peer's
    /// relay name, the origin to store the batch under.
    pub fn admit_batch(
        &mut self,
        peer: &PeerKey,
        batch: &DeliveryBatch,
        now_ms: u64,
    ) -> Result<RelayName, ErrorCode> {
        let limits = self.config.limits;
        let name = self.federating_name(peer);
        let rt = self.rt(peer);
        rt.last_seen_ms = Some(now_ms);
        let admitted = name
            .ok_or(ErrorCode::FederationRefused)
            .and_then(|name| check_batch_origin(&name, batch).map(|()| name))
            .and_then(|name| {
                rt.limiter
                    .get_or_insert_with(|| PeerLimiter::new(limits, now_ms))
                    .admit_batch(batch, now_ms)
                    .map(|()| name)
            });
        match admitted {
            Ok(name) => {
                rt.counters.batches_received += 1;
                rt.counters.envelopes_received += batch.envelopes.len() as u64;
                Ok(name)
            }
            Err(code) => {
                rt.counters.batches_refused += 1;
                Err(code)
            }
        }
    }

    /// Counts the answer to a batch of `envelopes` sent to `peer`.
    pub fn handle_acks(&mut self, peer: &PeerKey, delivered: u64, retried: u64, failed: u64) {
        let c = &mut self.rt(peer).counters;
        c.delivered += delivered;
        c.retried += retried;
        c.failed += failed;
    }

    /// A batch of `envelopes` sent to `peer` got no answer.
    pub fn handle_request_failed(&mut self, peer: &PeerKey, envelopes: usize) {
        self.rt(peer).counters.retried += envelopes as u64;
    }

    // --- transport inputs ---

    /// A connection to `peer` is up (`dialer`: we opened it). The dialer
    /// introduces itself; the listener answers.
    pub fn handle_connected(&mut self, peer: &PeerKey, dialer: bool, now_ms: u64) {
        let rt = self.rt(peer);
        rt.connections += 1;
        rt.dialing = false;
        rt.dial_attempts = 0;
        rt.dial_failures = 0;
        rt.last_error = None;
        rt.next_dial_ms = None;
        rt.last_seen_ms = Some(now_ms);
        if dialer && !rt.helloed {
            self.send_hello(peer);
        }
    }

    /// A connection to `peer` closed, `remaining` are still open.
    pub fn handle_disconnected(&mut self, peer: &PeerKey, remaining: u32, now_ms: u64) {
        let rt = self.rt(peer);
        rt.connections = remaining;
        if remaining == 0 {
            rt.helloed = false;
            // The next redial of an operator peer waits its backoff from now.
            if rt.next_dial_ms.is_none() {
                rt.next_dial_ms = Some(now_ms);
            }
            self.book.set_live(peer.clone(), false);
            self.prune(peer);
        }
    }

    /// A dial of `peer` failed for `reason`.
    pub fn handle_dial_failed(&mut self, peer: &PeerKey, reason: String, _now_ms: u64) {
        let rt = self.rt(peer);
        rt.dialing = false;
        rt.dial_failures += 1;
        rt.last_error = Some(reason);
    }

    /// `peer` answered something: it is alive.
    pub fn handle_seen(&mut self, peer: &PeerKey, now_ms: u64) {
        self.rt(peer).last_seen_ms = Some(now_ms);
    }

    /// `peer` sent us its hello. Returns its name if admitted; the answer
    /// (or the disconnect of a refused peer) comes out of
    /// [`Peering::poll_action`].
    pub fn handle_hello(
        &mut self,
        peer: &PeerKey,
        hello: &Hello,
        now_ms: u64,
    ) -> Result<RelayName, Refusal> {
        let name = self.take_hello(peer, hello, now_ms)?;
        self.actions.push_back(Action::AnswerHello {
            peer: peer.clone(),
            hello: self.hello_for(peer),
        });
        self.federating(peer, &name);
        Ok(name)
    }

    /// `peer` answered our hello.
    pub fn handle_hello_response(
        &mut self,
        peer: &PeerKey,
        hello: &Hello,
        now_ms: u64,
    ) -> Result<RelayName, Refusal> {
        self.rt(peer).hello_inflight = false;
        let name = self.take_hello(peer, hello, now_ms)?;
        self.rt(peer).hello_retried = false;
        self.federating(peer, &name);
        Ok(name)
    }

    /// Our hello to `peer` failed for `reason`; `closed` says the
    /// connection closed under it (we had just dropped the peer), which is
    /// retried once on a fresh dial. Returns whether it was given up (the
    /// queued requests then fail).
    pub fn handle_hello_failed(&mut self, peer: &PeerKey, closed: bool, reason: &str) -> bool {
        let rt = self.rt(peer);
        rt.hello_inflight = false;
        rt.dialing = false;
        if rt.helloed {
            // A gossip push failed; the connection state says the rest.
            return false;
        }
        if closed && !rt.hello_retried {
            rt.hello_retried = true;
            self.send_hello(peer);
            return false;
        }
        rt.hello_retried = false;
        self.fail_queued(peer, |name| FederationError::Unreachable {
            relay: name.clone(),
            reason: reason.to_owned(),
        });
        true
    }

    fn federating(&mut self, peer: &PeerKey, name: &RelayName) {
        self.rt(peer).helloed = true;
        self.flush_queued(peer);
        self.actions.push_back(Action::PeerUp {
            peer: peer.clone(),
            name: name.clone(),
        });
    }

    /// Checks a peer's own descriptor (the connection's key must sign it),
    /// then the descriptors it shares; gossips news to the other peers.
    fn take_hello(
        &mut self,
        peer: &PeerKey,
        hello: &Hello,
        now_ms: u64,
    ) -> Result<RelayName, Refusal> {
        match self.admit_hello(peer, hello, now_ms) {
            Ok(name) => Ok(name),
            Err(refusal) => {
                self.refuse(peer);
                Err(refusal)
            }
        }
    }

    fn admit_hello(
        &mut self,
        peer: &PeerKey,
        hello: &Hello,
        now_ms: u64,
    ) -> Result<RelayName, Refusal> {
        let named = PeerKey::new(hello.descriptor.descriptor.peer_id.clone());
        if &named != peer {
            return Err(DescriptorError::WrongPeer {
                named: named.to_string(),
                actual: peer.to_string(),
            }
            .into());
        }
        let (_, admitted) = self.book.admit(&hello.descriptor, Source::Direct, now_ms)?;
        self.book.set_live(peer.clone(), true);
        // Even a known descriptor updates when the peer was last seen and
        // that it connected, which the cap's eviction order needs on disk.
        self.mark_dirty();
        let mut news = admitted == Admitted::New;
        let rt = self.rt(peer);
        rt.last_seen_ms = Some(now_ms);
        for known in &hello.known {
            match self.book.admit(known, Source::Gossip(peer.clone()), now_ms) {
                Ok((_, Admitted::New)) => news = true,
                Ok((_, Admitted::Known)) | Err(Refusal::Ourselves) => {}
                Err(Refusal::BookFull { .. }) => self.rt(peer).counters.gossip_book_full += 1,
                Err(_) => self.rt(peer).counters.gossip_refused += 1,
            }
        }
        if news {
            self.gossip(peer);
        }
        Ok(hello.descriptor.descriptor.name.clone())
    }

    /// Pushes our hello (with what we now know) to every other federating
    /// peer, so a new relay's descriptor spreads through the federation.
    fn gossip(&mut self, except: &PeerKey) {
        let targets: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(p, rt)| *p != except && rt.federating())
            .map(|(p, _)| p.clone())
            .collect();
        for peer in targets {
            self.rt(&peer).hello_inflight = false;
            self.send_hello(&peer);
        }
    }

    fn refuse(&mut self, peer: &PeerKey) {
        self.rt(peer).counters.hellos_refused += 1;
        self.actions
            .push_back(Action::Disconnect { peer: peer.clone() });
        self.fail_queued(peer, |name| FederationError::Refused(name.clone()));
    }

    /// Forgets what this run knew about a gone peer the book does not hold
    /// (refused, never admitted, evicted): per-peer state stays bounded by
    /// the book, not by how many keys came and went.
    fn prune(&mut self, peer: &PeerKey) {
        let keep = self.book.name_of(peer).is_some()
            || self.book.descriptor_of(peer).is_some()
            || self.book.is_added(peer)
            || self.queues.contains_key(peer)
            || self.peers.get(peer).is_some_and(|rt| {
                rt.blocked || rt.connections > 0 || rt.dialing || rt.hello_inflight
            });
        if !keep {
            self.peers.remove(peer);
        }
    }

    /// Forgets a peer's runtime if nothing needs it (the adapter calls it
    /// when its own state of the peer is gone too).
    pub fn forget_if_unused(&mut self, peer: &PeerKey) {
        self.prune(peer);
    }

    // --- outputs ---

    /// The next thing to do, if any: queued actions first, then dials that
    /// are due at `now_ms`, then saving the book.
    pub fn poll_action(&mut self, now_ms: u64) -> Option<Action<R>> {
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        if let Some(action) = self.redial(now_ms) {
            return Some(action);
        }
        if std::mem::take(&mut self.dirty) {
            return Some(Action::SavePeerFile);
        }
        None
    }

    /// Operator peers that are down and may be dialled (due or not).
    fn down_added(&self) -> impl Iterator<Item = (PeerKey, Option<u64>)> + '_ {
        self.book.added().into_iter().filter_map(|(peer, _)| {
            let rt = self.peers.get(&peer);
            let busy = rt.is_some_and(|rt| {
                rt.blocked || rt.connections > 0 || rt.dialing || rt.hello_inflight
            });
            (!busy).then(|| (peer.clone(), rt.and_then(|rt| rt.next_dial_ms)))
        })
    }

    fn redial(&mut self, now_ms: u64) -> Option<Action<R>> {
        let (peer, _) = self
            .down_added()
            .find(|(_, next)| next.is_none_or(|t| t <= now_ms))?;
        let (base, max) = (self.config.redial_base_ms, self.config.redial_max_ms);
        let random = (self.random)();
        let addrs = self.addresses_of(&peer);
        let rt = self.rt(&peer);
        rt.dial_attempts += 1;
        rt.next_dial_ms = Some(now_ms + retry_delay_ms(rt.dial_attempts, base, max, random));
        rt.dialing = true;
        Some(Action::Dial { peer, addrs })
    }

    /// When to call [`Peering::poll_action`] next at the latest (virtual
    /// ms), if anything is waiting for time to pass.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.down_added().filter_map(|(_, next)| next).min()
    }
}
