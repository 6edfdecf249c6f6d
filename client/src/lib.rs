//! The Courier client SDK: registration, login, sessions, sending and receiving
//! end-to-end encrypted messages through a home relay, groups and device
//! linking. The `courier-client` command line is a thin layer over it.
//!
//! The logic is plain Rust over two traits so it runs anywhere:
//! [`Transport`] (the relay's client API: [`HttpTransport`] for real relays;
//! `courier-testkit` provides one over in-process relays) and
//! [`ClientStore`] (local state: [`SqliteStore`] in a file, [`MemoryStore`]
//! in memory). Time, waits included, comes from a [`Clock`] and randomness
//! from a seedable generator, so simulations are reproducible. The request
//! layout shared with the simulator and test kits is in [`wire`] and
//! [`content`].
//!
//! Features (all default): `http` ([`HttpTransport`]), `sqlite`
//! ([`SqliteStore`]) and `cli` (the binary). Without them the crate is the
//! logic alone, for simulators.
//!
//! What it deliberately does not do: cryptography itself (that is
//! `courier-crypto`), or any relay-side logic. Message layout and usage are
//! in `docs/client.md`.
//!
//! ```
//! use std::sync::Arc;
//! use courier_client::{Client, ClientParts, MemoryStore, SystemClock};
//! use courier_testkit::Network;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = Network::new();
//! let parts = |relay: &str, seed: u8| -> Result<ClientParts, Box<dyn std::error::Error>> {
//!     Ok(ClientParts {
//!         transport: Arc::new(net.transport(relay)?),
//!         store: Arc::new(MemoryStore::new()),
//!         clock: Arc::new(SystemClock),
//!         rng_seed: Some([seed; 32]),
//!         config: Default::default(),
//!     })
//! };
//! let alice = Client::open(parts("relay-a.example", 1)?).await?;
//! let bob = Client::open(parts("relay-b.example", 2)?).await?;
//! alice.register("alice", None, "", &[]).await?;
//! let b = bob.register("bob", None, "", &[]).await?;
//! alice.send(&b, "hi").await?;
//! assert_eq!(bob.recv().await?[0].text, "hi");
//! # Ok(())
//! # }
//! ```

mod client;
pub mod clock;
pub mod content;
mod error;
pub mod store;
pub mod transport;
pub mod wire;

pub use client::{
    Account, BASE_KEYS_PER_SIGNED_PREKEY_MAX, Client, ClientConfig, ClientParts, DeviceInfo,
    Message, PendingLink, RECEIVERS_PER_DEVICE_MAX, SEND_ATTEMPTS_MAX, SESSIONS_PER_DEVICE_MAX,
    SendReceipt,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::Error;
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{ClientStore, MemoryStore};
#[cfg(feature = "http")]
pub use transport::HttpTransport;
pub use transport::{Transport, TransportError};

use std::collections::BTreeMap;

use courier_protocol::Address;
use sha2::{Digest, Sha256};

/// A safety number for two accounts: 12 groups of 5 digits from SHA-256 over
/// both addresses and their pinned device identity keys, in a fixed order so
/// both sides compute the same number.
pub fn safety_number(
    a: &Address,
    a_devices: &BTreeMap<u32, String>,
    b: &Address,
    b_devices: &BTreeMap<u32, String>,
) -> String {
    let part = |addr: &Address, devices: &BTreeMap<u32, String>| {
        let mut s = addr.to_string();
        for (d, k) in devices {
            s.push_str(&format!("|{d}:{k}"));
        }
        s
    };
    let (x, y) = (part(a, a_devices), part(b, b_devices));
    let (first, second) = if x <= y { (x, y) } else { (y, x) };
    let mut h = Sha256::new();
    h.update(b"courier-safety-number-v1");
    h.update(first.as_bytes());
    h.update([0]);
    h.update(second.as_bytes());
    let digest = h.finalize();
    digest
        .chunks(2)
        .take(12)
        .map(|c| format!("{:05}", (u32::from(c[0]) << 8 | u32::from(c[1])) % 100_000))
        .collect::<Vec<_>>()
        .join(" ")
}
