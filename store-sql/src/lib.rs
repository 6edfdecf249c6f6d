//! Courier's SQL stores: [`SqliteStore`] (one file, the embedded default of
//! `courier serve`) and [`PostgresStore`] (for relays that outgrow one
//! machine), both implementing `courier_relay::Store` over sqlx, with their
//! migrations embedded. This is where the relay's IO to a database lives:
//! the writer task, the SQLite sync thread and the SQLite writer's private
//! runtime. It holds no relay logic: what to store, and every check of a
//! request, is `courier-relay`'s; the conformance suite in
//! `courier_relay::testkit` holds both stores to the in-memory one. See
//! `docs/storage.md`.
//!
//! # One source, compiled once per dialect
//!
//! The operations are written once, in `src/sql/` — split by concern into
//! `query` (placeholders, conversions), `writer` (group commit), `accounts`,
//! `auth`, `keys`, `mailbox`, `outbox` and `store` (the `Store` impl) — and
//! compiled once per dialect: `sqlite.rs` and `postgres.rs` each declare a
//! `dialect` module (sqlx's `Db`, `Conn`, `Pool` and `Row` types, and `PG`)
//! and mount the shared modules with `#[path]`. Each shared module is an
//! ordinary module that imports what it uses from `super::dialect`, so
//! rustfmt, clippy and rust-analyzer read it as code; the few statements
//! that differ test the constant `PG`. Code without a dialect (the
//! [`syncer`](crate::syncer), the error conversions) is compiled once.
//!
//! Why not one generic `SqlStore<D: Dialect>`: sqlx's database-generic code
//! needs `for<'c> &'c mut D::Connection: Executor<'c, Database = D>` and an
//! `Encode + Decode + Type` bound for every bound and read type on every
//! function (where-clauses are not implied in Rust), and the boxed, `Send`
//! futures of the writer then hit higher-ranked lifetime errors; the bounds
//! would outweigh the code. Mounting keeps the code concrete.

// Mounting the `sql/` modules once per dialect is the design (above).
#![allow(clippy::duplicate_mod)]

mod error;
pub mod postgres;
pub mod sqlite;
mod syncer;

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{Durability, SqliteOptions, SqliteStore};
