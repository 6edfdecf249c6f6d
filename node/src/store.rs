//! Opening the configured store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use courier_relay::Store;
use courier_relay::store::{
    Durability, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore,
};

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
