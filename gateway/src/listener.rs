//! The HTTP listener: our own accept loop over hyper's HTTP/1 connection,
//! so every connection has a header-read (and keep-alive idle) timeout and
//! counts against a global and a per-client-address cap.
//!
//! `axum::serve` has neither: a client that connects and sends nothing, or
//! half a request head, holds its socket forever, and about 20,000 of them
//! from one host exhaust the process's descriptors so `accept()` fails for
//! everyone.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use courier_protocol::{ApiError, ErrorBody, ErrorCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::client_ip::{Proxies, limit_key};

/// Settings of the listener (from `[http]`).
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// See `HttpConfig::header_read_timeout_ms`.
    pub header_read_timeout: Duration,
    /// Most open connections.
    pub connections_max: usize,
    /// Most open connections per client address (/64 for IPv6).
    pub connections_per_ip_max: usize,
    /// The request head size at which hyper itself gives up.
    pub head_bytes_hard_max: usize,
}

/// Open connections: the total and per client address. Connections from
/// trusted proxies count towards the total only.
#[derive(Debug)]
pub struct ConnectionLimits {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total_max: usize,
    per_ip_max: usize,
    proxies: Arc<Proxies>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `connections_max` connections are open.
    Total,
    /// `connections_per_ip_max` connections from this address are open.
    PerIp,
}

impl Refusal {
    /// The complete HTTP response sent before closing: the same JSON error
    /// body as every other error.
    fn response(self) -> Vec<u8> {
        let (code, status, message) = match self {
            Refusal::Total => (
                ErrorCode::Unavailable,
                "503 Service Unavailable",
                "the relay has too many open connections",
            ),
            Refusal::PerIp => (
                ErrorCode::RateLimited,
                "429 Too Many Requests",
                "too many open connections from this address",
            ),
        };
        let body = serde_json::to_string(&ErrorBody {
            error: ApiError::with_message(code, message),
        })
        .unwrap_or_default();
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

impl ConnectionLimits {
    /// Limits with these caps; `proxies` are exempt from the per-address one.
    pub fn new(total_max: usize, per_ip_max: usize, proxies: Arc<Proxies>) -> Self {
        ConnectionLimits {
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            total_max: total_max.max(1),
            per_ip_max: per_ip_max.max(1),
            proxies,
        }
    }

    /// Counts a new connection from `ip`, or refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.total_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let key = (!self.proxies.contains(ip)).then(|| limit_key(ip));
        if let Some(key) = key {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let open = per_ip.entry(key).or_insert(0);
            if *open >= self.per_ip_max {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *open += 1;
        }
        Ok(ConnectionGuard {
            limits: self.clone(),
            key,
        })
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionGuard {
    limits: Arc<ConnectionLimits>,
    key: Option<IpAddr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut per_ip = self
                .limits
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(open) = per_ip.get_mut(&key) {
                *open -= 1;
                if *open == 0 {
                    per_ip.remove(&key);
                }
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP stream that holds its connection's place until it is dropped:
/// after a WebSocket upgrade hyper hands the stream on, and the WebSocket
/// keeps counting against the caps.
struct Counted {
    tcp: TcpStream,
    _guard: ConnectionGuard,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` and serves `router` on each until
/// `stop` turns true; then stops accepting, asks every connection to finish
/// its current request and close, and returns once all have.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ListenerConfig,
    limits: Arc<ConnectionLimits>,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    // Only the head is capped: `max_buf_size` also bounds the write queue,
    // and large fetch answers stream better with hyper's default.
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.head_bytes_hard_max);
    // Connection tasks hold a receiver each; `closed()` resolves when the
    // last one is gone.
    let (all_closed, closed_rx) = watch::channel(());
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|s| *s) => break,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let guard = match limits.admit(remote.ip()) {
            Ok(guard) => guard,
            Err(refusal) => {
                tracing::debug!(%remote, ?refusal, "connection refused");
                // A fresh socket's send buffer is empty, so this short
                // answer goes out at once or not at all; never wait on it.
                let _ = tcp.try_write(&refusal.response());
                continue;
            }
        };
        // TCP_NODELAY on every connection: pushes, answers and HTTP
        // responses are small writes, and with Nagle's algorithm each could
        // sit behind the client's delayed ACK of the previous one (40 ms on
        // Linux), which was the p99 of WebSocket sends at any load.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(Counted { tcp, _guard: guard });
        let service = service(router.clone(), remote);
        let http = http.clone();
        let closed_rx = closed_rx.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let conn = http.serve_connection(io, service).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            // (The watch guard must not live across an await: `map`.)
            let stopping = async { stop.wait_for(|s| *s).await.map(|_| ()) };
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stopping => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
            drop(closed_rx);
        });
    }
    drop(closed_rx);
    drop(listener);
    all_closed.closed().await;
    Ok(())
}

/// The router as a hyper service for one connection, with the peer's
/// address in each request's extensions (what `ConnectInfo` reads).
fn service(
    router: Router,
    remote: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        router.clone().oneshot(req)
    })
}

/// Out of descriptors or similar: wait a little instead of spinning
/// (what `axum::serve` does too). Errors of one connection that died before
/// it was accepted need no pause.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_address_and_free_on_drop() {
        let proxies = Arc::new(Proxies::parse(&["10.0.0.1".to_owned()]).unwrap());
        let limits = Arc::new(ConnectionLimits::new(4, 2, proxies));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerIp);
        // Another address of the same IPv6 /64 is the same client.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let _v1 = limits.admit(v6a).unwrap();
        let _v2 = limits.admit(v6b).unwrap();
        assert_eq!(limits.open(), 4);
        assert_eq!(limits.admit(v6a).unwrap_err(), Refusal::Total);
        drop(a1);
        assert_eq!(limits.open(), 3);
        let _a3 = limits.admit(a).unwrap();
        // A trusted proxy is not held to the per-address cap.
        let limits = Arc::new(ConnectionLimits::new(10, 1, limits.proxies.clone()));
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let _p = (0..5)
            .map(|_| limits.admit(proxy).unwrap())
            .collect::<Vec<_>>();
    }

    #[test]
    fn refusals_are_json_errors() {
        let text = String::from_utf8(Refusal::PerIp.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let parsed: ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.error.code, ErrorCode::RateLimited);
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    }
}
