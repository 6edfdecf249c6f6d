//! The relay's logic — accounts, devices, key directory, mailboxes and outbox —
//! as plain Rust over a `Store` trait and an injected clock. No sockets here.
