//! The store conformance suite (`courier_relay::testkit::conformance`) over
//! the in-memory store; `courier-store-sql` runs it over SQLite and
//! PostgreSQL.

use courier_relay::testkit::Memory;

courier_relay::conformance_tests!(Memory, futures::executor::block_on);
