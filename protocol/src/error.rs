//! Stable error codes shared by the HTTP API and federation.
//!
//! The text form of a code (`snake_case`) never changes once published;
//! clients match on it. Over HTTP every error is
//! `{"error": {"code": "...", "message": "..."}}` with the status from
//! [`ErrorCode::http_status`].

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = ($text:literal, $status:literal, $msg:literal), )*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable text form, e.g. `"mailbox_full"`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $text,)* }
            }

            /// The HTTP status this code is sent with.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// A default human-readable message.
            pub fn message(self) -> &'static str {
                match self { $(ErrorCode::$variant => $msg,)* }
            }

            /// Parses the stable text form.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    /// The request is syntactically valid but violates a rule (empty
    /// recipient list, duplicate recipient, bad TTL, …).
    BadRequest = ("bad_request", 400, "the request is invalid"),
    /// The body could not be decoded (bad JSON, wrong types, unknown fields,
    /// bad base64url, truncated binary frame).
    Malformed = ("malformed", 400, "the request could not be decoded"),
    /// A body, header, key or frame exceeds its size limit.
    PayloadTooLarge = ("payload_too_large", 413, "the request is too large"),
    /// A message names more recipients than allowed.
    TooManyRecipients = ("too_many_recipients", 413, "the message names too many recipients"),
    /// No access token, or one the relay does not know.
    Unauthenticated = ("unauthenticated", 401, "authentication is required"),
    /// The access token has expired; refresh it.
    TokenExpired = ("token_expired", 401, "the access token has expired"),
    /// The refresh token is unknown, already used or revoked.
    InvalidRefreshToken = ("invalid_refresh_token", 401, "the refresh token is not valid"),
    /// The login challenge is unknown, expired or already used.
    InvalidChallenge = ("invalid_challenge", 401, "the login challenge is not valid"),
    /// A signature (login, prekey, device list, descriptor) does not verify.
    InvalidSignature = ("invalid_signature", 400, "a signature does not verify"),
    /// Authenticated, but not allowed to do this.
    Forbidden = ("forbidden", 403, "not allowed"),
    /// The resource does not exist.
    NotFound = ("not_found", 404, "not found"),
    /// No such user on that relay.
    UnknownUser = ("unknown_user", 404, "no such user"),
    /// No such device for that user.
    UnknownDevice = ("unknown_device", 404, "no such device"),
    /// A username, relay name or address breaks the naming rules.
    InvalidAddress = ("invalid_address", 400, "the address is not valid"),
    /// The username is already registered.
    UsernameTaken = ("username_taken", 409, "the username is taken"),
    /// Registration requires an invite code.
    InviteRequired = ("invite_required", 403, "registration requires an invite code"),
    /// The invite code is unknown, used or expired.
    InvalidInvite = ("invalid_invite", 403, "the invite code is not valid"),
    /// The device link code is unknown, expired or already used.
    InvalidLinkCode = ("invalid_link_code", 404, "the link code is not valid"),
    /// The account already has the maximum number of devices.
    TooManyDevices = ("too_many_devices", 409, "the account has too many devices"),
    /// A device would hold more one-time prekeys than allowed.
    TooManyPrekeys = ("too_many_prekeys", 409, "too many one-time prekeys"),
    /// The recipient mailbox is at its depth limit; retry later.
    MailboxFull = ("mailbox_full", 507, "the recipient mailbox is full"),
    /// Rate limit exceeded; see `Retry-After`.
    RateLimited = ("rate_limited", 429, "too many requests"),
    /// The request conflicts with existing state (e.g. reused envelope id with
    /// different content).
    Conflict = ("conflict", 409, "the request conflicts with existing state"),
    /// The message or resource has expired.
    Expired = ("expired", 410, "expired"),
    /// The relay named in an address is not known to this relay's federation.
    UnknownRelay = ("unknown_relay", 404, "the relay is not known"),
    /// The remote relay could not be reached in time.
    RelayUnreachable = ("relay_unreachable", 504, "the remote relay could not be reached"),
    /// Federation policy refuses this peer.
    FederationRefused = ("federation_refused", 403, "federation with this relay is refused"),
    /// A peer delivered an envelope whose origin is not that peer.
    OriginMismatch = ("origin_mismatch", 403, "the envelope origin does not match the peer"),
    /// A descriptor names a pinned relay with a different key.
    PinnedKeyMismatch = ("pinned_key_mismatch", 403, "the relay key does not match the pinned key"),
    /// The peer speaks a protocol version this relay does not support.
    UnsupportedVersion = ("unsupported_version", 400, "unsupported protocol version"),
    /// The relay is starting, shutting down or its store is unreachable.
    Unavailable = ("unavailable", 503, "the relay is temporarily unavailable"),
    /// An unexpected server-side error; details are in the relay's logs.
    Internal = ("internal", 500, "internal error"),
    /// The request target (path and query) is longer than the relay accepts.
    UriTooLong = ("uri_too_long", 414, "the request URI is too long"),
    /// The request head (header names and values) is larger than the relay
    /// accepts.
    HeadersTooLarge = ("headers_too_large", 431, "the request headers are too large"),
    /// The relay's storage is full: nothing was stored; retry later.
    InsufficientStorage = ("insufficient_storage", 507, "the relay's storage is full"),
    /// A recipient mailbox holds as much from this sender's source (the
    /// sending account, or for federated mail the relay it came from) as
    /// one source may; other senders still get through. Retry later.
    MailboxQuota = ("mailbox_quota", 507, "the recipient mailbox holds as much from this sender as allowed"),
    /// A peer delivered an envelope of a kind only a home relay may create
    /// (a `delivery_failure` notice): peers may only deliver messages.
    EnvelopeKindRefused = ("envelope_kind_refused", 403, "peers may only deliver messages"),
    /// The sending account has as much mail waiting for other relays as it
    /// may (outbox entries or distinct destination relays); retry later.
    OutboxQuota = ("outbox_quota", 507, "this account has too much mail waiting for other relays"),
    /// The relay's outbox holds as many entries or destination relays as it
    /// may; retry later.
    OutboxFull = ("outbox_full", 507, "the relay's outbox is full"),
    /// An uploaded X25519 public key (identity DH key, signed or one-time
    /// prekey) is a point of small order (e.g. all zeros), with which every
    /// Diffie-Hellman result is all zeros.
    WeakKey = ("weak_key", 400, "a public key is a point of small order"),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error object inside an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation; not stable, do not match on it.
    pub message: String,
}

impl ApiError {
    /// An error with the code's default message.
    pub fn new(code: ErrorCode) -> Self {
        ApiError {
            code,
            message: code.message().to_owned(),
        }
    }

    /// An error with a specific message.
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        ApiError::new(code)
    }
}

/// The JSON body of every HTTP error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_snake_case_and_round_trip() {
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!((400..600).contains(&code.http_status()));
        }
        let body = ErrorBody {
            error: ApiError::new(ErrorCode::MailboxFull),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"mailbox_full","message":"the recipient mailbox is full"}}"#
        );
    }
}
