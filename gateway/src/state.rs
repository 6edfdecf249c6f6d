//! What every handler shares.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier_protocol::Username;
use courier_relay::Relay;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{Notify, watch};

use crate::config::GatewayConfig;
use crate::hub::PushHub;
use crate::ratelimit::RateLimiter;

/// Shared state of the gateway; cheap to clone (handles only).
#[derive(Clone)]
pub struct AppState {
    /// The relay logic.
    pub relay: Arc<Relay>,
    /// Wake-ups for WebSocket receivers.
    pub hub: PushHub,
    /// Settings.
    pub config: Arc<GatewayConfig>,
    /// Per-IP limiter.
    pub ip_limiter: Arc<RateLimiter<IpAddr>>,
    /// Per-account limiter.
    pub account_limiter: Arc<RateLimiter<Username>>,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Renders `/metrics`; `None` answers 404.
    pub metrics: Option<PrometheusHandle>,
    /// Reaches other relays for their users' key bundles.
    pub federation: Option<Arc<dyn courier_relay::federation::Federation>>,
    /// Becomes `true` when the relay starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Open WebSocket connections, so shutdown can wait for their close.
    pub connections: Tracker,
    /// Reverse proxies whose forwarding headers name the client.
    pub proxies: Arc<crate::client_ip::Proxies>,
    /// The store's figures for `/metrics` and `/readyz`.
    pub stats: Arc<crate::stats::StatsCache>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("relay", &self.relay.name())
            .field("connections", &self.connections.count())
            .finish_non_exhaustive()
    }
}

/// Counts live tasks (WebSocket connections) and lets shutdown wait until
/// none is left.
#[derive(Clone, Default, Debug)]
pub struct Tracker {
    inner: Arc<TrackerInner>,
}

#[derive(Default, Debug)]
struct TrackerInner {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a live task; dropping it marks the task finished.
#[derive(Debug)]
pub struct TrackerGuard {
    tracker: Tracker,
}

impl Tracker {
    /// Registers a task.
    pub fn track(&self) -> TrackerGuard {
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        TrackerGuard {
            tracker: self.clone(),
        }
    }

    /// How many tasks are live.
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Resolves once no task is live.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.inner.idle.notified();
            if self.count() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.tracker.inner.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.tracker.inner.idle.notify_waiters();
        }
    }
}
