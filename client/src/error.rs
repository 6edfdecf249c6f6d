//! The one error type of the SDK.

use courier_protocol::{Address, ApiError, ErrorCode};

use crate::store::StoreError;
use crate::transport::TransportError;

/// Everything an SDK operation can fail with. The `Display` text is one line
/// meant for users (the CLI prints it as is).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This state has no account yet: register or link first.
    #[error("not registered: run `courier-client register` or `courier-client link` first")]
    NotRegistered,
    /// This state already holds an account.
    #[error("already registered as {0}")]
    AlreadyRegistered(Address),
    /// The address has no account (or no device) on its relay.
    #[error("unknown recipient {0}")]
    UnknownRecipient(Address),
    /// The home relay (or the recipient's relay, through it) could not be reached.
    #[error("relay unreachable: {0}")]
    RelayUnreachable(String),
    /// A contact's identity key changed since it was first seen. Nothing was
    /// sent; run `trust` after checking the new safety number out of band.
    #[error(
        "identity changed for {address}: refusing to use the new keys until you run `courier-client trust {address}`"
    )]
    IdentityChanged {
        /// The contact.
        address: Address,
    },
    /// The relay refused the request.
    #[error("relay refused: {0}")]
    Api(ApiError),
    /// A relay answered with something that is not the protocol.
    #[error("bad response from relay: {0}")]
    BadResponse(String),
    /// No group of that name on this device.
    #[error("unknown group {0}")]
    UnknownGroup(String),
    /// A group of that name already exists on this device.
    #[error("group {0} already exists")]
    GroupExists(String),
    /// The command line or the SDK call was given bad input.
    #[error("{0}")]
    Invalid(String),
    /// A message could not be decrypted or verified.
    #[error("cannot decrypt: {0}")]
    Crypto(#[from] courier_crypto::Error),
    /// A link request was not approved in time.
    #[error("the link was not approved before it expired")]
    LinkExpired,
    /// The local state could not be read or written.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A group message arrived before the sender key it needs (it stays on
    /// the relay and is retried).
    #[error("group message waits for its sender key")]
    MissingSenderKey,
    /// A message claims a device its sender's pinned list does not name, and
    /// that list was re-read too recently to read it again (see
    /// [`crate::ClientConfig::contact_refresh_min_ms`]); the message waits
    /// and is tried again later.
    #[error("the device list of {0} was re-read moments ago; the message waits")]
    RefreshLimited(Address),
    /// [`crate::ClientConfig::fail_before_ack`] stopped the client on purpose.
    #[error("fault injected: stopped before acknowledging")]
    FaultInjected,
    /// Stored local state is inconsistent (a bug or a damaged file).
    #[error("local state is damaged: {0}")]
    Corrupt(String),
}

impl Error {
    /// Maps a relay error for an operation about `address`.
    pub(crate) fn about(address: &Address, e: TransportError) -> Self {
        match e {
            TransportError::Api(api)
                if matches!(
                    api.code,
                    ErrorCode::UnknownUser | ErrorCode::UnknownDevice | ErrorCode::UnknownRelay
                ) =>
            {
                Error::UnknownRecipient(address.clone())
            }
            other => other.into(),
        }
    }

    /// A process exit code for the CLI: 2 usage, 3 not registered, 4 unknown
    /// recipient, 5 relay unreachable, 6 identity changed, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_) | Error::UnknownGroup(_) | Error::GroupExists(_) => 2,
            Error::NotRegistered => 3,
            Error::UnknownRecipient(_) => 4,
            Error::RelayUnreachable(_) => 5,
            Error::IdentityChanged { .. } => 6,
            _ => 1,
        }
    }
}

impl From<TransportError> for Error {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Unreachable(m) => Error::RelayUnreachable(m),
            TransportError::Api(api) if api.code == ErrorCode::RelayUnreachable => {
                Error::RelayUnreachable(api.message)
            }
            TransportError::Api(api) => Error::Api(api),
            TransportError::BadResponse(m) => Error::BadResponse(m),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Corrupt(e.to_string())
    }
}
