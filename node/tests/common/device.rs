//! A test device: an identity and its tokens over the SDK's
//! `HttpTransport`, with requests built by `courier_client::wire`. Valid
//! requests go through the SDK; the raw helpers (`post`, `get`, `decode`,
//! `send_with_status`, [`RawSocket`]) exist for tests that need the HTTP
//! status, an endpoint the transport has no call for, or bytes no valid
//! client sends.

use std::time::Duration;

use courier_client::transport::Subscription;
use courier_client::{HttpTransport, Transport as _, TransportError, wire};
use courier_crypto::{Identity, OneTimePreKey, SignedPreKey};
use courier_protocol::api::{
    AckResponse, ChallengeRequest, ChallengeResponse, FetchResponse, KeyBundleResponse,
    LoginRequest, PreKeyCount, RegisterRequest, SendResponse, TokenResponse,
};
use courier_protocol::ws::{ClientFrame, ServerFrame};
use courier_protocol::{
    Address, ApiError, Bytes, DeviceId, EnvelopeId, ErrorBody, OutgoingMessage, RelayName, Username,
};
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite::Message;

/// One device of one account.
pub struct Device {
    http: reqwest::Client,
    /// Base URL, e.g. `http://127.0.0.1:8080`; a test may point it at the
    /// relay's new port after a restart.
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

/// A fresh device identity from the OS's randomness.
pub fn new_key() -> Identity {
    Identity::generate(&mut os_rng())
}

fn os_rng() -> rand::rngs::StdRng {
    rand::make_rng::<rand::rngs::StdRng>()
}

/// A shared HTTP client (connection pool) for many devices, for their SDK
/// transports and raw requests alike.
pub fn http_client() -> reqwest::Client {
    // reqwest unified with courier-client's features has rustls without a
    // provider and panics without one; Err means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Decodes a raw response: the body on success, the error body (as the
/// SDK reports it) otherwise.
pub async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, TransportError> {
    decode_with_status(response)
        .await
        .map_err(|(_, error)| TransportError::Api(error))
}

/// Like [`decode`], keeping the HTTP status of a refusal.
pub async fn decode_with_status<T: DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, (u16, ApiError)> {
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    if status.is_success() {
        return Ok(serde_json::from_slice(&bytes).unwrap());
    }
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "HTTP {status} without an error body ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Err((status.as_u16(), body.error))
}

impl Device {
    /// The SDK's transport to [`Device::base`], on the shared pool.
    fn transport(&self) -> HttpTransport {
        HttpTransport::with_client(&self.base, self.http.clone()).unwrap()
    }

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
    ) -> Result<Device, TransportError> {
        let key = new_key();
        let user = Username::parse(username).unwrap();
        let address = Address::new(user.clone(), relay.clone());
        let keys = wire::device_keys(&key);
        let request = RegisterRequest {
            username: user,
            invite,
            device: keys.clone(),
            device_list: wire::first_device_list(&key, address, &keys),
        };
        let transport = HttpTransport::with_client(base, http.clone()).unwrap();
        let response = transport.register(&request).await?;
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
    pub async fn challenge(&self) -> Result<ChallengeResponse, TransportError> {
        self.transport()
            .challenge(&ChallengeRequest {
                username: self.address.user.clone(),
                device: self.device,
            })
            .await
    }

    /// The login request answering `challenge`.
    pub fn answer(&self, challenge: &ChallengeResponse) -> LoginRequest {
        wire::login_answer(&self.key, &self.address, self.device, challenge)
    }

    /// Challenge, sign, login; keeps the tokens.
    pub async fn login(&mut self) -> Result<(), TransportError> {
        let challenge = self.challenge().await?;
        self.tokens = Some(self.transport().login(&self.answer(&challenge)).await?);
        Ok(())
    }

    /// The current access token ("" before login).
    pub fn access_token(&self) -> &str {
        self.tokens.as_ref().map_or("", |t| t.access_token.as_str())
    }

    /// Uploads a signed prekey and `one_time` one-time prekeys.
    pub async fn upload_keys(&self, one_time: u32) -> Result<PreKeyCount, TransportError> {
        let mut rng = os_rng();
        let created_ms = 1_700_000_000_000;
        let secret = SignedPreKey::generate(&self.key, 1, created_ms, &mut rng);
        let prekey = wire::signed_prekey_upload(&self.key, &secret);
        self.transport()
            .put_signed_prekey(self.access_token(), &prekey)
            .await?;
        let prekeys = OneTimePreKey::generate_batch(0, one_time, &mut rng);
        self.transport()
            .upload_one_time_prekeys(
                self.access_token(),
                &wire::one_time_prekeys_upload(&prekeys),
            )
            .await
    }

    /// The key bundle of `address`.
    pub async fn bundle(&self, address: &Address) -> Result<KeyBundleResponse, TransportError> {
        self.transport()
            .key_bundle(self.access_token(), address, None)
            .await
    }

    /// Sends `body` to each `(address, device)` with a dummy header.
    pub async fn send(
        &self,
        id: EnvelopeId,
        body: Vec<u8>,
        to: &[(Address, DeviceId)],
    ) -> Result<SendResponse, TransportError> {
        self.transport()
            .send(self.access_token(), &message(id, body, to))
            .await
    }

    /// [`Device::send`] over a raw request, for tests of the HTTP status
    /// of a refusal (which the SDK does not report).
    pub async fn send_with_status(
        &self,
        id: EnvelopeId,
        body: Vec<u8>,
        to: &[(Address, DeviceId)],
    ) -> Result<SendResponse, (u16, ApiError)> {
        let request = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .bearer_auth(self.access_token())
            .json(&message(id, body, to));
        decode_with_status(request.send().await.unwrap()).await
    }

    /// `GET /v1/messages?after=&limit=`.
    pub async fn fetch(&self, after: u64, limit: u32) -> Result<FetchResponse, TransportError> {
        self.transport()
            .fetch(self.access_token(), Some(after), Some(limit))
            .await
    }

    /// `POST /v1/messages/ack`.
    pub async fn ack(&self, seqs: Vec<u64>) -> Result<AckResponse, TransportError> {
        self.transport().ack(self.access_token(), &seqs).await
    }

    /// Raw: POSTs JSON with the access token (if any) and decodes the answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, TransportError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if self.tokens.is_some() {
            request = request.bearer_auth(self.access_token());
        }
        decode(request.send().await.unwrap()).await
    }

    /// Raw: GETs with the access token and decodes the answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, TransportError> {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.access_token());
        decode(request.send().await.unwrap()).await
    }

    /// Opens the push WebSocket through the SDK.
    pub async fn connect(&self) -> Result<Socket, TransportError> {
        let subscription = self.transport().subscribe(self.access_token()).await?;
        Ok(Socket {
            subscription,
            queued: Vec::new(),
        })
    }

    /// Opens the push WebSocket without the SDK, for frames no client sends.
    pub async fn connect_raw(&self) -> RawSocket {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = format!("{}/v1/ws", self.base.replacen("http", "ws", 1))
            .into_client_request()
            .unwrap();
        let auth = format!("Bearer {}", self.access_token()).parse().unwrap();
        request.headers_mut().insert("authorization", auth);
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        RawSocket { stream }
    }
}

/// A message with a dummy 16-byte header per recipient device, kept for an
/// hour: what the tests send.
pub fn message(id: EnvelopeId, body: Vec<u8>, to: &[(Address, DeviceId)]) -> OutgoingMessage {
    let recipients = to
        .iter()
        .map(|(address, device)| (address.clone(), *device, Bytes(vec![0xaa; 16])));
    wire::outgoing(id, body, recipients, 3600)
}

/// The SDK's push connection, with `send` frames queued for one write.
pub struct Socket {
    subscription: Box<dyn Subscription>,
    queued: Vec<ClientFrame>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Socket")
    }
}

impl Socket {
    /// The next server frame; `None` once the server closed the connection.
    pub async fn next(&mut self) -> Result<Option<ServerFrame>, TransportError> {
        self.subscription.next().await
    }

    /// The next frame within `wait`, `Ok(None)` on timeout or close.
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<ServerFrame>, TransportError> {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(result) => result,
            Err(_) => Ok(None),
        }
    }

    /// Sends an ack frame.
    pub async fn ack(&mut self, seqs: Vec<u64>) -> Result<(), TransportError> {
        self.subscription.ack(&seqs).await
    }

    /// Sends a `send` frame; the answer is a `sent` or `refused` frame
    /// with the same `request`.
    pub async fn send_message(
        &mut self,
        request: u64,
        message: OutgoingMessage,
    ) -> Result<(), TransportError> {
        self.queue_message(request, message).await?;
        self.flush().await
    }

    /// Queues a `send` frame; [`Socket::flush`] sends everything queued
    /// with one write.
    pub async fn queue_message(
        &mut self,
        request: u64,
        message: OutgoingMessage,
    ) -> Result<(), TransportError> {
        self.queued.push(ClientFrame::Send { request, message });
        Ok(())
    }

    /// Writes out frames queued with [`Socket::queue_message`].
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        let frames = std::mem::take(&mut self.queued);
        self.subscription.send(&frames).await
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        self.subscription.close().await;
    }
}

/// A push connection without the SDK: raw text frames.
pub struct RawSocket {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl RawSocket {
    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next server frame within `wait`, `None` on timeout or close.
    pub async fn next_within(&mut self, wait: Duration) -> Option<ServerFrame> {
        let next = async {
            while let Some(message) = self.stream.next().await {
                match message.unwrap() {
                    Message::Text(text) => return serde_json::from_str(text.as_str()).ok(),
                    Message::Close(_) => return None,
                    _ => {}
                }
            }
            None
        };
        tokio::time::timeout(wait, next).await.ok().flatten()
    }
}
