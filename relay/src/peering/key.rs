//! How peering names a peer and an address without knowing the transport:
//! the adapter converts its own types (libp2p's `PeerId` and `Multiaddr`)
//! to and from these at the edge.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A peer's key in its canonical text form (for libp2p, the base58 PeerId):
/// the form `peers.json`, policy lists and descriptors already use, so no
/// conversion is needed to compare them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerKey(String);

impl PeerKey {
    /// The key with text `text` (not checked: the adapter made it from a
    /// parsed key, or it came out of a verified descriptor).
    pub fn new(text: impl Into<String>) -> Self {
        PeerKey(text.into())
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PeerKey {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(PeerKey(s.to_owned()))
    }
}

/// An address to dial a peer at, in the transport's text form (for libp2p,
/// a multiaddr).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerAddr(String);

impl PeerAddr {
    /// The address with text `text`.
    pub fn new(text: impl Into<String>) -> Self {
        PeerAddr(text.into())
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PeerAddr {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(PeerAddr(s.to_owned()))
    }
}
