//! The client-side attacks (audit #13 items 1, 7, 8, 12 and 19) live in
//! `client/tests/security.rs`: they attack the SDK's own checks (a hostile
//! relay), while this crate's tests use the SDK only as their transport.
