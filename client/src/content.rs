//! What travels inside the encryption: the plaintext content of a message,
//! the direct-message body cipher, and the small payloads sealed into each
//! recipient's header. The layout is specified in `docs/client.md`.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use courier_protocol::Address;
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::Error;

/// Version byte of a direct-message body.
pub const BODY_VERSION: u8 = 1;
/// Associated data of the direct-message body cipher.
pub const BODY_AAD: &[u8] = b"courier-client-body-v1";
/// Sealed payload tag: a pairwise session message whose plaintext is a [`DirectKey`].
pub const TAG_DIRECT: u8 = 1;
/// Sealed payload tag: group id and body hash in the clear (inside the seal);
/// the body is a sender-key message for a key the recipient already has.
pub const TAG_GROUP: u8 = 2;
/// Sealed payload tag: a pairwise session message whose plaintext is a
/// [`GroupKeyDelivery`]: group id, body hash and the sender's current
/// sender-key distribution message.
pub const TAG_GROUP_WITH_KEY: u8 = 3;

/// A group's identity and membership as its members announce it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// 16 random bytes chosen by the creator, hex.
    pub id: String,
    /// The name the creator gave it.
    pub name: String,
    /// Grows by one with each membership change.
    pub epoch: u64,
    /// Every member address (including the sender).
    pub members: Vec<Address>,
}

/// The plaintext of a message, JSON-encoded before encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    /// A text message of a one-to-one conversation.
    Direct {
        /// The conversation's other party as the sender sees it: the
        /// recipient. The sender's own other devices use it to file the
        /// message under the right conversation.
        to: Address,
        /// The text.
        text: String,
        /// Sender's clock, Unix milliseconds.
        sent_ms: u64,
    },
    /// A text message to a group (or, with `text` empty, a membership change).
    Group {
        /// The group as the sender sees it after this message.
        group: GroupInfo,
        /// The text; empty for a pure membership update.
        text: String,
        /// Sender's clock, Unix milliseconds.
        sent_ms: u64,
    },
}

impl Content {
    /// JSON bytes.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(self).map_err(|e| Error::Invalid(format!("encode content: {e}")))
    }

    /// Parses JSON bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        // The parser's message could quote decrypted bytes; it is not kept.
        serde_json::from_slice(bytes).map_err(|_| malformed("message content"))
    }
}

/// SHA-256 of a body: binds each recipient's header to the shared body.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The per-device secret of a direct message: the body key and body hash.
pub struct DirectKey {
    /// AES-256-GCM key of the body.
    pub key: Zeroizing<[u8; 32]>,
    /// SHA-256 of the body.
    pub hash: [u8; 32],
}

impl DirectKey {
    /// `key(32) || hash(32)`.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(64));
        out.extend_from_slice(self.key.as_ref());
        out.extend_from_slice(&self.hash);
        out
    }

    /// Parses `key(32) || hash(32)`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != 64 {
            return Err(malformed("direct key"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes[..32]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[32..]);
        Ok(Self { key, hash })
    }
}

/// What a [`TAG_GROUP_WITH_KEY`] session message carries.
pub struct GroupKeyDelivery {
    /// The group id (16 bytes).
    pub group: [u8; 16],
    /// SHA-256 of the body.
    pub hash: [u8; 32],
    /// The sender's sender-key distribution message.
    pub distribution: Zeroizing<Vec<u8>>,
}

impl GroupKeyDelivery {
    /// `group(16) || hash(32) || distribution`.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(48 + self.distribution.len()));
        out.extend_from_slice(&self.group);
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.distribution);
        out
    }

    /// Parses `group(16) || hash(32) || distribution`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < 48 {
            return Err(malformed("group key delivery"));
        }
        let mut group = [0u8; 16];
        group.copy_from_slice(&bytes[..16]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[16..48]);
        Ok(Self {
            group,
            hash,
            distribution: Zeroizing::new(bytes[48..].to_vec()),
        })
    }
}

/// Parses a [`TAG_GROUP`] payload: `group(16) || hash(32)`.
pub fn decode_group_ref(bytes: &[u8]) -> Result<([u8; 16], [u8; 32]), Error> {
    if bytes.len() != 48 {
        return Err(malformed("group reference"));
    }
    let mut group = [0u8; 16];
    group.copy_from_slice(&bytes[..16]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[16..]);
    Ok((group, hash))
}

fn malformed(what: &'static str) -> Error {
    Error::Crypto(courier_crypto::Error::Malformed(what))
}

/// Encrypts a direct-message body under a fresh random key:
/// `0x01 || nonce(12) || AES-256-GCM(key, nonce, plaintext, aad = BODY_AAD)`.
pub fn seal_body(
    plaintext: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<(Vec<u8>, DirectKey), Error> {
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(key.as_mut());
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| malformed("body key"))?;
    let ciphertext = cipher
        .encrypt(
            &Nonce::<Aes256Gcm>::from(nonce),
            Payload {
                msg: plaintext,
                aad: BODY_AAD,
            },
        )
        .map_err(|_| malformed("body encryption"))?;
    let mut body = Vec::with_capacity(13 + ciphertext.len());
    body.push(BODY_VERSION);
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&ciphertext);
    let hash = body_hash(&body);
    Ok((body, DirectKey { key, hash }))
}

/// Checks the body hash and decrypts a direct-message body.
pub fn open_body(body: &[u8], key: &DirectKey) -> Result<Zeroizing<Vec<u8>>, Error> {
    if body_hash(body) != key.hash {
        return Err(malformed("body does not match its header"));
    }
    if body.len() < 13 + 16 || body[0] != BODY_VERSION {
        return Err(malformed("body"));
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&body[1..13]);
    let cipher = Aes256Gcm::new_from_slice(key.key.as_ref()).map_err(|_| malformed("body key"))?;
    cipher
        .decrypt(
            &Nonce::<Aes256Gcm>::from(nonce),
            Payload {
                msg: &body[13..],
                aad: BODY_AAD,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| Error::Crypto(courier_crypto::Error::DecryptionFailed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn body_round_trips_and_rejects_tampering() {
        let mut rng = rand::rngs::StdRng::from_seed([1; 32]);
        let (body, key) = seal_body(b"hello", &mut rng).unwrap();
        assert_eq!(open_body(&body, &key).unwrap().as_slice(), b"hello");
        let mut bad = body.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open_body(&bad, &key).is_err());
        // A header for another body does not open this one.
        let (other, _) = seal_body(b"other", &mut rng).unwrap();
        assert!(open_body(&other, &key).is_err());
        let again = DirectKey::decode(&key.encode()).unwrap();
        assert_eq!(open_body(&body, &again).unwrap().as_slice(), b"hello");
        assert!(DirectKey::decode(&[0; 63]).is_err());
    }
}
