//! One-line clients and users over a [`Network`], for tests.

use std::sync::Arc;

use courier_client::{
    Client, ClientConfig, ClientParts, ClientStore, Clock, Error, ManualClock, MemoryStore,
};
use courier_protocol::Address;

use crate::Network;
use crate::network::START_MS;

/// A client clock reading the relays' start time, moving only when told.
pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(START_MS))
}

/// Opens a client whose home relay is `relay`, with the given parts.
pub async fn client_with(
    net: &Network,
    relay: &str,
    seed: u8,
    store: Arc<dyn ClientStore>,
    clock: Arc<dyn Clock>,
    config: ClientConfig,
) -> Result<Client, Error> {
    let transport = net
        .transport(relay)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Client::open(ClientParts {
        transport: Arc::new(transport),
        store,
        clock,
        rng_seed: Some([seed; 32]),
        config,
    })
    .await
}

/// A client on `relay` with a memory store, registered as `name`.
pub async fn user_with_clock(
    net: &Network,
    name: &str,
    relay: &str,
    seed: u8,
    clock: Arc<dyn Clock>,
) -> Result<(Client, Address), Error> {
    let client = client_with(
        net,
        relay,
        seed,
        Arc::new(MemoryStore::new()),
        clock,
        ClientConfig::default(),
    )
    .await?;
    let address = client.register(name, None, "", &[]).await?;
    Ok((client, address))
}

/// [`user_with_clock`] with a fresh [`clock`].
pub async fn user(
    net: &Network,
    name: &str,
    relay: &str,
    seed: u8,
) -> Result<(Client, Address), Error> {
    user_with_clock(net, name, relay, seed, clock()).await
}
