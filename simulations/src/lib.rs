//! Courier network simulations: many relays and clients, faults, invariants.
//!
//! Deterministic mode runs every relay and client in one process on virtual
//! time, with every random choice drawn from one seed, so a scenario and a
//! seed always give the same report. Loopback mode runs real `courier`
//! processes on 127.0.0.1 and checks the same invariants.
//!
//! This crate does not contain relay or crypto logic of its own: it drives
//! `courier-relay` and `courier-crypto` and simulates only what lies between
//! them — links, clocks, crashes.

pub mod checker;
pub mod deterministic;
pub mod loopback;
pub mod net;
pub mod netns;
pub mod plot;
pub mod queue;
pub mod replay;
pub mod report;
pub mod rng;
pub mod scenario;
