//! SDK messages/s with no sockets: two clients over an in-process relay
//! (`courier-testkit`: the real relay logic on a memory store), with in-memory stores and then SQLite files. Shows what the
//! client itself costs (crypto, encoding, local commits).
//!
//! ```text
//! cargo run -p courier-client --example memory_throughput -- 300
//! ```

use std::sync::Arc;
use std::time::Instant;

use courier_client::{
    Client, ClientConfig, ClientParts, ClientStore, MemoryStore, SqliteStore, SystemClock,
};
use courier_testkit::Network;

async fn open(net: &Network, store: Arc<dyn ClientStore>, seed: u8) -> anyhow::Result<Client> {
    Ok(Client::open(ClientParts {
        transport: Arc::new(net.transport("relay.example")?),
        store,
        clock: Arc::new(SystemClock),
        rng_seed: Some([seed; 32]),
        config: ClientConfig::default(),
    })
    .await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(300);
    for sqlite in [false, true] {
        let dir = tempfile::tempdir()?;
        let store = |name: &str| {
            let path = dir.path().join(name);
            async move {
                let s: Arc<dyn ClientStore> = if sqlite {
                    Arc::new(SqliteStore::open(&path).await?)
                } else {
                    Arc::new(MemoryStore::new())
                };
                anyhow::Ok(s)
            }
        };
        let net = Network::new();
        let alice = open(&net, store("a.db").await?, 1).await?;
        let bob = open(&net, store("b.db").await?, 2).await?;
        alice.register("alice", None, "", &[]).await?;
        let b = bob.register("bob", None, "", &[]).await?;
        alice.send(&b, "warm-up").await?;
        bob.recv().await?;
        let start = Instant::now();
        for i in 0..n {
            alice.send(&b, &format!("message {i}")).await?;
        }
        let send = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let got = bob.recv().await?.len();
        let recv = start.elapsed().as_secs_f64();
        anyhow::ensure!(got == n, "received {got} of {n}");
        let kind = if sqlite { "sqlite" } else { "memory" };
        println!(
            "store={kind} messages={n} send_per_s={:.0} recv_per_s={:.0}",
            n as f64 / send,
            n as f64 / recv
        );
    }
    Ok(())
}
