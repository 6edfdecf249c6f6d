//! SQLite store: one file, WAL journal, one writer task with group commit,
//! a pool of readers. See `docs/storage.md` for the durability argument.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use courier_relay::Result;

/// What the shared modules in `sql/` compile against: SQLite's sqlx types,
/// and `PG` for the few statements that differ.
mod dialect {
    pub(super) use sqlx::sqlite::{
        Sqlite as Db, SqliteConnection as Conn, SqlitePool as Pool, SqliteRow as Row,
    };
    /// True for PostgreSQL.
    pub(super) const PG: bool = false;
}

// The shared operations, compiled here for SQLite (see the crate docs).
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

/// The SQLite store. Every write is committed (and, with
/// [`Durability::Full`], fsynced) before the call returns.
pub type SqliteStore = writer::SqlStore;

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit reaches the disk (the WAL is fsynced) before the write
    /// is answered; an accepted message survives a process crash and a
    /// power loss. The default. With group commit the fsync runs on a
    /// thread of its own while the next batch executes.
    #[default]
    Full,
    /// `synchronous = NORMAL`: survives a process crash, but the last
    /// commits before a power loss or OS crash may be lost. Only for
    /// operators who accept that explicitly.
    Normal,
}

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Gather concurrent writes into one transaction (default true).
    pub group_commit: bool,
    /// When commits reach the disk.
    pub durability: Durability,
    /// Reader connections (default 4).
    pub readers: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            group_commit: true,
            durability: Durability::Full,
            readers: 4,
        }
    }
}

impl writer::SqlStore {
    /// Opens (creating if missing) the database file at `path` and applies
    /// the embedded migrations. Must be called inside a Tokio runtime: it
    /// spawns the writer task.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        Ok(Self::open_inner(path, options).await?)
    }

    async fn open_inner(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> crate::error::Result<Self> {
        // Full durability with group commit: no fsync inside COMMIT; a
        // thread of its own syncs the WAL before anyone is answered, while
        // the writer runs the next batch (`crate::syncer::Syncer`). Without group
        // commit (a baseline for benchmarks), each COMMIT fsyncs.
        let wal_sync = (options.durability == Durability::Full && options.group_commit)
            .then(|| path.as_ref().to_path_buf());
        let synchronous = match options.durability {
            Durability::Full if wal_sync.is_none() => SqliteSynchronous::Full,
            Durability::Full | Durability::Normal => SqliteSynchronous::Normal,
        };
        let base = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            // Batched statements differ by row count; keep them prepared
            // (the default 100 made the writer re-parse most of them). And
            // 64 MiB of page cache instead of SQLite's 2 MiB: the writer
            // touches the index pages of every recent message and mailbox,
            // and re-reading them from the OS was 14 % of its time under
            // load. (Readers keep the default; they read recent pages.)
            .connect_with(
                base.clone()
                    .statement_cache_capacity(writer::WRITER_STATEMENTS_CACHED)
                    .pragma("cache_size", "-65536"),
            )
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(options.readers.max(1))
            .connect_with(base.read_only(true))
            .await?;
        Self::start(read, write, options.group_commit, wal_sync)
    }
}
