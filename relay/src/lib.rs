//! The relay's logic — accounts, devices, key directory, mailboxes and
//! outbox — as plain Rust over a [`Store`] trait, an injected [`Clock`] and
//! injected randomness. No sockets here: the gateway (HTTP/WebSocket) and the
//! federation driver call into [`Relay`]; the node wires it to a store.
//!
//! Stores: [`MemoryStore`] here (simulations, tests); the SQLite and
//! PostgreSQL stores live in `courier-store-sql`, so this crate depends on
//! no database, runtime or network library (a test there checks the crate
//! graph). The `testkit` feature exports the store conformance suite. See
//! `docs/storage.md`.

mod access_cache;
pub mod account;
pub mod auth;
pub mod clock;
pub mod device;
pub mod directory;
pub mod drain_scheduler;
pub mod error;
pub mod federation;
pub mod mailbox;
pub mod outbox;
pub mod outbox_budget;
pub mod peering;
pub mod prekey_budget;
pub mod relay;
pub mod routes;
pub mod secret;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod types;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{RelayError, Result};
pub use mailbox::Accepted;
pub use prekey_budget::{PrekeyBudgetConfig, Requester};
pub use relay::{
    AuthedDevice, Config, NoNotifier, Notifier, Random, Registration, Relay, Revocation,
};
pub use secret::StoreSecret;
pub use store::{MemoryStore, Store, StoreStats};
