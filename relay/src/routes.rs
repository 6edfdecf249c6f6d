//! Which relays the outbox may take mail for: a message to a relay nobody
//! can route to would sit in the outbox, retried for its whole TTL, for
//! nothing (audit #13, item 4: five requests naming 5,000 invented relays
//! kept a core busy for a quarter of an hour). [`Relay::accept_message`]
//! refuses such recipients at send time with `unknown_relay`.
//!
//! The relay logic only asks [`Routes::routable`]; who answers is the
//! federation's business. The node answers from its peer book (pinned
//! relays, descriptors, gossip hints, operator pins) through a
//! [`RouteTable`] the federation event loop keeps current. The federation
//! resilience work (names bound by `https://NAME/.well-known/courier`)
//! extends "routable" by adding what it resolves to the same table.
//!
//! [`Relay::accept_message`]: crate::Relay::accept_message

use std::collections::HashSet;
use std::sync::RwLock;

use courier_protocol::RelayName;

/// Answers whether mail for a relay can be routed now. Called on the send
/// path once per remote relay of a message: must be cheap and not block.
pub trait Routes: Send + Sync {
    /// Whether the outbox may take mail for `relay`.
    fn routable(&self, relay: &RelayName) -> bool;
}

/// Every relay is routable: for relays whose federation resolves any name
/// itself (in-process tests, simulations).
#[derive(Debug, Default, Clone, Copy)]
pub struct AnyRelay;

impl Routes for AnyRelay {
    fn routable(&self, _relay: &RelayName) -> bool {
        true
    }
}

/// A set of routable relay names, replaced whole by whoever knows them
/// (the federation event loop after each change of its peer book) and read
/// by the send path. Empty — nothing routable — until first filled, which
/// is right for a relay without federation.
#[derive(Debug, Default)]
pub struct RouteTable {
    names: RwLock<HashSet<RelayName>>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        RouteTable::default()
    }

    /// Replaces the routable names.
    pub fn replace(&self, names: HashSet<RelayName>) {
        // A poisoned lock means a writer panicked mid-replace of a plain
        // set; the set itself is still whole.
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// How many names are routable.
    pub fn len(&self) -> usize {
        self.names.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no name is routable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Routes for RouteTable {
    fn routable(&self, relay: &RelayName) -> bool {
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(relay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_routes_exactly_its_names() {
        let table = RouteTable::new();
        let b = RelayName::parse("relay-b.example").unwrap();
        assert!(!table.routable(&b));
        table.replace([b.clone()].into());
        assert!(table.routable(&b));
        assert!(!table.routable(&RelayName::parse("relay-x.example").unwrap()));
        assert!(AnyRelay.routable(&b));
    }
}
