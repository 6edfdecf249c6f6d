//! Checking a relay descriptor's signature: the one step of peering that
//! needs the transport's key format, so the adapter supplies it.

use std::fmt;

use courier_protocol::SignedDescriptor;

use super::key::PeerKey;

/// Why a descriptor was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// A field breaks a protocol limit.
    #[error("descriptor breaks a limit: {0}")]
    Invalid(courier_protocol::ErrorCode),
    /// The `peer_id` text is not a key.
    #[error("descriptor peer id {0:?} is not a PeerId")]
    BadPeerId(String),
    /// The key is not an Ed25519 public key.
    #[error("descriptor peer id {0} does not embed an Ed25519 key")]
    NotEd25519(String),
    /// The signature does not verify under the key of `peer_id`.
    #[error("descriptor signature does not verify for {0}")]
    BadSignature(String),
    /// The descriptor came from a connection authenticated as another peer.
    #[error("descriptor names {named} but came from {actual}")]
    WrongPeer {
        /// The key in the descriptor.
        named: String,
        /// The authenticated connection's key.
        actual: String,
    },
}

/// Checks a descriptor's limits and signature and says which key signed
/// it; the adapter implements it over its key type.
pub trait Verify: Send + Sync {
    /// The key `signed` is signed by, or why it is not acceptable.
    fn verify(&self, signed: &SignedDescriptor) -> Result<PeerKey, DescriptorError>;
}

impl fmt::Debug for dyn Verify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verify")
    }
}
