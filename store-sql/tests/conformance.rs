//! The store conformance suite (`courier_relay::testkit::conformance`) over
//! SQLite (a file in a tempdir) and PostgreSQL (when
//! `COURIER_TEST_DATABASE_URL` is set; each test in its own schema, dropped
//! afterwards), one `#[test]` per case and store; plus what only SQLite's
//! file can show.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use courier_protocol::DeviceId;
use courier_protocol::api::EnvelopeKind;
use courier_relay::testkit::conformance::{id, message, remote, stats};
use courier_relay::testkit::{Fresh, Harness, Spawner, Stores, user};
use courier_store_sql::{PostgresOptions, PostgresStore, SqliteStore};

/// Runs a case as `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` would.
fn block_on<F: Future>(case: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(case)
}

/// Spawns onto the runtime the test runs on.
fn tokio_spawner() -> Spawner {
    let runtime = tokio::runtime::Handle::current();
    Arc::new(move |task| {
        runtime.spawn(task);
    })
}

/// A [`SqliteStore`] in a file of a fresh tempdir (kept as the harness's
/// `keep`).
struct Sqlite;

#[async_trait]
impl Stores for Sqlite {
    async fn fresh(&self) -> Option<Fresh> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("courier.db"), Default::default())
            .await
            .unwrap();
        Some(Fresh {
            store: Arc::new(store),
            keep: Box::new(dir),
        })
    }

    fn spawner(&self) -> Spawner {
        tokio_spawner()
    }
}

/// The SQLite database file of a harness over [`Sqlite`].
fn sqlite_file(h: &Harness) -> std::path::PathBuf {
    let dir = h.keep.downcast_ref::<tempfile::TempDir>().unwrap();
    dir.path().join("courier.db")
}

/// A [`PostgresStore`] in a schema of its own, or nothing without
/// `COURIER_TEST_DATABASE_URL`.
struct Postgres;

#[async_trait]
impl Stores for Postgres {
    async fn fresh(&self) -> Option<Fresh> {
        let Ok(url) = std::env::var("COURIER_TEST_DATABASE_URL") else {
            eprintln!("skipped: COURIER_TEST_DATABASE_URL is not set");
            return None;
        };
        let name = format!("relay_test_{:016x}", rand::random::<u64>());
        let schema = PgSchema {
            url: url.clone(),
            name: name.clone(),
        };
        let store = PostgresStore::connect(
            &url,
            PostgresOptions {
                schema: Some(name),
                readers: 4,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        Some(Fresh {
            store: Arc::new(store),
            keep: Box::new(schema),
        })
    }

    fn spawner(&self) -> Spawner {
        tokio_spawner()
    }
}

/// Drops a test's PostgreSQL schema when the test ends (also on panic).
struct PgSchema {
    url: String,
    name: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use sqlx::{Connection, Executor};
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    let _ = c
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS {name} CASCADE"
                        )))
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

mod sqlite {
    courier_relay::conformance_tests!(super::Sqlite, super::block_on);
}

mod postgres {
    courier_relay::conformance_tests!(super::Postgres, super::block_on);
}

/// What a reader of the database file sees in the rows about messages:
/// every value of `outbox`, `messages` and `mailbox`, as bytes.
async fn message_rows(file: &std::path::Path) -> Vec<(String, String, Vec<u8>)> {
    use sqlx::Row as _;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(file)
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let mut out = Vec::new();
    for table in ["outbox", "messages", "mailbox"] {
        let columns: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM pragma_table_info('{table}')"
        )))
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
        for column in columns {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT CAST({column} AS BLOB) FROM {table}"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            for r in rows {
                let value: Option<Vec<u8>> = r.get(0);
                out.push((table.to_owned(), column.clone(), value.unwrap_or_default()));
            }
        }
    }
    pool.close().await;
    out
}

/// Audit #13 item 14: the rows of an undelivered message do not name its
/// sealed sender, and the keyed digest and message key cannot be checked
/// against a guess without the relay's store secret; the failure notice
/// still finds the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_does_not_reveal_the_sender_of_an_undelivered_message() {
    let mut seen = Vec::new();
    for secret in [[1u8; 32], [2u8; 32]] {
        let h = Harness::with(&Sqlite, |c| {
            c.store_secret = courier_relay::StoreSecret::new(secret)
        })
        .await
        .unwrap();
        let a = user(&h, "zaphodsender", 1).await;
        let b = user(&h, "bob", 2).await;
        let mut m = message(
            id(1),
            &[
                (remote("x", "relay-b.example"), DeviceId(3)),
                (b.address(), b.device),
            ],
            b"sealed",
        );
        m.ttl_secs = 60;
        h.relay.accept_message(a.authed(), m).await.unwrap();
        assert_eq!(stats(&h).await.outbox_entries, 1, "undelivered");
        let file = sqlite_file(&h);
        let rows = message_rows(&file).await;
        assert!(!rows.is_empty());
        for (table, column, value) in &rows {
            assert!(
                !value.windows(12).any(|w| w == b"zaphodsender"),
                "{table}.{column} names the sender"
            );
            assert_ne!(column, "sender_user");
            assert_ne!(column, "sender_device");
        }
        let digest = rows
            .iter()
            .find(|(t, c, _)| t == "messages" && c == "digest")
            .map(|(_, _, v)| v.clone())
            .unwrap();
        let key = rows
            .iter()
            .find(|(t, c, _)| t == "messages" && c == "id")
            .map(|(_, _, v)| v.clone())
            .unwrap();
        seen.push((digest, key));
        // The notice still reaches the sender.
        h.clock.advance(60_000);
        assert_eq!(h.relay.outbox_expire().await.unwrap(), 1);
        let f = h.relay.fetch(a.authed(), 0, 10).await.unwrap();
        assert_eq!(f.envelopes.len(), 1);
        assert_eq!(f.envelopes[0].kind, EnvelopeKind::DeliveryFailure);
    }
    assert_ne!(
        seen[0].0, seen[1].0,
        "the digest is keyed by the relay secret"
    );
    assert_ne!(seen[0].1, seen[1].1, "so is the message key");
}
