//! Attacks from the security audit, each performed against a real `courier
//! serve` (or two federating ones) over real sockets, and the defence asserted.
//! One module per area; `docs/threat-model.md` names the test of every promise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod client;
mod edge;
mod fed;
mod keys;
mod mailbox;
mod ws;
