//! PostgreSQL store: the same schema and operations as SQLite, for relays
//! that outgrow one machine; several processes may share one database.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor};

use courier_relay::{RelayError, Result};

/// What the shared modules in `sql/` compile against: PostgreSQL's sqlx types,
/// and `PG` for the few statements that differ.
mod dialect {
    pub(super) use sqlx::postgres::{
        PgConnection as Conn, PgPool as Pool, PgRow as Row, Postgres as Db,
    };
    /// True for PostgreSQL.
    pub(super) const PG: bool = true;
}

// The shared operations, compiled here for PostgreSQL (see the crate docs).
#[path = "sql/accounts.rs"]
mod accounts;
#[path = "sql/auth.rs"]
mod auth;
#[path = "sql/keys.rs"]
mod keys;
#[path = "sql/mailbox.rs"]
mod mailbox;
#[path = "sql/outbox.rs"]
mod outbox;
#[path = "sql/query.rs"]
mod query;
#[path = "sql/store.rs"]
mod store;
#[path = "sql/writer.rs"]
mod writer;

/// The PostgreSQL store. Every write is committed before the call returns.
pub type PostgresStore = writer::SqlStore;

/// How to connect a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Gather concurrent writes into one transaction (default true).
    pub group_commit: bool,
    /// Reader connections (default 8).
    pub readers: u32,
    /// Keep the tables in this schema (created if missing) instead of the
    /// default search path; letters, digits and `_` only. Tests use a random
    /// schema each.
    pub schema: Option<String>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            group_commit: true,
            readers: 8,
            schema: None,
        }
    }
}

impl writer::SqlStore {
    /// Connects to `url` (`postgres://…`) and applies the embedded migrations.
    /// Must be called inside a Tokio runtime: it spawns the writer task.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self> {
        Ok(Self::connect_inner(url, options).await?)
    }

    async fn connect_inner(url: &str, options: PostgresOptions) -> crate::error::Result<Self> {
        let connect = PgConnectOptions::from_str(url)?;
        let schema = options.schema.clone();
        if let Some(s) = &schema {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(RelayError::Store("schema name must be [A-Za-z0-9_]+".into()).into());
            }
            let mut conn = sqlx::PgConnection::connect_with(&connect).await?;
            conn.execute(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {s}"
            )))
            .await?;
            conn.close().await?;
        }
        let pool = |max: u32| {
            let schema = schema.clone();
            PgPoolOptions::new()
                .test_before_acquire(false)
                .max_connections(max)
                .after_connect(move |conn, _| {
                    let schema = schema.clone();
                    Box::pin(async move {
                        if let Some(s) = schema {
                            conn.execute(sqlx::AssertSqlSafe(format!("SET search_path TO {s}")))
                                .await?;
                        }
                        Ok(())
                    })
                })
        };
        let write = pool(1)
            .connect_with(
                connect
                    .clone()
                    .statement_cache_capacity(writer::WRITER_STATEMENTS_CACHED),
            )
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&write).await?;
        let read = pool(options.readers.max(1)).connect_with(connect).await?;
        Self::start(read, write, options.group_commit, None)
    }
}
