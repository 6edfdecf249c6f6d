//! The task that owns the libp2p `Swarm`: it serves [`Command`]s from
//! handles, swarm events and finished inbound work in one `select!`, so no
//! state is shared behind locks.
//!
//! It is an adapter: policy (the peer book, hellos, redial backoff, request
//! queues, rate limits) is [`Peering`]'s, which it feeds with what the swarm
//! reports and whose actions it carries out on the swarm. What stays here is
//! libp2p, tokio, the metrics and the logs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_protocol::Validate;
use courier_protocol::{
    BundleRequest, BundleResponse, DeliveryAcks, DeliveryBatch, ErrorCode, Hello, RelayDescriptor,
    RelayName, SignedDescriptor,
    federation::{features, protocols},
};
use courier_relay::federation::{AckDisposition, FederationError, reject_all};
use courier_relay::peering::{self, Action, Peering, QUEUED_PER_PEER_MAX};
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
use super::peers::{self, Refusal, key};
use super::{Command, Config, Error, Inbound, PeerInfo, PeerState, descriptor, peer_of};

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

/// A request for a peer: sent now or queued by [`Peering`] until its hello
/// completes.
enum Queued {
    Deliver(DeliveryBatch, DeliverReply),
    Bundle(
        BundleRequest,
        oneshot::Sender<Result<BundleResponse, FederationError>>,
    ),
}

impl Queued {
    fn fail(self, error: FederationError) {
        match self {
            Queued::Deliver(_, r) => {
                let _ = r.send(Err(error));
            }
            Queued::Bundle(_, r) => {
                let _ = r.send(Err(error));
            }
        }
    }
}

/// Inbound work finished by a spawned task, waiting to be answered.
enum Done {
    Deliver(ResponseChannel<DeliveryAcks>, DeliveryAcks),
    Bundle(ResponseChannel<BundleResponse>, BundleResponse),
}

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    config: Config,
    /// The federation's policy and per-peer state.
    peering: Peering<Queued>,
    own: SignedDescriptor,
    listen: Vec<Multiaddr>,
    /// Last ping round-trip time per peer (the transport's, not policy).
    rtt: HashMap<PeerId, Duration>,
    hello_out: HashMap<OutboundRequestId, PeerId>,
    /// Hellos from peers waiting for [`Action::AnswerHello`].
    hello_in: HashMap<PeerId, ResponseChannel<Hello>>,
    add_waiters: HashMap<PeerId, Vec<oneshot::Sender<Result<RelayName, Error>>>>,
    /// In-flight batches: the peer, its envelope count and who waits.
    deliver_out: HashMap<OutboundRequestId, (PeerId, usize, DeliverReply)>,
    bundle_out:
        HashMap<OutboundRequestId, oneshot::Sender<Result<BundleResponse, FederationError>>>,
    inbound: Arc<dyn Inbound>,
    inbound_permits: Arc<Semaphore>,
    /// Which peers may send more than a hello (see [`Gate`]).
    gate: Arc<Gate>,
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
            Some(path) => peers::load(path)?,
            None => Default::default(),
        };
        let book = peers::new_book(
            config.name.clone(),
            *swarm.local_peer_id(),
            config.policy.clone(),
            file,
        );
        for removed in &book.file().removed {
            if let Ok(peer) = removed.parse() {
                swarm.behaviour_mut().blocked.block_peer(peer);
            }
        }
        let (done_tx, done_rx) = mpsc::channel(config.inbound_concurrent_max.max(1) * 2);
        let own = sign_own(&config, &listen);
        let mut peering = Peering::new(
            peering::Config {
                name: config.name.clone(),
                redial_base_ms: config.redial_base_ms,
                redial_max_ms: config.redial_max_ms,
                queued_per_peer_max: QUEUED_PER_PEER_MAX,
                limits: config.limits,
            },
            book,
            own.clone(),
            Box::new(rand::random),
        );
        let trimmed = peering.set_peers_max(config.peers_max);
        if !trimmed.is_empty() {
            tracing::warn!(
                evicted = trimmed.len(),
                peers_max = config.peers_max,
                "peer book was over federation.peers_max; evicted relays learned through gossip first"
            );
        }
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
            peering,
            own,
            listen,
            rtt: HashMap::new(),
            hello_out: HashMap::new(),
            hello_in: HashMap::new(),
            add_waiters: HashMap::new(),
            deliver_out: HashMap::new(),
            bundle_out: HashMap::new(),
            inbound,
            inbound_permits: permits,
            gate,
            control: None,
        })
    }

    pub(super) fn set_control(&mut self, task: tokio::task::JoinHandle<()>, path: PathBuf) {
        self.control = Some((task, path));
    }

    pub(super) async fn run(mut self) {
        self.publish_routes();
        self.drive();
        loop {
            // Peering says when it next needs time to have passed (a redial).
            let wake_ms = self
                .peering
                .poll_timeout()
                .map_or(3_600_000, |t| t.saturating_sub(now_ms()));
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                Some(done) = self.done_rx.recv() => self.on_done(done),
                _ = tokio::time::sleep(Duration::from_millis(wake_ms)) => {}
            }
            self.drive();
        }
        self.drive();
        if let Some((task, path)) = self.control.take() {
            task.abort();
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("federation stopped");
    }

    /// Carries out everything [`Peering`] asks for now.
    fn drive(&mut self) {
        let now = now_ms();
        while let Some(action) = self.peering.poll_action(now) {
            self.act(action, now);
        }
    }

    fn act(&mut self, action: Action<Queued>, now: u64) {
        match action {
            Action::Dial { peer, addrs } => {
                let Some(id) = peers::peer_id(&peer) else {
                    return;
                };
                let addrs: Vec<Multiaddr> = addrs
                    .iter()
                    .filter_map(|a| a.as_str().parse().ok())
                    .collect();
                tracing::debug!(peer = %id, "dialling peer");
                if let Err(e) = self
                    .swarm
                    .dial(DialOpts::peer_id(id).addresses(addrs).build())
                {
                    tracing::debug!(peer = %id, error = %e, "dial failed");
                    self.peering.handle_dial_failed(&peer, e.to_string(), now);
                }
            }
            Action::SendHello { peer, hello, addrs } => {
                let Some(id) = peers::peer_id(&peer) else {
                    return;
                };
                let addrs = addrs
                    .iter()
                    .filter_map(|a| a.as_str().parse().ok())
                    .collect();
                let request = self
                    .swarm
                    .behaviour_mut()
                    .hello
                    .send_request_with_addresses(&id, hello, addrs);
                self.hello_out.insert(request, id);
            }
            Action::AnswerHello { peer, hello } => {
                if let Some(id) = peers::peer_id(&peer)
                    && let Some(channel) = self.hello_in.remove(&id)
                {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .hello
                        .send_response(channel, hello);
                }
            }
            Action::Send { peer, request } => match peers::peer_id(&peer) {
                Some(id) => self.send_now(id, request),
                None => request.fail(FederationError::Unreachable {
                    relay: self.config.name.clone(),
                    reason: format!("{peer} is not a PeerId"),
                }),
            },
            Action::Fail { request, error } => request.fail(error),
            Action::Disconnect { peer } => {
                if let Some(id) = peers::peer_id(&peer) {
                    self.gate.forget(&id);
                    let _ = self.swarm.disconnect_peer_id(id);
                }
            }
            Action::PeerUp { peer, name } => {
                let Some(id) = peers::peer_id(&peer) else {
                    return;
                };
                self.gate.admit(id);
                metrics::gauge!(metrics_names::CONNECTED, "peer" => name.to_string()).set(1.0);
                self.peer_up(name.clone());
                for w in self.add_waiters.remove(&id).unwrap_or_default() {
                    let _ = w.send(Ok(name.clone()));
                }
            }
            Action::SavePeerFile => {
                self.publish_routes();
                if let Some(path) = &self.config.peers_file
                    && let Err(e) = peers::save(self.peering.book().file(), path)
                {
                    tracing::error!(error = %e, "cannot write the peer book");
                }
            }
        }
    }

    /// Tells the send path which relays the book can reach now.
    fn publish_routes(&self) {
        if let Some(routes) = &self.config.routes {
            routes.replace(self.peering.book().routable_names().cloned().collect());
        }
    }

    /// The metrics label of a peer: its relay name. A peer without one in
    /// the book gets no series of its own (anyone can make up PeerIds, and
    /// every label is a series kept for good).
    fn label(&self, peer: &PeerId) -> Option<String> {
        self.peering
            .book()
            .name_of(&key(peer))
            .map(|n| n.to_string())
    }

    // --- commands ---

    fn on_command(&mut self, command: Command) {
        match command {
            Command::AddPeer {
                address,
                peer,
                reply,
            } => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                self.add_waiters.entry(peer).or_default().push(reply);
                self.peering
                    .add_peer(key(&peer), &peers::addr(&address), now_ms());
            }
            Command::RemovePeer { peer, reply } => {
                let known = self.peering.remove_peer(&key(&peer));
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                tracing::info!(%peer, "peer removed: federation stopped");
                let _ = reply.send(Ok(known));
            }
            Command::Pin { name, peer, reply } => {
                tracing::warn!(%name, %peer, "operator re-pinned relay key");
                self.peering.pin(name, key(&peer));
                let _ = reply.send(Ok(()));
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Command::ListenAddrs { reply } => {
                let me = *self.swarm.local_peer_id();
                let _ = reply.send(self.listen.iter().map(|a| with_p2p(a, me)).collect());
            }
            Command::Deliver { dest, batch, reply } => match self.peering.route(&dest) {
                Ok(peer) => {
                    let n = batch.envelopes.len();
                    self.peering.send(&peer, Queued::Deliver(batch, reply), n);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Bundle {
                dest,
                request,
                reply,
            } => match self.peering.route(&dest) {
                Ok(peer) => self.peering.send(&peer, Queued::Bundle(request, reply), 0),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Block { peer, blocked } => {
                self.peering.set_blocked(&key(&peer), blocked);
                if blocked {
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                } else if !self
                    .peering
                    .book()
                    .file()
                    .removed
                    .contains(&peer.to_base58())
                {
                    self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                }
            }
            Command::Shutdown => {}
        }
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

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let book = self.peering.book();
        let mut peers: Vec<PeerId> = Vec::new();
        let mut push = |p: PeerId| {
            if !peers.contains(&p) {
                peers.push(p);
            }
        };
        for (p, _) in book.added() {
            if let Some(p) = peers::peer_id(&p) {
                push(p);
            }
        }
        let file = book.file();
        for d in file.descriptors.values().chain(file.hints.values()) {
            if let Ok(p) = d.descriptor.peer_id.parse() {
                push(p);
            }
        }
        for (p, _) in self.peering.runtimes() {
            if let Some(p) = peers::peer_id(p)
                && p != *self.swarm.local_peer_id()
            {
                push(p);
            }
        }
        peers
            .into_iter()
            .map(|peer| {
                let k = key(&peer);
                let rt = self.peering.runtime(&k);
                let name = book.name_of(&k);
                let removed = file.removed.contains(k.as_str());
                let refused = removed
                    || rt.is_some_and(|rt| rt.blocked)
                    || name.as_ref().is_some_and(|n| !book.policy().allows(n, &k));
                let state = match rt {
                    _ if refused => PeerState::Refused,
                    Some(rt) if rt.federating() => PeerState::Connected,
                    Some(rt) if rt.connections > 0 || rt.dialing || rt.hello_inflight => {
                        PeerState::Connecting
                    }
                    _ => PeerState::Disconnected,
                };
                let added = file.added.get(k.as_str());
                let address = added.map(|a| a.address.clone()).or_else(|| {
                    name.as_ref()
                        .and_then(|n| book.descriptor(n))
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
                    rtt_ms: self.rtt.get(&peer).map(|d| d.as_secs_f64() * 1000.0),
                    counters: rt.map(|r| r.counters).unwrap_or_default(),
                    outbox_depth: 0,
                }
            })
            .collect()
    }

    // --- swarm events ---

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = now_ms();
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::debug!(peer = %peer_id, dialer = endpoint.is_dialer(), "connected");
                self.peering
                    .handle_connected(&key(&peer_id), endpoint.is_dialer(), now);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                self.peering
                    .handle_disconnected(&key(&peer_id), num_established, now);
                if num_established == 0 {
                    self.gate.forget(&peer_id);
                    tracing::info!(peer = %peer_id, cause = ?cause, "peer disconnected");
                    if let Some(label) = self.label(&peer_id) {
                        metrics::gauge!(metrics_names::CONNECTED, "peer" => label).set(0.0);
                    }
                    if self.peering.runtime(&key(&peer_id)).is_none() {
                        self.rtt.remove(&peer_id);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                let why = describe_dial_error(&error);
                tracing::debug!(%peer, error = %why, "dial error");
                self.peering.handle_dial_failed(&key(&peer), why, now);
            }
            SwarmEvent::NewListenAddr { address, .. } if !self.listen.contains(&address) => {
                self.listen.push(address);
                self.own = sign_own(&self.config, &self.listen);
                self.peering.set_own(self.own.clone());
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
                self.peering.handle_seen(&key(&peer), now_ms());
                self.rtt.insert(peer, rtt);
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

    /// A hello was refused: the operator's `peer add` of it fails (and it
    /// is no longer dialled); peering has already disconnected it.
    fn refused(&mut self, peer: PeerId, refusal: &Refusal) {
        tracing::warn!(%peer, %refusal, "peer refused");
        let reason = refusal.to_string();
        let waiters = self.add_waiters.remove(&peer).unwrap_or_default();
        if !waiters.is_empty() {
            self.peering.forget_added(&key(&peer));
        }
        for w in waiters {
            let _ = w.send(Err(Error::Refused(reason.clone())));
        }
    }

    fn on_hello(&mut self, event: request_response::Event<Hello, Hello>) {
        let now = now_ms();
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.hello_in.insert(peer, channel);
                match self.peering.handle_hello(&key(&peer), &request, now) {
                    Ok(name) => tracing::info!(%peer, %name, "hello from peer"),
                    // Dropping the channel tells the peer nothing about why:
                    // a refused relay learns no more than that it was refused.
                    Err(refusal) => {
                        self.hello_in.remove(&peer);
                        self.refused(peer, &refusal);
                    }
                }
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
                self.hello_out.remove(&request_id);
                match self
                    .peering
                    .handle_hello_response(&key(&peer), &response, now)
                {
                    Ok(name) => tracing::info!(%peer, %name, "peer federating"),
                    Err(refusal) => self.refused(peer, &refusal),
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.hello_out.remove(&request_id);
                // The request went out on a connection that was closing (we
                // just refused or dropped the peer): peering dials afresh, once.
                let closed = matches!(error, request_response::OutboundFailure::ConnectionClosed);
                let reason = self.failure_reason(peer, &error);
                if self
                    .peering
                    .handle_hello_failed(&key(&peer), closed, &reason)
                {
                    tracing::debug!(%peer, %reason, "hello failed");
                    for w in self.add_waiters.remove(&peer).unwrap_or_default() {
                        let _ = w.send(Err(Error::Unreachable {
                            peer,
                            reason: reason.clone(),
                        }));
                    }
                }
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
            self.peering
                .runtime(&key(&peer))
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
                let n = request.envelopes.len() as u64;
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
                let name = match self.peering.admit_batch(&key(&peer), &request, now_ms()) {
                    Ok(name) => name,
                    Err(code) => {
                        match code {
                            ErrorCode::FederationRefused => tracing::warn!(%peer,
                                "batch from a peer that is not federating with us"),
                            ErrorCode::OriginMismatch => tracing::warn!(%peer,
                                claimed = %request.origin, "batch claims another origin: refused"),
                            _ => {}
                        }
                        let acks = reject_all(&request, code);
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .deliver
                            .send_response(channel, acks);
                        return;
                    }
                };
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
                self.peering.handle_seen(&key(&peer), now_ms());
                if let Some((_, _, reply)) = self.deliver_out.remove(&request_id) {
                    let label = self.label(&peer).unwrap_or_else(|| "unknown".to_owned());
                    let (mut done, mut retry, mut failed) = (0, 0, 0);
                    for ack in &response.acks {
                        match AckDisposition::of(ack.status) {
                            AckDisposition::Done => done += 1,
                            AckDisposition::Retry => retry += 1,
                            AckDisposition::Failed(_) => failed += 1,
                        }
                    }
                    self.peering.handle_acks(&key(&peer), done, retry, failed);
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
                    self.peering.handle_request_failed(&key(&peer), n);
                    let label = self.label(&peer).unwrap_or_else(|| "unknown".to_owned());
                    metrics::counter!(metrics_names::ENVELOPES_SENT, "peer" => label, "result" => "retried")
                        .increment(n as u64);
                    let relay = self
                        .peering
                        .book()
                        .name_of(&key(&peer))
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
                let k = key(&peer);
                self.peering.handle_seen(&k, now_ms());
                let Some(name) = self.peering.federating_name(&k) else {
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
                self.peering.handle_seen(&key(&peer), now_ms());
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
                        .peering
                        .book()
                        .name_of(&key(&peer))
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
