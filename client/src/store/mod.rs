//! The client's local state behind one small trait: a few named tables of
//! byte values, read one key or one prefix at a time and written in atomic
//! batches.
//!
//! Atomic batches are what make receiving safe: the advanced ratchet state,
//! the decrypted message and the "envelope processed" mark are written in one
//! batch, so a crash leaves either all of them or none (see `docs/client.md`).
//! Values are returned in [`Zeroizing`] buffers because many of them are
//! secret (identity, prekeys, sessions, sender keys).

mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use zeroize::Zeroizing;

/// A stored value; zeroized when dropped because it may be a secret.
pub type Value = Zeroizing<Vec<u8>>;

/// The tables of the client store. Each holds `key → value` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Account, identity key, tokens, counters.
    Meta,
    /// Signed and one-time prekey secrets, keyed `s/<id>` and `o/<id>`; the
    /// X3DH base keys each signed prekey accepted, `b/<id>/<base key hex>`,
    /// and their count, `n/<id>` (replayed first messages are refused).
    PreKeys,
    /// Double Ratchet sessions, keyed `<address>/<device>`.
    Sessions,
    /// Contacts: pinned identity keys and the verified device list, keyed by address.
    Contacts,
    /// Groups this device is in, keyed by group name.
    Groups,
    /// Sender keys (ours and members'), keyed `<group id>/<address>/<device>`.
    SenderKeys,
    /// Envelope ids already processed, so a redelivery is acked, never shown twice.
    Processed,
    /// Message history, keyed by `<received_ms hex>/<mailbox seq hex>/<envelope id>` so keys sort by arrival.
    Messages,
    /// Messages received but not yet handed to the user (`recv` output), same keys as `Messages`.
    Inbox,
    /// Envelopes this device could not process yet: attempt counts of ones
    /// still on the relay (`a/<envelope id>`) and envelopes parked here
    /// after the bound, acked on the relay (`p/<envelope id>`).
    Deferred,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 10] = [
        Table::Meta,
        Table::PreKeys,
        Table::Sessions,
        Table::Contacts,
        Table::Groups,
        Table::SenderKeys,
        Table::Processed,
        Table::Messages,
        Table::Inbox,
        Table::Deferred,
    ];

    /// The SQL table name (a fixed identifier, never user input).
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::PreKeys => "prekeys",
            Table::Sessions => "sessions",
            Table::Contacts => "contacts",
            Table::Groups => "groups",
            Table::SenderKeys => "sender_keys",
            Table::Processed => "processed",
            Table::Messages => "messages",
            Table::Inbox => "inbox",
            Table::Deferred => "deferred",
        }
    }
}

/// One write in a [`Batch`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Insert or replace `key` in `table`.
    Put {
        /// The table.
        table: Table,
        /// The key.
        key: String,
        /// The new value.
        value: Value,
    },
    /// Remove `key` from `table` (no error if absent).
    Delete {
        /// The table.
        table: Table,
        /// The key.
        key: String,
    },
}

/// Writes applied all together or not at all.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, table: Table, key: impl Into<String>, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            value: Zeroizing::new(value),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::Delete {
            table,
            key: key.into(),
        });
        self
    }

    /// Whether the batch has no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends the writes of `other`.
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
}

/// A failure of the local store.
#[derive(Debug, thiserror::Error)]
#[error("local store: {0}")]
pub struct StoreError(pub String);

/// The client's persistent state.
#[async_trait]
pub trait ClientStore: Send + Sync + 'static {
    /// The value under `key`, if any.
    async fn get(&self, table: Table, key: &str) -> Result<Option<Value>, StoreError>;
    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Value)>, StoreError>;
    /// Applies every write of `batch` atomically and durably.
    async fn apply(&self, batch: Batch) -> Result<(), StoreError>;
}

#[cfg(test)]
pub(crate) mod conformance {
    //! One behaviour suite run against every store.
    use super::*;

    pub(crate) async fn run(store: &dyn ClientStore) {
        assert!(store.get(Table::Meta, "a").await.unwrap().is_none());
        let mut b = Batch::new();
        b.put(Table::Meta, "a", b"1".to_vec())
            .put(Table::Sessions, "bob@r/1", b"s1".to_vec())
            .put(Table::Sessions, "bob@r/2", b"s2".to_vec())
            .put(Table::Sessions, "carol@r/1", b"c1".to_vec());
        store.apply(b).await.unwrap();
        assert_eq!(
            store
                .get(Table::Meta, "a")
                .await
                .unwrap()
                .unwrap()
                .as_slice(),
            b"1"
        );
        // Tables are separate namespaces.
        assert!(store.get(Table::Groups, "a").await.unwrap().is_none());
        let bob = store.scan(Table::Sessions, "bob@r/").await.unwrap();
        let keys: Vec<&str> = bob.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["bob@r/1", "bob@r/2"]);
        // Prefixes are literal: LIKE wildcards in a key must not match more.
        let mut b = Batch::new();
        b.put(Table::Sessions, "x%_/1", b"w".to_vec());
        store.apply(b).await.unwrap();
        assert_eq!(store.scan(Table::Sessions, "x%").await.unwrap().len(), 1);
        assert_eq!(store.scan(Table::Sessions, "b%").await.unwrap().len(), 0);
        // Replace and delete in one batch.
        let mut b = Batch::new();
        b.put(Table::Meta, "a", b"2".to_vec())
            .delete(Table::Sessions, "bob@r/1")
            .delete(Table::Sessions, "missing");
        store.apply(b).await.unwrap();
        assert_eq!(
            store
                .get(Table::Meta, "a")
                .await
                .unwrap()
                .unwrap()
                .as_slice(),
            b"2"
        );
        assert_eq!(
            store.scan(Table::Sessions, "bob@r/").await.unwrap().len(),
            1
        );
        assert_eq!(store.scan(Table::Sessions, "").await.unwrap().len(), 3);
    }
}
