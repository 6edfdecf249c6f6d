//! Identifiers: devices and envelopes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A device of an account, numbered from 1 by the home relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct DeviceId(pub u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 128-bit envelope identifier, chosen by the sender, sortable by creation
/// time: 48 bits of Unix milliseconds (big-endian) then 80 random bits.
///
/// Relays deduplicate by envelope id, so a retried send or federation
/// delivery never stores a message twice. Text form: 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvelopeId(pub [u8; 16]);

/// Why an envelope id text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("envelope id must be 32 lowercase hex digits")]
pub struct EnvelopeIdError;

impl EnvelopeId {
    /// Builds an id from a Unix time in milliseconds and 80 random bits. The
    /// caller supplies both so that simulations stay deterministic.
    pub fn new(unix_ms: u64, random: [u8; 10]) -> Self {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&random);
        EnvelopeId(b)
    }

    /// The creation time in Unix milliseconds, as written by the sender.
    pub fn unix_ms(&self) -> u64 {
        let mut t = [0u8; 8];
        t[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(t)
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvelopeId({self})")
    }
}

impl FromStr for EnvelopeId {
    type Err = EnvelopeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return Err(EnvelopeIdError);
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(EnvelopeIdError),
        };
        let mut out = [0u8; 16];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(EnvelopeId(out))
    }
}

impl Serialize for EnvelopeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for EnvelopeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(d).map(EnvelopeId)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_ids_sort_by_time_and_round_trip() {
        let a = EnvelopeId::new(1_700_000_000_000, [0xff; 10]);
        let b = EnvelopeId::new(1_700_000_000_001, [0x00; 10]);
        assert!(a < b);
        assert_eq!(a.unix_ms(), 1_700_000_000_000);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<EnvelopeId>().unwrap(), a);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<EnvelopeId>(&json).unwrap(), a);
    }

    #[test]
    fn bad_envelope_id_text_is_rejected() {
        for bad in ["", "00", &"g".repeat(32), &"A".repeat(32), &"0".repeat(33)] {
            assert!(bad.parse::<EnvelopeId>().is_err());
        }
    }
}
