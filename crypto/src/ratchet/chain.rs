//! Symmetric-key chains: KDF_CK with HMAC-SHA256.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;
use crate::kdf;

/// HMAC input that derives a message key from a chain key.
pub const MESSAGE_KEY_SEED: u8 = 0x01;
/// HMAC input that derives the next chain key.
pub const CHAIN_KEY_SEED: u8 = 0x02;

/// A chain key and the index of the next message key it yields.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct ChainKey {
    pub(crate) key: [u8; 32],
    pub(crate) index: u32,
}

impl ChainKey {
    pub(crate) fn new(key: [u8; 32], index: u32) -> Self {
        Self { key, index }
    }

    /// KDF_CK: returns the message key for `self.index`
    /// (HMAC-SHA256(ck, 0x01)), then sets ck = HMAC-SHA256(ck, 0x02) and
    /// index += 1. Fails without changing anything if the index would overflow.
    pub(crate) fn next_message_key(&mut self) -> Result<MessageKey, Error> {
        let index = self.index.checked_add(1).ok_or(Error::CounterExhausted)?;
        let (mk, next) = kdf::hmac_pair(&self.key, &[MESSAGE_KEY_SEED], &[CHAIN_KEY_SEED]);
        let mk = MessageKey {
            key: mk,
            index: self.index,
        };
        self.key = next;
        self.index = index;
        Ok(mk)
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainKey")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// One message key with its index.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct MessageKey {
    pub(crate) key: [u8; 32],
    pub(crate) index: u32,
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageKey")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}
