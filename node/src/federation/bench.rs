//! Federation figures for `docs/performance.md` (ignored by default):
//!
//! ```text
//! cargo test --release -p courier-node --lib federation::bench -- --ignored --nocapture
//! ```
//!
//! Two relays in this process, each over its own SQLite file (the `courier
//! serve` default: WAL, group commit, full durability), federating over
//! real QUIC on 127.0.0.1. Messages enter relay A through
//! `Relay::accept_message` (no HTTP), leave through the outbox drainer and
//! count as received when relay B's `accept_batch` has stored them.
//! `COURIER_BENCH_STORE=memory` uses in-memory stores instead, to see the
//! federation path without the disk; `COURIER_BENCH_MESSAGES` (default
//! 20,000) sets the throughput run's size, `COURIER_BENCH_SENDERS` its
//! concurrent senders (default 512), `COURIER_BENCH_RATE` the latency run's
//! rate (default half the measured throughput).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_protocol::{
    Address, BundleRequest, BundleResponse, Bytes, DeliveryAcks, DeliveryBatch, DeviceId,
    EnvelopeId, OutgoingMessage, RecipientEntry, RelayName,
};
use courier_relay::federation::{Federation, FederationError};
use courier_relay::{NoNotifier, Relay, Store, SystemClock};
use courier_store_sql::{SqliteOptions, SqliteStore};
use libp2p::identity::Keypair;
use rand::SeedableRng;

use super::tests::{name, register};
use super::*;

const BODY_BYTES: usize = 512;
const HEADER_BYTES: usize = 128;

/// B's side: stores through the relay and notes when each envelope landed.
struct Timed {
    inner: RelayInbound,
    received: Mutex<HashMap<EnvelopeId, Instant>>,
    count: AtomicU64,
}

#[async_trait::async_trait]
impl Inbound for Timed {
    async fn deliver(&self, from: RelayName, batch: DeliveryBatch) -> DeliveryAcks {
        let ids: Vec<EnvelopeId> = batch.envelopes.iter().map(|e| e.id).collect();
        let acks = self.inner.deliver(from, batch).await;
        let now = Instant::now();
        let mut received = self.received.lock().unwrap();
        for id in ids {
            if received.insert(id, now).is_none() {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        acks
    }

    async fn bundle(&self, from: RelayName, request: BundleRequest) -> BundleResponse {
        self.inner.bundle(from, request).await
    }
}

/// A's side: counts the federation frames it sends and receives.
struct Counting {
    inner: Handle,
    frame_bytes: AtomicU64,
    batches: AtomicU64,
    envelopes: AtomicU64,
}

#[async_trait::async_trait]
impl Federation for Counting {
    async fn deliver(
        &self,
        dest: &RelayName,
        batch: DeliveryBatch,
    ) -> Result<DeliveryAcks, FederationError> {
        // 4-byte length prefix + version byte + postcard, both directions.
        let out = 4 + codec::encode(&batch).map(|b| b.len()).unwrap_or(0);
        let n = batch.envelopes.len() as u64;
        let acks = self.inner.deliver(dest, batch).await?;
        let back = 4 + codec::encode(&acks).map(|b| b.len()).unwrap_or(0);
        self.frame_bytes
            .fetch_add((out + back) as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.envelopes.fetch_add(n, Ordering::Relaxed);
        Ok(acks)
    }

    async fn fetch_bundle(
        &self,
        dest: &RelayName,
        request: BundleRequest,
    ) -> Result<BundleResponse, FederationError> {
        self.inner.fetch_bundle(dest, request).await
    }
}

struct Pair {
    a: Arc<Relay>,
    alice: courier_relay::AuthedDevice,
    timed: Arc<Timed>,
    counting: Arc<Counting>,
    _dirs: tempfile::TempDir,
    _drainer: Drainer,
    /// Dropping the last handle of a swarm stops it.
    _handles: Vec<Handle>,
}

async fn pair() -> Pair {
    let dirs = tempfile::tempdir().unwrap();
    let mut relays = Vec::new();
    let mut handles = Vec::new();
    let mut timed = None;
    for (i, relay_name) in ["relay-a.example", "relay-b.example"]
        .into_iter()
        .enumerate()
    {
        let store: Arc<dyn Store> =
            if std::env::var("COURIER_BENCH_STORE").as_deref() == Ok("memory") {
                Arc::new(courier_relay::MemoryStore::new())
            } else {
                Arc::new(
                    SqliteStore::open(
                        dirs.path().join(format!("{relay_name}.db")),
                        SqliteOptions::default(),
                    )
                    .await
                    .unwrap(),
                )
            };
        let wake = Drainer::waker();
        let relay = Arc::new(
            Relay::new(
                {
                    // One account stands in for a relay's many clients here,
                    // so the per-account outbox share would be the limit.
                    let mut config = courier_relay::Config::new(name(relay_name));
                    config.outbox_limits.per_account_max = u64::MAX;
                    // Nobody acks on B, so its 16 mailboxes only grow: one
                    // source (relay A) may fill them whole here, or B's
                    // per-source share (audit item 1) would be what is
                    // measured.
                    config.mailbox_per_source_max = config.mailbox_depth_max;
                    config.mailbox_per_source_bytes_max = config.mailbox_bytes_max;
                    config
                },
                store,
                Arc::new(SystemClock),
                Box::new(rand::rngs::StdRng::seed_from_u64(i as u64)),
            )
            .with_notifier(Arc::new(OutboxNotifier::new(
                Arc::new(NoNotifier),
                wake.clone(),
            ))),
        );
        let inbound = Arc::new(Timed {
            inner: RelayInbound(relay.clone()),
            received: Mutex::new(HashMap::new()),
            count: AtomicU64::new(0),
        });
        let (handle, _task) = spawn(
            Config::new(name(relay_name), Keypair::generate_ed25519()),
            inbound.clone(),
        )
        .await
        .unwrap();
        if i == 1 {
            timed = Some(inbound);
        }
        relays.push((relay, wake));
        handles.push(handle);
    }
    let b_addr = handles[1].listen_addrs().await.unwrap().remove(0);
    handles[0].add_peer(b_addr).await.unwrap();
    let (a, wake) = relays.remove(0);
    let (b, _) = relays.remove(0);
    let counting = Arc::new(Counting {
        inner: handles[0].clone(),
        frame_bytes: AtomicU64::new(0),
        batches: AtomicU64::new(0),
        envelopes: AtomicU64::new(0),
    });
    let mut drain = DrainerConfig::default();
    if let Some(w) = std::env::var("COURIER_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        drain.workers_per_destination = w;
    }
    let drainer = Drainer::spawn(a.clone(), counting.clone(), wake, drain);
    let alice = register(a.store().as_ref(), a.name(), "alice").await;
    for i in 0..16 {
        register(b.store().as_ref(), b.name(), &format!("bob{i}")).await;
    }
    Pair {
        a,
        alice,
        timed: timed.unwrap(),
        counting,
        _dirs: dirs,
        _drainer: drainer,
        _handles: handles,
    }
}

fn message(seq: u64) -> OutgoingMessage {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&seq.to_be_bytes());
    random[8..].copy_from_slice(&rand::random::<[u8; 2]>());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    OutgoingMessage {
        id: EnvelopeId::new(now, random),
        body: Bytes::from(vec![0xa5; BODY_BYTES]),
        recipients: vec![RecipientEntry {
            to: Address::parse(&format!("bob{}@relay-b.example", seq % 16)).unwrap(),
            device: DeviceId(1),
            header: Bytes::from(vec![0x5a; HEADER_BYTES]),
        }],
        ttl_secs: 3600,
    }
}

/// Sends `n` messages, `concurrency` at a time; returns send instants by id.
async fn blast(p: &Pair, first: u64, n: u64, concurrency: usize) -> HashMap<EnvelopeId, Instant> {
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let next = Arc::new(AtomicU64::new(first));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (a, alice, sent, next) = (p.a.clone(), p.alice.clone(), sent.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= first + n {
                    return;
                }
                let m = message(seq);
                let id = m.id;
                let at = Instant::now();
                a.accept_message(&alice, m).await.unwrap();
                sent.lock().unwrap().insert(id, at);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(sent).unwrap().into_inner().unwrap()
}

async fn wait_received(p: &Pair, total: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while p.timed.count.load(Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "not all messages arrived");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
async fn cross_relay_throughput_latency_and_bytes() {
    let n: u64 = std::env::var("COURIER_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let p = pair().await;

    // Warm-up: connection, SQLite caches.
    blast(&p, 0, 500, 32).await;
    wait_received(&p, 500, 30).await;

    // Throughput: as fast as A accepts them, from `COURIER_BENCH_SENDERS`
    // (default 512) concurrent senders standing in for a relay's clients;
    // each waits for its commit, so fewer senders mean smaller batches.
    let senders: usize = std::env::var("COURIER_BENCH_SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let start = Instant::now();
    blast(&p, 1_000_000, n, senders).await;
    let accepted = start.elapsed();
    wait_received(&p, 500 + n, 120).await;
    let elapsed = start.elapsed();
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "throughput: {n} messages from {senders} senders in {:.2}s = {rate:.0} msg/s (A accepted them in {:.2}s = {:.0} msg/s)",
        elapsed.as_secs_f64(),
        accepted.as_secs_f64(),
        n as f64 / accepted.as_secs_f64()
    );

    // Latency at half that rate, paced, for ~5 s.
    // `COURIER_BENCH_RATE` measures latency at a fixed rate instead.
    let half = std::env::var("COURIER_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(rate / 2.0)
        .max(1.0);
    let m = (half * 5.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / half);
    let before = p.timed.count.load(Ordering::Relaxed);
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let permits = Arc::new(tokio::sync::Semaphore::new(512));
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..m {
        tokio::time::sleep_until(t0 + interval.mul_f64(i as f64)).await;
        let (a, alice, sent) = (p.a.clone(), p.alice.clone(), sent.clone());
        let permit = permits.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let msg = message(2_000_000 + i);
            let id = msg.id;
            let at = Instant::now();
            a.accept_message(&alice, msg).await.unwrap();
            sent.lock().unwrap().insert(id, at);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_received(&p, before + m, 60).await;
    let sent = sent.lock().unwrap();
    let received = p.timed.received.lock().unwrap();
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| received.get(id).map(|r| r.saturating_duration_since(*at)))
        .collect();
    lat.sort();
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "latency at {half:.0} msg/s ({m} messages): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );

    let bytes = p.counting.frame_bytes.load(Ordering::Relaxed) as f64;
    let envelopes = p.counting.envelopes.load(Ordering::Relaxed) as f64;
    let batches = p.counting.batches.load(Ordering::Relaxed) as f64;
    println!(
        "bytes: {:.1} federation frame bytes per message (request + ack) for {} bytes of ciphertext (body {BODY_BYTES} + header {HEADER_BYTES}); {:.1} envelopes per batch",
        bytes / envelopes,
        BODY_BYTES + HEADER_BYTES,
        envelopes / batches
    );
}
