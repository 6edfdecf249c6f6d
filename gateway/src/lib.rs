//! The client-facing HTTP and WebSocket API of a Courier relay, on axum, over
//! `courier-relay`.
//!
//! Routes: `/v1/...` (JSON, base64url binary fields; see `docs/api.md`),
//! `/v1/ws` (push), `/v1/openapi.json`, `/healthz`, `/readyz`, `/metrics`.
//! Every error is `{"error": {"code", "message"}}` with a stable code from
//! `courier-protocol`.
//!
//! This crate holds no relay rules (the relay does) and opens no store or
//! listener of its own choosing: the node hands it a [`courier_relay::Relay`],
//! a [`PushHub`] wired as the relay's notifier, and a bound listener.

pub mod api;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod extract;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod ratelimit;
pub mod state;
pub mod stats;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware as mw};
use courier_protocol::{DeviceId, ErrorCode, Username};
use courier_relay::Relay;
use courier_relay::federation::Federation;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::GatewayConfig;
pub use error::Error;
pub use hub::PushHub;
pub use state::AppState;

/// The wire types the handlers speak.
pub(crate) mod wire {
    pub use courier_protocol::api::*;
}

impl courier_relay::Notifier for PushHub {
    fn mailbox(&self, user: &Username, device: DeviceId, seq: u64) {
        PushHub::notify(self, user, device, seq);
    }

    fn wants_envelopes(&self) -> bool {
        true
    }

    fn envelope(
        &self,
        user: &Username,
        device: DeviceId,
        seq: u64,
        make: &dyn Fn() -> courier_protocol::api::Envelope,
    ) {
        PushHub::envelope(self, user, device, seq, make);
    }

    fn prekeys_low(&self, user: &Username, device: DeviceId, remaining: u32) {
        PushHub::prekeys_low(self, user, device, remaining);
    }

    fn revoked(&self, revocation: &courier_relay::Revocation) {
        PushHub::revoked(self, revocation);
    }
}

/// The HTTP/WebSocket front of one relay.
pub struct Gateway {
    state: AppState,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("state", &self.state)
            .finish()
    }
}

impl Gateway {
    /// A gateway over `relay`. `hub` must be the notifier the relay was
    /// built with (`Relay::with_notifier(Arc::new(hub.clone()))`), or
    /// WebSockets only see envelopes that were there when they connected.
    pub fn new(relay: Arc<Relay>, hub: PushHub, config: GatewayConfig) -> Self {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let stats_interval = Duration::from_millis(config.http.stats_cache_ms);
        // The node validates the list first; should it still not parse, no
        // forwarding header is believed.
        let proxies = client_ip::Proxies::parse(&config.http.trusted_proxies).unwrap_or_else(|e| {
            tracing::error!(error = %e, "trusted_proxies ignored");
            client_ip::Proxies::default()
        });
        let rate = &config.rate_limit;
        let state = AppState {
            relay,
            hub,
            ip_limiter: Arc::new(ratelimit::RateLimiter::new(
                rate.ip_per_second,
                rate.ip_burst,
            )),
            account_limiter: Arc::new(ratelimit::RateLimiter::new(
                rate.account_per_second,
                rate.account_burst,
            )),
            request_timeout: Duration::from_millis(config.http.request_timeout_ms.max(1)),
            config: Arc::new(config),
            metrics: None,
            federation: None,
            shutdown: shutdown_rx,
            connections: state::Tracker::default(),
            proxies: Arc::new(proxies),
            stats: Arc::new(stats::StatsCache::new(stats_interval)),
        };
        Gateway { state, shutdown }
    }

    /// Serves `GET /metrics` from this Prometheus handle.
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.state.metrics = Some(handle);
        self
    }

    /// Answers key-bundle requests for other relays' addresses through
    /// `federation` (the node's libp2p handle).
    pub fn with_federation(mut self, federation: Arc<dyn Federation>) -> Self {
        self.state.federation = Some(federation);
        self
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The full router with every middleware. Serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so per-IP
    /// limits see the client address.
    pub fn router(&self) -> Router {
        let (router, openapi) = api_router(self.state.clone()).split_for_parts();
        let openapi = Arc::new(openapi);
        let config = &self.state.config;
        let router = router
            .route(
                "/v1/openapi.json",
                get(move || {
                    let doc = openapi.clone();
                    async move { axum::Json(doc.as_ref().clone()) }
                }),
            )
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .fallback(middleware::not_found)
            .layer(mw::from_fn(middleware::json_method_not_allowed))
            .layer(axum::extract::DefaultBodyLimit::max(
                config.http.body_bytes_max,
            ))
            .layer(mw::from_fn_with_state(
                self.state.clone(),
                middleware::observe,
            ))
            .with_state(self.state.clone());
        let router = router
            .layer(CompressionLayer::new())
            .layer(cors(&config.http.cors_origins));
        security_headers(router)
    }

    /// Serves on `listener` until `shutdown` resolves; then stops
    /// accepting, lets in-flight requests finish (up to `grace`), closes
    /// every WebSocket with a close frame and waits for them.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> std::io::Result<()> {
        let router = self.router();
        let connections = self.state.connections.clone();
        // One signal for both: WebSockets close themselves on it, the HTTP
        // server stops accepting and drains on it.
        let stopping = self.state.shutdown.clone();
        let signal = self.shutdown;
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: closing websockets, finishing requests");
            // Receivers keep seeing `true` after the sender is dropped, and
            // `changed()` then returns at once: both read as "stopping".
            let _ = signal.send(true);
        });
        let http = &self.state.config.http;
        let config = listener::ListenerConfig {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms.max(1)),
            connections_max: http.connections_max,
            connections_per_ip_max: http.connections_per_ip_max,
            head_bytes_hard_max: http.header_bytes_max.saturating_mul(4).max(64 * 1024),
        };
        let limits = Arc::new(listener::ConnectionLimits::new(
            config.connections_max,
            config.connections_per_ip_max,
            self.state.proxies.clone(),
        ));
        let server = listener::serve(listener, router, config, limits, stopping.clone());
        let mut served = tokio::spawn(server);
        let mut stop = stopping;
        tokio::select! {
            // The server failed before any shutdown signal.
            result = &mut served => return result.map_err(std::io::Error::other)?,
            _ = stop.wait_for(|s| *s) => {}
        }
        let drained = async {
            connections.wait_idle().await;
            served.await
        };
        match tokio::time::timeout(grace, drained).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => {
                tracing::warn!(?grace, "shutdown grace period over; dropping connections");
                Ok(())
            }
        }
    }

    /// The OpenAPI document (what `/v1/openapi.json` serves).
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        openapi::document()
    }
}

fn api_router(state: AppState) -> OpenApiRouter<AppState> {
    let (public, authed) = api_routes();
    let authed = authed.route_layer(mw::from_fn_with_state(state, extract::require_auth));
    openapi::router().merge(public).merge(authed)
}

/// The `/v1` routes: (public, needing a bearer token).
fn api_routes() -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    let public = OpenApiRouter::new()
        .routes(routes!(api::relay_info))
        .routes(routes!(api::register))
        .routes(routes!(api::challenge))
        .routes(routes!(api::login))
        .routes(routes!(api::refresh))
        .routes(routes!(api::device_list))
        .routes(routes!(api::open_link))
        .routes(routes!(api::link_status));
    let authed = OpenApiRouter::new()
        .routes(routes!(api::logout))
        .routes(routes!(api::link_info))
        .routes(routes!(api::approve_link))
        .routes(routes!(api::put_signed_prekey))
        .routes(routes!(api::upload_one_time))
        .routes(routes!(api::prekey_count))
        .routes(routes!(api::key_bundle))
        .routes(routes!(api::send, api::fetch))
        .routes(routes!(api::ack))
        .routes(routes!(ws::upgrade));
    (public, authed)
}

fn cors(origins: &[String]) -> CorsLayer {
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::PUT,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([
            middleware::REQUEST_ID.clone(),
            HeaderName::from_static(courier_protocol::api::PREKEYS_LOW_HEADER),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}

fn security_headers(router: Router) -> Router {
    let headers: [(HeaderName, &'static str); 5] = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
    ];
    headers.into_iter().fold(router, |router, (name, value)| {
        router.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ))
    })
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers a query (which also means its migrations
/// ran: stores migrate before they are handed to the relay). The answer is
/// the cached one of `/metrics` (at most `stats_cache_ms` old), so probes
/// cost the store nothing more.
async fn readyz(State(state): State<AppState>) -> Response {
    if *state.shutdown.borrow() {
        return Error::with_message(ErrorCode::Unavailable, "shutting down").into_response();
    }
    match store_stats(&state).await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Error::with_message(ErrorCode::Unavailable, "the store is unreachable").into_response()
        }
    }
}

/// Prometheus text exposition.
async fn metrics_text(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return Error::with_message(ErrorCode::NotFound, "metrics are disabled").into_response();
    };
    // Depths are read from the store, so they are right across restarts and
    // across several relay processes sharing one database.
    match store_stats(&state).await {
        Ok(stats) => {
            ::metrics::gauge!(metrics::MAILBOX_DEPTH).set(stats.mailbox_entries as f64);
            ::metrics::gauge!(metrics::OUTBOX_DEPTH).set(stats.outbox_entries as f64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read store stats for /metrics"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// The store's figures, read at most once per `stats_cache_ms`.
async fn store_stats(state: &AppState) -> Result<courier_relay::store::StoreStats, String> {
    state.stats.get(|| state.relay.store().stats()).await
}
