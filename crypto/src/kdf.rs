//! Key derivation: HKDF-SHA256 and the HMAC-SHA256 chain step.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

/// Length of AES-256-GCM key plus 96-bit nonce derived for one message.
pub(crate) const MESSAGE_KEYS_LEN: usize = 44;

type HmacSha256 = Hmac<Sha256>;

/// HKDF-SHA256 (extract then expand) into a fixed-size array.
pub(crate) fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; N] {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = [0u8; N];
    // N is at most 255 * 32 for every call site (checked by the const
    // sizes used in this crate), so expand cannot fail.
    if hk.expand(info, &mut out).is_err() {
        out.zeroize();
    }
    out
}

/// HKDF-Expand only, with `prk` (32 uniformly random bytes) as the PRK.
pub(crate) fn hkdf_expand<const N: usize>(prk: &[u8; 32], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    match Hkdf::<Sha256>::from_prk(prk) {
        Ok(hk) => {
            if hk.expand(info, &mut out).is_err() {
                out.zeroize();
            }
        }
        Err(_) => out.zeroize(),
    }
    out
}

/// HMAC-SHA256 of two messages under one key, keying the HMAC state once
/// (the ipad/opad compressions are shared): KDF_CK's two outputs.
pub(crate) fn hmac_pair(key: &[u8; 32], first: &[u8], second: &[u8]) -> ([u8; 32], [u8; 32]) {
    let keyed = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
    let mut a = keyed.clone();
    a.update(first);
    let mut b = keyed;
    b.update(second);
    (
        a.finalize().into_bytes().into(),
        b.finalize().into_bytes().into(),
    )
}

/// Derives the AES-256-GCM key and nonce for one message from its message key.
pub(crate) fn message_keys(message_key: &[u8; 32], info: &[u8]) -> MessageKeys {
    MessageKeys(hkdf_expand::<MESSAGE_KEYS_LEN>(message_key, info))
}

/// AES-256-GCM key (bytes 0..32) and nonce (bytes 32..44).
#[derive(Zeroize, zeroize::ZeroizeOnDrop)]
pub(crate) struct MessageKeys([u8; MESSAGE_KEYS_LEN]);

impl MessageKeys {
    pub(crate) fn seal_append(&self, plaintext: &[u8], aad: &[u8], out: &mut Vec<u8>) {
        crate::aead::seal_append(&self.0, plaintext, aad, out);
    }

    pub(crate) fn open(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, crate::Error> {
        crate::aead::open(&self.0, ciphertext, aad)
    }
}

/// X25519 with a check that the result is not all-zero (which happens
/// exactly when `public` is a low-order point).
pub(crate) fn dh(
    secret: &x25519_dalek::StaticSecret,
    public: &x25519_dalek::PublicKey,
) -> Result<zeroize::Zeroizing<[u8; 32]>, crate::Error> {
    let shared = secret.diffie_hellman(public);
    if !shared.was_contributory() {
        return Err(crate::Error::WeakKey);
    }
    Ok(zeroize::Zeroizing::new(shared.to_bytes()))
}
