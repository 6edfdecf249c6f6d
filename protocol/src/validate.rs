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

/// Deserializes a list keeping at most `MAX + 1` elements: later elements
/// are decoded (to advance the input) and dropped at once. Memory stays
/// bounded by the limit however long the encoded list claims to be, and
/// [`Validate`] still sees that the list is over its limit and answers with
/// the precise error code.
pub(crate) fn capped<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Capped<T, const MAX: usize>(std::marker::PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>, const MAX: usize> serde::de::Visitor<'de> for Capped<T, MAX> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {MAX} elements")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let keep = MAX.saturating_add(1);
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(keep));
            while let Some(item) = seq.next_element::<T>()? {
                if out.len() < keep {
                    out.push(item);
                }
            }
            Ok(out)
        }
    }

    d.deserialize_seq(Capped::<T, MAX>(std::marker::PhantomData))
}

/// Types whose every decodable value is valid: parsing already enforced
/// their rules (addresses, ids) or they have no limits of their own.
macro_rules! always_valid {
    ($($t:ty),* $(,)?) => {
        $(impl Validate for $t {
            fn validate(&self) -> Result<(), ErrorCode> {
                Ok(())
            }
        })*
    };
}

always_valid!(
    crate::Address,
    crate::Username,
    crate::RelayName,
    crate::DeviceId,
    crate::EnvelopeId,
    crate::Bytes,
    crate::ErrorCode,
    crate::api::EnvelopeKind,
    crate::api::RegistrationPolicy,
    crate::api::FailedRecipient,
    crate::federation::AckStatus,
    crate::federation::EnvelopeAck,
);
