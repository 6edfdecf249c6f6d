//! An in-memory store for simulations and tests: same semantics as SQLite,
//! nothing on disk.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Batch, ClientStore, Op, StoreError, Table, Value};

/// A [`ClientStore`] in memory. Cloning the values out keeps them zeroized on drop.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Rows>,
}

type Rows = BTreeMap<(Table, String), Value>;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Rows>, StoreError> {
        self.tables
            .lock()
            .map_err(|_| StoreError("memory store lock poisoned".into()))
    }
}

#[async_trait]
impl ClientStore for MemoryStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.lock()?.get(&(table, key.to_owned())).cloned())
    }

    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Value)>, StoreError> {
        let map = self.lock()?;
        Ok(map
            .range((table, prefix.to_owned())..)
            .take_while(|((t, k), _)| *t == table && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut map = self.lock()?;
        for op in batch.ops {
            match op {
                Op::Put { table, key, value } => {
                    map.insert((table, key), value);
                }
                Op::Delete { table, key } => {
                    map.remove(&(table, key));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        super::super::conformance::run(&MemoryStore::new()).await;
    }
}
