//! `courier serve`: wires store, relay, push hub, gateway (and later the
//! federation swarm) together and shuts them down in order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use courier_gateway::{Gateway, GatewayConfig, PushHub};
use courier_relay::{Relay, SystemClock};
use rand::SeedableRng as _;

use crate::config::{Config, FederationPolicy, Registration};
use crate::federation::{self, Drainer, DrainerConfig, OutboxNotifier};
use crate::{admin, identity};
use libp2p::Multiaddr;

/// Name of the file `serve` writes the bound HTTP address to.
pub const HTTP_ADDR_FILE: &str = "http.addr";

/// How often expired mailbox entries, bodies and auth records are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Builds the relay over `store` with the settings of `config` and the
/// store secret of `data_dir` ([`crate::store::secret`]); `notifier` hears
/// of every enqueue (mailbox and outbox).
pub fn relay(
    data_dir: &Path,
    config: &Config,
    store: Arc<dyn courier_relay::Store>,
    notifier: Arc<dyn courier_relay::Notifier>,
) -> anyhow::Result<Relay> {
    let mut relay_config = courier_relay::Config::new(config.relay_name()?);
    let r = &config.relay;
    relay_config.access_token_ms = r.access_token_secs.saturating_mul(1000);
    relay_config.refresh_token_ms = r.refresh_token_secs.saturating_mul(1000);
    relay_config.challenge_ms = r.challenge_secs.saturating_mul(1000);
    relay_config.link_ms = r.link_secs.saturating_mul(1000);
    relay_config.prekeys_low_water = r.prekeys_low_water;
    relay_config.mailbox_depth_max = r.mailbox_depth_max;
    relay_config.mailbox_bytes_max = r.mailbox_bytes_max;
    (
        relay_config.mailbox_per_source_max,
        relay_config.mailbox_per_source_bytes_max,
    ) = r.per_source();
    relay_config.store_secret = crate::store::secret(data_dir)?;
    relay_config.outbox_limits = courier_relay::outbox_budget::OutboxLimits {
        entries_max: r.outbox_max,
        destinations_max: r.outbox_destinations_max,
        per_account_max: r.outbox_per_account_max,
        destinations_per_account_max: r.outbox_destinations_per_account_max,
    };
    relay_config.prekey_budget = config.prekey_budget.to_relay();
    relay_config.registration = match config.registration() {
        Registration::Open => courier_relay::Registration::Open,
        Registration::Invite => courier_relay::Registration::Invite,
    };
    let rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    Ok(
        Relay::new(relay_config, store, Arc::new(SystemClock), Box::new(rng))
            .with_notifier(notifier),
    )
}

/// Runs the relay until SIGINT or SIGTERM.
pub async fn run(data_dir: &Path, config: Config) -> anyhow::Result<()> {
    admin::ensure_data_dir(data_dir, &config)?;
    admin::warn_if_data_dir_exposed(data_dir);
    let (key, _) = identity::load_or_create(data_dir)?;
    let peer = identity::peer_id(&key);
    let store = crate::store::open(data_dir, &config).await?;
    let hub = PushHub::new();
    // Mailbox enqueues (local sends and federation deliveries alike) wake
    // WebSockets through the hub; outbox enqueues wake the drainer.
    let outbox_wake = Drainer::waker();
    let mut local: Arc<dyn courier_relay::Notifier> = Arc::new(hub.clone());
    let mut pg_wake = None;
    if let crate::store::Location::Postgres(url) = crate::store::location(data_dir, &config)? {
        // Other serve processes on the same database wake our sessions and
        // revoke our cached tokens (and we theirs) with LISTEN/NOTIFY.
        let notifier =
            crate::pg_wake::start(&url, config.database_schema.as_deref(), hub.clone(), local)
                .await?;
        local = notifier.clone();
        pg_wake = Some(notifier);
    }
    let notifier = OutboxNotifier::new(local, outbox_wake.clone());
    // Which relays sends may name: filled and kept current by the
    // federation from its peer book; empty (every remote recipient
    // refused) when federation is off.
    let routes = Arc::new(courier_relay::routes::RouteTable::new());
    let relay =
        Arc::new(relay(data_dir, &config, store, Arc::new(notifier))?.with_routes(routes.clone()));
    if let Some(pg_wake) = pg_wake {
        pg_wake.attach(&relay);
    }

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
    let mut gateway = Gateway::new(relay.clone(), hub, gateway_config)
        .with_metrics(courier_gateway::metrics::install_recorder());

    let federation = if config.federation.enabled {
        let http_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"));
        let running = start_federation(
            data_dir,
            &config,
            key,
            http_url,
            &relay,
            outbox_wake,
            routes,
        )
        .await?;
        gateway = gateway.with_federation(Arc::new(running.handle.clone()));
        Some(running)
    } else {
        None
    };

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
    if let Some(running) = federation {
        running.stop().await;
    }
    // Every store write is durable before its request is answered; dropping
    // the last handle closes the pool cleanly.
    drop(relay);
    served.context("HTTP server failed")?;
    tracing::info!("relay stopped");
    Ok(())
}

/// The federation swarm and the outbox drainer of a running relay.
struct RunningFederation {
    handle: federation::Handle,
    task: tokio::task::JoinHandle<()>,
    drainer: Drainer,
}

impl RunningFederation {
    async fn stop(self) {
        self.drainer.stop().await;
        self.handle.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn multiaddrs(field: &str, texts: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    texts
        .iter()
        .map(|t| {
            t.parse::<Multiaddr>()
                .with_context(|| format!("{field}: {t:?} is not a multiaddr"))
        })
        .collect()
}

async fn start_federation(
    data_dir: &Path,
    config: &Config,
    key: libp2p_identity::Keypair,
    http_url: String,
    relay: &Arc<Relay>,
    outbox_wake: Arc<federation::OutboxWake>,
    routes: Arc<courier_relay::routes::RouteTable>,
) -> anyhow::Result<RunningFederation> {
    let f = &config.federation;
    let mut fed = federation::Config::new(config.relay_name()?, key);
    fed.routes = Some(routes);
    fed.listen = multiaddrs("federation.p2p", std::slice::from_ref(&f.p2p))?;
    fed.external_addresses = multiaddrs("federation.external_addresses", &f.external_addresses)?;
    fed.http_url = http_url;
    fed.peers_file = Some(data_dir.join("peers.json"));
    fed.peers_max = f.peers_max;
    fed.control_socket = Some(data_dir.join(federation::control::SOCKET_FILE));
    fed.policy = federation::Policy {
        mode: match f.policy {
            FederationPolicy::Open => federation::PolicyMode::Open,
            FederationPolicy::Allowlist => federation::PolicyMode::Allowlist,
            FederationPolicy::Denylist => federation::PolicyMode::Denylist,
        },
        allow: f.allow.iter().cloned().collect(),
        deny: f.deny.iter().cloned().collect(),
    };
    let bootstrap = multiaddrs("federation.bootstrap", &f.bootstrap)?;
    let inbound = Arc::new(federation::RelayInbound(relay.clone()));
    let (handle, task) = federation::spawn(fed, inbound)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the federation on {}: {e}", f.p2p))?;
    for addr in bootstrap {
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Err(e) = handle.add_peer(addr.clone()).await {
                tracing::warn!(%addr, error = %e, "bootstrap peer unreachable");
            }
        });
    }
    let drainer = Drainer::spawn(
        relay.clone(),
        Arc::new(handle.clone()),
        outbox_wake,
        DrainerConfig::default(),
    );
    Ok(RunningFederation {
        handle,
        task,
        drainer,
    })
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
