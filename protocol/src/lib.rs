//! Wire types of Courier: addresses, identifiers, the client API ([`api`],
//! [`ws`]), the federation messages ([`federation`]), named size limits,
//! stable error codes, the exact bytes that get signed ([`signing`]) and the
//! two codecs ([`codec::json`] with base64url binary fields for clients,
//! [`codec::binary`], a version byte plus postcard, for federation).
//!
//! What it deliberately does not do: no IO, no clock, no randomness, no
//! cryptography. It never touches a socket; it builds the bytes to sign but
//! neither signs nor verifies (that is `courier-crypto` and `courier-relay`);
//! it checks limits but not policy (who may send what is the relay's job).
//! Everything that decodes untrusted bytes returns an error instead of
//! panicking and never allocates more than the input size and the limits in
//! [`limits`] allow. The full specification is `docs/protocol.md`.
//!
//! With the `openapi` feature the client API's types also derive
//! `utoipa::ToSchema` (the gateway's `/v1/openapi.json` is built from them).

pub mod address;
pub mod api;
pub mod bytes;
pub mod codec;
pub mod error;
pub mod federation;
pub mod fuzz;
pub mod ids;
pub mod limits;
pub mod message;
#[cfg(feature = "openapi")]
mod openapi;
pub mod signing;
pub mod validate;
pub mod ws;

#[cfg(any(test, feature = "proptest"))]
pub mod strategies;

#[cfg(test)]
mod codec_tests;

pub use address::{Address, AddressError, RelayName, Username};
pub use api::{
    AckRequest, AckResponse, DeviceBundle, DeviceKeys, DeviceList, DeviceListEntry, Envelope,
    EnvelopeKind, FetchResponse, KeyBundleResponse, OneTimePreKey, SendResponse, SignedDeviceList,
    SignedPreKey,
};
pub use bytes::Bytes;
pub use codec::CodecError;
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use federation::{
    AckStatus, BundleRequest, BundleResponse, DeliveryAcks, DeliveryBatch, EnvelopeAck,
    FedEnvelope, FedRecipient, Hello, RelayDescriptor, SignedDescriptor,
};
pub use ids::{DeviceId, EnvelopeId};
pub use message::{OutgoingMessage, RecipientEntry};
pub use signing::{
    descriptor_signing_bytes, device_list_signing_bytes, dh_key_signing_bytes, login_signing_bytes,
    signed_prekey_signing_bytes,
};
pub use validate::Validate;
pub use ws::{ClientFrame, ServerFrame};
