//! The admin path of `courier peer …` to a running relay: a Unix socket
//! `<data-dir>/federation.sock` (mode 0600 inside the 0700 data directory,
//! so only the relay's user can use it), one JSON request line, one JSON
//! answer line.
//!
//! When no relay runs, the `peer` commands edit `<data-dir>/peers.json`
//! directly; the relay reads it on its next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use courier_protocol::RelayName;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::peers::{self, PEERS_FILE, PeerFile};
use super::{Handle, PeerCounters, PeerInfo, PeerState, peer_of};

/// Name of the control socket inside the data directory.
pub const SOCKET_FILE: &str = "federation.sock";

/// Longest request line, in bytes.
const REQUEST_BYTES_MAX: u64 = 64 * 1024;
/// Control connections served at once.
const CONNECTIONS_MAX: usize = 8;

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `courier peer add`.
    PeerAdd {
        /// Multiaddr ending in `/p2p/PeerId`.
        address: String,
    },
    /// `courier peer remove`.
    PeerRemove {
        /// PeerId (base58).
        peer_id: String,
    },
    /// `courier peer pin`: operator override of a key pin.
    PeerPin {
        /// Relay name.
        name: String,
        /// PeerId (base58).
        peer_id: String,
    },
    /// `courier peer list` / `courier status`.
    Peers,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The peer was dialled and its descriptor admitted.
    Added {
        /// Its relay name.
        name: RelayName,
    },
    /// Federation with the peer stopped.
    Removed {
        /// Whether the relay knew it.
        known: bool,
    },
    /// The pin is set.
    Pinned,
    /// Every known peer.
    Peers {
        /// The peers.
        peers: Vec<PeerInfo>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Serves the control socket at `path` for `handle` until aborted.
pub fn serve(path: PathBuf, handle: Handle) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // A socket left by a relay that crashed; a live relay would hold the
    // data directory's database lock long before we got here.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = answer(stream, &handle).await {
                    tracing::debug!(error = %e, "control connection failed");
                }
            });
        }
    }))
}

async fn answer(stream: UnixStream, handle: &Handle) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .take(REQUEST_BYTES_MAX)
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => dispatch(request, handle).await,
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

async fn dispatch(request: Request, handle: &Handle) -> Response {
    let error = |message: String| Response::Error { message };
    match request {
        Request::PeerAdd { address } => match address.parse::<Multiaddr>() {
            Ok(addr) => match handle.add_peer(addr).await {
                Ok(name) => Response::Added { name },
                Err(e) => error(e.to_string()),
            },
            Err(e) => error(format!("{address:?} is not a multiaddr: {e}")),
        },
        Request::PeerRemove { peer_id } => match peer_id.parse::<PeerId>() {
            Ok(peer) => match handle.remove_peer(peer).await {
                Ok(known) => Response::Removed { known },
                Err(e) => error(e.to_string()),
            },
            Err(e) => error(format!("{peer_id:?} is not a PeerId: {e}")),
        },
        Request::PeerPin { name, peer_id } => {
            match (RelayName::parse(&name), peer_id.parse::<PeerId>()) {
                (Ok(name), Ok(peer)) => match handle.pin(name, peer).await {
                    Ok(()) => Response::Pinned,
                    Err(e) => error(e.to_string()),
                },
                (Err(e), _) => error(format!("{name:?}: {e}")),
                (_, Err(e)) => error(format!("{peer_id:?} is not a PeerId: {e}")),
            }
        }
        Request::Peers => match handle.peers().await {
            Ok(peers) => Response::Peers { peers },
            Err(e) => error(e.to_string()),
        },
    }
}

/// Why a control request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket exists but talking over it failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The relay answered something unreadable.
    #[error("control socket {path}: bad answer: {message}")]
    BadAnswer {
        /// The socket.
        path: String,
        /// Why.
        message: String,
    },
}

/// Sends `request` to the relay running on `data_dir`; `None` when no
/// relay is running there.
pub async fn request(data_dir: &Path, request: &Request) -> Result<Option<Response>, ControlError> {
    let path = data_dir.join(SOCKET_FILE);
    let io = |source| ControlError::Io {
        path: path.display().to_string(),
        source,
    };
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io(e)),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| ControlError::BadAnswer {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(read)
        .take(16 * 1024 * 1024)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| ControlError::BadAnswer {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// What the `peer` commands did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The running relay did it.
    Live(String),
    /// No relay runs: `peers.json` was edited for its next start.
    Saved(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Live(text) => f.write_str(text),
            Outcome::Saved(text) => write!(f, "{text} (relay not running; applies on next start)"),
        }
    }
}

fn answer_error(response: Response) -> anyhow::Error {
    match response {
        Response::Error { message } => anyhow::anyhow!(message),
        other => anyhow::anyhow!("unexpected answer from the relay: {other:?}"),
    }
}

fn edit_offline(data_dir: &Path, edit: impl FnOnce(&mut PeerFile)) -> anyhow::Result<()> {
    let path = data_dir.join(PEERS_FILE);
    let mut file = peers::load(&path)?;
    edit(&mut file);
    // The book's own name and key do not matter for saving.
    let book = peers::new_book(
        RelayName::parse("localhost")?,
        PeerId::random(),
        Default::default(),
        file,
    );
    peers::save(book.file(), &path)?;
    Ok(())
}

/// `courier peer add MULTIADDR`.
pub async fn peer_add(data_dir: &Path, address: &str) -> anyhow::Result<Outcome> {
    let addr: Multiaddr = address
        .parse()
        .map_err(|e| anyhow::anyhow!("{address:?} is not a multiaddr: {e}"))?;
    let peer =
        peer_of(&addr).ok_or_else(|| anyhow::anyhow!("{address:?} must end in /p2p/<PeerId>"))?;
    let request = Request::PeerAdd {
        address: address.to_owned(),
    };
    match self::request(data_dir, &request).await? {
        Some(Response::Added { name }) => Ok(Outcome::Live(format!("peered with {name} ({peer})"))),
        Some(other) => Err(answer_error(other)),
        None => {
            edit_offline(data_dir, |file| {
                file.removed.remove(&peer.to_base58());
                file.added.insert(
                    peer.to_base58(),
                    super::peers::AddedPeer {
                        address: addr.to_string(),
                        added_ms: 0,
                    },
                );
            })?;
            Ok(Outcome::Saved(format!("added {peer}")))
        }
    }
}

/// `courier peer remove PEER_ID`.
pub async fn peer_remove(data_dir: &Path, peer_id: &str) -> anyhow::Result<Outcome> {
    let peer: PeerId = peer_id
        .parse()
        .map_err(|e| anyhow::anyhow!("{peer_id:?} is not a PeerId: {e}"))?;
    let request = Request::PeerRemove {
        peer_id: peer.to_base58(),
    };
    match self::request(data_dir, &request).await? {
        Some(Response::Removed { known }) => Ok(Outcome::Live(if known {
            format!("removed {peer}; federation with it stopped")
        } else {
            format!("{peer} was not a known peer; it is refused from now on")
        })),
        Some(other) => Err(answer_error(other)),
        None => {
            edit_offline(data_dir, |file| {
                file.added.remove(&peer.to_base58());
                file.removed.insert(peer.to_base58());
            })?;
            Ok(Outcome::Saved(format!("removed {peer}")))
        }
    }
}

/// `courier peer pin NAME PEER_ID`: accept `PEER_ID` as the key of relay
/// `NAME` from now on (after a legitimate key change).
pub async fn peer_pin(data_dir: &Path, name: &str, peer_id: &str) -> anyhow::Result<Outcome> {
    let name = RelayName::parse(name)?;
    let peer: PeerId = peer_id
        .parse()
        .map_err(|e| anyhow::anyhow!("{peer_id:?} is not a PeerId: {e}"))?;
    let request = Request::PeerPin {
        name: name.to_string(),
        peer_id: peer.to_base58(),
    };
    match self::request(data_dir, &request).await? {
        Some(Response::Pinned) => Ok(Outcome::Live(format!("{name} pinned to {peer}"))),
        Some(other) => Err(answer_error(other)),
        None => {
            edit_offline(data_dir, |file| file.pin(name.clone(), peers::key(&peer)))?;
            Ok(Outcome::Saved(format!("{name} pinned to {peer}")))
        }
    }
}

/// Peers as the running relay sees them, or from `peers.json` (all
/// disconnected) when none runs. `outbox_depth` is left 0; see
/// [`with_outbox_depth`].
pub async fn peers(data_dir: &Path) -> anyhow::Result<Vec<PeerInfo>> {
    match request(data_dir, &Request::Peers).await? {
        Some(Response::Peers { peers }) => Ok(peers),
        Some(other) => Err(answer_error(other)),
        None => {
            let file = peers::load(&data_dir.join(PEERS_FILE))?;
            let mut out: Vec<PeerInfo> = Vec::new();
            for (peer, added) in &file.added {
                out.push(offline_info(&file, peer, Some(added.address.clone()), true));
            }
            for d in file.descriptors.values() {
                let peer = &d.descriptor.peer_id;
                if !file.added.contains_key(peer) {
                    out.push(offline_info(
                        &file,
                        peer,
                        d.descriptor.addresses.first().cloned(),
                        false,
                    ));
                }
            }
            Ok(out)
        }
    }
}

fn offline_info(file: &PeerFile, peer: &str, address: Option<String>, added: bool) -> PeerInfo {
    let name = file
        .descriptors
        .iter()
        .find(|(_, d)| d.descriptor.peer_id == peer)
        .map(|(n, _)| n.clone());
    PeerInfo {
        peer_id: peer.to_owned(),
        name,
        address,
        added,
        state: if file.removed.contains(peer) {
            PeerState::Refused
        } else {
            PeerState::Disconnected
        },
        last_seen_ms: None,
        dial_failures: 0,
        last_error: None,
        rtt_ms: None,
        counters: PeerCounters::default(),
        outbox_depth: 0,
    }
}

/// Fills each peer's `outbox_depth` from the store's outbox backlog per
/// destination relay.
pub async fn with_outbox_depth(
    mut peers: Vec<PeerInfo>,
    store: &dyn courier_relay::Store,
) -> anyhow::Result<Vec<PeerInfo>> {
    let destinations = store
        .outbox_destinations()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the outbox: {e}"))?;
    for p in &mut peers {
        p.outbox_depth = destinations
            .iter()
            .filter(|d| Some(&d.relay) == p.name.as_ref())
            .map(|d| d.pending)
            .sum();
    }
    Ok(peers)
}

/// A table of peers for `peer list` and `status`.
pub fn table(peers: &[PeerInfo], now_ms: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<52} {:<24} {:<12} {:>9} {:>8} {:>7} {:>9} {:>7} {:>6}",
        "PEER ID", "NAME", "STATE", "SEEN", "RTT", "OUTBOX", "DELIVERED", "RETRIED", "FAILED"
    );
    for p in peers {
        let seen = p
            .last_seen_ms
            .map(|t| format!("{}s ago", now_ms.saturating_sub(t) / 1000))
            .unwrap_or_else(|| "-".into());
        let rtt = p
            .rtt_ms
            .map(|r| format!("{r:.1}ms"))
            .unwrap_or_else(|| "-".into());
        let state = serde_json::to_value(p.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let name = p
            .name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "{:<52} {:<24} {:<12} {:>9} {:>8} {:>7} {:>9} {:>7} {:>6}",
            p.peer_id,
            name,
            state,
            seen,
            rtt,
            p.outbox_depth,
            p.counters.delivered,
            p.counters.retried,
            p.counters.failed
        );
    }
    out
}
