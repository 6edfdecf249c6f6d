//! SDK throughput for one client pair over one relay: N direct messages
//! from alice to bob (each submitted and stored before the next), then bob
//! receives, decrypts, stores and acks them all.
//!
//! ```text
//! courier serve --data-dir /tmp/relay &
//! cargo run --release -p courier-client --example throughput -- http://127.0.0.1:8080 localhost 1000
//! ```

use std::sync::Arc;
use std::time::Instant;

use courier_client::{Client, ClientConfig, ClientParts, HttpTransport, SqliteStore, SystemClock};

async fn open(dir: &std::path::Path, url: &str) -> anyhow::Result<Client> {
    std::fs::create_dir_all(dir)?;
    Ok(Client::open(ClientParts {
        transport: Arc::new(HttpTransport::new(url)?),
        store: Arc::new(SqliteStore::open(&dir.join("client.db")).await?),
        clock: Arc::new(SystemClock),
        rng_seed: None,
        config: ClientConfig::default(),
    })
    .await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let names = [args.next().unwrap_or_else(|| "localhost".into())];
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(500);
    let dir = tempfile::tempdir()?;
    let id = std::process::id();
    let alice = open(&dir.path().join("a"), &url).await?;
    let bob = open(&dir.path().join("b"), &url).await?;
    alice
        .register(&format!("tpa{id}"), None, &url, &names)
        .await?;
    let b = bob
        .register(&format!("tpb{id}"), None, &url, &names)
        .await?;
    // Warm up: session setup is not what is measured.
    alice.send(&b, "warm-up").await?;
    bob.recv().await?;

    let start = Instant::now();
    for i in 0..n {
        alice.send(&b, &format!("message {i}")).await?;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut got = 0;
    while got < n {
        let batch = bob.recv().await?;
        if batch.is_empty() {
            anyhow::bail!("only {got} of {n} messages arrived");
        }
        got += batch.len();
    }
    let recv_secs = start.elapsed().as_secs_f64();
    println!(
        "messages={n} send_per_s={:.0} recv_per_s={:.0} end_to_end_per_s={:.0}",
        n as f64 / send_secs,
        n as f64 / recv_secs,
        n as f64 / (send_secs + recv_secs)
    );
    Ok(())
}
