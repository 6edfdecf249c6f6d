//! Gateway settings. The node embeds these in `courier.toml` (tables
//! `[http]`, `[rate_limit]` and `[websocket]`). Each field's doc comment is
//! its operator documentation: the node generates `docs/operator.md`'s
//! tables and the example config from them (`courier_node::config_doc`).

use serde::{Deserialize, Serialize};

/// HTTP settings: `[http]` in `courier.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins allowed by CORS (e.g. `https://app.example`); `["*"]` any; empty
    /// sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest request body; larger gets 413 `payload_too_large`.
    pub body_bytes_max: usize,
    /// A request still running after this gets 503 `unavailable`.
    pub request_timeout_ms: u64,
    /// A connection must deliver a complete request head within this long of
    /// opening or of its previous response, or it is closed: bounds connections
    /// that send nothing or half a header, and is also the keep-alive idle
    /// timeout.
    pub header_read_timeout_ms: u64,
    /// Most open client connections (WebSockets included); beyond it a new
    /// connection gets 503 `unavailable` (JSON, `Retry-After: 1`) and is
    /// closed. Keep it below the process's descriptor limit (`ulimit -n`,
    /// `LimitNOFILE=`).
    pub connections_max: usize,
    /// Most open connections from one client address (an IPv6 address counts by
    /// its /64); beyond it 429 `rate_limited` and closed. Addresses in
    /// `trusted_proxies` are exempt (they carry everyone's connections).
    pub connections_per_ip_max: usize,
    /// Reverse proxies (addresses or CIDRs, e.g. `["127.0.0.1", "10.0.0.0/8",
    /// "::1"]`) whose `Forwarded` / `X-Forwarded-For` name the client. The
    /// client is the rightmost hop that is not a trusted proxy (hops further
    /// left were written by the client and may be forged); `Forwarded` wins
    /// when both are sent. Empty: the TCP peer is the client and those headers
    /// are ignored. Set it when running behind a proxy, or every client shares
    /// the proxy's rate-limit bucket.
    pub trusted_proxies: Vec<String>,
    /// Longest request target (path and query); longer gets 414 `uri_too_long`.
    pub uri_bytes_max: usize,
    /// Largest request head (header names and values); larger gets 431
    /// `headers_too_large`. Heads over four times this (at least 64 KiB) are
    /// cut off by the HTTP parser with a bare 431 and the connection closed.
    pub header_bytes_max: usize,
    /// `/metrics` and `/readyz` read the store's figures (whole-table counts)
    /// at most once per this interval; concurrent requests share one read.
    pub stats_cache_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_origins: Vec::new(),
            body_bytes_max: courier_protocol::limits::HTTP_BODY_BYTES_MAX,
            request_timeout_ms: 30_000,
            header_read_timeout_ms: 10_000,
            connections_max: 8_192,
            connections_per_ip_max: 256,
            trusted_proxies: Vec::new(),
            uri_bytes_max: 8 * 1024,
            header_bytes_max: 16 * 1024,
            stats_cache_ms: 5_000,
        }
    }
}

/// Rate limits: `[rate_limit]` in `courier.toml`. A rate of 0 disables
/// that limit. Refused requests get 429 `rate_limited` with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second per client IP, over all routes (the TCP peer, or the
    /// forwarded client behind `http.trusted_proxies`; an IPv6 client by its
    /// /64). The table holds 100,000 clients and forgets the least recently
    /// seen one when full, so churning through fresh addresses never resets a
    /// limited client.
    pub ip_per_second: f64,
    /// Requests an IP may make at once before the rate applies.
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// How often the relay pings.
    pub ping_interval_ms: u64,
    /// A connection silent this long (no frame, no pong) is closed.
    pub idle_timeout_ms: u64,
    /// Envelopes sent but not yet acked per connection; the relay reads more
    /// from the mailbox only as acks come in.
    pub in_flight_max: usize,
    /// Largest frame or message either way.
    pub frame_bytes_max: usize,
    /// Initial read buffer per connection (grows for large frames).
    pub read_buffer_bytes: usize,
    /// Bytes buffered before a write; 0 writes each frame at once.
    pub write_buffer_bytes: usize,
    /// A write (frame, flush, ping, close) not done after this long drops the
    /// connection: the client stopped reading, and holds its memory for at most
    /// this long. At least 100.
    pub write_timeout_ms: u64,
    /// Most envelope bytes (headers and bodies) read from the mailbox for one
    /// round of pushes, beyond its first envelope: what a stalled connection
    /// can hold.
    pub fetch_bytes_max: usize,
    /// Most open connections per device; one more is closed with close code
    /// 4029.
    pub connections_per_device_max: usize,
    /// Most open connections per account (all its devices); 4029 beyond.
    pub connections_per_account_max: usize,
    /// Most open connections per `courier serve` process; 4029 beyond.
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
