//! Relay-to-relay messages, carried over libp2p request-response protocols
//! named in [`protocols`] and encoded with [`crate::codec::binary`].

use serde::{Deserialize, Serialize};

use crate::api::{EnvelopeKind, KeyBundleResponse};
use crate::limits::{
    BATCH_ENVELOPES_MAX, BODY_BYTES_MAX, DESCRIPTOR_ADDRESSES_MAX, DESCRIPTOR_FEATURES_MAX,
    DESCRIPTOR_TEXT_BYTES_MAX, HEADER_BYTES_MAX, HELLO_KNOWN_MAX, PEER_ID_BYTES_MAX,
    RECIPIENTS_MAX,
};
use crate::signing;
use crate::validate::{Validate, ensure, has_duplicates, signature, text_max, text_nonempty_max};
use crate::{Address, ApiError, Bytes, DeviceId, EnvelopeId, ErrorCode, RelayName, Username};

/// libp2p protocol names. The path carries the major version: an
/// incompatible change gets `/courier/fed/2/…`, and a relay that speaks both
/// offers both during multistream-select.
pub mod protocols {
    /// [`super::Hello`] both ways.
    pub const HELLO: &str = "/courier/fed/1/hello";
    /// [`super::BundleRequest`] → [`super::BundleResponse`].
    pub const BUNDLE: &str = "/courier/fed/1/bundle";
    /// [`super::DeliveryBatch`] → [`super::DeliveryAcks`].
    pub const DELIVER: &str = "/courier/fed/1/deliver";
}

/// Feature strings a relay may list in [`RelayDescriptor::features`].
pub mod features {
    /// Understands binary frames with version byte 1 (every relay does).
    pub const WIRE_V1: &str = "wire-v1";
}

/// What a relay says about itself, signed by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayDescriptor {
    /// The relay's name, e.g. `relay-a.example`.
    pub name: RelayName,
    /// Its libp2p PeerId (base58 text); the signing key is the one this
    /// PeerId encodes.
    pub peer_id: String,
    /// Multiaddrs it listens on, at most [`DESCRIPTOR_ADDRESSES_MAX`].
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::DESCRIPTOR_ADDRESSES_MAX }>"
    )]
    pub addresses: Vec<String>,
    /// Base URL of its client API, e.g. `https://relay-a.example`.
    pub http_url: String,
    /// Software version, informational.
    pub version: String,
    /// Feature strings, see [`features`]; at most [`DESCRIPTOR_FEATURES_MAX`].
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::DESCRIPTOR_FEATURES_MAX }>"
    )]
    pub features: Vec<String>,
    /// When the relay signed it, Unix milliseconds; a newer descriptor for
    /// the same name and key replaces an older one.
    pub issued_ms: u64,
}

impl RelayDescriptor {
    /// The bytes a [`SignedDescriptor`] signature signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing::descriptor_signing_bytes(self)
    }

    /// Whether the relay lists `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

impl Validate for RelayDescriptor {
    fn validate(&self) -> Result<(), ErrorCode> {
        text_nonempty_max(&self.peer_id, PEER_ID_BYTES_MAX)?;
        text_max(&self.http_url, DESCRIPTOR_TEXT_BYTES_MAX)?;
        text_max(&self.version, DESCRIPTOR_TEXT_BYTES_MAX)?;
        ensure(
            self.addresses.len() <= DESCRIPTOR_ADDRESSES_MAX
                && self.features.len() <= DESCRIPTOR_FEATURES_MAX,
            ErrorCode::PayloadTooLarge,
        )?;
        self.addresses
            .iter()
            .chain(&self.features)
            .try_for_each(|t| text_max(t, DESCRIPTOR_TEXT_BYTES_MAX))
    }
}

/// A descriptor and the relay key's signature over
/// [`RelayDescriptor::signing_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDescriptor {
    /// The descriptor.
    pub descriptor: RelayDescriptor,
    /// Ed25519 signature, 64 bytes.
    pub signature: Bytes,
}

impl Validate for SignedDescriptor {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.descriptor.validate()?;
        signature(self.signature.as_slice())
    }
}

/// `/courier/fed/1/hello`, sent both ways when peering: who I am and the
/// relays I know, so a peer can reach relays it never peered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The sender's own descriptor.
    pub descriptor: SignedDescriptor,
    /// Descriptors of other relays, at most [`HELLO_KNOWN_MAX`]; each is
    /// verified on its own key by the receiver.
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::HELLO_KNOWN_MAX }>"
    )]
    pub known: Vec<SignedDescriptor>,
}

impl Validate for Hello {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.descriptor.validate()?;
        ensure(
            self.known.len() <= HELLO_KNOWN_MAX,
            ErrorCode::PayloadTooLarge,
        )?;
        self.known.validate()
    }
}

/// `/courier/fed/1/bundle`: asks a user's home relay for key bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRequest {
    /// The account, on the relay asked.
    pub address: Address,
    /// One device only; all devices when absent.
    pub device: Option<DeviceId>,
}

impl Validate for BundleRequest {
    fn validate(&self) -> Result<(), ErrorCode> {
        Ok(())
    }
}

/// Answer to [`BundleRequest`].
pub type BundleResponse = Result<KeyBundleResponse, ApiError>;

impl Validate for BundleResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        match self {
            Ok(bundle) => bundle.validate(),
            Err(error) => error.validate(),
        }
    }
}

/// One recipient device on the destination relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedRecipient {
    /// The user on the destination relay.
    pub user: Username,
    /// The device.
    pub device: DeviceId,
    /// Its header, at most [`HEADER_BYTES_MAX`] bytes.
    pub header: Bytes,
}

impl Validate for FedRecipient {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(
            self.header.len() <= HEADER_BYTES_MAX,
            ErrorCode::PayloadTooLarge,
        )
    }
}

/// A message for one or more devices on the destination relay: the body
/// crosses the federation once, however many recipients it has there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedEnvelope {
    /// The sender-chosen id; the destination deduplicates by it.
    pub id: EnvelopeId,
    /// Shared ciphertext, at most [`BODY_BYTES_MAX`] bytes.
    pub body: Bytes,
    /// 1..=[`RECIPIENTS_MAX`] devices, none twice.
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::RECIPIENTS_MAX }>"
    )]
    pub recipients: Vec<FedRecipient>,
    /// When relays drop it undelivered, Unix milliseconds.
    pub expires_ms: u64,
    /// Message or notice.
    pub kind: EnvelopeKind,
}

impl Validate for FedEnvelope {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(
            self.body.len() <= BODY_BYTES_MAX,
            ErrorCode::PayloadTooLarge,
        )?;
        ensure(!self.recipients.is_empty(), ErrorCode::BadRequest)?;
        ensure(
            self.recipients.len() <= RECIPIENTS_MAX,
            ErrorCode::TooManyRecipients,
        )?;
        self.recipients.validate()?;
        let devices = self
            .recipients
            .iter()
            .map(|r| (&r.user, r.device))
            .collect();
        ensure(!has_duplicates(devices), ErrorCode::BadRequest)
    }
}

/// `/courier/fed/1/deliver`: envelopes from `origin` for users of the
/// receiving relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryBatch {
    /// The sending relay; must be the authenticated peer
    /// ([`ErrorCode::OriginMismatch`] otherwise).
    pub origin: RelayName,
    /// 1..=[`BATCH_ENVELOPES_MAX`] envelopes, ids unique; the encoded batch
    /// is at most [`crate::limits::BATCH_BYTES_MAX`].
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::BATCH_ENVELOPES_MAX }>"
    )]
    pub envelopes: Vec<FedEnvelope>,
}

impl Validate for DeliveryBatch {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(!self.envelopes.is_empty(), ErrorCode::BadRequest)?;
        ensure(
            self.envelopes.len() <= BATCH_ENVELOPES_MAX,
            ErrorCode::PayloadTooLarge,
        )?;
        self.envelopes.validate()?;
        let ids = self.envelopes.iter().map(|e| e.id).collect();
        ensure(!has_duplicates(ids), ErrorCode::BadRequest)
    }
}

/// How the destination relay took one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Stored durably for every recipient; remove it from the outbox.
    Accepted,
    /// Already stored earlier; remove it from the outbox.
    Duplicate,
    /// Refused for good; remove it from the outbox and notify the sender.
    /// Transient conditions (`mailbox_full`, `unavailable`) are rejected too,
    /// and the origin retries those later.
    Rejected(ErrorCode),
}

/// The answer for one envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeAck {
    /// The envelope.
    pub id: EnvelopeId,
    /// What happened to it.
    pub status: AckStatus,
}

/// Answer to [`DeliveryBatch`]: one ack per envelope, in batch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryAcks {
    /// At most [`BATCH_ENVELOPES_MAX`].
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::BATCH_ENVELOPES_MAX }>"
    )]
    pub acks: Vec<EnvelopeAck>,
}

impl Validate for DeliveryAcks {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(
            self.acks.len() <= BATCH_ENVELOPES_MAX,
            ErrorCode::PayloadTooLarge,
        )
    }
}
