//! The task that owns the libp2p `Swarm`: it serves [`Command`]s from
//! handles, swarm events and finished inbound work in one `select!`, so no
//! state is shared behind locks.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_protocol::Validate;
use courier_protocol::limits::HELLO_KNOWN_MAX;
use courier_protocol::{
    BundleRequest, BundleResponse, DeliveryAcks, DeliveryBatch, ErrorCode, Hello, RelayDescriptor,
    RelayName, SignedDescriptor,
    federation::{features, protocols},
};
use courier_relay::federation::{
    AckDisposition, FederationError, PeerLimiter, check_batch_origin, reject_all, retry_delay_ms,
};
use futures::StreamExt;
use libp2p::core::transport::TransportError;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, identify, ping,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::codec::{FrameCodec, Gate, Gated};
use super::peers::{Admitted, PeerBook, Refusal, Source};
use super::{
    Command, Config, Error, Inbound, PeerCounters, PeerInfo, PeerState, descriptor, peer_of,
};

type HelloBehaviour = Gated<request_response::Behaviour<FrameCodec<Hello, Hello>>>;
type BundleBehaviour =
    Gated<request_response::Behaviour<FrameCodec<BundleRequest, BundleResponse>>>;
type DeliverBehaviour = Gated<request_response::Behaviour<FrameCodec<DeliveryBatch, DeliveryAcks>>>;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    limits: connection_limits::Behaviour,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    hello: HelloBehaviour,
    bundle: BundleBehaviour,
    deliver: DeliverBehaviour,
}

/// Prometheus metric names (exported on the gateway's `GET /metrics`).
pub mod metrics_names {
    /// Gauge per peer: 1 while connected with descriptors exchanged.
    pub const CONNECTED: &str = "courier_federation_peer_connected";
    /// Gauge per peer: last ping round-trip time, seconds.
    pub const RTT: &str = "courier_federation_peer_rtt_seconds";
    /// Counter per peer and `result` (delivered, retried, failed):
    /// envelopes sent and how the peer took them.
    pub const ENVELOPES_SENT: &str = "courier_federation_envelopes_sent_total";
    /// Counter per peer: envelopes received from it and admitted.
    pub const ENVELOPES_RECEIVED: &str = "courier_federation_envelopes_received_total";
}

type DeliverReply = oneshot::Sender<Result<DeliveryAcks, FederationError>>;

/// Requests for a peer waiting until its hello completes.
enum Queued {
    Deliver(
        DeliveryBatch,
        oneshot::Sender<Result<DeliveryAcks, FederationError>>,
    ),
    Bundle(
        BundleRequest,
        oneshot::Sender<Result<BundleResponse, FederationError>>,
    ),
}

/// Most requests queued for one peer while its connection comes up.
const QUEUED_PER_PEER_MAX: usize = 4096;

/// Inbound work finished by a spawned task, waiting to be answered.
enum Done {
    Deliver(ResponseChannel<DeliveryAcks>, DeliveryAcks),
    Bundle(ResponseChannel<BundleResponse>, BundleResponse),
}

/// What the loop knows about one peer in this run (not persisted).
#[derive(Default)]
struct Runtime {
    connections: u32,
    helloed: bool,
    hello_inflight: bool,
    /// A hello was re-sent after its connection closed under it.
    hello_retried: bool,
    dialing: bool,
    dial_attempts: u32,
    /// Dials failed in a row (reset by a connection).
    dial_failures: u32,
    /// Why the last dial failed (cleared by a connection).
    last_error: Option<String>,
    next_dial: Option<Instant>,
    last_seen_ms: Option<u64>,
    rtt: Option<Duration>,
    counters: PeerCounters,
    limiter: Option<PeerLimiter>,
}

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    config: Config,
    book: PeerBook,
    own: SignedDescriptor,
    listen: Vec<Multiaddr>,
    runtime: HashMap<PeerId, Runtime>,
    blocked: HashSet<PeerId>,
    hello_out: HashMap<OutboundRequestId, PeerId>,
    add_waiters: HashMap<PeerId, Vec<oneshot::Sender<Result<RelayName, Error>>>>,
    queued: HashMap<PeerId, Vec<Queued>>,
    /// In-flight batches: the peer, its envelope count and who waits.
    deliver_out: HashMap<OutboundRequestId, (PeerId, usize, DeliverReply)>,
    bundle_out:
        HashMap<OutboundRequestId, oneshot::Sender<Result<BundleResponse, FederationError>>>,
    inbound: Arc<dyn Inbound>,
    inbound_permits: Arc<Semaphore>,
    /// Which peers may send more than a hello (see [`Gate`]).
    gate: Arc<Gate>,
    book_dirty: bool,
    /// The control socket server and its path, stopped with the loop.
    control: Option<(tokio::task::JoinHandle<()>, PathBuf)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn with_p2p(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    if peer_of(addr).is_some() {
        addr.clone()
    } else {
        addr.clone().with(libp2p::multiaddr::Protocol::P2p(peer))
    }
}

/// Connections stay up between batches; QUIC keep-alives and the idle
/// timeout find dead peers.
fn swarm_config(c: libp2p::swarm::Config) -> libp2p::swarm::Config {
    c.with_idle_connection_timeout(Duration::from_secs(3600))
}

/// Streams one connection may have open per protocol: a hello or two at a
/// time; deliveries and bundle requests well above the drainer's 8 rounds
/// in flight per destination. (Each stream may hold a frame of up to 8 MiB
/// being read, so these bound a connection's memory.)
const HELLO_STREAMS_MAX: usize = 4;
const REQUEST_STREAMS_MAX: usize = 64;
/// Connections one peer may hold at once.
const CONNECTIONS_PER_PEER_MAX: u32 = 4;

/// One request-response protocol behind the admission gate, with its own
/// stream cap.
fn gated<Req, Resp>(
    gate: &Arc<Gate>,
    config: &Config,
    protocol: &'static str,
    streams: usize,
) -> Gated<request_response::Behaviour<FrameCodec<Req, Resp>>>
where
    Req: Serialize + DeserializeOwned + Validate + Send + 'static,
    Resp: Serialize + DeserializeOwned + Validate + Send + 'static,
{
    Gated::new(
        request_response::Behaviour::with_codec(
            FrameCodec::new(gate.clone()),
            [(StreamProtocol::new(protocol), ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(streams),
        ),
        gate.clone(),
    )
}

fn behaviour(key: &Keypair, config: &Config, gate: &Arc<Gate>) -> Behaviour {
    Behaviour {
        limits: connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
                .with_max_established_incoming(Some(config.inbound_connections_max))
                .with_max_pending_incoming(Some(config.inbound_connections_max.clamp(1, 128))),
        ),
        blocked: allow_block_list::Behaviour::default(),
        identify: identify::Behaviour::new(
            identify::Config::new("/courier/fed/1/id".into(), key.public())
                .with_agent_version(format!("courier/{}", env!("CARGO_PKG_VERSION")))
                // Dial only what the operator gave and what the peer signed
                // in its descriptor (its external addresses), never the
                // unsigned listen addresses identify reports: behind NAT or
                // a forwarder those are not the way in.
                .with_cache_size(0),
        ),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
        hello: gated(gate, config, protocols::HELLO, HELLO_STREAMS_MAX),
        bundle: gated(gate, config, protocols::BUNDLE, REQUEST_STREAMS_MAX),
        deliver: gated(gate, config, protocols::DELIVER, REQUEST_STREAMS_MAX),
    }
}

/// QUIC, wrapped in libp2p's DNS transport so `/dns*` multiaddrs resolve
/// at each dial (hickory on tokio, configured from `/etc/resolv.conf`).
/// Without a resolver configuration the relay still federates over IP
/// addresses, and says so.
fn build_swarm(config: &Config, gate: &Arc<Gate>) -> Result<Swarm<Behaviour>, Error> {
    let idle_ms = u32::try_from(config.idle_timeout.as_millis()).unwrap_or(u32::MAX);
    let quic = move |mut c: libp2p::quic::Config| {
        c.max_idle_timeout = idle_ms;
        c.keep_alive_interval = Duration::from_millis(u64::from(idle_ms / 4).max(100));
        c
    };
    let transport = |e: std::convert::Infallible| Error::Transport(e.to_string());
    let quic_only = || {
        libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
            .with_tokio()
            .with_quic_config(quic)
    };
    match quic_only().with_dns() {
        Ok(builder) => Ok(builder
            .with_behaviour(|key| behaviour(key, config, gate))
            .map_err(transport)?
            .with_swarm_config(swarm_config)
            .build()),
        Err(e) => {
            tracing::warn!(error = %e,
                "no DNS resolver configuration: peers can be dialled by IP address only");
            Ok(quic_only()
                .with_behaviour(|key| behaviour(key, config, gate))
                .map_err(transport)?
                .with_swarm_config(swarm_config)
                .build())
        }
    }
}

/// Why dialling failed, in one line per address: the DNS transport's
/// resolver errors (no such name, no answer) come through here.
fn describe_dial_error(error: &DialError) -> String {
    match error {
        DialError::Transport(attempts) => attempts
            .iter()
            .map(|(addr, e)| {
                let why = match e {
                    TransportError::MultiaddrNotSupported(_) if is_dns(addr) => {
                        "DNS names cannot be dialled: this relay runs without a DNS resolver"
                            .to_owned()
                    }
                    other => one_line(other),
                };
                format!("{}: {why}", without_p2p(addr))
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => one_line(other),
    }
}

/// An error and its sources on one line, each message once.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        // libp2p-dns lists several failures as "- " lines under a header
        // ending in ':'.
        for line in e.to_string().lines() {
            let line = line.trim();
            if line.ends_with(':') {
                continue;
            }
            let line = line.trim_start_matches("- ");
            if !line.is_empty() && !parts.iter().any(|p| p.contains(line)) {
                parts.push(line.to_owned());
            }
        }
        next = e.source();
    }
    parts.join(": ")
}

fn is_dns(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().any(|p| {
        matches!(
            p,
            Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)
        )
    })
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

impl EventLoop {
    pub(super) async fn start(
        config: Config,
        inbound: Arc<dyn Inbound>,
        commands: mpsc::Receiver<Command>,
    ) -> Result<Self, Error> {
        let keypair = config.keypair.clone();
        if keypair.clone().try_into_ed25519().is_err() {
            return Err(Error::Transport("the relay key must be Ed25519".into()));
        }
        let gate = Arc::new(Gate::default());
        let mut swarm = build_swarm(&config, &gate)?;

        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| Error::Transport(format!("listen on {addr}: {e}")))?;
        }
        // Wait for the OS to bind, so the descriptor carries real ports.
        let mut listen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while listen.len() < config.listen.len() {
            match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => listen.push(address),
                Ok(SwarmEvent::ListenerError { error, .. }) => {
                    return Err(Error::Transport(error.to_string()));
                }
                Ok(SwarmEvent::ListenerClosed { reason, .. }) => {
                    return Err(Error::Transport(format!("listener closed: {reason:?}")));
                }
                Ok(_) => {}
                Err(_) => return Err(Error::Transport("listen timed out".into())),
            }
        }

        let file = match &config.peers_file {
            Some(path) => PeerBook::load(path)?,
            None => Default::default(),
        };
        let mut book = PeerBook::new(
            config.name.clone(),
            *swarm.local_peer_id(),
            config.policy.clone(),
            file,
        );
        let trimmed = book.set_max(config.peers_max);
        if !trimmed.is_empty() {
            tracing::warn!(
                evicted = trimmed.len(),
                peers_max = config.peers_max,
                "peer book was over federation.peers_max; evicted relays learned through gossip first"
            );
        }
        for removed in &book.file().removed {
            if let Ok(peer) = removed.parse() {
                swarm.behaviour_mut().blocked.block_peer(peer);
            }
        }
        let (done_tx, done_rx) = mpsc::channel(config.inbound_concurrent_max.max(1) * 2);
        let own = sign_own(&config, &listen);
        tracing::info!(
            name = %config.name,
            peer_id = %swarm.local_peer_id(),
            addresses = ?listen,
            "federation listening"
        );
        let permits = Arc::new(Semaphore::new(config.inbound_concurrent_max.max(1)));
        Ok(EventLoop {
            swarm,
            commands,
            done_tx,
            done_rx,
            config,
            book,
            own,
            listen,
            runtime: HashMap::new(),
            blocked: HashSet::new(),
            hello_out: HashMap::new(),
            add_waiters: HashMap::new(),
            queued: HashMap::new(),
            deliver_out: HashMap::new(),
            bundle_out: HashMap::new(),
            inbound,
            inbound_permits: permits,
            gate,
            book_dirty: !trimmed.is_empty(),
            control: None,
        })
    }

    pub(super) fn set_control(&mut self, task: tokio::task::JoinHandle<()>, path: PathBuf) {
        self.control = Some((task, path));
    }

    pub(super) async fn run(mut self) {
        self.publish_routes();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                Some(done) = self.done_rx.recv() => self.on_done(done),
                _ = tick.tick() => self.redial_due(),
            }
            self.persist();
        }
        self.persist();
        if let Some((task, path)) = self.control.take() {
            task.abort();
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("federation stopped");
    }

    fn persist(&mut self) {
        if !self.book_dirty {
            return;
        }
        self.book_dirty = false;
        self.publish_routes();
        if let Some(path) = &self.config.peers_file
            && let Err(e) = self.book.save(path)
        {
            tracing::error!(error = %e, "cannot write the peer book");
        }
    }

    /// Tells the send path which relays the book can reach now.
    fn publish_routes(&self) {
        if let Some(routes) = &self.config.routes {
            routes.replace(self.book.routable_names().cloned().collect());
        }
    }

    fn rt(&mut self, peer: PeerId) -> &mut Runtime {
        self.runtime.entry(peer).or_default()
    }

    /// The metrics label of a peer: its relay name. A peer without one in
    /// the book gets no series of its own (anyone can make up PeerIds, and
    /// every label is a series kept for good).
    fn label(&self, peer: &PeerId) -> Option<String> {
        self.book.name_of(peer).map(|n| n.to_string())
    }

    /// Forgets what this run knew about a gone peer the book does not hold
    /// (refused, never admitted, evicted): per-PeerId state stays bounded
    /// by the book, not by how many keys came and went.
    fn prune(&mut self, peer: PeerId) {
        let keep = self.book.name_of(&peer).is_some()
            || self.book.descriptor_of(&peer).is_some()
            || self.book.is_added(&peer)
            || self.blocked.contains(&peer)
            || self.swarm.is_connected(&peer)
            || self.add_waiters.contains_key(&peer)
            || self.queued.contains_key(&peer)
            || self
                .runtime
                .get(&peer)
                .is_some_and(|rt| rt.dialing || rt.hello_inflight)
            || self.hello_out.values().any(|p| *p == peer)
            || self.deliver_out.values().any(|(p, _, _)| *p == peer);
        if !keep {
            self.runtime.remove(&peer);
        }
    }

    fn seen(&mut self, peer: PeerId) {
        self.rt(peer).last_seen_ms = Some(now_ms());
    }

    fn hello_for(&self, peer: &PeerId) -> Hello {
        let except = self.book.name_of(peer);
        Hello {
            descriptor: self.own.clone(),
            known: self.book.shareable(except.as_ref(), HELLO_KNOWN_MAX),
        }
    }

    fn addresses_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut out = Vec::new();
        let text = peer.to_base58();
        if let Some(added) = self.book.file().added.get(&text)
            && let Ok(a) = added.address.parse()
        {
            out.push(a);
        }
        if let Some(d) = self.book.descriptor_of(peer) {
            out.extend(d.descriptor.addresses.iter().filter_map(|a| a.parse().ok()));
        }
        out
    }

    fn send_hello(&mut self, peer: PeerId) {
        if self.blocked.contains(&peer) || self.rt(peer).hello_inflight {
            return;
        }
        let hello = self.hello_for(&peer);
        let addrs = self.addresses_of(&peer);
        let id = self
            .swarm
            .behaviour_mut()
            .hello
            .send_request_with_addresses(&peer, hello, addrs);
        self.rt(peer).hello_inflight = true;
        self.hello_out.insert(id, peer);
    }

    // --- commands ---

    fn on_command(&mut self, command: Command) {
        match command {
            Command::AddPeer {
                address,
                peer,
                reply,
            } => {
                self.book.add(peer, &address, now_ms());
                self.book_dirty = true;
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                self.add_waiters.entry(peer).or_default().push(reply);
                let rt = self.rt(peer);
                rt.dial_attempts = 0;
                rt.next_dial = None;
                if rt.helloed && rt.connections > 0 {
                    // Already federating: refresh descriptors both ways.
                    self.rt(peer).helloed = false;
                }
                self.send_hello(peer);
            }
            Command::RemovePeer { peer, reply } => {
                let known = self.book.remove(&peer);
                self.book_dirty = true;
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                let rt = self.rt(peer);
                rt.helloed = false;
                self.fail_queued(peer, |name| FederationError::Refused(name.clone()));
                tracing::info!(%peer, "peer removed: federation stopped");
                let _ = reply.send(Ok(known));
            }
            Command::Pin { name, peer, reply } => {
                tracing::warn!(%name, %peer, "operator re-pinned relay key");
                self.book.pin(name, peer);
                self.book_dirty = true;
                let _ = reply.send(Ok(()));
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Command::ListenAddrs { reply } => {
                let me = *self.swarm.local_peer_id();
                let _ = reply.send(self.listen.iter().map(|a| with_p2p(a, me)).collect());
            }
            Command::Deliver { dest, batch, reply } => match self.route(&dest) {
                Ok(peer) => self.send_or_queue(peer, Queued::Deliver(batch, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Bundle {
                dest,
                request,
                reply,
            } => match self.route(&dest) {
                Ok(peer) => self.send_or_queue(peer, Queued::Bundle(request, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Block { peer, blocked } => {
                if blocked {
                    self.blocked.insert(peer);
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                    self.rt(peer).helloed = false;
                    self.fail_queued(peer, |name| FederationError::Unreachable {
                        relay: name.clone(),
                        reason: "blocked".into(),
                    });
                } else {
                    self.blocked.remove(&peer);
                    if !self.book.file().removed.contains(&peer.to_base58()) {
                        self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                    }
                    let rt = self.rt(peer);
                    rt.next_dial = None;
                    rt.dial_attempts = 0;
                }
            }
            Command::Shutdown => {}
        }
    }

    /// The peer to send to for relay `dest`.
    fn route(&self, dest: &RelayName) -> Result<PeerId, FederationError> {
        let d = self
            .book
            .descriptor(dest)
            .ok_or_else(|| FederationError::UnknownRelay(dest.clone()))?;
        let peer: PeerId = d
            .descriptor
            .peer_id
            .parse()
            .map_err(|_| FederationError::UnknownRelay(dest.clone()))?;
        if !self.book.allowed(dest, &peer) {
            return Err(FederationError::Refused(dest.clone()));
        }
        if self.blocked.contains(&peer) {
            return Err(FederationError::Unreachable {
                relay: dest.clone(),
                reason: "blocked".into(),
            });
        }
        Ok(peer)
    }

    fn send_or_queue(&mut self, peer: PeerId, item: Queued) {
        let ready = {
            let rt = self.rt(peer);
            rt.helloed && rt.connections > 0
        };
        if ready {
            self.send_now(peer, item);
            return;
        }
        let queue = self.queued.entry(peer).or_default();
        if queue.len() >= QUEUED_PER_PEER_MAX {
            let relay = self.book.name_of(&peer);
            let e = FederationError::Unreachable {
                relay: relay.unwrap_or_else(|| self.config.name.clone()),
                reason: "too many requests waiting for the connection".into(),
            };
            match item {
                Queued::Deliver(_, r) => {
                    let _ = r.send(Err(e));
                }
                Queued::Bundle(_, r) => {
                    let _ = r.send(Err(e));
                }
            }
            return;
        }
        queue.push(item);
        self.send_hello(peer);
    }

    fn send_now(&mut self, peer: PeerId, item: Queued) {
        match item {
            Queued::Deliver(batch, reply) => {
                let n = batch.envelopes.len();
                let id = self
                    .swarm
                    .behaviour_mut()
                    .deliver
                    .send_request(&peer, batch);
                self.rt(peer).counters.batches_sent += 1;
                self.deliver_out.insert(id, (peer, n, reply));
            }
            Queued::Bundle(request, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .bundle
                    .send_request(&peer, request);
                self.bundle_out.insert(id, reply);
            }
        }
    }

    fn flush_queued(&mut self, peer: PeerId) {
        for item in self.queued.remove(&peer).unwrap_or_default() {
            self.send_now(peer, item);
        }
    }

    fn fail_queued(&mut self, peer: PeerId, error: impl Fn(&RelayName) -> FederationError) {
        let name = self
            .book
            .name_of(&peer)
            .unwrap_or_else(|| self.config.name.clone());
        let items = self.queued.remove(&peer).unwrap_or_default();
        let retried: usize = items
            .iter()
            .map(|i| match i {
                Queued::Deliver(b, _) => b.envelopes.len(),
                Queued::Bundle(..) => 0,
            })
            .sum();
        self.rt(peer).counters.retried += retried as u64;
        for item in items {
            match item {
                Queued::Deliver(_, r) => {
                    let _ = r.send(Err(error(&name)));
                }
                Queued::Bundle(_, r) => {
                    let _ = r.send(Err(error(&name)));
                }
            }
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerId> = Vec::new();
        let mut push = |p: PeerId| {
            if !peers.contains(&p) {
                peers.push(p);
            }
        };
        for (p, _) in self.book.added() {
            push(p);
        }
        let file = self.book.file();
        for d in file.descriptors.values().chain(file.hints.values()) {
            if let Ok(p) = d.descriptor.peer_id.parse() {
                push(p);
            }
        }
        for p in self.runtime.keys() {
            if *p != *self.swarm.local_peer_id() {
                push(*p);
            }
        }
        peers
            .into_iter()
            .map(|peer| {
                let rt = self.runtime.get(&peer);
                let name = self.book.name_of(&peer);
                let removed = self.book.file().removed.contains(&peer.to_base58());
                let refused = removed
                    || self.blocked.contains(&peer)
                    || name
                        .as_ref()
                        .is_some_and(|n| !self.book.policy().allows(n, &peer));
                let state = match rt {
                    _ if refused => PeerState::Refused,
                    Some(rt) if rt.connections > 0 && rt.helloed => PeerState::Connected,
                    Some(rt) if rt.connections > 0 || rt.dialing || rt.hello_inflight => {
                        PeerState::Connecting
                    }
                    _ => PeerState::Disconnected,
                };
                let added = self.book.file().added.get(&peer.to_base58());
                let address = added.map(|a| a.address.clone()).or_else(|| {
                    name.as_ref()
                        .and_then(|n| self.book.descriptor(n))
                        .and_then(|d| d.descriptor.addresses.first().cloned())
                });
                PeerInfo {
                    peer_id: peer.to_base58(),
                    name,
                    address,
                    added: added.is_some(),
                    state,
                    last_seen_ms: rt.and_then(|r| r.last_seen_ms),
                    dial_failures: rt.map_or(0, |r| r.dial_failures),
                    last_error: rt.and_then(|r| r.last_error.clone()),
                    rtt_ms: rt.and_then(|r| r.rtt).map(|d| d.as_secs_f64() * 1000.0),
                    counters: rt.map(|r| r.counters).unwrap_or_default(),
                    outbox_depth: 0,
                }
            })
            .collect()
    }

    // --- redial ---

    fn redial_due(&mut self) {
        let now = Instant::now();
        for (peer, addr) in self.book.added() {
            if self.blocked.contains(&peer) {
                continue;
            }
            let connected = self.swarm.is_connected(&peer);
            let mut addrs = vec![addr];
            addrs.extend(self.addresses_of(&peer));
            let rt = self.runtime.entry(peer).or_default();
            if connected || rt.dialing || rt.hello_inflight {
                continue;
            }
            if rt.next_dial.is_some_and(|t| now < t) {
                continue;
            }
            rt.dial_attempts += 1;
            let delay = retry_delay_ms(
                rt.dial_attempts,
                self.config.redial_base_ms,
                self.config.redial_max_ms,
                rand::random(),
            );
            rt.next_dial = Some(now + Duration::from_millis(delay));
            rt.dialing = true;
            tracing::debug!(%peer, attempt = rt.dial_attempts, "dialling peer");
            if let Err(e) = self
                .swarm
                .dial(DialOpts::peer_id(peer).addresses(addrs).build())
            {
                tracing::debug!(%peer, error = %e, "dial failed");
                self.rt(peer).dialing = false;
            }
        }
    }

    // --- swarm events ---

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                self.seen(peer_id);
                let rt = self.rt(peer_id);
                rt.connections += 1;
                rt.dialing = false;
                rt.dial_attempts = 0;
                rt.dial_failures = 0;
                rt.last_error = None;
                rt.next_dial = None;
                let needs_hello = !rt.helloed;
                tracing::debug!(peer = %peer_id, dialer = endpoint.is_dialer(), "connected");
                // The dialer introduces itself; the listener answers.
                if endpoint.is_dialer() && needs_hello {
                    self.send_hello(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                let rt = self.rt(peer_id);
                rt.connections = num_established;
                if num_established == 0 {
                    rt.helloed = false;
                    self.gate.forget(&peer_id);
                    self.book.set_live(peer_id, false);
                    tracing::info!(peer = %peer_id, cause = ?cause, "peer disconnected");
                    if let Some(label) = self.label(&peer_id) {
                        metrics::gauge!(metrics_names::CONNECTED, "peer" => label).set(0.0);
                    }
                    self.prune(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                let why = describe_dial_error(&error);
                tracing::debug!(%peer, error = %why, "dial error");
                let rt = self.rt(peer);
                rt.dialing = false;
                rt.dial_failures += 1;
                rt.last_error = Some(why);
            }
            SwarmEvent::NewListenAddr { address, .. } if !self.listen.contains(&address) => {
                self.listen.push(address);
                self.own = sign_own(&self.config, &self.listen);
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                self.seen(peer);
                self.rt(peer).rtt = Some(rtt);
                if let Some(label) = self.label(&peer) {
                    metrics::gauge!(metrics_names::RTT, "peer" => label).set(rtt.as_secs_f64());
                }
            }
            BehaviourEvent::Hello(event) => self.on_hello(event),
            BehaviourEvent::Deliver(event) => self.on_deliver(event),
            BehaviourEvent::Bundle(event) => self.on_bundle(event),
            _ => {}
        }
    }

    /// Checks a peer's own descriptor (authenticated PeerId must match),
    /// then the descriptors it shares. Returns the peer's name if admitted.
    fn take_hello(&mut self, peer: PeerId, hello: &Hello) -> Result<RelayName, Refusal> {
        let named = descriptor::verify(&hello.descriptor)?;
        if named != peer {
            return Err(descriptor::DescriptorError::WrongPeer {
                named: named.to_base58(),
                actual: peer.to_base58(),
            }
            .into());
        }
        let now = now_ms();
        let (_, admitted) = self.book.admit(&hello.descriptor, Source::Direct, now)?;
        self.book.set_live(peer, true);
        // Even a known descriptor updates when the peer was last seen and
        // that it connected, which the cap's eviction order needs on disk.
        self.book_dirty = true;
        let mut news = admitted == Admitted::New;
        let mut full = 0usize;
        for known in &hello.known {
            match self.book.admit(known, Source::Gossip(peer), now) {
                Ok((_, Admitted::New)) => news = true,
                Ok((_, Admitted::Known)) | Err(Refusal::Ourselves) => {}
                Err(Refusal::BookFull { .. }) => full += 1,
                Err(refusal @ Refusal::PinnedKeyMismatch { .. }) => {
                    tracing::warn!(from = %peer, %refusal, "shared descriptor refused");
                }
                Err(refusal) => {
                    tracing::debug!(from = %peer, %refusal, "shared descriptor ignored")
                }
            }
        }
        if full > 0 {
            tracing::info!(from = %peer, refused = full, peers_max = self.config.peers_max,
                "peer book full: shared descriptors refused");
        }
        if news {
            self.gossip(peer);
        }
        self.seen(peer);
        let name = hello.descriptor.descriptor.name.clone();
        metrics::gauge!(metrics_names::CONNECTED, "peer" => name.to_string()).set(1.0);
        Ok(name)
    }

    /// Pushes our hello (with what we now know) to every other federating
    /// peer, so a new relay's descriptor spreads through the federation.
    fn gossip(&mut self, except: PeerId) {
        let targets: Vec<PeerId> = self
            .runtime
            .iter()
            .filter(|(p, rt)| **p != except && rt.helloed && rt.connections > 0)
            .map(|(p, _)| *p)
            .collect();
        for peer in targets {
            let hello = self.hello_for(&peer);
            let id = self.swarm.behaviour_mut().hello.send_request(&peer, hello);
            self.rt(peer).hello_inflight = true;
            self.hello_out.insert(id, peer);
        }
    }

    fn refuse_peer(&mut self, peer: PeerId, refusal: &Refusal) {
        tracing::warn!(%peer, %refusal, "peer refused");
        self.gate.forget(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
        let reason = refusal.to_string();
        let waiters = self.add_waiters.remove(&peer).unwrap_or_default();
        if !waiters.is_empty() {
            // The operator's `peer add` failed: do not keep redialling it.
            self.book.forget_added(&peer);
            self.book_dirty = true;
        }
        for w in waiters {
            let _ = w.send(Err(Error::Refused(reason.clone())));
        }
        self.fail_queued(peer, |name| FederationError::Refused(name.clone()));
    }

    fn on_hello(&mut self, event: request_response::Event<Hello, Hello>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => match self.take_hello(peer, &request) {
                Ok(name) => {
                    tracing::info!(%peer, %name, "hello from peer");
                    self.gate.admit(peer);
                    let reply = self.hello_for(&peer);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .hello
                        .send_response(channel, reply);
                    self.rt(peer).helloed = true;
                    self.flush_queued(peer);
                    self.peer_up(name.clone());
                    for w in self.add_waiters.remove(&peer).unwrap_or_default() {
                        let _ = w.send(Ok(name.clone()));
                    }
                }
                // Dropping the channel tells the peer nothing about why:
                // a refused relay learns no more than that it was refused.
                Err(refusal) => self.refuse_peer(peer, &refusal),
            },
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.hello_out.remove(&request_id);
                self.rt(peer).hello_inflight = false;
                match self.take_hello(peer, &response) {
                    Ok(name) => {
                        tracing::info!(%peer, %name, "peer federating");
                        self.gate.admit(peer);
                        let rt = self.rt(peer);
                        rt.helloed = true;
                        rt.hello_retried = false;
                        self.flush_queued(peer);
                        self.peer_up(name.clone());
                        for w in self.add_waiters.remove(&peer).unwrap_or_default() {
                            let _ = w.send(Ok(name.clone()));
                        }
                    }
                    Err(refusal) => self.refuse_peer(peer, &refusal),
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.hello_out.remove(&request_id);
                let rt = self.rt(peer);
                rt.hello_inflight = false;
                rt.dialing = false;
                if rt.helloed {
                    // A gossip push failed; the connection state says the rest.
                    return;
                }
                // The request went out on a connection that was closing (we
                // just refused or dropped the peer): dial afresh, once.
                if matches!(error, request_response::OutboundFailure::ConnectionClosed)
                    && !rt.hello_retried
                {
                    rt.hello_retried = true;
                    self.send_hello(peer);
                    return;
                }
                rt.hello_retried = false;
                let reason = self.failure_reason(peer, &error);
                tracing::debug!(%peer, %reason, "hello failed");
                for w in self.add_waiters.remove(&peer).unwrap_or_default() {
                    let _ = w.send(Err(Error::Unreachable {
                        peer,
                        reason: reason.clone(),
                    }));
                }
                self.fail_queued(peer, |name| FederationError::Unreachable {
                    relay: name.clone(),
                    reason: reason.clone(),
                });
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound hello failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Runs a peer's request against the relay off the event loop, at most
    /// `inbound_concurrent_max` at once; the answer comes back as [`Done`].
    ///
    /// The caller takes the `permit` ([`EventLoop::permit`]) before any
    /// task exists: with none left the request is answered at once as
    /// busy, so decoded requests never pile up waiting for one.
    fn spawn_inbound<F, Fut>(&self, permit: tokio::sync::OwnedSemaphorePermit, work: F)
    where
        F: FnOnce(Arc<dyn Inbound>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Done> + Send + 'static,
    {
        let inbound = self.inbound.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = done.send(work(inbound).await).await;
        });
    }

    /// A slot for one inbound request, if one is free now.
    fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inbound_permits.clone().try_acquire_owned().ok()
    }

    /// Why a request to `peer` failed: for a failed dial, why dialling
    /// failed (the swarm reports that just before the request fails).
    fn failure_reason(&self, peer: PeerId, error: &request_response::OutboundFailure) -> String {
        match (
            error,
            self.runtime
                .get(&peer)
                .and_then(|rt| rt.last_error.as_ref()),
        ) {
            (request_response::OutboundFailure::DialFailure, Some(why)) => {
                format!("dial failed: {why}")
            }
            _ => error.to_string(),
        }
    }

    /// Tells the relay that `name` completed a hello, off the event loop.
    fn peer_up(&self, name: RelayName) {
        let inbound = self.inbound.clone();
        tokio::spawn(async move { inbound.peer_up(name).await });
    }

    /// The relay name of an admitted, allowed, unblocked peer.
    fn federating_name(&self, peer: &PeerId) -> Option<RelayName> {
        if self.blocked.contains(peer) {
            return None;
        }
        self.book
            .name_of(peer)
            .filter(|name| self.book.allowed(name, peer))
    }

    fn on_deliver(&mut self, event: request_response::Event<DeliveryBatch, DeliveryAcks>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.seen(peer);
                let n = request.envelopes.len() as u64;
                let Some(name) = self.federating_name(&peer) else {
                    tracing::warn!(%peer, "batch from a peer that is not federating with us");
                    self.rt(peer).counters.batches_refused += 1;
                    let acks = reject_all(&request, ErrorCode::FederationRefused);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .deliver
                        .send_response(channel, acks);
                    return;
                };
                let Some(permit) = self.permit() else {
                    // Busy: a passing refusal the origin retries later.
                    let acks = reject_all(&request, ErrorCode::Unavailable);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .deliver
                        .send_response(channel, acks);
                    return;
                };
                let limits = self.config.limits;
                let rt = self.rt(peer);
                let now = now_ms();
                let admitted = check_batch_origin(&name, &request).and_then(|()| {
                    rt.limiter
                        .get_or_insert_with(|| PeerLimiter::new(limits, now))
                        .admit_batch(&request, now)
                });
                if let Err(code) = admitted {
                    rt.counters.batches_refused += 1;
                    if code == ErrorCode::OriginMismatch {
                        tracing::warn!(%peer, %name, claimed = %request.origin,
                            "batch claims another origin: refused");
                    }
                    let acks = reject_all(&request, code);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .deliver
                        .send_response(channel, acks);
                    return;
                }
                rt.counters.batches_received += 1;
                rt.counters.envelopes_received += n;
                metrics::counter!(metrics_names::ENVELOPES_RECEIVED, "peer" => name.to_string())
                    .increment(n);
                self.spawn_inbound(permit, move |inbound| async move {
                    Done::Deliver(channel, inbound.deliver(name, request).await)
                });
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.seen(peer);
                if let Some((_, _, reply)) = self.deliver_out.remove(&request_id) {
                    let label = self.label(&peer).unwrap_or_else(|| "unknown".to_owned());
                    let c = &mut self.rt(peer).counters;
                    let (mut done, mut retry, mut failed) = (0, 0, 0);
                    for ack in &response.acks {
                        match AckDisposition::of(ack.status) {
                            AckDisposition::Done => done += 1,
                            AckDisposition::Retry => retry += 1,
                            AckDisposition::Failed(_) => failed += 1,
                        }
                    }
                    c.delivered += done;
                    c.retried += retry;
                    c.failed += failed;
                    for (result, n) in [("delivered", done), ("retried", retry), ("failed", failed)]
                    {
                        metrics::counter!(metrics_names::ENVELOPES_SENT, "peer" => label.clone(), "result" => result)
                            .increment(n);
                    }
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((_, n, reply)) = self.deliver_out.remove(&request_id) {
                    let reason = self.failure_reason(peer, &error);
                    self.rt(peer).counters.retried += n as u64;
                    let label = self.label(&peer).unwrap_or_else(|| "unknown".to_owned());
                    metrics::counter!(metrics_names::ENVELOPES_SENT, "peer" => label, "result" => "retried")
                        .increment(n as u64);
                    let relay = self
                        .book
                        .name_of(&peer)
                        .unwrap_or_else(|| self.config.name.clone());
                    let _ = reply.send(Err(FederationError::Unreachable { relay, reason }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound delivery failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_bundle(&mut self, event: request_response::Event<BundleRequest, BundleResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.seen(peer);
                let Some(name) = self.federating_name(&peer) else {
                    let refusal = Err(courier_protocol::ApiError::new(
                        ErrorCode::FederationRefused,
                    ));
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .bundle
                        .send_response(channel, refusal);
                    return;
                };
                let Some(permit) = self.permit() else {
                    let busy = Err(courier_protocol::ApiError::new(ErrorCode::Unavailable));
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .bundle
                        .send_response(channel, busy);
                    return;
                };
                self.spawn_inbound(permit, move |inbound| async move {
                    Done::Bundle(channel, inbound.bundle(name, request).await)
                });
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.seen(peer);
                if let Some(reply) = self.bundle_out.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.bundle_out.remove(&request_id) {
                    let relay = self
                        .book
                        .name_of(&peer)
                        .unwrap_or_else(|| self.config.name.clone());
                    let reason = self.failure_reason(peer, &error);
                    let _ = reply.send(Err(FederationError::Unreachable { relay, reason }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound bundle request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_done(&mut self, done: Done) {
        // A failed send means the peer went away; it will retry the batch
        // and the receiver's dedup by envelope id absorbs the repeat.
        match done {
            Done::Deliver(channel, acks) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .deliver
                    .send_response(channel, acks);
            }
            Done::Bundle(channel, answer) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .bundle
                    .send_response(channel, answer);
            }
        }
    }
}

/// Our descriptor, signed now.
fn sign_own(config: &Config, listen: &[Multiaddr]) -> SignedDescriptor {
    let addresses = if config.external_addresses.is_empty() {
        listen
    } else {
        &config.external_addresses
    };
    descriptor::sign(
        &config.keypair,
        RelayDescriptor {
            name: config.name.clone(),
            peer_id: config.keypair.public().to_peer_id().to_base58(),
            addresses: addresses
                .iter()
                .take(courier_protocol::limits::DESCRIPTOR_ADDRESSES_MAX)
                .map(|a| a.to_string())
                .collect(),
            http_url: config.http_url.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            features: vec![features::WIRE_V1.to_owned()],
            issued_ms: now_ms(),
        },
    )
}
