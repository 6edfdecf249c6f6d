//! The client-side attacks (audit #13 items 1, 7, 8, 12 and 19) live in
//! `client/tests/security.rs`: they drive the SDK, which this crate does not
//! depend on, against a spawned `courier serve`.
