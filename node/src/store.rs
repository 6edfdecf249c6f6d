//! Opening the configured store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use courier_relay::Store;
use courier_store_sql::{Durability, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};

use crate::config::{Config, SqliteDurability};

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
    /// `memory:` — nothing survives the process; for benchmarks and
    /// experiments only.
    Memory,
}

/// Resolves `database_url`: `postgres://…`/`postgresql://…`,
/// `sqlite://PATH` / `sqlite:PATH` (query string ignored), or `memory:`;
/// default `<data-dir>/courier.db`.
pub fn location(data_dir: &Path, config: &Config) -> anyhow::Result<Location> {
    let Some(url) = &config.database_url else {
        return Ok(Location::Sqlite(data_dir.join("courier.db")));
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Location::Postgres(url.clone()));
    }
    if url == "memory:" {
        return Ok(Location::Memory);
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| anyhow::anyhow!("database_url must start with sqlite: or postgres://"))?;
    let path = path.split('?').next().unwrap_or(path);
    anyhow::ensure!(!path.is_empty(), "database_url names no SQLite file");
    Ok(Location::Sqlite(PathBuf::from(path)))
}

/// Opens (and migrates) the store `config` names.
pub async fn open(data_dir: &Path, config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match location(data_dir, config)? {
        Location::Postgres(url) => {
            let options = PostgresOptions {
                schema: config.database_schema.clone(),
                ..PostgresOptions::default()
            };
            let store = PostgresStore::connect(&url, options)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the PostgreSQL store: {e}"))?;
            Ok(Arc::new(store))
        }
        Location::Memory => {
            tracing::warn!("database_url = \"memory:\": nothing will survive a restart");
            Ok(Arc::new(courier_relay::MemoryStore::new()))
        }
        Location::Sqlite(path) => {
            let options = SqliteOptions {
                durability: match config.sqlite_durability {
                    SqliteDurability::Full => Durability::Full,
                    SqliteDurability::Normal => Durability::Normal,
                },
                ..SqliteOptions::default()
            };
            let store = SqliteStore::open(&path, options).await.map_err(|e| {
                anyhow::anyhow!("cannot open the SQLite store {}: {e}", path.display())
            })?;
            Ok(Arc::new(store))
        }
    }
}

/// Name of the store secret's file inside the data directory.
pub const SECRET_FILE: &str = "store.key";

/// The store secret (`<data-dir>/store.key`, 32 random bytes, mode 0600),
/// created on first start. It keys what the store keeps about senders
/// (see `courier_relay::secret`); it lives beside the database, not in it,
/// so a copy of the database alone does not reveal senders. Every process
/// sharing one database must have the same file.
pub fn secret(data_dir: &Path) -> anyhow::Result<courier_relay::StoreSecret> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let path = data_dir.join(SECRET_FILE);
    let read = |path: &Path| -> anyhow::Result<courier_relay::StoreSecret> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{}: not a store secret (32 bytes)", path.display()))?;
        Ok(courier_relay::StoreSecret::new(bytes))
    };
    if path.exists() {
        return read(&path);
    }
    let bytes = rand::random::<[u8; 32]>();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(courier_relay::StoreSecret::new(bytes))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_name_their_backend() {
        let dir = Path::new("/data");
        let with = |url: Option<&str>| Config {
            database_url: url.map(str::to_owned),
            ..Config::default()
        };
        assert_eq!(
            location(dir, &with(None)).unwrap(),
            Location::Sqlite(dir.join("courier.db"))
        );
        assert_eq!(
            location(dir, &with(Some("sqlite:///x/y.db?mode=rwc"))).unwrap(),
            Location::Sqlite(PathBuf::from("/x/y.db"))
        );
        assert_eq!(
            location(dir, &with(Some("sqlite:rel.db"))).unwrap(),
            Location::Sqlite(PathBuf::from("rel.db"))
        );
        assert_eq!(
            location(dir, &with(Some("postgres://u@h/db"))).unwrap(),
            Location::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(
            location(dir, &with(Some("memory:"))).unwrap(),
            Location::Memory
        );
        assert!(location(dir, &with(Some("mysql://h/db"))).is_err());
        assert!(location(dir, &with(Some("sqlite:"))).is_err());
    }
}
