//! A minimal client of the relay's HTTP/WebSocket API, for `courier-load`
//! and the end-to-end tests. Its requests are built with the SDK's wire
//! module (`courier_client::wire`: device keys, device lists, login answers,
//! prekey uploads, outgoing messages) and it sends opaque bytes; real
//! clients use `courier-client`'s `Client`, which encrypts.

use std::time::Duration;

use courier_client::wire;
use courier_crypto::{Identity, OneTimePreKey, SignedPreKey};
use courier_protocol::api::{
    AckRequest, AckResponse, ChallengeRequest, ChallengeResponse, FetchResponse, KeyBundleResponse,
    LoginRequest, PreKeyCount, RegisterRequest, RegisterResponse, SendResponse, TokenResponse,
};
use courier_protocol::ws::{ClientFrame, ServerFrame};
use courier_protocol::{
    Address, ApiError, Bytes, DeviceId, EnvelopeId, ErrorBody, OutgoingMessage, RelayName, Username,
};
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite::Message;

/// A failed API call: the relay's error body and HTTP status, or a transport
/// failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The relay answered with an error.
    #[error("HTTP {status}: {error}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The decoded error body.
        error: ApiError,
    },
    /// Connection, decoding or protocol failure.
    #[error("{0}")]
    Transport(String),
}

impl ClientError {
    fn transport(e: impl std::fmt::Display) -> Self {
        ClientError::Transport(e.to_string())
    }
}

/// One device of one account.
pub struct Device {
    http: reqwest::Client,
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub base: String,
    /// The account.
    pub address: Address,
    /// This device's id.
    pub device: DeviceId,
    /// Its identity.
    pub key: Identity,
    /// Current tokens, after login.
    pub tokens: Option<TokenResponse>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("address", &self.address)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// A fresh device identity (Ed25519 + X25519) from the OS's randomness.
pub fn new_key() -> Identity {
    Identity::generate(&mut os_rng())
}

fn os_rng() -> rand::rngs::StdRng {
    rand::make_rng::<rand::rngs::StdRng>()
}

/// A shared HTTP client (connection pool) for many devices.
pub fn http_client() -> reqwest::Client {
    // Built together with courier-client, reqwest has rustls but no crypto
    // provider and panics without one; alone it has no TLS and this is
    // harmless. Err means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap_or_default()
}

/// Reads a response body of at most
/// [`FETCH_RESPONSE_BYTES_MAX`](courier_protocol::limits::FETCH_RESPONSE_BYTES_MAX)
/// bytes (the largest answer a relay sends), so a broken or hostile server
/// cannot make this client allocate without bound.
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, ClientError> {
    const MAX: usize = courier_protocol::limits::FETCH_RESPONSE_BYTES_MAX;
    let too_large = || ClientError::Transport(format!("response larger than {MAX} bytes"));
    if response.content_length().is_some_and(|n| n > MAX as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ClientError::transport)? {
        if body.len() + chunk.len() > MAX {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Decodes a response: the body on success, the error body otherwise.
pub async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let status = response.status();
    let bytes = read_capped(response).await?;
    if status.is_success() {
        serde_json::from_slice(&bytes).map_err(ClientError::transport)
    } else {
        let body: ErrorBody = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Transport(format!(
                "HTTP {status} without an error body ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ))
        })?;
        Err(ClientError::Api {
            status: status.as_u16(),
            error: body.error,
        })
    }
}

impl Device {
    /// A device that is already registered (e.g. linked), not logged in.
    pub fn from_parts(
        http: reqwest::Client,
        base: &str,
        address: Address,
        device: DeviceId,
        key: Identity,
    ) -> Device {
        Device {
            http,
            base: base.to_owned(),
            address,
            device,
            key,
            tokens: None,
        }
    }

    /// Registers `username` on the relay at `base` (named `relay`), as
    /// device 1.
    pub async fn register(
        http: &reqwest::Client,
        base: &str,
        relay: &RelayName,
        username: &str,
        invite: Option<String>,
    ) -> Result<Device, ClientError> {
        let key = new_key();
        let user = Username::parse(username).map_err(ClientError::transport)?;
        let address = Address::new(user.clone(), relay.clone());
        let keys = wire::device_keys(&key);
        let request = RegisterRequest {
            username: user,
            invite,
            device: keys.clone(),
            device_list: wire::first_device_list(&key, address, &keys),
        };
        let response: RegisterResponse = decode(
            http.post(format!("{base}/v1/accounts"))
                .json(&request)
                .send()
                .await
                .map_err(ClientError::transport)?,
        )
        .await?;
        Ok(Device {
            http: http.clone(),
            base: base.to_owned(),
            address: response.address,
            device: response.device,
            key,
            tokens: None,
        })
    }

    /// A new challenge for this device.
    pub async fn challenge(&self) -> Result<ChallengeResponse, ClientError> {
        self.post(
            "/v1/auth/challenge",
            &ChallengeRequest {
                username: self.address.user.clone(),
                device: self.device,
            },
        )
        .await
    }

    /// The login request answering `challenge`.
    pub fn answer(&self, challenge: &ChallengeResponse) -> LoginRequest {
        wire::login_answer(&self.key, &self.address, self.device, challenge)
    }

    /// Challenge, sign, login; keeps the tokens.
    pub async fn login(&mut self) -> Result<(), ClientError> {
        let challenge = self.challenge().await?;
        let tokens: TokenResponse = self
            .post("/v1/auth/login", &self.answer(&challenge))
            .await?;
        self.tokens = Some(tokens);
        Ok(())
    }

    /// The current access token ("" before login).
    pub fn access_token(&self) -> &str {
        self.tokens.as_ref().map_or("", |t| t.access_token.as_str())
    }

    /// Uploads a signed prekey and `one_time` one-time prekeys.
    pub async fn upload_keys(&self, one_time: u32) -> Result<PreKeyCount, ClientError> {
        let mut rng = os_rng();
        let created_ms = 1_700_000_000_000;
        let secret = SignedPreKey::generate(&self.key, 1, created_ms, &mut rng);
        let prekey = wire::signed_prekey_upload(&self.key, &secret);
        let response = self
            .http
            .put(format!("{}/v1/keys/signed-prekey", self.base))
            .bearer_auth(self.access_token())
            .json(&prekey)
            .send()
            .await
            .map_err(ClientError::transport)?;
        if !response.status().is_success() {
            return decode::<()>(response).await.map(|_| PreKeyCount {
                one_time: 0,
                low_water: 0,
            });
        }
        let prekeys = OneTimePreKey::generate_batch(0, one_time, &mut rng);
        self.post(
            "/v1/keys/one-time",
            &wire::one_time_prekeys_upload(&prekeys),
        )
        .await
    }

    /// The key bundle of `address`.
    pub async fn bundle(&self, address: &Address) -> Result<KeyBundleResponse, ClientError> {
        self.get(&format!("/v1/keys/{address}")).await
    }

    /// Sends `body` to each `(address, device)` with a small header.
    pub async fn send(
        &self,
        id: EnvelopeId,
        body: Vec<u8>,
        to: &[(Address, DeviceId)],
    ) -> Result<SendResponse, ClientError> {
        self.post("/v1/messages", &message(id, body, to)).await
    }

    /// `GET /v1/messages?after=&limit=`.
    pub async fn fetch(&self, after: u64, limit: u32) -> Result<FetchResponse, ClientError> {
        self.get(&format!("/v1/messages?after={after}&limit={limit}"))
            .await
    }

    /// `POST /v1/messages/ack`.
    pub async fn ack(&self, seqs: Vec<u64>) -> Result<AckResponse, ClientError> {
        self.post("/v1/messages/ack", &AckRequest { seqs }).await
    }

    /// POSTs JSON with the access token (if any) and decodes the answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if self.tokens.is_some() {
            request = request.bearer_auth(self.access_token());
        }
        decode(request.send().await.map_err(ClientError::transport)?).await
    }

    /// GETs with the access token and decodes the answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.access_token());
        decode(request.send().await.map_err(ClientError::transport)?).await
    }

    /// Opens the push WebSocket, with the token in the `Authorization`
    /// header (never in the URL, where it would reach logs).
    pub async fn connect(&self) -> Result<Socket, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = format!("{}/v1/ws", self.base.replacen("http", "ws", 1))
            .into_client_request()
            .map_err(ClientError::transport)?;
        let auth = format!("Bearer {}", self.access_token())
            .parse()
            .map_err(ClientError::transport)?;
        request.headers_mut().insert("authorization", auth);
        // TCP_NODELAY: frames are small and answered one by one; Nagle
        // would hold each behind the previous one's ACK.
        let (stream, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .map_err(ClientError::transport)?;
        Ok(Socket { stream })
    }
}

/// A message with a dummy 16-byte header per recipient device, kept for an
/// hour: what the tests and the load tool send.
pub fn message(id: EnvelopeId, body: Vec<u8>, to: &[(Address, DeviceId)]) -> OutgoingMessage {
    let recipients = to
        .iter()
        .map(|(address, device)| (address.clone(), *device, Bytes(vec![0xaa; 16])));
    wire::outgoing(id, body, recipients, 3600)
}

/// The client end of `/v1/ws`.
pub struct Socket {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Socket")
    }
}

impl Socket {
    /// The next server frame; `None` once the server closed the connection.
    pub async fn next(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        while let Some(message) = self.stream.next().await {
            match message.map_err(ClientError::transport)? {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str())
                        .map(Some)
                        .map_err(ClientError::transport);
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The next frame within `wait`, `Ok(None)` on timeout or close.
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<ServerFrame>, ClientError> {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(result) => result,
            Err(_) => Ok(None),
        }
    }

    /// Sends an ack frame.
    pub async fn ack(&mut self, seqs: Vec<u64>) -> Result<(), ClientError> {
        let text =
            serde_json::to_string(&ClientFrame::Ack { seqs }).map_err(ClientError::transport)?;
        self.stream
            .send(Message::Text(text.into()))
            .await
            .map_err(ClientError::transport)
    }

    /// Sends a `send` frame; the answer is a `sent` or `refused` frame
    /// with the same `request`.
    pub async fn send_message(
        &mut self,
        request: u64,
        message: OutgoingMessage,
    ) -> Result<(), ClientError> {
        self.queue_message(request, message).await?;
        self.flush().await
    }

    /// Queues a `send` frame without flushing; [`Socket::flush`] sends
    /// everything queued with one write.
    pub async fn queue_message(
        &mut self,
        request: u64,
        message: OutgoingMessage,
    ) -> Result<(), ClientError> {
        let text = serde_json::to_string(&ClientFrame::Send { request, message })
            .map_err(ClientError::transport)?;
        self.stream
            .feed(Message::Text(text.into()))
            .await
            .map_err(ClientError::transport)
    }

    /// Writes out frames queued with [`Socket::queue_message`].
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.flush().await.map_err(ClientError::transport)
    }

    /// Sends a raw text frame (tests of bad input).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .map_err(ClientError::transport)
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
