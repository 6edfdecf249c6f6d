//! Gateway settings. The node embeds these in `courier.toml` (tables
//! `[http]`, `[rate_limit]` and `[websocket]`); `docs/operator.md` documents
//! every field.

use serde::{Deserialize, Serialize};

/// HTTP settings: `[http]` in `courier.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins allowed by CORS (e.g. `https://app.example`); `["*"]` allows
    /// any; empty sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted; larger gets 413 `payload_too_large`.
    pub body_bytes_max: usize,
    /// A request still running after this long gets 503 `unavailable`.
    pub request_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_origins: Vec::new(),
            body_bytes_max: courier_protocol::limits::HTTP_BODY_BYTES_MAX,
            request_timeout_ms: 30_000,
        }
    }
}

/// Rate limits: `[rate_limit]` in `courier.toml`. A rate of 0 disables
/// that limit. Refused requests get 429 `rate_limited` with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second per client IP, over all routes.
    pub ip_per_second: f64,
    /// Requests a client IP may make at once before the rate applies.
    pub ip_burst: u32,
    /// Authenticated requests per second per account.
    pub account_per_second: f64,
    /// Authenticated requests an account may make at once.
    pub account_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            ip_per_second: 200.0,
            ip_burst: 400,
            account_per_second: 100.0,
            account_burst: 200,
        }
    }
}

/// WebSocket settings: `[websocket]` in `courier.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// How often the relay pings an idle connection.
    pub ping_interval_ms: u64,
    /// A connection silent (no frame, no pong) this long is closed.
    pub idle_timeout_ms: u64,
    /// Envelopes sent but not yet acked per connection; the relay reads
    /// more from the mailbox only as acks come in.
    pub in_flight_max: usize,
    /// Largest frame (and message) in either direction.
    pub frame_bytes_max: usize,
    /// Initial read buffer per connection; it grows for large frames.
    pub read_buffer_bytes: usize,
    /// Write buffer per connection before a flush.
    pub write_buffer_bytes: usize,
    /// A write to a connection (a frame handed to the socket, a flush) that
    /// has not completed after this long drops the connection: a client
    /// that stops reading holds its memory for at most this long.
    pub write_timeout_ms: u64,
    /// Most header and body bytes read from the mailbox for one round of
    /// pushes (beyond its first envelope): what a stalled connection can
    /// hold in memory, whatever the envelopes' sizes.
    pub fetch_bytes_max: usize,
    /// Most open connections per device; one more is closed at once with
    /// close code 4029.
    pub connections_per_device_max: usize,
    /// Most open connections per account (all its devices); 4029 beyond.
    pub connections_per_account_max: usize,
    /// Most open connections in this process; 4029 beyond.
    pub connections_max: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            in_flight_max: 256,
            frame_bytes_max: courier_protocol::limits::WS_FRAME_BYTES_MAX,
            read_buffer_bytes: 4 * 1024,
            write_buffer_bytes: 0,
            write_timeout_ms: 10_000,
            fetch_bytes_max: 1024 * 1024,
            connections_per_device_max: 4,
            connections_per_account_max: 32,
            connections_max: 10_000,
        }
    }
}

/// Everything the gateway needs from configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayConfig {
    /// `[http]`.
    pub http: HttpConfig,
    /// `[rate_limit]`.
    pub rate_limit: RateLimitConfig,
    /// `[websocket]`.
    pub websocket: WebSocketConfig,
}
