//! Courier's test kit: real relays in one process for the SDK's tests and
//! for anything else that wants real clients without sockets.
//!
//! - [`Network`]: in-process [`courier_relay::Relay`]s (memory stores, one
//!   virtual clock) federated with each other through
//!   [`courier_relay::federation`]'s own `drain_once` / `accept_batch` /
//!   `answer_bundle`, so outbox batching, acks, retries and bundle checks
//!   are the relay's, not a copy.
//! - [`RelayTransport`]: the SDK's [`courier_client::Transport`] over one of
//!   those relays, calling the same `Relay` methods the gateway's HTTP and
//!   WebSocket handlers call, with every request and answer passed through
//!   JSON as on the wire: signatures, limits and error codes are the real
//!   ones.
//! - [`fixtures`]: clients and registered users in one line.
//!
//! What it deliberately does not do: HTTP, WebSocket framing, rate limits of
//! the gateway (those live in the gateway and are tested there), or faults
//! beyond a relay being down; the simulator owns seeded fault models.

mod federation;
pub mod fixtures;
mod network;
mod transport;

pub use federation::InProcessFederation;
pub use network::Network;
pub use transport::RelayTransport;
