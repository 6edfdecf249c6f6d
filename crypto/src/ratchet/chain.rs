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

    /// Message key for `self.index`: HMAC-SHA256(ck, 0x01).
    pub(crate) fn message_key(&self) -> MessageKey {
        MessageKey {
            key: kdf::hmac(&self.key, &[MESSAGE_KEY_SEED]),
            index: self.index,
        }
    }

    /// ck = HMAC-SHA256(ck, 0x02); index += 1.
    pub(crate) fn advance(&mut self) -> Result<(), Error> {
        let index = self.index.checked_add(1).ok_or(Error::CounterExhausted)?;
        self.key = kdf::hmac(&self.key, &[CHAIN_KEY_SEED]);
        self.index = index;
        Ok(())
    }

    /// The message key for the current index, then advances.
    pub(crate) fn next_message_key(&mut self) -> Result<MessageKey, Error> {
        let mk = self.message_key();
        self.advance()?;
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
