//! The `courier` relay daemon: configuration, storage, the federation swarm and
//! the wiring that runs a relay.
