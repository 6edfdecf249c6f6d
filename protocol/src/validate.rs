//! Limit checks run after decoding.
//!
//! Decoding proves only that bytes have the right shape; [`Validate`] checks
//! every named limit in [`crate::limits`] and the structural rules (no
//! duplicate recipients, exact key sizes, …). Both codecs call it, so a value
//! that comes out of [`crate::codec`] is within limits.

use crate::ErrorCode;
use crate::limits::{KEY_BYTES_MAX, PUBLIC_KEY_BYTES, SIGNATURE_BYTES};

/// A wire type whose limits can be checked.
pub trait Validate {
    /// Checks every limit and structural rule of the value, returning the
    /// error code a relay answers with when one is broken.
    fn validate(&self) -> Result<(), ErrorCode>;
}

impl<T: Validate> Validate for Vec<T> {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.iter().try_for_each(Validate::validate)
    }
}

impl<T: Validate> Validate for Option<T> {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.as_ref().map_or(Ok(()), Validate::validate)
    }
}

/// `Err(code)` unless `ok`.
pub(crate) fn ensure(ok: bool, code: ErrorCode) -> Result<(), ErrorCode> {
    if ok { Ok(()) } else { Err(code) }
}

/// Text no longer than `max` bytes.
pub(crate) fn text_max(text: &str, max: usize) -> Result<(), ErrorCode> {
    ensure(text.len() <= max, ErrorCode::PayloadTooLarge)
}

/// Text of 1..=`max` bytes.
pub(crate) fn text_nonempty_max(text: &str, max: usize) -> Result<(), ErrorCode> {
    ensure(!text.is_empty(), ErrorCode::BadRequest)?;
    text_max(text, max)
}

/// A field that must be exactly `len` bytes: longer than any key is
/// oversized, any other mismatch is a bad request.
pub(crate) fn exact_len(bytes: &[u8], len: usize) -> Result<(), ErrorCode> {
    ensure(bytes.len() <= KEY_BYTES_MAX, ErrorCode::PayloadTooLarge)?;
    ensure(bytes.len() == len, ErrorCode::BadRequest)
}

/// An Ed25519 or X25519 public key.
pub(crate) fn public_key(bytes: &[u8]) -> Result<(), ErrorCode> {
    exact_len(bytes, PUBLIC_KEY_BYTES)
}

/// An Ed25519 signature.
pub(crate) fn signature(bytes: &[u8]) -> Result<(), ErrorCode> {
    exact_len(bytes, SIGNATURE_BYTES)
}

/// Whether a slice holds a value twice.
pub(crate) fn has_duplicates<T: Ord>(mut items: Vec<T>) -> bool {
    items.sort_unstable();
    items.windows(2).any(|w| w[0] == w[1])
}

/// Cuts an error message to [`crate::limits::ERROR_MESSAGE_BYTES_MAX`] on a
/// character boundary, so our own errors always pass validation.
pub(crate) fn truncate_message(message: &mut String) {
    let max = crate::limits::ERROR_MESSAGE_BYTES_MAX;
    if message.len() > max {
        let mut cut = max;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
}
