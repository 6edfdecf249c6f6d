//! The one error type of the relay logic and its stores (the SQL stores
//! in `courier-store-sql` map database errors onto it).

use courier_protocol::ErrorCode;

/// Why a relay operation failed. Every variant maps to a stable
/// [`ErrorCode`] with [`RelayError::code`]; the gateway and the federation
/// send that code, never the text of a `Store` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The request breaks a rule (empty list, bad size, wrong version, …).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A key, body or list is larger than its limit.
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// A message names too many recipients.
    #[error("too many recipients")]
    TooManyRecipients,
    /// No or unknown access token.
    #[error("not authenticated")]
    Unauthenticated,
    /// The access token has expired.
    #[error("access token expired")]
    TokenExpired,
    /// Unknown, used, expired or revoked refresh token.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// Unknown, used or expired login challenge.
    #[error("invalid login challenge")]
    InvalidChallenge,
    /// A signature does not verify.
    #[error("invalid signature: {0}")]
    InvalidSignature(&'static str),
    /// Authenticated but not allowed.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// No such resource.
    #[error("not found")]
    NotFound,
    /// No such user here.
    #[error("unknown user")]
    UnknownUser,
    /// No such device of that user.
    #[error("unknown device")]
    UnknownDevice,
    /// A username, relay name or address breaks the naming rules.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// The username is registered already.
    #[error("username taken")]
    UsernameTaken,
    /// Registration needs an invite code.
    #[error("invite required")]
    InviteRequired,
    /// Unknown, used or expired invite code.
    #[error("invalid invite")]
    InvalidInvite,
    /// Unknown, expired or already approved link code (or wrong secret).
    #[error("invalid link code")]
    InvalidLinkCode,
    /// The account has the maximum number of devices.
    #[error("too many devices")]
    TooManyDevices,
    /// The device would hold more one-time prekeys than allowed.
    #[error("too many one-time prekeys")]
    TooManyPrekeys,
    /// A recipient mailbox is at its depth limit.
    #[error("mailbox full")]
    MailboxFull,
    /// A recipient mailbox holds as much from this message's source (the
    /// submitting account, or the relay it came from) as one source may.
    #[error("mailbox quota of this source reached")]
    MailboxQuota,
    /// The request conflicts with stored state (envelope id reused by the
    /// same source for different content; stale device list version).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The address is not on this relay; ask the federation.
    #[error("address is on another relay")]
    NotLocal,
    /// Recipients on relays this relay cannot route to (not in its peer
    /// book); nothing was stored.
    #[error("{}", no_route(.0))]
    UnknownRelays(Vec<courier_protocol::RelayName>),
    /// The sending account has as much mail waiting for other relays as it
    /// may (outbox entries or destination relays).
    #[error("this account has too much mail waiting for other relays")]
    OutboxQuota,
    /// The relay's outbox holds as many entries or destination relays as
    /// it may.
    #[error("the relay's outbox is full")]
    OutboxFull,
    /// An uploaded X25519 key is a point of small order.
    #[error("weak key: a public key is a point of small order")]
    WeakKey,
    /// The store failed (IO, database unreachable, corrupt row). Details are
    /// for logs only.
    #[error("store error: {0}")]
    Store(String),
    /// The store's disk (or database quota) is full: SQLite `SQLITE_FULL`,
    /// PostgreSQL `53100 disk_full`. The write did not happen and nothing
    /// is damaged; the same write succeeds once space is freed. Details are
    /// for logs only.
    #[error("storage full: {0}")]
    StorageFull(String),
}

impl RelayError {
    /// The stable wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            RelayError::BadRequest(_) => ErrorCode::BadRequest,
            RelayError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            RelayError::TooManyRecipients => ErrorCode::TooManyRecipients,
            RelayError::Unauthenticated => ErrorCode::Unauthenticated,
            RelayError::TokenExpired => ErrorCode::TokenExpired,
            RelayError::InvalidRefreshToken => ErrorCode::InvalidRefreshToken,
            RelayError::InvalidChallenge => ErrorCode::InvalidChallenge,
            RelayError::InvalidSignature(_) => ErrorCode::InvalidSignature,
            RelayError::Forbidden(_) => ErrorCode::Forbidden,
            RelayError::NotFound => ErrorCode::NotFound,
            RelayError::UnknownUser => ErrorCode::UnknownUser,
            RelayError::UnknownDevice => ErrorCode::UnknownDevice,
            RelayError::InvalidAddress(_) => ErrorCode::InvalidAddress,
            RelayError::UsernameTaken => ErrorCode::UsernameTaken,
            RelayError::InviteRequired => ErrorCode::InviteRequired,
            RelayError::InvalidInvite => ErrorCode::InvalidInvite,
            RelayError::InvalidLinkCode => ErrorCode::InvalidLinkCode,
            RelayError::TooManyDevices => ErrorCode::TooManyDevices,
            RelayError::TooManyPrekeys => ErrorCode::TooManyPrekeys,
            RelayError::MailboxFull => ErrorCode::MailboxFull,
            RelayError::MailboxQuota => ErrorCode::MailboxQuota,
            RelayError::Conflict(_) => ErrorCode::Conflict,
            RelayError::NotLocal => ErrorCode::UnknownRelay,
            RelayError::WeakKey => ErrorCode::WeakKey,
            RelayError::Store(_) => ErrorCode::Unavailable,
            RelayError::StorageFull(_) => ErrorCode::InsufficientStorage,
            RelayError::UnknownRelays(_) => ErrorCode::UnknownRelay,
            RelayError::OutboxQuota => ErrorCode::OutboxQuota,
            RelayError::OutboxFull => ErrorCode::OutboxFull,
        }
    }

    /// The error as the wire's `ApiError`. Store failures are reported
    /// without their details.
    pub fn to_api_error(&self) -> courier_protocol::ApiError {
        match self {
            RelayError::Store(_) => courier_protocol::ApiError::new(ErrorCode::Unavailable),
            RelayError::StorageFull(_) => {
                courier_protocol::ApiError::new(ErrorCode::InsufficientStorage)
            }
            other => courier_protocol::ApiError::with_message(other.code(), other.to_string()),
        }
    }
}

impl From<ErrorCode> for RelayError {
    fn from(code: ErrorCode) -> Self {
        // Validation failures of wire types arrive as codes; keep the code.
        match code {
            ErrorCode::PayloadTooLarge => RelayError::PayloadTooLarge(code.message().into()),
            ErrorCode::TooManyRecipients => RelayError::TooManyRecipients,
            ErrorCode::TooManyPrekeys => RelayError::TooManyPrekeys,
            ErrorCode::TooManyDevices => RelayError::TooManyDevices,
            ErrorCode::InvalidAddress => RelayError::InvalidAddress(code.message().into()),
            ErrorCode::InvalidSignature => RelayError::InvalidSignature("signature"),
            ErrorCode::WeakKey => RelayError::WeakKey,
            _ => RelayError::BadRequest(code.message().into()),
        }
    }
}

/// Result with [`RelayError`].
pub type Result<T, E = RelayError> = std::result::Result<T, E>;

/// "no route to relay a, b, c (and 7 more)": names a few, counts the rest.
fn no_route(relays: &[courier_protocol::RelayName]) -> String {
    const NAMED: usize = 5;
    let named: Vec<&str> = relays.iter().take(NAMED).map(|r| r.as_str()).collect();
    let more = relays.len().saturating_sub(NAMED);
    let tail = if more > 0 {
        format!(" (and {more} more)")
    } else {
        String::new()
    };
    format!(
        "no route to relay {}{tail}: not known to this relay's federation",
        named.join(", ")
    )
}
