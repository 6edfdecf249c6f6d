//! Prometheus metrics: names, buckets and the recorder.
//!
//! Names (all prefixed `courier_`):
//! - `http_requests_total{route,method,status}` and
//!   `http_request_duration_seconds{route,method,status}` (histogram);
//! - `ws_connections` (gauge) and `ws_connections_total`;
//! - `ws_mailbox_reads_total`: store reads by WebSocket connections (a
//!   caught-up connection pushes what the relay handed the hub instead);
//! - `messages_accepted_total`, `envelopes_delivered_total` (pushed over a
//!   WebSocket or returned by a fetch), `envelopes_acked_total`;
//! - `mailbox_depth` and `outbox_depth` (gauges, read from the store at
//!   most once per `[http] stats_cache_ms`, see `stats.rs`);
//! - `store_stats_reads_total`: those store reads (however many scrapes
//!   and readiness probes asked for them).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter: HTTP requests by route, method and status.
pub const HTTP_REQUESTS: &str = "courier_http_requests_total";
/// Histogram: HTTP request latency in seconds by route, method and status.
pub const HTTP_DURATION: &str = "courier_http_request_duration_seconds";
/// Gauge: open WebSocket connections.
pub const WS_CONNECTIONS: &str = "courier_ws_connections";
/// Counter: WebSocket connections accepted.
pub const WS_CONNECTIONS_TOTAL: &str = "courier_ws_connections_total";
/// Counter: mailbox reads from the store by WebSocket connections.
pub const WS_MAILBOX_READS: &str = "courier_ws_mailbox_reads_total";
/// Counter: WebSocket connections closed at once because a per-device,
/// per-account or relay-wide cap was reached (close code 4029).
pub const WS_CONNECTIONS_REFUSED: &str = "courier_ws_connections_refused_total";
/// Counter: WebSocket connections dropped because a write did not complete
/// within `websocket.write_timeout_ms` (the client stopped reading).
pub const WS_WRITE_TIMEOUTS: &str = "courier_ws_write_timeouts_total";
/// Counter: messages accepted by `POST /v1/messages` (not counting retries).
pub const MESSAGES_ACCEPTED: &str = "courier_messages_accepted_total";
/// Counter: envelopes handed to a device (WebSocket push or HTTP fetch).
pub const ENVELOPES_DELIVERED: &str = "courier_envelopes_delivered_total";
/// Counter: envelopes acked and removed from mailboxes.
pub const ENVELOPES_ACKED: &str = "courier_envelopes_acked_total";
/// Gauge: envelopes waiting in all mailboxes.
pub const MAILBOX_DEPTH: &str = "courier_mailbox_depth";
/// Gauge: envelopes waiting in the federation outbox.
pub const OUTBOX_DEPTH: &str = "courier_outbox_depth";
/// Counter: reads of the store's figures for `/metrics` and `/readyz`.
pub const STORE_STATS_READS: &str = "courier_store_stats_reads_total";

/// Latency buckets in seconds, 0.5 ms to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder and returns the handle
/// `GET /metrics` renders. If a recorder is already installed (several
/// relays in one test process), returns a detached handle instead: its
/// output is empty but the relay still runs.
pub fn install_recorder() -> PrometheusHandle {
    let builder = || {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
    };
    match builder().install_recorder() {
        Ok(handle) => handle,
        Err(_) => builder().build_recorder().handle(),
    }
}
