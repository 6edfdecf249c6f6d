//! The real transport: HTTP JSON via reqwest (rustls with the ring provider)
//! and the WebSocket via tokio-tungstenite.

use std::time::Duration;

use async_trait::async_trait;
use courier_protocol::api::{
    AckRequest, AckResponse, ApproveLinkRequest, ApproveLinkResponse, ChallengeRequest,
    ChallengeResponse, FetchResponse, KeyBundleResponse, LinkInfo, LinkRequest, LinkResponse,
    LinkStatus, LoginRequest, PreKeyCount, RefreshRequest, RegisterRequest, RegisterResponse,
    SendResponse, SignedDeviceList, SignedPreKey, TokenResponse, UploadOneTimePreKeys,
};
use courier_protocol::ws::{ClientFrame, ServerFrame};
use courier_protocol::{
    Address, ApiError, DeviceId, ErrorBody, ErrorCode, OutgoingMessage, Username,
};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Subscription, Transport, TransportError};

/// How long one HTTP request may take before the relay counts as unreachable.
pub const REQUEST_TIMEOUT_SECS: u64 = 30;
/// Largest HTTP response body the client reads, in bytes. The largest
/// legitimate answer is a mailbox fetch, which a relay keeps under
/// [`FETCH_RESPONSE_BYTES_MAX`](courier_protocol::limits::FETCH_RESPONSE_BYTES_MAX);
/// a hostile or broken relay must not make the client allocate more.
pub const RESPONSE_BYTES_MAX: usize = courier_protocol::limits::FETCH_RESPONSE_BYTES_MAX;

/// A home relay reached over HTTP(S) and WebSocket.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    base: String,
    http: reqwest::Client,
}

impl HttpTransport {
    /// A transport for the relay at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Self, TransportError> {
        let base = checked_base(base_url)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| TransportError::Unreachable(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { base, http })
    }

    /// A transport for the relay at `base_url` over `http`, an HTTP client
    /// (connection pool) the caller shares among many transports: a load
    /// tool's thousands of devices, or a test's, each with their own
    /// tokens, then hold a pool of connections to the relay rather than
    /// one each. The caller chooses its timeouts.
    pub fn with_client(base_url: &str, http: reqwest::Client) -> Result<Self, TransportError> {
        Ok(Self {
            base: checked_base(base_url)?,
            http,
        })
    }

    /// The relay's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<R, TransportError> {
        let bytes = self.call_raw(method, path, token, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| TransportError::BadResponse(format!("{path}: {e}")))
    }

    async fn call_raw<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<Vec<u8>, TransportError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| unreachable(&self.base, e))?;
        let status = resp.status();
        let bytes = read_capped(&self.base, path, resp).await?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(TransportError::Api(error_from(status, &bytes)))
    }
}

/// `base_url` without a trailing slash, if it is an HTTP(S) URL; also
/// installs rustls's crypto provider, which the WebSocket's TLS needs.
fn checked_base(base_url: &str) -> Result<String, TransportError> {
    let base = base_url.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(TransportError::Unreachable(format!(
            "relay URL must start with http:// or https://: {base_url}"
        )));
    }
    // A process-wide default is needed by rustls; a second install fails
    // harmlessly when another part of the process already chose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(base)
}

/// Reads a response body of at most [`RESPONSE_BYTES_MAX`] bytes, chunk by
/// chunk, so an oversized or endless body fails cleanly instead of growing
/// the client's memory.
async fn read_capped(
    base: &str,
    path: &str,
    mut resp: reqwest::Response,
) -> Result<Vec<u8>, TransportError> {
    let too_large = || {
        TransportError::BadResponse(format!(
            "{path}: response larger than {RESPONSE_BYTES_MAX} bytes"
        ))
    };
    // A declared length over the cap is refused before reading anything.
    let declared = resp.content_length().unwrap_or(0);
    if declared > RESPONSE_BYTES_MAX as u64 {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(base, e))? {
        if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn unreachable(base: &str, e: reqwest::Error) -> TransportError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    TransportError::Unreachable(format!("{base}: {what}"))
}

fn error_from(status: StatusCode, bytes: &[u8]) -> ApiError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => body.error,
        Err(_) => {
            let code = match status.as_u16() {
                401 => ErrorCode::Unauthenticated,
                403 => ErrorCode::Forbidden,
                404 => ErrorCode::NotFound,
                413 => ErrorCode::PayloadTooLarge,
                429 => ErrorCode::RateLimited,
                503 => ErrorCode::Unavailable,
                504 => ErrorCode::RelayUnreachable,
                s if s < 500 => ErrorCode::BadRequest,
                _ => ErrorCode::Internal,
            };
            ApiError::with_message(code, format!("HTTP {status}"))
        }
    }
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved kept).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const NO_BODY: Option<&()> = None;

#[async_trait]
impl Transport for HttpTransport {
    async fn relay_info(&self) -> Result<Option<courier_protocol::api::RelayInfo>, TransportError> {
        match self.call(Method::GET, "/v1/relay", None, NO_BODY).await {
            Ok(info) => Ok(Some(info)),
            // An older relay without the endpoint: the caller guesses.
            Err(TransportError::Api(e)) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, TransportError> {
        self.call(Method::POST, "/v1/accounts", None, Some(req))
            .await
    }

    async fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, TransportError> {
        self.call(Method::POST, "/v1/auth/challenge", None, Some(req))
            .await
    }

    async fn login(&self, req: &LoginRequest) -> Result<TokenResponse, TransportError> {
        self.call(Method::POST, "/v1/auth/login", None, Some(req))
            .await
    }

    async fn refresh(&self, req: &RefreshRequest) -> Result<TokenResponse, TransportError> {
        self.call(Method::POST, "/v1/auth/refresh", None, Some(req))
            .await
    }

    async fn device_list(&self, username: &Username) -> Result<SignedDeviceList, TransportError> {
        let path = format!("/v1/devices/{}", encode(username.as_str()));
        self.call(Method::GET, &path, None, NO_BODY).await
    }

    async fn create_link(&self, req: &LinkRequest) -> Result<LinkResponse, TransportError> {
        self.call(Method::POST, "/v1/links", None, Some(req)).await
    }

    async fn link_status(&self, code: &str, secret: &str) -> Result<LinkStatus, TransportError> {
        let path = format!(
            "/v1/links/{}/status?secret={}",
            encode(code),
            encode(secret)
        );
        self.call(Method::GET, &path, None, NO_BODY).await
    }

    async fn link_info(&self, token: &str, code: &str) -> Result<LinkInfo, TransportError> {
        let path = format!("/v1/links/{}", encode(code));
        self.call(Method::GET, &path, Some(token), NO_BODY).await
    }

    async fn approve_link(
        &self,
        token: &str,
        code: &str,
        req: &ApproveLinkRequest,
    ) -> Result<ApproveLinkResponse, TransportError> {
        let path = format!("/v1/links/{}/approve", encode(code));
        self.call(Method::POST, &path, Some(token), Some(req)).await
    }

    async fn put_signed_prekey(
        &self,
        token: &str,
        key: &SignedPreKey,
    ) -> Result<(), TransportError> {
        self.call_raw(
            Method::PUT,
            "/v1/keys/signed-prekey",
            Some(token),
            Some(key),
        )
        .await
        .map(|_| ())
    }

    async fn upload_one_time_prekeys(
        &self,
        token: &str,
        req: &UploadOneTimePreKeys,
    ) -> Result<PreKeyCount, TransportError> {
        self.call(Method::POST, "/v1/keys/one-time", Some(token), Some(req))
            .await
    }

    async fn prekey_count(&self, token: &str) -> Result<PreKeyCount, TransportError> {
        self.call(Method::GET, "/v1/keys/count", Some(token), NO_BODY)
            .await
    }

    async fn key_bundle(
        &self,
        token: &str,
        address: &Address,
        device: Option<DeviceId>,
    ) -> Result<KeyBundleResponse, TransportError> {
        let mut path = format!("/v1/keys/{}", encode(&address.to_string()));
        if let Some(device) = device {
            path.push_str(&format!("?device={device}"));
        }
        self.call(Method::GET, &path, Some(token), NO_BODY).await
    }

    async fn send(
        &self,
        token: &str,
        message: &OutgoingMessage,
    ) -> Result<SendResponse, TransportError> {
        self.call(Method::POST, "/v1/messages", Some(token), Some(message))
            .await
    }

    async fn fetch(
        &self,
        token: &str,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<FetchResponse, TransportError> {
        let mut query = Vec::new();
        if let Some(after) = after {
            query.push(format!("after={after}"));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let mut path = "/v1/messages".to_owned();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        self.call(Method::GET, &path, Some(token), NO_BODY).await
    }

    async fn ack(&self, token: &str, seqs: &[u64]) -> Result<AckResponse, TransportError> {
        let req = AckRequest {
            seqs: seqs.to_vec(),
        };
        self.call(Method::POST, "/v1/messages/ack", Some(token), Some(&req))
            .await
    }

    async fn subscribe(&self, token: &str) -> Result<Box<dyn Subscription>, TransportError> {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(TransportError::Unreachable(format!(
                "bad relay URL {}",
                self.base
            )));
        };
        let mut request = format!("{ws_base}/v1/ws")
            .into_client_request()
            .map_err(|e| TransportError::Unreachable(format!("bad WebSocket URL: {e}")))?;
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| TransportError::BadResponse("token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", auth);
        // TCP_NODELAY: sends and acks are small frames; with Nagle each
        // could wait for the previous one's (delayed) ACK.
        let connect =
            tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| {
                TransportError::Unreachable(format!("{}: WebSocket connect timed out", self.base))
            })?
            .map_err(|e| ws_error(&self.base, e))?;
        Ok(Box::new(WsSubscription { stream }))
    }
}

/// WebSocket limits: no frame or message from the relay may exceed the
/// protocol's [`WS_FRAME_BYTES_MAX`](courier_protocol::limits::WS_FRAME_BYTES_MAX),
/// so a hostile relay cannot make the client buffer more.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let max = courier_protocol::limits::WS_FRAME_BYTES_MAX;
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

fn ws_error(base: &str, e: tokio_tungstenite::tungstenite::Error) -> TransportError {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => {
            let status = resp.status();
            let body = resp.body().clone().unwrap_or_default();
            TransportError::Api(error_from(status, &body))
        }
        other => TransportError::Unreachable(format!("{base}: WebSocket: {other}")),
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct WsSubscription {
    stream: WsStream,
}

#[async_trait]
impl Subscription for WsSubscription {
    async fn next(&mut self) -> Result<Option<ServerFrame>, TransportError> {
        loop {
            let Some(message) = self.stream.next().await else {
                return Ok(None);
            };
            let message = message.map_err(|e| match e {
                // An oversized frame is the relay breaking the protocol.
                tokio_tungstenite::tungstenite::Error::Capacity(c) => {
                    TransportError::BadResponse(format!("WebSocket: {c}"))
                }
                e => TransportError::Unreachable(format!("WebSocket: {e}")),
            })?;
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str())
                        .map(Some)
                        .map_err(|e| TransportError::BadResponse(format!("WebSocket frame: {e}")));
                }
                Message::Close(_) => return Ok(None),
                // Pings are answered by tungstenite; binary frames are not part of the protocol.
                _ => continue,
            }
        }
    }

    async fn ack(&mut self, seqs: &[u64]) -> Result<(), TransportError> {
        let frame = ClientFrame::Ack {
            seqs: seqs.to_vec(),
        };
        let text = serde_json::to_string(&frame)
            .map_err(|e| TransportError::BadResponse(format!("encode ack: {e}")))?;
        self.stream
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| TransportError::Unreachable(format!("WebSocket: {e}")))
    }

    async fn send(&mut self, frames: &[ClientFrame]) -> Result<(), TransportError> {
        let closed = |e| TransportError::Unreachable(format!("WebSocket: {e}"));
        for frame in frames {
            let text = serde_json::to_string(frame)
                .map_err(|e| TransportError::BadResponse(format!("encode frame: {e}")))?;
            // Fed, not sent: the flush below writes them all at once.
            self.stream
                .feed(Message::Text(text.into()))
                .await
                .map_err(closed)?;
        }
        self.stream.flush().await.map_err(closed)
    }

    async fn close(&mut self) {
        // Best effort: a relay that is already gone needs no close frame.
        let _ = self.stream.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("bob@relay-b.example"), "bob%40relay-b.example");
        assert_eq!(encode("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn non_http_urls_are_refused() {
        assert!(HttpTransport::new("ftp://x").is_err());
        assert!(HttpTransport::new("http://127.0.0.1:1/").is_ok());
        let shared = reqwest::Client::new();
        assert!(HttpTransport::with_client("ftp://x", shared.clone()).is_err());
        let t = HttpTransport::with_client("http://127.0.0.1:1/", shared).unwrap();
        assert_eq!(t.base_url(), "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_unreachable() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = HttpTransport::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = t.prekey_count("x").await.unwrap_err();
        assert!(matches!(err, TransportError::Unreachable(_)), "{err:?}");
    }

    #[test]
    fn error_bodies_keep_their_code_and_bare_statuses_map() {
        let body = br#"{"error":{"code":"unknown_user","message":"no such user"}}"#;
        assert_eq!(
            error_from(StatusCode::NOT_FOUND, body).code,
            ErrorCode::UnknownUser
        );
        assert_eq!(
            error_from(StatusCode::GATEWAY_TIMEOUT, b"oops").code,
            ErrorCode::RelayUnreachable
        );
    }
}
