//! Relay-to-relay federation over libp2p on QUIC.
//!
//! A [`Handle`] is the rest of the node's way in: it implements
//! [`courier_relay::federation::Federation`] (deliver a batch, fetch a key
//! bundle), adds and removes peers, and reports their state. Behind it an
//! event loop task owns the libp2p `Swarm` (QUIC transport, the relay's
//! Ed25519 key as PeerId, identify, ping and three request-response
//! protocols under `/courier/fed/1/…`) and serves commands from a bounded
//! channel, each answered on its own oneshot.
//!
//! Requests from peers reach the relay logic through [`Inbound`], after the
//! event loop has checked who the peer is (its pinned, policy-allowed
//! descriptor), that a batch's origin is that peer, and the peer's rate.
//!
//! What it deliberately does not do: no retries and no outbox (that is
//! `courier_relay::federation::drain_once`, driven by [`Drainer`]), no
//! storage besides the peer book in `<data-dir>/peers.json`.

#[cfg(test)]
mod bench;
mod codec;
pub mod control;
pub mod descriptor;
mod drainer;
mod event_loop;
pub mod peers;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use courier_protocol::{BundleRequest, BundleResponse, DeliveryAcks, DeliveryBatch, RelayName};
use courier_relay::federation::{Federation, FederationError, PeerLimits};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use drainer::{Drainer, DrainerConfig, OutboxNotifier, OutboxWake};
pub use event_loop::metrics_names;
pub use peers::{Policy, PolicyMode};

/// Settings of the federation swarm.
#[derive(Debug, Clone)]
pub struct Config {
    /// This relay's name.
    pub name: RelayName,
    /// The relay key (Ed25519); its PeerId is the relay's PeerId.
    pub keypair: Keypair,
    /// QUIC listen multiaddrs, e.g. `/ip4/0.0.0.0/udp/4433/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Addresses put in the descriptor instead of the listen addresses
    /// (NAT, port forwarding); empty means the actual listen addresses.
    pub external_addresses: Vec<Multiaddr>,
    /// The client API's base URL, for the descriptor.
    pub http_url: String,
    /// Who may federate with this relay.
    pub policy: Policy,
    /// Where the peer book lives (`<data-dir>/peers.json`); `None` keeps it
    /// in memory only (tests).
    pub peers_file: Option<PathBuf>,
    /// Most relays the peer book holds (`[federation] peers_max`); see
    /// [`peers::PeerBook::admit`] for what is evicted when it is full.
    pub peers_max: usize,
    /// Limits on what one peer may send us.
    pub limits: PeerLimits,
    /// How long a request to a peer may take before it fails.
    pub request_timeout: Duration,
    /// QUIC idle timeout: a peer silent this long counts as gone.
    pub idle_timeout: Duration,
    /// First redial delay of an operator-added peer that dropped.
    pub redial_base_ms: u64,
    /// Longest redial delay.
    pub redial_max_ms: u64,
    /// Most inbound requests handled at once (over all peers).
    pub inbound_concurrent_max: usize,
    /// Most inbound QUIC connections established at once (over all peers;
    /// libp2p's connection limits, with at most 4 per peer).
    pub inbound_connections_max: u32,
    /// Where to serve the admin control socket (`<data-dir>/federation.sock`)
    /// for `courier peer …`; `None` serves none.
    pub control_socket: Option<PathBuf>,
    /// The relay's table of routable relay names, kept equal to what the
    /// peer book can reach (see [`peers::PeerBook::routable`]); `None`
    /// keeps none.
    pub routes: Option<Arc<courier_relay::routes::RouteTable>>,
}

impl Config {
    /// Defaults for relay `name` with `keypair`: listen on 127.0.0.1 (port
    /// chosen by the OS), open policy, in-memory peer book.
    pub fn new(name: RelayName, keypair: Keypair) -> Self {
        Config {
            name,
            keypair,
            // Infallible parse of a constant.
            listen: vec![loopback_any_port()],
            external_addresses: Vec::new(),
            http_url: String::new(),
            policy: Policy::default(),
            peers_file: None,
            peers_max: peers::PEERS_MAX_DEFAULT,
            limits: PeerLimits::default(),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            redial_base_ms: 500,
            redial_max_ms: 30_000,
            inbound_concurrent_max: 64,
            inbound_connections_max: 512,
            control_socket: None,
            routes: None,
        }
    }
}

fn loopback_any_port() -> Multiaddr {
    use libp2p::multiaddr::Protocol;
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Udp(0))
        .with(Protocol::QuicV1)
}

/// Why a federation operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The swarm could not be built or could not listen.
    #[error("federation transport: {0}")]
    Transport(String),
    /// A peer address lacks `/p2p/PeerId` or is not a multiaddr.
    #[error("peer address {0:?} must be a multiaddr ending in /p2p/PeerId")]
    BadAddress(String),
    /// Dialling or the hello exchange failed.
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer's descriptor was refused (policy, pin, signature).
    #[error("peer refused: {0}")]
    Refused(String),
    /// The peer book could not be written.
    #[error(transparent)]
    PeerFile(#[from] peers::PeerFileError),
    /// The event loop has stopped.
    #[error("federation is shutting down")]
    ShuttingDown,
}

/// Requests from peers, handed to the relay logic. The event loop has
/// already checked the peer (descriptor, pin, policy), the batch origin and
/// the peer's rate.
#[async_trait::async_trait]
pub trait Inbound: Send + Sync + 'static {
    /// Stores a batch from relay `from`; one ack per envelope, in order.
    async fn deliver(&self, from: RelayName, batch: DeliveryBatch) -> DeliveryAcks;
    /// Answers a key bundle request from relay `from`.
    async fn bundle(&self, from: RelayName, request: BundleRequest) -> BundleResponse;
    /// Relay `name` has just completed a hello: it is reachable again.
    async fn peer_up(&self, _name: RelayName) {}
}

/// [`Inbound`] over a relay: deliveries go to
/// [`accept_batch`](courier_relay::federation::accept_batch) (origin check,
/// limits, dedup by envelope id), bundle requests to
/// [`answer_bundle`](courier_relay::federation::answer_bundle).
pub struct RelayInbound(pub Arc<courier_relay::Relay>);

#[async_trait::async_trait]
impl Inbound for RelayInbound {
    async fn deliver(&self, from: RelayName, batch: DeliveryBatch) -> DeliveryAcks {
        courier_relay::federation::accept_batch(&self.0, &from, batch).await
    }

    async fn bundle(&self, from: RelayName, request: BundleRequest) -> BundleResponse {
        courier_relay::federation::answer_bundle(&self.0, &from, request).await
    }

    async fn peer_up(&self, name: RelayName) {
        // A peer that comes back gets its backlog now, not after the
        // (possibly minutes-long) backoff its entries were given while it
        // was away.
        match self.0.outbox_wake(&name).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(relay = %name, woken = n, "peer is back; its backlog is due now")
            }
            Err(e) => tracing::warn!(relay = %name, error = %e, "cannot wake the outbox"),
        }
    }
}

/// Connection state of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Connected and descriptors exchanged.
    Connected,
    /// Dialling or exchanging descriptors.
    Connecting,
    /// Not connected (redialled with backoff if operator-added).
    Disconnected,
    /// Removed by the operator or refused by policy.
    Refused,
}

pub use courier_relay::peering::PeerCounters;

/// What `courier peer list` and `courier status` show about one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its PeerId.
    pub peer_id: String,
    /// Its relay name, once its descriptor was admitted.
    pub name: Option<RelayName>,
    /// The address the operator added, or the first descriptor address.
    pub address: Option<String>,
    /// Whether the operator added it (redialled after drops and restarts).
    pub added: bool,
    /// Connection state.
    pub state: PeerState,
    /// Last time we heard from it (Unix ms), this run.
    pub last_seen_ms: Option<u64>,
    /// Dials that failed in a row since it was last connected, this run.
    #[serde(default)]
    pub dial_failures: u32,
    /// Why the last dial failed (e.g. a DNS name that does not resolve),
    /// until a connection succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Last ping round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Counters since start.
    pub counters: PeerCounters,
    /// Outbox entries waiting for it (filled by the caller from the store).
    pub outbox_depth: u64,
}

/// A command to the event loop; each carries the oneshot its answer goes to.
enum Command {
    AddPeer {
        address: Multiaddr,
        peer: PeerId,
        reply: oneshot::Sender<Result<RelayName, Error>>,
    },
    RemovePeer {
        peer: PeerId,
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    Pin {
        name: RelayName,
        peer: PeerId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Deliver {
        dest: RelayName,
        batch: DeliveryBatch,
        reply: oneshot::Sender<Result<DeliveryAcks, FederationError>>,
    },
    Bundle {
        dest: RelayName,
        request: BundleRequest,
        reply: oneshot::Sender<Result<BundleResponse, FederationError>>,
    },
    Block {
        peer: PeerId,
        blocked: bool,
    },
    Shutdown,
}

/// The node's handle on the federation. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    name: RelayName,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("peer_id", &self.peer_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Bound of the command channel: callers wait when the loop is this far behind.
const COMMANDS_MAX: usize = 1024;

/// Starts the swarm: builds it, listens, waits for the listen addresses,
/// signs the descriptor, dials the operator-added peers and returns the
/// handle. The event loop runs on the current tokio runtime until
/// [`Handle::shutdown`] or until every handle is dropped.
pub async fn spawn(
    config: Config,
    inbound: Arc<dyn Inbound>,
) -> Result<(Handle, tokio::task::JoinHandle<()>), Error> {
    let (tx, rx) = mpsc::channel(COMMANDS_MAX);
    let handle = Handle {
        commands: tx,
        peer_id: config.keypair.public().to_peer_id(),
        name: config.name.clone(),
    };
    let socket = config.control_socket.clone();
    let mut event_loop = event_loop::EventLoop::start(config, inbound, rx).await?;
    if let Some(path) = socket {
        let served = control::serve(path.clone(), handle.clone())
            .map_err(|e| Error::Transport(format!("control socket {}: {e}", path.display())))?;
        event_loop.set_control(served, path);
    }
    let task = tokio::spawn(event_loop.run());
    Ok((handle, task))
}

impl Handle {
    /// This relay's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This relay's name.
    pub fn name(&self) -> &RelayName {
        &self.name
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)
    }

    /// The addresses the swarm listens on, each ending in `/p2p/<PeerId>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Dials `address` (ending in `/p2p/PeerId`), exchanges descriptors and
    /// remembers the peer (persisted, redialled after drops). Returns the
    /// peer's relay name once its descriptor was admitted.
    pub async fn add_peer(&self, address: Multiaddr) -> Result<RelayName, Error> {
        let peer = peer_of(&address).ok_or_else(|| Error::BadAddress(address.to_string()))?;
        self.ask(|reply| Command::AddPeer {
            address,
            peer,
            reply,
        })
        .await?
    }

    /// Stops federating with `peer`: disconnects, stops redialling, refuses
    /// it until added again. Returns whether the peer was known.
    pub async fn remove_peer(&self, peer: PeerId) -> Result<bool, Error> {
        self.ask(|reply| Command::RemovePeer { peer, reply })
            .await?
    }

    /// Operator override of a key pin: `name` is now `peer`.
    pub async fn pin(&self, name: RelayName, peer: PeerId) -> Result<(), Error> {
        self.ask(|reply| Command::Pin { name, peer, reply }).await?
    }

    /// Every peer the relay knows, with state and counters
    /// (`outbox_depth` is left 0 for the caller to fill from the store).
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Test and operations hook: drop every packet-level conversation with
    /// `peer` (close its connections, refuse its dials and requests) until
    /// unblocked — a partition as this relay sees it.
    pub async fn set_blocked(&self, peer: PeerId, blocked: bool) -> Result<(), Error> {
        self.commands
            .send(Command::Block { peer, blocked })
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// Stops the event loop (connections close; the peer book is on disk).
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

#[async_trait::async_trait]
impl Federation for Handle {
    async fn deliver(
        &self,
        dest: &RelayName,
        batch: DeliveryBatch,
    ) -> Result<DeliveryAcks, FederationError> {
        let dest = dest.clone();
        self.ask(|reply| Command::Deliver { dest, batch, reply })
            .await
            .map_err(|_| FederationError::ShuttingDown)?
    }

    async fn fetch_bundle(
        &self,
        dest: &RelayName,
        request: BundleRequest,
    ) -> Result<BundleResponse, FederationError> {
        let (address, device) = (request.address.clone(), request.device);
        let relay = dest.clone();
        let answer = self
            .ask(|reply| Command::Bundle {
                dest: relay,
                request,
                reply,
            })
            .await
            .map_err(|_| FederationError::ShuttingDown)??;
        // Whoever calls (the gateway included) gets only answers about the
        // address asked for.
        if let Ok(bundle) = &answer
            && !courier_relay::federation::bundle_answers(&address, device, bundle)
        {
            return Err(FederationError::Protocol {
                relay: dest.clone(),
                reason: "bundle answer names another address or device".into(),
            });
        }
        Ok(answer)
    }
}

/// The PeerId at the end of a multiaddr (`…/p2p/<PeerId>`).
pub fn peer_of(address: &Multiaddr) -> Option<PeerId> {
    match address.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}
