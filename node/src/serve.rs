//! `courier serve`: wires store, relay, push hub, gateway (and later the
//! federation swarm) together and shuts them down in order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use courier_gateway::{Gateway, GatewayConfig, PushHub};
use courier_relay::{Relay, SystemClock};
use rand::SeedableRng as _;

use crate::config::{Config, Registration};
use crate::{admin, identity};

/// Name of the file `serve` writes the bound HTTP address to.
pub const HTTP_ADDR_FILE: &str = "http.addr";

/// How often expired mailbox entries, bodies and auth records are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Builds the relay over `store` with the settings of `config`, notifying
/// `hub` on every enqueue.
pub fn relay(
    config: &Config,
    store: Arc<dyn courier_relay::Store>,
    hub: &PushHub,
) -> anyhow::Result<Relay> {
    let mut relay_config = courier_relay::Config::new(config.relay_name()?);
    let r = &config.relay;
    relay_config.access_token_ms = r.access_token_secs.saturating_mul(1000);
    relay_config.refresh_token_ms = r.refresh_token_secs.saturating_mul(1000);
    relay_config.challenge_ms = r.challenge_secs.saturating_mul(1000);
    relay_config.link_ms = r.link_secs.saturating_mul(1000);
    relay_config.prekeys_low_water = r.prekeys_low_water;
    relay_config.mailbox_depth_max = r.mailbox_depth_max;
    relay_config.registration = match config.registration() {
        Registration::Open => courier_relay::Registration::Open,
        Registration::Invite => courier_relay::Registration::Invite,
    };
    let rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    Ok(
        Relay::new(relay_config, store, Arc::new(SystemClock), Box::new(rng))
            .with_notifier(Arc::new(hub.clone())),
    )
}

/// Runs the relay until SIGINT or SIGTERM.
pub async fn run(data_dir: &Path, config: Config) -> anyhow::Result<()> {
    admin::ensure_data_dir(data_dir, &config)?;
    let (key, _) = identity::load_or_create(data_dir)?;
    let peer = identity::peer_id(&key);
    let store = crate::store::open(data_dir, &config).await?;
    let hub = PushHub::new();
    let relay = Arc::new(relay(&config, store, &hub)?);

    let addr = config.http_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    std::fs::write(data_dir.join(HTTP_ADDR_FILE), format!("{bound}\n"))
        .with_context(|| format!("cannot write {}", data_dir.join(HTTP_ADDR_FILE).display()))?;

    let gateway_config = GatewayConfig {
        http: config.http.clone(),
        rate_limit: config.rate_limit.clone(),
        websocket: config.websocket.clone(),
    };
    let gateway = Gateway::new(relay.clone(), hub, gateway_config)
        .with_metrics(courier_gateway::metrics::install_recorder());

    let purge = tokio::spawn({
        let relay = relay.clone();
        async move {
            let mut tick = tokio::time::interval(PURGE_INTERVAL);
            loop {
                tick.tick().await;
                match relay.purge_expired().await {
                    Ok(report) => tracing::debug!(?report, "purged expired records"),
                    Err(e) => tracing::warn!(error = %e, "purge failed"),
                }
            }
        }
    });

    tracing::info!(
        name = %config.name,
        http = %bound,
        peer_id = %peer,
        registration = ?config.registration(),
        "relay started"
    );
    // Tests and scripts read this line to learn a port-0 address.
    println!("listening http={bound}");

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let served = gateway.serve(listener, shutdown_signal(), grace).await;
    purge.abort();
    // Every store write is durable before its request is answered; dropping
    // the last handle closes the pool cleanly.
    drop(relay);
    served.context("HTTP server failed")?;
    tracing::info!("relay stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
