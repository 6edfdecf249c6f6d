//! Named size limits. Every decoder and every relay enforces these; a peer or
//! client that exceeds one gets [`crate::ErrorCode::PayloadTooLarge`] or
//! [`crate::ErrorCode::TooManyRecipients`], never a truncated result.

/// Longest username, in bytes.
pub const USERNAME_BYTES_MAX: usize = 32;
/// Longest relay name, in bytes (the DNS limit).
pub const RELAY_NAME_BYTES_MAX: usize = 253;
/// Longest address text, `user@relay`, in bytes.
pub const ADDRESS_BYTES_MAX: usize = USERNAME_BYTES_MAX + 1 + RELAY_NAME_BYTES_MAX;

/// Largest shared ciphertext body of one message, in bytes.
pub const BODY_BYTES_MAX: usize = 256 * 1024;
/// Largest per-recipient header (sealed sender + wrapped message key), in bytes.
pub const HEADER_BYTES_MAX: usize = 2 * 1024;
/// Most recipient devices one message may name.
pub const RECIPIENTS_MAX: usize = 1000;

/// Most envelopes in one federation delivery batch.
pub const BATCH_ENVELOPES_MAX: usize = 256;
/// Largest encoded federation delivery batch, in bytes.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest single federation frame (any message), in bytes.
pub const FEDERATION_FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest HTTP request body the gateway accepts, in bytes: one message with
/// the maximum body and recipient list, plus JSON and base64 overhead.
pub const HTTP_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest WebSocket frame in either direction, in bytes.
pub const WS_FRAME_BYTES_MAX: usize = 512 * 1024;

/// Most one-time prekeys in one upload.
pub const ONE_TIME_PREKEYS_PER_UPLOAD_MAX: usize = 200;
/// Most one-time prekeys a device may hold on its relay.
pub const ONE_TIME_PREKEYS_PER_DEVICE_MAX: usize = 1000;
/// Largest public key, signature or prekey blob, in bytes.
pub const KEY_BYTES_MAX: usize = 256;
/// Most devices one account may have.
pub const DEVICES_PER_ACCOUNT_MAX: usize = 16;

/// Longest a message may ask to be kept before delivery, in seconds (30 days).
pub const MESSAGE_TTL_SECS_MAX: u64 = 30 * 24 * 3600;
/// Most envelopes returned by one mailbox fetch.
pub const FETCH_LIMIT_MAX: usize = 500;

/// Exact size of every public key on the wire (Ed25519 and X25519), in bytes.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Exact size of every signature on the wire (Ed25519), in bytes.
pub const SIGNATURE_BYTES: usize = 64;
/// Exact size of a login challenge nonce, in bytes.
pub const NONCE_BYTES: usize = 32;
/// Longest opaque token text (access/refresh token, challenge id, link secret),
/// in bytes.
pub const TOKEN_BYTES_MAX: usize = 256;
/// Longest invite or device link code, in bytes.
pub const CODE_BYTES_MAX: usize = 64;
/// Longest human-readable error message, in bytes.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;
/// Most sequence numbers acknowledged in one ack request or frame.
pub const ACK_SEQS_MAX: usize = FETCH_LIMIT_MAX;
/// Largest JSON mailbox fetch response a relay sends, in bytes; the relay
/// returns fewer envelopes (with `more: true`) to stay under it. Always at
/// least one envelope of maximum size fits.
pub const FETCH_RESPONSE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Longest libp2p PeerId text in a relay descriptor, in bytes.
pub const PEER_ID_BYTES_MAX: usize = 128;
/// Most listen addresses in a relay descriptor.
pub const DESCRIPTOR_ADDRESSES_MAX: usize = 16;
/// Most feature strings in a relay descriptor.
pub const DESCRIPTOR_FEATURES_MAX: usize = 32;
/// Longest multiaddr, URL, version or feature text in a relay descriptor, in
/// bytes.
pub const DESCRIPTOR_TEXT_BYTES_MAX: usize = 512;
/// Most third-party descriptors shared in one federation `Hello`.
pub const HELLO_KNOWN_MAX: usize = 512;
