//! Stored message keys of skipped (not yet received) messages.

use std::collections::VecDeque;
use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// One skipped message key, identified by the ratchet public key of its
/// chain and its index.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct SkippedKey {
    pub(crate) chain: [u8; 32],
    pub(crate) index: u32,
    pub(crate) key: [u8; 32],
}

/// Skipped message keys in insertion order, capped at `cap` entries; when
/// full, the oldest entries are evicted first.
#[derive(Clone, Default)]
pub(crate) struct SkippedKeys {
    entries: VecDeque<SkippedKey>,
}

impl SkippedKeys {
    pub(crate) fn find(&self, chain: &[u8; 32], index: u32) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.index == index && &e.chain == chain)
    }

    pub(crate) fn get(&self, pos: usize) -> Option<&SkippedKey> {
        self.entries.get(pos)
    }

    pub(crate) fn remove(&mut self, pos: usize) {
        self.entries.remove(pos);
    }

    /// Appends `new`, evicting the oldest entries beyond `cap`.
    pub(crate) fn extend(&mut self, new: Vec<SkippedKey>, cap: usize) {
        self.entries.extend(new);
        while self.entries.len() > cap {
            self.entries.pop_front();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &SkippedKey> {
        self.entries.iter()
    }
}

impl Drop for SkippedKeys {
    fn drop(&mut self) {
        // Each SkippedKey zeroizes itself on drop.
        self.entries.clear();
    }
}

impl fmt::Debug for SkippedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkippedKeys")
            .field("len", &self.entries.len())
            .finish()
    }
}
