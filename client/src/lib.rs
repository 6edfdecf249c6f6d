//! The Courier client SDK: registration, login, sessions, sending and receiving
//! end-to-end encrypted messages through a home relay.
