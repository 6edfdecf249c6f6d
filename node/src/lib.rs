//! The `courier` relay daemon: configuration, the relay key, logging, the
//! wiring that runs a relay (`serve`) and the admin commands.
//!
//! It does not hold relay logic (that is `courier-relay`) nor the HTTP API
//! (that is `courier-gateway`); it reads configuration, opens the store,
//! builds the relay, the gateway and the federation swarm, and shuts them
//! down in order.

pub mod admin;
pub mod config;
pub mod config_doc;
pub mod federation;
pub mod identity;
pub mod logging;
pub mod pg_wake;
pub mod serve;
pub mod store;
