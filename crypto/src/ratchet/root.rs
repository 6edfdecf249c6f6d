//! The root chain: KDF_RK with HKDF-SHA256.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::chain::ChainKey;
use crate::kdf;

/// HKDF info string for KDF_RK.
pub const ROOT_INFO: &[u8] = b"Courier_Ratchet_Root_v1";

/// The root key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct RootKey(pub(crate) [u8; 32]);

impl RootKey {
    /// KDF_RK(rk, dh_out) = HKDF-SHA256(salt = rk, ikm = dh_out, info, 64):
    /// bytes 0..32 are the new root key, 32..64 the new chain key.
    pub(crate) fn advance(&self, dh_out: &[u8; 32]) -> (RootKey, ChainKey) {
        let mut okm = kdf::hkdf::<64>(&self.0, dh_out, ROOT_INFO);
        let mut rk = [0u8; 32];
        let mut ck = [0u8; 32];
        rk.copy_from_slice(&okm[..32]);
        ck.copy_from_slice(&okm[32..]);
        okm.zeroize();
        (RootKey(rk), ChainKey::new(ck, 0))
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(..)")
    }
}
