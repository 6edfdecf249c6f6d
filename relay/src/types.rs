//! The wire types the relay speaks, re-exported from `courier-protocol`
//! (`api` and `federation` modules, named as in `docs/protocol.md`), plus
//! the storage encoding of [`EnvelopeKind`].

pub use courier_protocol::api::{
    AckResponse, ApproveLinkRequest, ApproveLinkResponse, ChallengeResponse, DeliveryFailureNotice,
    DeviceBundle, DeviceKeys, DeviceList, DeviceListEntry, Envelope, EnvelopeKind, FailedRecipient,
    FetchResponse, KeyBundleResponse, LinkInfo, LinkRequest, LinkResponse, LinkStatus,
    LoginRequest, OneTimePreKey, PreKeyCount, RegisterRequest, RegisterResponse, SignedDeviceList,
    SignedPreKey, TokenResponse, UploadOneTimePreKeys,
};
pub use courier_protocol::federation::{AckStatus, EnvelopeAck, FedEnvelope, FedRecipient};

/// Storage code of an envelope kind.
pub fn kind_code(kind: EnvelopeKind) -> i64 {
    match kind {
        EnvelopeKind::Message => 0,
        EnvelopeKind::DeliveryFailure => 1,
    }
}

/// Envelope kind from its storage code; unknown codes read as messages.
pub fn kind_from_code(code: i64) -> EnvelopeKind {
    if code == 1 {
        EnvelopeKind::DeliveryFailure
    } else {
        EnvelopeKind::Message
    }
}
