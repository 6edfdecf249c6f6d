//! AES-256-GCM with a key and nonce taken from 44 derived bytes.

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::{Aes256Gcm, Key};

use crate::Error;

/// AES-GCM tag length in bytes.
pub(crate) const TAG_LEN: usize = 16;

fn cipher(keys: &[u8; 44]) -> (Aes256Gcm, Nonce<Aes256Gcm>) {
    let mut key = [0u8; 32];
    key.copy_from_slice(&keys[..32]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&keys[32..]);
    let key_arr: Key<Aes256Gcm> = key.into();
    zeroize::Zeroize::zeroize(&mut key);
    (Aes256Gcm::new(&key_arr), nonce.into())
}

/// Encrypts `plaintext`; the output is ciphertext followed by the 16-byte tag.
pub(crate) fn seal(keys: &[u8; 44], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let (c, nonce) = cipher(keys);
    // AES-GCM encryption fails only for plaintexts above 2^36 bytes, which
    // no caller can hold in memory; return an empty (undecryptable) output then.
    c.encrypt(
        &nonce,
        Payload {
            msg: plaintext,
            aad,
        },
    )
    .unwrap_or_default()
}

/// Decrypts and authenticates ciphertext||tag.
pub(crate) fn open(keys: &[u8; 44], ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    if ciphertext.len() < TAG_LEN {
        return Err(Error::DecryptionFailed);
    }
    let (c, nonce) = cipher(keys);
    c.decrypt(
        &nonce,
        Payload {
            msg: ciphertext,
            aad,
        },
    )
    .map_err(|_| Error::DecryptionFailed)
}
