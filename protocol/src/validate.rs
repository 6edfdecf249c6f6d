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

/// The field prime of Curve25519, 2^255 - 19, little-endian.
const P: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// The u-coordinates (canonical, little-endian) of every point of small
/// order that X25519 accepts, on the curve and on its twist: 0 (order 2),
/// 1 and p - 1 (order 4, curve and twist), and the two of order 8. X25519
/// with any (clamped) secret maps them, and only them, to the all-zero
/// output, which leaks the secret's cofactor bits and contributes nothing.
const SMALL_ORDER_U: [[u8; 32]; 5] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    {
        let mut p_minus_1 = P;
        p_minus_1[0] = 0xec;
        p_minus_1
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
];

/// Whether 32 bytes are an X25519 public key of small order, in any
/// encoding X25519 accepts: the top bit is ignored (RFC 7748 masks it) and
/// values from p up to 2^255 - 1 are taken mod p, exactly as X25519
/// decodes them.
pub fn is_small_order_x25519(key: &[u8; 32]) -> bool {
    let mut u = *key;
    u[31] &= 0x7f;
    // u < 2^255 < 2p, so one conditional subtraction reduces it.
    if !less_than(&u, &P) {
        let mut borrow = 0i16;
        for (byte, p) in u.iter_mut().zip(P) {
            let d = i16::from(*byte) - i16::from(p) - borrow;
            borrow = i16::from(d < 0);
            *byte = d.rem_euclid(256) as u8;
        }
    }
    SMALL_ORDER_U.contains(&u)
}

/// `a < b` for little-endian 32-byte integers.
fn less_than(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().rev().cmp(b.iter().rev()) == std::cmp::Ordering::Less
}

/// An X25519 public key: 32 bytes and not of small order
/// ([`ErrorCode::WeakKey`] otherwise), so no DH with it can come out as
/// all zeros.
pub(crate) fn x25519_public_key(bytes: &[u8]) -> Result<(), ErrorCode> {
    public_key(bytes)?;
    let key: &[u8; 32] = bytes.try_into().map_err(|_| ErrorCode::BadRequest)?;
    ensure(!is_small_order_x25519(key), ErrorCode::WeakKey)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The X25519 output with a fixed secret is all zeros.
    fn x25519_is_zero(key: [u8; 32]) -> bool {
        let secret = x25519_dalek::StaticSecret::from([0x5a; 32]);
        !secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(key))
            .was_contributory()
    }

    /// Every encoding of a small-order u: canonical, + p where that stays
    /// below 2^255, and each with bit 255 set.
    fn small_order_encodings() -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        for u in SMALL_ORDER_U {
            out.push(u);
            if u[0] < 19 && u[1..].iter().all(|b| *b == 0) {
                let mut plus_p = P;
                plus_p[0] = P[0] + u[0];
                out.push(plus_p);
            }
        }
        for key in out.clone() {
            let mut high = key;
            high[31] |= 0x80;
            out.push(high);
        }
        out
    }

    #[test]
    fn every_encoding_of_a_small_order_point_is_refused_as_x25519_sees_it() {
        let all = small_order_encodings();
        assert_eq!(all.len(), 14);
        for key in all {
            assert!(x25519_is_zero(key), "{key:02x?} is not small order");
            assert!(is_small_order_x25519(&key), "{key:02x?} passed");
            assert_eq!(x25519_public_key(&key), Err(ErrorCode::WeakKey));
        }
        // Neighbours of the non-canonical encodings are ordinary values.
        for low in [2u8, 18] {
            let mut key = P;
            key[0] = P[0] + low;
            assert!(!is_small_order_x25519(&key));
            assert!(!x25519_is_zero(key));
        }
        assert_eq!(x25519_public_key(&[9; 31]), Err(ErrorCode::BadRequest));
    }

    proptest! {
        #[test]
        fn random_keys_agree_with_x25519(key in any::<[u8; 32]>()) {
            prop_assert_eq!(is_small_order_x25519(&key), x25519_is_zero(key));
        }
    }
}
