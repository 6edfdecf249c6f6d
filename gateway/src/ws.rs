//! `/v1/ws`: pushes a device's mailbox, in order, as it fills.
//!
//! One task per connection, no per-connection queue: the mailbox in the
//! store is the queue. The task sends at most `in_flight_max` unacked
//! envelopes, reads more from the store only when the [`crate::PushHub`]
//! says the mailbox grew (and did not hand over the new entries itself) or
//! acks free room, and awaits each write, so a slow
//! reader holds at most a window of envelopes in memory and loses nothing:
//! whatever it did not ack stays in the mailbox and is sent again on the
//! next connection.
//!
//! A reader that stops reading costs bounded memory for a bounded time: one
//! round of pushes reads at most `fetch_bytes_max` bytes of envelopes (plus
//! one), and every write (a frame, a flush, a ping, a close) is abandoned
//! and the connection dropped after `write_timeout_ms`. So a round of
//! pushes delays the heartbeat, a revocation or shutdown by at most one
//! round of bounded writes. Connections are capped per device, per account
//! and per process ([`CLOSE_TOO_MANY_CONNECTIONS`]).
//!
//! The access token a connection opened with is checked again before each
//! round of pushes, each ack and each send; the connection closes when the
//! token expires ([`CLOSE_TOKEN_EXPIRED`]) and as soon as its session is
//! revoked ([`CLOSE_TOKEN_REVOKED`]): the relay's revocation path (logout,
//! refresh, refresh-token reuse, in this process or, through
//! `courier-node`'s PostgreSQL notifications, another) wakes the
//! connections of the session through the hub and they re-check.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::response::{IntoResponse, Response};
use courier_protocol::OutgoingMessage;
use courier_protocol::api::{AckRequest, SendResponse};
use courier_protocol::validate::Validate as _;
use courier_protocol::ws::ClientFrame;
use courier_protocol::{ApiError, ErrorCode};
use courier_relay::AuthedDevice;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, SinkExt, StreamExt as _};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::extract::{AccessToken, Authed};
use crate::hub::{Caps, Catchup, Refused, Subscription};
use crate::state::AppState;

/// Most envelopes read from the store in one go.
const FETCH_BATCH_MAX: u32 = 100;
/// Most sends and acks one connection has waiting for the store; beyond
/// that the connection stops reading frames until one is answered.
const PENDING_MAX: usize = 64;
/// Most bytes of send frames one connection has waiting for the store.
const SEND_BYTES_IN_FLIGHT_MAX: usize = 2 * 1024 * 1024;

/// The subprotocol the relay speaks, echoed in `Sec-WebSocket-Protocol`
/// when the client offers it (a browser offering `courier.token.<token>`
/// to authenticate must offer this one too).
pub const SUBPROTOCOL: &str = "courier.v1";
/// Close code: the connection's access token was revoked (logout, refresh,
/// refresh-token reuse): refresh or log in, then reconnect.
pub const CLOSE_TOKEN_REVOKED: u16 = 4001;
/// Close code: the connection's access token expired: refresh, then
/// reconnect.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4002;
/// Close code: the device, its account or the relay has as many
/// connections as allowed; the reason names which.
pub const CLOSE_TOO_MANY_CONNECTIONS: u16 = 4029;

/// A send or an ack that the store has answered.
enum Done {
    Send {
        request: u64,
        size: usize,
        outcome: std::result::Result<SendResponse, ApiError>,
    },
    Ack {
        seqs: Vec<u64>,
        outcome: std::result::Result<u32, ApiError>,
    },
}

/// A send or an ack waiting for the store. They run alongside each other
/// and alongside pushes, so a connection never stalls on one commit.
type Pending<'a> = futures::future::BoxFuture<'a, Done>;

/// What reading one frame means for the connection.
enum Read {
    Continue,
    Closed,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Why a connection ends with a close frame: a code and a reason.
type End = (u16, &'static str);

/// A server frame, encoded exactly like `courier_protocol::ws::ServerFrame`
/// in JSON (a test pins that) but borrowing the envelope it sends.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame<'a> {
    Envelope {
        envelope: &'a crate::wire::Envelope,
    },
    PrekeysLow {
        remaining: u32,
    },
    Error {
        error: &'a ApiError,
    },
    Sent {
        request: u64,
        response: &'a SendResponse,
    },
    Refused {
        request: u64,
        error: &'a ApiError,
    },
}

/// Opens the push channel. Auth: `Authorization: Bearer …`, the
/// subprotocol `courier.token.<token>` (offered with `courier.v1`, for
/// browsers), or `?access_token=…`.
#[utoipa::path(get, path = "/v1/ws", tag = "messages",
    security(("bearer" = [])),
    params(("access_token" = Option<String>, Query, description = "instead of the Authorization header (deprecated: prefer the header, or the `courier.token.<token>` subprotocol next to `courier.v1`)")),
    responses(
        (status = 101, description = "WebSocket: server sends `ServerFrame` JSON text frames, client sends `ClientFrame` (`{\"type\":\"ack\",\"seqs\":[…]}`, `{\"type\":\"send\",\"request\":1,\"message\":{…}}`)"),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade", body = courier_protocol::ErrorBody),
        (status = 401, description = "`unauthenticated`, `token_expired`", body = courier_protocol::ErrorBody),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    Authed(device): Authed,
    token: Option<axum::Extension<AccessToken>>,
    ws: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(axum::Extension(token)) = token else {
        return Error::code(ErrorCode::Unauthenticated).into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return Error::with_message(ErrorCode::BadRequest, rejection.body_text())
                .into_response();
        }
    };
    // A cache hit (the auth layer just read it): when the token expires.
    let expires_ms = match state.relay.authenticate_until(&token.0).await {
        Ok((_, expires_ms)) => expires_ms,
        Err(e) => return Error::from(e.to_api_error()).into_response(),
    };
    let expires_at =
        Instant::now() + Duration::from_millis(expires_ms.saturating_sub(state.relay.now_ms()));
    let config = &state.config.websocket;
    ws.protocols([SUBPROTOCOL])
        .max_frame_size(config.frame_bytes_max)
        .max_message_size(config.frame_bytes_max)
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes)
        .max_write_buffer_size(config.frame_bytes_max.saturating_mul(2))
        .on_upgrade(move |socket| async move {
            let _live = state.connections.track();
            let config = &state.config.websocket;
            let caps = Caps {
                per_device: config.connections_per_device_max,
                per_account: config.connections_per_account_max,
                total: config.connections_max,
            };
            let subscription = match state.hub.admit(&device, caps) {
                Ok(subscription) => subscription,
                Err(refused) => {
                    metrics::counter!(crate::metrics::WS_CONNECTIONS_REFUSED).increment(1);
                    let reason = match refused {
                        Refused::Device => "too many connections for this device",
                        Refused::Account => "too many connections for this account",
                        Refused::Relay => "too many connections to this relay",
                    };
                    let write_timeout = Duration::from_millis(config.write_timeout_ms.max(1));
                    close_socket(socket, write_timeout, CLOSE_TOO_MANY_CONNECTIONS, reason).await;
                    return;
                }
            };
            metrics::gauge!(crate::metrics::WS_CONNECTIONS).increment(1.0);
            metrics::counter!(crate::metrics::WS_CONNECTIONS_TOTAL).increment(1);
            let user = device.user.clone();
            let connection = Connection::new(&state, device, token, expires_at, socket);
            if let Err(reason) = connection.run(subscription).await {
                tracing::debug!(%user, %reason, "websocket closed");
            }
            metrics::gauge!(crate::metrics::WS_CONNECTIONS).decrement(1.0);
        })
}

/// Acks for `device` (HTTP and WebSocket share this): the protocol's
/// limits (1..=500 seqs), then the relay.
pub async fn ack(state: &AppState, device: &AuthedDevice, request: &AckRequest) -> Result<u32> {
    request.validate().map_err(Error::code)?;
    let response = state
        .relay
        .ack(device, &request.seqs)
        .await
        .map_err(|e| Error::from(e.to_api_error()))?;
    metrics::counter!(crate::metrics::ENVELOPES_ACKED).increment(u64::from(response.acked));
    Ok(response.acked)
}

/// Checks `token` again for a connection opened by `sender`: the error a
/// send or ack is refused with if it no longer authenticates that device.
async fn recheck(
    state: &AppState,
    token: &str,
    sender: &AuthedDevice,
) -> std::result::Result<AuthedDevice, ApiError> {
    let device = state
        .relay
        .authenticate(token)
        .await
        .map_err(|e| e.to_api_error())?;
    if device.user != sender.user || device.device != sender.device {
        return Err(ApiError::new(ErrorCode::Unauthenticated));
    }
    Ok(device)
}

/// The close a refused token calls for, if `code` is one.
fn token_end(code: ErrorCode) -> Option<End> {
    match code {
        ErrorCode::Unauthenticated => Some((CLOSE_TOKEN_REVOKED, "access token revoked")),
        ErrorCode::TokenExpired => Some((CLOSE_TOKEN_EXPIRED, "access token expired")),
        _ => None,
    }
}

/// `write` if it completes within `timeout`; a write that does not (the
/// peer stopped reading) ends the connection.
async fn bounded(
    timeout: Duration,
    write: impl std::future::Future<Output = std::result::Result<(), axum::Error>>,
) -> std::result::Result<(), String> {
    match tokio::time::timeout(timeout, write).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => {
            metrics::counter!(crate::metrics::WS_WRITE_TIMEOUTS).increment(1);
            Err("write timed out".to_owned())
        }
    }
}

/// Sends a close frame (bounded by `write_timeout`) and gives the peer a
/// moment to answer it, without waiting on a reader that never reads.
async fn close_socket(
    mut socket: WebSocket,
    write_timeout: Duration,
    code: u16,
    reason: &'static str,
) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    if bounded(write_timeout, socket.send(Message::Close(Some(frame))))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// True if `error` (from reading a frame) is a frame or message over the
/// size limit.
fn is_too_big(error: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    error
        .into_inner()
        .downcast::<WsError>()
        .is_ok_and(|e| matches!(*e, WsError::Capacity(_)))
}

struct Connection<'a> {
    state: &'a AppState,
    device: AuthedDevice,
    token: AccessToken,
    socket: WebSocket,
    /// Highest seq sent on this connection; the next read starts after it.
    sent_upto: u64,
    /// Sent, not yet acked.
    in_flight: BTreeSet<u64>,
    /// The store may hold envelopes after `sent_upto`.
    maybe_more: bool,
    last_heard: Instant,
    /// When the access token expires: the connection closes then.
    expires_at: Instant,
    /// Every write completes within this or the connection is dropped.
    write_timeout: Duration,
}

impl<'a> Connection<'a> {
    fn new(
        state: &'a AppState,
        device: AuthedDevice,
        token: AccessToken,
        expires_at: Instant,
        socket: WebSocket,
    ) -> Self {
        Connection {
            state,
            device,
            token,
            socket,
            sent_upto: 0,
            in_flight: BTreeSet::new(),
            maybe_more: true,
            last_heard: Instant::now(),
            expires_at,
            write_timeout: Duration::from_millis(state.config.websocket.write_timeout_ms.max(1)),
        }
    }

    async fn run(mut self, subscription: Subscription) -> std::result::Result<(), String> {
        let config = &self.state.config.websocket;
        let in_flight_max = config.in_flight_max.max(1);
        let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
        let mut ping = tokio::time::interval_at(
            Instant::now() + Duration::from_millis(config.ping_interval_ms),
            Duration::from_millis(config.ping_interval_ms.max(1)),
        );
        let mut shutdown = self.state.shutdown.clone();
        let mut pending: FuturesUnordered<Pending<'a>> = FuturesUnordered::new();
        let mut send_bytes = 0usize;
        if *shutdown.borrow() {
            return self.close(close_code::AWAY, "relay shutting down").await;
        }

        if let Some(remaining) = self.device.prekeys_low {
            self.send(&ServerFrame::PrekeysLow { remaining }).await?;
            self.flush().await?;
        }
        let expiry = tokio::time::sleep_until(self.expires_at);
        tokio::pin!(expiry);

        loop {
            // Registered before reading the store, so an enqueue that lands
            // after the read still wakes us.
            let notified = subscription.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if let Some(remaining) = subscription.take_prekeys_low() {
                self.send(&ServerFrame::PrekeysLow { remaining }).await?;
                self.flush().await?;
            }

            if self.maybe_more && self.in_flight.len() < in_flight_max {
                // Nothing is pushed under a token that no longer holds (a
                // cache hit: no store read on this path).
                if let Err(error) = recheck(self.state, &self.token.0, &self.device).await {
                    return match token_end(error.code) {
                        Some((code, reason)) => self.close(code, reason).await,
                        None => Err(error.to_string()),
                    };
                }
                self.push_pending(&subscription, in_flight_max).await?;
                if self.maybe_more && self.in_flight.len() < in_flight_max {
                    continue;
                }
                // Fall through with the same `notified`, enabled before the
                // read: an enqueue that raced with the read still wakes us.
            }

            tokio::select! {
                () = &mut notified, if !self.maybe_more => {
                    self.maybe_more = true;
                }
                () = subscription.recheck() => {
                    // The session or device may have been revoked: the
                    // relay dropped its cached tokens, so this reads the
                    // store (a refreshed token of the session still holds).
                    if let Err(error) = recheck(self.state, &self.token.0, &self.device).await {
                        return match token_end(error.code) {
                            Some((code, reason)) => self.close(code, reason).await,
                            None => Err(error.to_string()),
                        };
                    }
                }
                () = &mut expiry => {
                    return self.close(CLOSE_TOKEN_EXPIRED, "access token expired").await;
                }
                Some(done) = pending.next(), if !pending.is_empty() => {
                    // Answer everything already finished with one flush.
                    let mut end = self.on_done(done, &mut send_bytes).await?;
                    while end.is_none() {
                        match pending.next().now_or_never() {
                            Some(Some(done)) => end = self.on_done(done, &mut send_bytes).await?,
                            _ => break,
                        }
                    }
                    self.flush().await?;
                    if let Some((code, reason)) = end {
                        return self.close(code, reason).await;
                    }
                }
                message = self.socket.recv(),
                    if pending.len() < PENDING_MAX && send_bytes < SEND_BYTES_IN_FLIGHT_MAX =>
                {
                    self.last_heard = Instant::now();
                    let mut next = Some(message);
                    // Take every frame already here before waiting again.
                    while let Some(message) = next.take() {
                        match self.on_message(message, &mut pending, &mut send_bytes).await? {
                            Read::Continue => {}
                            Read::Closed => {
                                // Acks and sends read before the close still
                                // reach the store (nobody is left to answer).
                                while pending.next().await.is_some() {}
                                return Ok(());
                            }
                            Read::Close(code, reason) => {
                                while pending.next().await.is_some() {}
                                return self.close_now(code, reason).await;
                            }
                        }
                        if pending.len() < PENDING_MAX && send_bytes < SEND_BYTES_IN_FLIGHT_MAX {
                            next = self.socket.recv().now_or_never();
                        }
                    }
                }
                _ = ping.tick() => {
                    if self.last_heard.elapsed() >= idle_timeout {
                        return self.close(close_code::AWAY, "idle timeout").await;
                    }
                    bounded(self.write_timeout, self.socket.send(Message::Ping(Default::default())))
                        .await?;
                    if self.in_flight.len() >= in_flight_max {
                        self.forget_acked_elsewhere().await?;
                    }
                }
                _ = shutdown.changed() => {
                    // Sends and acks already taken are finished and answered first.
                    while let Some(done) = pending.next().await {
                        self.on_done(done, &mut send_bytes).await?;
                    }
                    self.flush().await?;
                    return self.close(close_code::AWAY, "relay shutting down").await;
                }
            }
            // `notified` is dropped at the end of this turn: keep what it
            // heard while another branch (an ack, a ping) ran.
            if !self.maybe_more && notified.as_mut().now_or_never().is_some() {
                self.maybe_more = true;
            }
        }
    }

    /// Sends the next envelopes after `sent_upto`, up to the window: the
    /// ones the hub was handed if they continue exactly where we are, else
    /// from the store, at most `fetch_bytes_max` of them. (The relay hands
    /// the hub each mailbox's entries in seq order, so a gap means the
    /// entry is not coming: evicted, too big, or enqueued by another
    /// process.)
    async fn push_pending(
        &mut self,
        subscription: &Subscription,
        in_flight_max: usize,
    ) -> std::result::Result<(), String> {
        let room = (in_flight_max - self.in_flight.len()).min(FETCH_BATCH_MAX as usize) as u32;
        match subscription.recent_after(self.sent_upto, room as usize) {
            Catchup::Run { entries, complete } => {
                // If complete, a later enqueue wakes us through the
                // `notified` armed before this.
                self.maybe_more = !complete;
                return self.push(entries.iter().map(|e| &**e)).await;
            }
            Catchup::Gap | Catchup::Unknown => {}
        }
        metrics::counter!(crate::metrics::WS_MAILBOX_READS).increment(1);
        let batch = self
            .state
            .relay
            .fetch_bounded(
                &self.device,
                self.sent_upto,
                room,
                self.state.config.websocket.fetch_bytes_max,
            )
            .await
            .map_err(|e| e.to_string())?;
        self.maybe_more = batch.more;
        self.push(batch.envelopes.iter()).await
    }

    /// Sends `envelopes` (in seq order) with one flush and adds them to the
    /// window.
    async fn push(
        &mut self,
        envelopes: impl Iterator<Item = &crate::wire::Envelope>,
    ) -> std::result::Result<(), String> {
        let mut count = 0u64;
        for envelope in envelopes {
            self.send(&ServerFrame::Envelope { envelope }).await?;
            self.sent_upto = self.sent_upto.max(envelope.seq);
            self.in_flight.insert(envelope.seq);
            count += 1;
        }
        if count > 0 {
            self.flush().await?;
            metrics::counter!(crate::metrics::ENVELOPES_DELIVERED).increment(count);
        }
        Ok(())
    }

    /// Drops from the window envelopes acked by another connection of the
    /// device or over HTTP, which this connection never hears of; without
    /// this a full window would stall until the client reconnects.
    async fn forget_acked_elsewhere(&mut self) -> std::result::Result<(), String> {
        let Some(&first) = self.in_flight.first() else {
            return Ok(());
        };
        let still = self
            .state
            .relay
            .fetch_bounded(
                &self.device,
                first - 1,
                self.in_flight.len() as u32,
                self.state.config.websocket.fetch_bytes_max,
            )
            .await
            .map_err(|e| e.to_string())?;
        let pending: BTreeSet<u64> = still.envelopes.iter().map(|e| e.seq).collect();
        // A read cut short by the byte cap says nothing about later seqs.
        let known_upto = match (still.more, still.envelopes.last()) {
            (true, Some(last)) => last.seq,
            (true, None) => return Ok(()),
            (false, _) => u64::MAX,
        };
        let before = self.in_flight.len();
        self.in_flight
            .retain(|seq| *seq > known_upto || pending.contains(seq));
        if self.in_flight.len() < before {
            self.maybe_more = true;
        }
        Ok(())
    }

    /// Handles one frame read from the socket: a send or an ack joins
    /// `pending`, anything else is answered at once.
    async fn on_message(
        &mut self,
        message: Option<std::result::Result<Message, axum::Error>>,
        pending: &mut FuturesUnordered<Pending<'a>>,
        send_bytes: &mut usize,
    ) -> std::result::Result<Read, String> {
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                self.send_error(ApiError::with_message(
                    ErrorCode::Malformed,
                    "frames are JSON text",
                ))
                .await?;
                return Ok(Read::Continue);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(Read::Continue),
            Some(Ok(Message::Close(_))) | None => return Ok(Read::Closed),
            Some(Err(e)) => {
                let text = e.to_string();
                // An oversized frame gets a close frame saying so (1009),
                // not a bare reset. Nothing more is read: the rest of that
                // frame is still on the wire.
                if is_too_big(e) {
                    return Ok(Read::Close(close_code::SIZE, "frame too large"));
                }
                return Err(text);
            }
        };
        let frame: ClientFrame = match serde_json::from_str(text.as_str()) {
            Ok(frame) => frame,
            Err(e) => {
                self.send_error(ApiError::with_message(ErrorCode::Malformed, e.to_string()))
                    .await?;
                return Ok(Read::Continue);
            }
        };
        match frame {
            ClientFrame::Ack { seqs } => {
                let state = self.state;
                let device = self.device.clone();
                let token = self.token.0.clone();
                pending.push(Box::pin(async move {
                    let request = AckRequest { seqs };
                    // No ack under a token that no longer holds.
                    let outcome = match recheck(state, &token, &device).await {
                        Ok(device) => ack(state, &device, &request).await.map_err(|e| e.error),
                        Err(error) => Err(error),
                    };
                    Done::Ack {
                        seqs: request.seqs,
                        outcome,
                    }
                }));
            }
            ClientFrame::Send { request, message } => {
                *send_bytes += text.len();
                pending.push(self.start_send(request, text.len(), message));
            }
        }
        Ok(Read::Continue)
    }

    /// Answers a finished send or ack (without flushing); `Some(end)` if
    /// the connection must close because its token is no longer valid.
    async fn on_done(
        &mut self,
        done: Done,
        send_bytes: &mut usize,
    ) -> std::result::Result<Option<End>, String> {
        match done {
            Done::Send {
                request,
                size,
                outcome,
            } => {
                *send_bytes -= size;
                self.answer_send(request, outcome).await
            }
            Done::Ack { seqs, outcome } => {
                match outcome {
                    Ok(_) => {
                        // No store read here: `maybe_more` is still true if
                        // the last read stopped at the window, and a
                        // notification sets it for anything newer, so an
                        // ack alone never needs a fetch.
                        for seq in &seqs {
                            self.in_flight.remove(seq);
                        }
                    }
                    Err(error) => {
                        self.send(&ServerFrame::Error { error: &error }).await?;
                        return Ok(token_end(error.code));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Starts storing a message sent over the socket. The token the
    /// connection opened with is checked again (a logout or expiry stops
    /// sends on open connections too), then the per-account rate limit,
    /// then the same path as `POST /v1/messages`.
    fn start_send(&self, request: u64, size: usize, message: OutgoingMessage) -> Pending<'a> {
        let state = self.state;
        let token = self.token.0.clone();
        let sender = self.device.clone();
        Box::pin(async move {
            let outcome = async {
                let device = recheck(state, &token, &sender).await?;
                if let Err(wait) = state
                    .account_limiter
                    .check(&device.user, std::time::Instant::now())
                {
                    return Err(ApiError::with_message(
                        ErrorCode::RateLimited,
                        format!("retry after {} ms", wait.as_millis().max(1)),
                    ));
                }
                crate::api::send_message(state, &device, message)
                    .await
                    .map(|(response, _)| response)
                    .map_err(|e| e.error)
            }
            .await;
            Done::Send {
                request,
                size,
                outcome,
            }
        })
    }

    /// Answers a finished send (without flushing); `Some(end)` if the
    /// connection must close because its token is no longer valid.
    async fn answer_send(
        &mut self,
        request: u64,
        outcome: std::result::Result<SendResponse, ApiError>,
    ) -> std::result::Result<Option<End>, String> {
        match outcome {
            Ok(response) => {
                self.send(&ServerFrame::Sent {
                    request,
                    response: &response,
                })
                .await?;
            }
            Err(error) => {
                self.send(&ServerFrame::Refused {
                    request,
                    error: &error,
                })
                .await?;
                return Ok(token_end(error.code));
            }
        }
        Ok(None)
    }

    async fn send(&mut self, frame: &ServerFrame<'_>) -> std::result::Result<(), String> {
        let text = serde_json::to_string(frame).map_err(|e| e.to_string())?;
        bounded(
            self.write_timeout,
            self.socket.feed(Message::Text(Utf8Bytes::from(text))),
        )
        .await
    }

    async fn flush(&mut self) -> std::result::Result<(), String> {
        bounded(self.write_timeout, self.socket.flush()).await
    }

    async fn send_error(&mut self, error: ApiError) -> std::result::Result<(), String> {
        self.send(&ServerFrame::Error { error: &error }).await?;
        self.flush().await
    }

    async fn close(self, code: u16, reason: &'static str) -> std::result::Result<(), String> {
        close_socket(self.socket, self.write_timeout, code, reason).await;
        Ok(())
    }

    /// Sends a close frame and reads nothing more (the input cannot be
    /// trusted to frame, e.g. after an oversized frame).
    async fn close_now(
        mut self,
        code: u16,
        reason: &'static str,
    ) -> std::result::Result<(), String> {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        bounded(
            self.write_timeout,
            self.socket.send(Message::Close(Some(frame))),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use courier_protocol::api::{Envelope, EnvelopeKind};
    use courier_protocol::{Bytes, EnvelopeId, RelayName};

    use super::*;

    #[test]
    fn frames_encode_exactly_like_the_protocol_server_frame() {
        let envelope = Envelope {
            seq: 7,
            id: EnvelopeId([0xab; 16]),
            origin: RelayName::parse("relay-a.example").unwrap(),
            header: Bytes(vec![0xfb, 0xff]),
            body: Bytes(vec![1, 2, 3]),
            received_ms: 1_700_000_000_000,
            expires_ms: 1_700_000_060_000,
            kind: EnvelopeKind::Message,
        };
        let error = ApiError::new(ErrorCode::Malformed);
        let response = SendResponse {
            id: EnvelopeId([0xcd; 16]),
            accepted_ms: 1_700_000_000_001,
        };
        let pairs = [
            (
                ServerFrame::Envelope {
                    envelope: &envelope,
                },
                courier_protocol::ws::ServerFrame::Envelope {
                    envelope: envelope.clone(),
                },
            ),
            (
                ServerFrame::PrekeysLow { remaining: 5 },
                courier_protocol::ws::ServerFrame::PrekeysLow { remaining: 5 },
            ),
            (
                ServerFrame::Error { error: &error },
                courier_protocol::ws::ServerFrame::Error {
                    error: error.clone(),
                },
            ),
            (
                ServerFrame::Sent {
                    request: 9,
                    response: &response,
                },
                courier_protocol::ws::ServerFrame::Sent {
                    request: 9,
                    response: response.clone(),
                },
            ),
            (
                ServerFrame::Refused {
                    request: 10,
                    error: &error,
                },
                courier_protocol::ws::ServerFrame::Refused {
                    request: 10,
                    error: error.clone(),
                },
            ),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                serde_json::to_string(&theirs).unwrap()
            );
        }
    }
}
