//! Courier network simulations: many relays and clients, faults, invariants.
