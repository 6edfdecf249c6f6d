//! The client-facing HTTP and WebSocket API of a Courier relay, on axum, over
//! `courier-relay`.
