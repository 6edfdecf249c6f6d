//! Wire types of Courier: addresses, identifiers, the client API, the
//! federation messages, named size limits, stable error codes and the two
//! codecs (JSON with base64url binary fields for clients, a compact binary
//! codec for federation).
//!
//! This crate holds no logic beyond parsing and validation: it never touches
//! a socket, a clock or a random number generator. Everything that decodes
//! untrusted bytes returns an error instead of panicking and never allocates
//! more than the limits in [`limits`] allow.

pub mod address;
pub mod bytes;
pub mod error;
pub mod ids;
pub mod limits;
pub mod message;

pub use address::{Address, AddressError, RelayName, Username};
pub use bytes::Bytes;
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use ids::{DeviceId, EnvelopeId};
pub use message::{OutgoingMessage, RecipientEntry};
