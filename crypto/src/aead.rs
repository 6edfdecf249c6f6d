//! AES-256-GCM with a key and nonce taken from 44 derived bytes.

use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Nonce, Payload};
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

/// Appends `plaintext` to `out` and encrypts it there in place, then
/// appends the tag: no intermediate buffer.
pub(crate) fn seal_append(keys: &[u8; 44], plaintext: &[u8], aad: &[u8], out: &mut Vec<u8>) {
    let (c, nonce) = cipher(keys);
    let start = out.len();
    out.extend_from_slice(plaintext);
    match c.encrypt_inout_detached(&nonce, aad, (&mut out[start..]).into()) {
        Ok(tag) => out.extend_from_slice(&tag),
        // Only for plaintexts above 2^36 bytes: leave an undecryptable stub.
        Err(_) => out.truncate(start),
    }
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
