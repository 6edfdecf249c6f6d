//! The client store in one SQLite file (`<state dir>/client.db`), one table
//! per kind of state, WAL journal, `synchronous = FULL` so an applied batch
//! survives a crash or power loss. The file is created owner-only (0600).

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};
use zeroize::Zeroizing;

use super::{Batch, ClientStore, Op, StoreError, Table, Value};

/// A [`ClientStore`] in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn db_err(e: sqlx::Error) -> StoreError {
    StoreError(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`. A new file
    /// is created with mode 0600 before SQLite opens it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        create_private_file(path)?;
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db_err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        // One connection: the client is one process and batches must serialize.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        for table in Table::ALL {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
                table.name()
            );
            sqlx::query(AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .map_err(db_err)?;
        }
        // WAL side files inherit the umask; keep them owner-only too.
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            restrict(Path::new(&side));
        }
        Ok(Self { pool })
    }

    /// Closes the pool, flushing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError(format!("cannot create {}: {e}", path.display())))?;
    restrict(path);
    Ok(())
}

#[cfg(not(unix))]
fn create_private_file(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

#[cfg(unix)]
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Best effort: the side file may not exist yet.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict(_path: &Path) {}

/// The smallest string greater than every string starting with `prefix`, for
/// a range scan that needs no LIKE escaping.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[async_trait]
impl ClientStore for SqliteStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Value>, StoreError> {
        let sql = format!("SELECT value FROM {} WHERE key = ?", table.name());
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| r.try_get::<Vec<u8>, _>(0).map(Zeroizing::new))
            .transpose()
            .map_err(db_err)
    }

    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Value)>, StoreError> {
        let rows = match prefix_end(prefix) {
            Some(end) => {
                let sql = format!(
                    "SELECT key, value FROM {} WHERE key >= ? AND key < ? ORDER BY key",
                    table.name()
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(prefix)
                    .bind(end)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                let sql = format!(
                    "SELECT key, value FROM {} WHERE key >= ? ORDER BY key",
                    table.name()
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(prefix)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(db_err)?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0).map_err(db_err)?,
                    Zeroizing::new(r.try_get::<Vec<u8>, _>(1).map_err(db_err)?),
                ))
            })
            .collect()
    }

    async fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for op in batch.ops {
            match op {
                Op::Put { table, key, value } => {
                    let sql = format!(
                        "INSERT INTO {} (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        table.name()
                    );
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(key)
                        .bind(value.as_slice())
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                Op::Delete { table, key } => {
                    let sql = format!("DELETE FROM {} WHERE key = ?", table.name());
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(key)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
            }
        }
        tx.commit().await.map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_store_passes_the_conformance_suite_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.db");
        let store = SqliteStore::open(&path).await.unwrap();
        super::super::conformance::run(&store).await;
        store.close().await;
        let reopened = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            reopened
                .get(Table::Meta, "a")
                .await
                .unwrap()
                .unwrap()
                .as_slice(),
            b"2"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sqlite_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.db");
        let _store = SqliteStore::open(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end(""), None);
    }
}
