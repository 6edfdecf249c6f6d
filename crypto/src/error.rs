//! The one error type of this crate.

/// Everything that can go wrong in `courier-crypto`.
///
/// Every variant is caused by input (bytes from the network or a store, a
/// peer's keys) or by a limit; none is a bug. An operation that returns an
/// error leaves the state it was called on unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input ended before a complete value could be read.
    #[error("input truncated: needed {needed} more bytes")]
    Truncated {
        /// How many bytes were missing at the point parsing stopped.
        needed: usize,
    },
    /// The input had bytes left over after a complete value.
    #[error("{0} trailing bytes after a complete value")]
    TrailingBytes(usize),
    /// The leading version byte names a version this code does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The type byte does not match the kind of message expected here.
    #[error("unexpected message type {0:#04x}")]
    UnexpectedType(u8),
    /// A field held a value outside its allowed set (a flag that is not 0/1,
    /// an address that is not UTF-8, a length above its limit).
    #[error("malformed field: {0}")]
    Malformed(&'static str),
    /// A byte string that should be an Ed25519 public key is not a valid point.
    #[error("invalid Ed25519 public key")]
    InvalidSigningKey,
    /// An Ed25519 signature did not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A Diffie-Hellman result was all-zero (a low-order or invalid public key).
    #[error("Diffie-Hellman with a low-order public key")]
    WeakKey,
    /// AEAD decryption failed: the ciphertext, header or associated data was
    /// tampered with, or the message was not meant for this key.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The message key for this message was already used or discarded
    /// (a replayed message, or one older than the stored skipped keys).
    #[error("message {index} was already decrypted or its key was discarded")]
    DuplicateMessage {
        /// The message index in its chain.
        index: u32,
    },
    /// Decrypting would require skipping more message keys than allowed.
    #[error("message gap {gap} exceeds the limit of {max}")]
    TooManySkipped {
        /// How many keys would have to be skipped.
        gap: u64,
        /// The configured limit (`max_skip`).
        max: u32,
    },
    /// A chain counter would overflow `u32`.
    #[error("message counter exhausted")]
    CounterExhausted,
    /// A prekey message does not belong to this session (different base key
    /// or identities).
    #[error("prekey message does not match this session")]
    SessionMismatch,
    /// The prekey or one-time prekey named by a message is not the one supplied.
    #[error("prekey id mismatch: message uses {expected}, got {supplied}")]
    PreKeyMismatch {
        /// The id named in the message.
        expected: u32,
        /// The id of the key passed in.
        supplied: u32,
    },
    /// A prekey message names a one-time prekey but none was supplied, or the
    /// other way round.
    #[error("one-time prekey presence does not match the message")]
    OneTimePreKeyMismatch,
    /// A group message was produced under a different sender-key chain.
    #[error("sender-key chain id mismatch")]
    ChainMismatch,
    /// The sender named inside a sealed envelope is not the identity that the
    /// inner session authenticates.
    #[error("sealed sender does not match the session identity")]
    SenderMismatch,
    /// A stored pickle has a version this code cannot read, or inconsistent contents.
    #[error("invalid pickle: {0}")]
    InvalidPickle(&'static str),
    /// A prekey message whose X3DH base key already started a session with
    /// that signed prekey: a replay of a first message. Responders remember
    /// the base keys each signed prekey accepted and refuse repeats.
    #[error("prekey message replayed: its base key already started a session")]
    ReplayedPreKeyMessage,
    /// A signed prekey accepted as many new sessions as a responder
    /// remembers base keys for; it must rotate before accepting more.
    #[error("signed prekey {0} accepted its maximum number of sessions")]
    SignedPreKeyExhausted(u32),
}
