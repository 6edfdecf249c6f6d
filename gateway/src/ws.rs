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
use crate::hub::{Catchup, Subscription};
use crate::state::AppState;

/// Most envelopes read from the store in one go.
const FETCH_BATCH_MAX: u32 = 100;
/// Most sends and acks one connection has waiting for the store; beyond
/// that the connection stops reading frames until one is answered.
const PENDING_MAX: usize = 64;
/// Most bytes of send frames one connection has waiting for the store.
const SEND_BYTES_IN_FLIGHT_MAX: usize = 2 * 1024 * 1024;

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
}

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

/// Opens the push channel. Auth: `Authorization: Bearer …` or
/// `?access_token=…`.
#[utoipa::path(get, path = "/v1/ws", tag = "messages",
    security(("bearer" = [])),
    params(("access_token" = Option<String>, Query, description = "instead of the Authorization header")),
    responses(
        (status = 101, description = "WebSocket: server sends `ServerFrame` JSON text frames, client sends `ClientFrame` (`{\"type\":\"ack\",\"seqs\":[…]}`, `{\"type\":\"send\",\"request\":1,\"message\":{…}}`)"),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade", body = crate::openapi::ErrorBodyDoc),
        (status = 401, description = "`unauthenticated`, `token_expired`", body = crate::openapi::ErrorBodyDoc),
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
    let config = &state.config.websocket;
    ws.max_frame_size(config.frame_bytes_max)
        .max_message_size(config.frame_bytes_max)
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes)
        .max_write_buffer_size(config.frame_bytes_max.saturating_mul(2))
        .on_upgrade(move |socket| async move {
            let _live = state.connections.track();
            metrics::gauge!(crate::metrics::WS_CONNECTIONS).increment(1.0);
            metrics::counter!(crate::metrics::WS_CONNECTIONS_TOTAL).increment(1);
            let user = device.user.clone();
            if let Err(reason) = Connection::new(&state, device, token, socket).run().await {
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
}

impl<'a> Connection<'a> {
    fn new(
        state: &'a AppState,
        device: AuthedDevice,
        token: AccessToken,
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
        }
    }

    async fn run(mut self) -> std::result::Result<(), String> {
        let config = &self.state.config.websocket;
        let in_flight_max = config.in_flight_max.max(1);
        let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
        let mut ping = tokio::time::interval_at(
            Instant::now() + Duration::from_millis(config.ping_interval_ms),
            Duration::from_millis(config.ping_interval_ms.max(1)),
        );
        let subscription = self
            .state
            .hub
            .subscribe(self.device.user.clone(), self.device.device);
        let mut shutdown = self.state.shutdown.clone();
        let mut pending: FuturesUnordered<Pending<'a>> = FuturesUnordered::new();
        let mut send_bytes = 0usize;
        if *shutdown.borrow() {
            return self.close(close_code::AWAY, "relay shutting down").await;
        }

        if let Some(remaining) = self.device.prekeys_low {
            self.send(&ServerFrame::PrekeysLow { remaining }).await?;
            self.socket.flush().await.map_err(|e| e.to_string())?;
        }

        loop {
            // Registered before reading the store, so an enqueue that lands
            // after the read still wakes us.
            let notified = subscription.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if let Some(remaining) = subscription.take_prekeys_low() {
                self.send(&ServerFrame::PrekeysLow { remaining }).await?;
                self.socket.flush().await.map_err(|e| e.to_string())?;
            }

            if self.maybe_more && self.in_flight.len() < in_flight_max {
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
                Some(done) = pending.next(), if !pending.is_empty() => {
                    // Answer everything already finished with one flush.
                    let mut end = self.on_done(done, &mut send_bytes).await?;
                    while end.is_none() {
                        match pending.next().now_or_never() {
                            Some(Some(done)) => end = self.on_done(done, &mut send_bytes).await?,
                            _ => break,
                        }
                    }
                    self.socket.flush().await.map_err(|e| e.to_string())?;
                    if let Some(end) = end {
                        return self.close(close_code::POLICY, end).await;
                    }
                }
                message = self.socket.recv(),
                    if pending.len() < PENDING_MAX && send_bytes < SEND_BYTES_IN_FLIGHT_MAX =>
                {
                    self.last_heard = Instant::now();
                    let mut next = Some(message);
                    // Take every frame already here before waiting again.
                    while let Some(message) = next.take() {
                        if let Read::Closed =
                            self.on_message(message, &mut pending, &mut send_bytes).await?
                        {
                            // Acks and sends read before the close still
                            // reach the store (nobody is left to answer).
                            while pending.next().await.is_some() {}
                            return Ok(());
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
                    self.socket
                        .send(Message::Ping(Default::default()))
                        .await
                        .map_err(|e| e.to_string())?;
                    if self.in_flight.len() >= in_flight_max {
                        self.forget_acked_elsewhere().await?;
                    }
                }
                _ = shutdown.changed() => {
                    // Sends and acks already taken are finished and answered first.
                    while let Some(done) = pending.next().await {
                        self.on_done(done, &mut send_bytes).await?;
                    }
                    self.socket.flush().await.map_err(|e| e.to_string())?;
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
    /// from the store. (The relay hands the hub each mailbox's entries in
    /// seq order, so a gap means the entry is not coming: evicted, too big,
    /// or enqueued by another process.)
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
            .fetch(&self.device, self.sent_upto, room)
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
            self.socket.flush().await.map_err(|e| e.to_string())?;
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
            .fetch(&self.device, first - 1, self.in_flight.len() as u32)
            .await
            .map_err(|e| e.to_string())?;
        let pending: BTreeSet<u64> = still.envelopes.iter().map(|e| e.seq).collect();
        let before = self.in_flight.len();
        self.in_flight.retain(|seq| pending.contains(seq));
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
            Some(Err(e)) => return Err(e.to_string()),
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
                pending.push(Box::pin(async move {
                    let request = AckRequest { seqs };
                    let outcome = ack(state, &device, &request).await.map_err(|e| e.error);
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

    /// Answers a finished send or ack (without flushing); `Some(reason)` if
    /// the connection must close because its token is no longer valid.
    async fn on_done(
        &mut self,
        done: Done,
        send_bytes: &mut usize,
    ) -> std::result::Result<Option<&'static str>, String> {
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
                    Err(error) => self.send(&ServerFrame::Error { error: &error }).await?,
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
                let device = state
                    .relay
                    .authenticate(&token)
                    .await
                    .map_err(|e| e.to_api_error())?;
                if device.user != sender.user || device.device != sender.device {
                    return Err(ApiError::new(ErrorCode::Unauthenticated));
                }
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

    /// Answers a finished send (without flushing); `Some(reason)` if the
    /// connection must close because its token is no longer valid.
    async fn answer_send(
        &mut self,
        request: u64,
        outcome: std::result::Result<SendResponse, ApiError>,
    ) -> std::result::Result<Option<&'static str>, String> {
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
                if matches!(
                    error.code,
                    ErrorCode::Unauthenticated | ErrorCode::TokenExpired
                ) {
                    return Ok(Some("access token no longer valid"));
                }
            }
        }
        Ok(None)
    }

    async fn send(&mut self, frame: &ServerFrame<'_>) -> std::result::Result<(), String> {
        let text = serde_json::to_string(frame).map_err(|e| e.to_string())?;
        self.socket
            .feed(Message::Text(Utf8Bytes::from(text)))
            .await
            .map_err(|e| e.to_string())
    }

    async fn send_error(&mut self, error: ApiError) -> std::result::Result<(), String> {
        self.send(&ServerFrame::Error { error: &error }).await?;
        self.socket.flush().await.map_err(|e| e.to_string())
    }

    async fn close(mut self, code: u16, reason: &'static str) -> std::result::Result<(), String> {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        self.socket
            .send(Message::Close(Some(frame)))
            .await
            .map_err(|e| e.to_string())?;
        // Give the peer a moment to answer the close, without waiting on a
        // reader that never reads.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(message)) = self.socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        Ok(())
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
