//! A complete SDK program: two users on one relay exchange a message.
//!
//! ```text
//! courier serve --data-dir /tmp/relay &          # relay "localhost" on 127.0.0.1:8080
//! cargo run -p courier-client --example hello -- http://127.0.0.1:8080 localhost
//! ```

use std::sync::Arc;
use std::time::Duration;

use courier_client::{Client, ClientConfig, ClientParts, HttpTransport, SqliteStore, SystemClock};

/// Opens (or creates) a client whose state lives in `dir`.
async fn open(dir: &std::path::Path, relay_url: &str) -> anyhow::Result<Client> {
    std::fs::create_dir_all(dir)?;
    let store = SqliteStore::open(&dir.join("client.db")).await?;
    let client = Client::open(ClientParts {
        transport: Arc::new(HttpTransport::new(relay_url)?),
        store: Arc::new(store),
        clock: Arc::new(SystemClock),
        rng_seed: None, // from the OS; a simulation passes a seed
        config: ClientConfig::default(),
    })
    .await?;
    Ok(client)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let relay_name = args.next().unwrap_or_else(|| "localhost".into());
    let dir = tempfile::tempdir()?;
    let suffix = std::process::id();

    let alice = open(&dir.path().join("alice"), &url).await?;
    let bob = open(&dir.path().join("bob"), &url).await?;
    let names = [relay_name];
    let a = alice
        .register(&format!("alice{suffix}"), None, &url, &names)
        .await?;
    let b = bob
        .register(&format!("bob{suffix}"), None, &url, &names)
        .await?;
    println!("registered {a} and {b}");

    // Alice sends; the call returns once her relay has stored the message.
    let receipt = alice.send(&b, "hello from the SDK").await?;
    println!("sent {} to {} device(s)", receipt.id, receipt.devices);

    // Bob listens on the WebSocket for up to two seconds.
    let bob = Arc::new(bob);
    bob.listen(Duration::from_secs(2), |m| {
        println!("{} got: {}: {}", b, m.from, m.text)
    })
    .await?;

    // Bob replies; Alice fetches over HTTP instead of listening.
    bob.send(&a, "hello back").await?;
    for m in alice.recv().await? {
        println!("{a} got: {}: {}", m.from, m.text);
    }
    Ok(())
}
