//! Binary fields: base64url (no padding) in JSON, raw bytes in binary codecs.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An owned byte string that serializes as unpadded base64url text in
/// human-readable formats (JSON) and as plain bytes in binary formats.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Consumes the wrapper.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// Unpadded base64url text of the bytes.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Parses unpadded base64url text; padding characters are rejected so that
    /// every byte string has exactly one text form.
    pub fn from_base64url(text: &str) -> Result<Self, base64::DecodeError> {
        URL_SAFE_NO_PAD.decode(text).map(Bytes)
    }
}

impl fmt::Debug for Bytes {
    // Bodies can be large; the length and a short prefix identify them in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.iter().take(8).map(|b| format!("{b:02x}")).collect();
        write!(f, "Bytes({} bytes, {prefix}…)", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_base64url())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("unpadded base64url text or a byte string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Bytes::from_base64url(v).map_err(|_| E::custom("invalid base64url"))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_unpadded_base64url() {
        let b = Bytes(vec![0xfb, 0xff, 0x01]);
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"-_8B\"");
        let back: Bytes = serde_json::from_str("\"-_8B\"").unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn padded_or_standard_alphabet_is_rejected() {
        assert!(serde_json::from_str::<Bytes>("\"+/8B\"").is_err());
        assert!(serde_json::from_str::<Bytes>("\"AA==\"").is_err());
    }
}
