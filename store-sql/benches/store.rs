//! Store benchmark: accept → fetch → ack through `Relay`, for 1 and 50
//! recipients, one sender task or 64 concurrent ones, on every store, with
//! and without group commit; plus a raw batched-INSERT baseline per SQL
//! store measured in the same run. Prints a Markdown table.
//!
//! `cargo bench -p courier-store-sql --bench store` (PostgreSQL rows when
//! `COURIER_TEST_DATABASE_URL` is set; `COURIER_BENCH_SECS` sets the accept
//! phase length, default 2).
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_protocol::api::{DeviceKeys, DeviceList, DeviceListEntry, RegisterRequest};
use courier_protocol::{
    Address, Bytes, DeviceId, EnvelopeId, OutgoingMessage, RecipientEntry, RelayName, Username,
};
use courier_relay::{AuthedDevice, Config, MemoryStore, Relay, Store, SystemClock};
use courier_store_sql::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use ed25519_dalek::{Signer, SigningKey};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sqlx::{Connection, Executor};

const RELAY: &str = "relay-a.example";
const BODY_BYTES: usize = 256;
const HEADER_BYTES: usize = 64;
const CONCURRENT_TASKS: usize = 512;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Memory,
    Sqlite,
    Postgres,
}

fn register(user: &str, seed: u32) -> RegisterRequest {
    let mut secret = [0u8; 32];
    secret[..4].copy_from_slice(&seed.to_be_bytes());
    let sk = SigningKey::from_bytes(&secret);
    let dh_key = Bytes(vec![1; 32]);
    let keys = DeviceKeys {
        identity_key: Bytes(sk.verifying_key().to_bytes().to_vec()),
        dh_key_signature: Bytes(
            sk.sign(&courier_protocol::dh_key_signing_bytes(dh_key.as_slice()))
                .to_bytes()
                .to_vec(),
        ),
        dh_key,
    };
    let list = DeviceList {
        address: Address::new(
            Username::parse(user).unwrap(),
            RelayName::parse(RELAY).unwrap(),
        ),
        version: 1,
        devices: vec![DeviceListEntry {
            device: DeviceId(1),
            identity_key: keys.identity_key.clone(),
        }],
    };
    let signature = Bytes(sk.sign(&list.signing_bytes()).to_bytes().to_vec());
    RegisterRequest {
        username: Username::parse(user).unwrap(),
        invite: None,
        device: keys,
        device_list: courier_protocol::api::SignedDeviceList {
            list,
            signer: DeviceId(1),
            signature,
        },
    }
}

fn authed(user: &str) -> AuthedDevice {
    AuthedDevice {
        user: Username::parse(user).unwrap(),
        device: DeviceId(1),
        session: String::new(),
        prekeys_low: None,
    }
}

struct Env {
    dir: tempfile::TempDir,
    pg_url: Option<String>,
    seq: AtomicU64,
}

impl Env {
    async fn store(&self, kind: Kind, group_commit: bool) -> (Arc<dyn Store>, Option<String>) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        match kind {
            Kind::Memory => (Arc::new(MemoryStore::new()), None),
            Kind::Sqlite => {
                let s = SqliteStore::open(
                    self.dir.path().join(format!("bench-{n}.db")),
                    SqliteOptions {
                        group_commit,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                (Arc::new(s), None)
            }
            Kind::Postgres => {
                let schema = format!("relay_bench_{}_{n}", std::process::id());
                let s = PostgresStore::connect(
                    self.pg_url.as_deref().unwrap(),
                    PostgresOptions {
                        group_commit,
                        readers: 4,
                        schema: Some(schema.clone()),
                    },
                )
                .await
                .unwrap();
                (Arc::new(s), Some(schema))
            }
        }
    }

    async fn drop_schema(&self, schema: Option<String>) {
        if let (Some(url), Some(schema)) = (&self.pg_url, schema) {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            c.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .await
                .unwrap();
        }
    }
}

struct Measured {
    accepted: u64,
    accept_per_s: f64,
    delivered_per_s: f64,
}

async fn run_case(
    env: &Env,
    kind: Kind,
    group_commit: bool,
    recipients: usize,
    tasks: usize,
    secs: f64,
) -> Measured {
    let (store, schema) = env.store(kind, group_commit).await;
    let mut config = Config::new(RelayName::parse(RELAY).unwrap());
    config.mailbox_depth_max = u32::MAX;
    // Unlimited shares too, but still counted: the upsert is measured.
    config.mailbox_bytes_max = u64::MAX;
    config.mailbox_per_source_max = u32::MAX;
    config.mailbox_per_source_bytes_max = u64::MAX;
    let relay = Arc::new(Relay::new(
        config,
        store,
        Arc::new(SystemClock),
        Box::new(StdRng::seed_from_u64(1)),
    ));
    relay.register(register("sender", 0)).await.unwrap();
    let mut to = Vec::new();
    for r in 0..recipients {
        let name = format!("r{r}");
        relay.register(register(&name, r as u32 + 1)).await.unwrap();
        to.push(RecipientEntry {
            to: Address::new(
                Username::parse(&name).unwrap(),
                RelayName::parse(RELAY).unwrap(),
            ),
            device: DeviceId(1),
            header: Bytes(vec![3; HEADER_BYTES]),
        });
    }
    let to = Arc::new(to);
    // Bound the work by count as well as time, so fast stores do not fill
    // memory.
    let max = if recipients == 1 { 400_000 } else { 20_000 };
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let relay = relay.clone();
        let to = to.clone();
        let counter = counter.clone();
        handles.push(tokio::spawn(async move {
            let sender = authed("sender");
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= max || Instant::now() >= deadline {
                    counter.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                let mut random = [0u8; 10];
                random[..8].copy_from_slice(&n.to_be_bytes());
                let message = OutgoingMessage {
                    id: EnvelopeId::new(1, random),
                    body: Bytes(vec![7; BODY_BYTES]),
                    recipients: (*to).clone(),
                    ttl_secs: 3600,
                };
                relay.accept_message(&sender, message).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let accept_s = start.elapsed().as_secs_f64();
    let accepted = counter.load(Ordering::Relaxed);

    // Drain every mailbox: fetch pages of 500, ack each page.
    let start = Instant::now();
    let mut handles = Vec::new();
    for r in 0..recipients {
        let relay = relay.clone();
        handles.push(tokio::spawn(async move {
            let me = authed(&format!("r{r}"));
            let mut after = 0;
            let mut n = 0u64;
            loop {
                let page = relay.fetch(&me, after, 500).await.unwrap();
                if page.envelopes.is_empty() {
                    break;
                }
                let seqs: Vec<u64> = page.envelopes.iter().map(|e| e.seq).collect();
                after = *seqs.last().unwrap();
                n += relay.ack(&me, &seqs).await.unwrap().acked as u64;
            }
            n
        }));
    }
    let mut delivered = 0;
    for h in handles {
        delivered += h.await.unwrap();
    }
    let deliver_s = start.elapsed().as_secs_f64();
    assert_eq!(delivered, accepted * recipients as u64);
    let stats = relay.store().stats().await.unwrap();
    assert_eq!(stats.bodies, 0, "every body freed after the last ack");
    drop(relay);
    env.drop_schema(schema).await;
    Measured {
        accepted,
        accept_per_s: accepted as f64 / accept_s,
        delivered_per_s: delivered as f64 / deliver_s,
    }
}

/// Rows/s of plain `INSERT INTO t (id, body)` on one connection, 512 rows
/// per transaction, same durability settings as the store; one statement
/// per row, or (`multi_row`) 128 rows per statement.
async fn baseline(env: &Env, kind: Kind, secs: f64, multi_row: bool) -> f64 {
    let per_statement = if multi_row { 128 } else { 1 };
    let body = vec![7u8; BODY_BYTES];
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n: u64 = 0;
    match kind {
        Kind::Sqlite => {
            use std::str::FromStr;
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(env.dir.path().join(format!("baseline-{multi_row}.db")))
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
            let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
            c.execute("CREATE TABLE t (id BLOB PRIMARY KEY, body BLOB NOT NULL)")
                .await
                .unwrap();
            let values = vec!["(?, ?)"; per_statement].join(",");
            let insert = format!("INSERT INTO t (id, body) VALUES {values}");
            while Instant::now() < deadline {
                let mut tx = c.begin().await.unwrap();
                for _ in 0..512 / per_statement {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.as_str()));
                    for _ in 0..per_statement {
                        n += 1;
                        q = q.bind(n.to_be_bytes().to_vec()).bind(&body[..]);
                    }
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
        Kind::Postgres => {
            let url = env.pg_url.as_deref().unwrap();
            let schema = format!("relay_bench_{}_baseline_{multi_row}", std::process::id());
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            c.execute(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (id BYTEA PRIMARY KEY, body BYTEA NOT NULL)"
            )))
            .await
            .unwrap();
            let values: Vec<String> = (0..per_statement)
                .map(|r| format!("(${}, ${})", 2 * r + 1, 2 * r + 2))
                .collect();
            let insert = format!(
                "INSERT INTO {schema}.t (id, body) VALUES {}",
                values.join(",")
            );
            while Instant::now() < deadline {
                let mut tx = c.begin().await.unwrap();
                for _ in 0..512 / per_statement {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.as_str()));
                    for _ in 0..per_statement {
                        n += 1;
                        q = q.bind(n.to_be_bytes().to_vec()).bind(&body[..]);
                    }
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
            c.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .await
                .unwrap();
        }
        Kind::Memory => return 0.0,
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // we need. Only run the measurements under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: f64 = std::env::var("COURIER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            pg_url: std::env::var("COURIER_TEST_DATABASE_URL").ok(),
            seq: AtomicU64::new(0),
        };
        let mut kinds = vec![(Kind::Memory, "memory"), (Kind::Sqlite, "sqlite")];
        if env.pg_url.is_some() {
            kinds.push((Kind::Postgres, "postgres"));
        } else {
            eprintln!("COURIER_TEST_DATABASE_URL unset: no PostgreSQL rows");
        }
        println!(
            "| store | group commit | recipients | sender tasks | accepted | accept msg/s | fetch+ack entries/s |"
        );
        println!("|---|---|---|---|---|---|---|");
        for &(kind, name) in &kinds {
            let modes: &[bool] = if kind == Kind::Memory { &[true] } else { &[true, false] };
            for &gc in modes {
                for recipients in [1usize, 50] {
                    for tasks in [1usize, CONCURRENT_TASKS] {
                        let m = run_case(&env, kind, gc, recipients, tasks, secs).await;
                        let gc_text = if kind == Kind::Memory {
                            "n/a"
                        } else if gc {
                            "on"
                        } else {
                            "off"
                        };
                        println!(
                            "| {name} | {gc_text} | {recipients} | {tasks} | {} | {:.0} | {:.0} |",
                            m.accepted, m.accept_per_s, m.delivered_per_s
                        );
                    }
                }
            }
        }
        println!();
        println!(
            "| baseline: raw batched INSERT, 512 rows/transaction, one connection | 1 row/statement, rows/s | 128 rows/statement, rows/s |"
        );
        println!("|---|---|---|");
        for &(kind, name) in &kinds {
            if kind != Kind::Memory {
                let single = baseline(&env, kind, secs, false).await;
                let multi = baseline(&env, kind, secs, true).await;
                println!("| {name} | {single:.0} | {multi:.0} |");
            }
        }
    });
}
