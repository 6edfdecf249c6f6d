//! Sender keys for groups: one encryption per group message.
//!
//! A sender holds a [`SenderKey`]: a random 32-bit chain id, a chain key
//! advanced with the same HMAC-SHA256 KDF_CK as the Double Ratchet, and an
//! Ed25519 signing key. It sends [`SenderKey::distribution_message`] to each
//! member over their pairwise [`Session`](crate::session::Session)s; each
//! member builds a [`SenderKeyReceiver`] from it. Every group message is
//! encrypted once and signed. When membership changes the sender generates
//! a new `SenderKey` and distributes it to the remaining members only, so a
//! removed member cannot read later messages.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Error;
use crate::kdf;
use crate::ratchet::{
    ChainKey, MAX_SKIP, MAX_SKIPPED_KEYS, RatchetConfig, SkippedKey, SkippedKeys,
};
use crate::wire::{self, Reader, kind};

/// HKDF info string that expands a sender-key message key into AES-256-GCM key and nonce.
/// At most 22 bytes, like [`crate::ratchet::MESSAGE_KEYS_INFO`].
pub const SENDER_KEY_MESSAGE_KEYS_INFO: &[u8] = b"Courier_Group_MK_v1";
/// Length of an encoded distribution message.
pub const DISTRIBUTION_LEN: usize = 2 + 4 + 4 + 32 + 32;
/// Length of a group message header (version, type, chain id, iteration).
pub const GROUP_HEADER_LEN: usize = 2 + 4 + 4;
/// Length of the Ed25519 signature that ends a group message.
pub const SIGNATURE_LEN: usize = 64;

/// The sending side of a sender key. Zeroized on drop.
pub struct SenderKey {
    chain_id: u32,
    chain: ChainKey,
    signing: SigningKey,
}

impl SenderKey {
    /// Generates a new sender key: 4 random bytes for the chain id (big
    /// endian), 32 for the chain key, 32 for the Ed25519 seed, in that order.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut id = [0u8; 4];
        let mut chain = [0u8; 32];
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut chain);
        rng.fill_bytes(seed.as_mut());
        Self {
            chain_id: u32::from_be_bytes(id),
            chain: ChainKey::new(chain, 0),
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The chain id.
    pub fn chain_id(&self) -> u32 {
        self.chain_id
    }

    /// Index of the next message.
    pub fn iteration(&self) -> u32 {
        self.chain.index
    }

    /// `0x01 0x03 || chain_id u32 || iteration u32 || chain_key(32) ||
    /// signing_public(32)`: send to each member over a pairwise session. It
    /// lets the member read messages from the current iteration on.
    pub fn distribution_message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DISTRIBUTION_LEN);
        out.push(wire::VERSION);
        out.push(kind::SENDER_KEY_DISTRIBUTION);
        out.extend_from_slice(&self.chain_id.to_be_bytes());
        out.extend_from_slice(&self.chain.index.to_be_bytes());
        out.extend_from_slice(&self.chain.key);
        out.extend_from_slice(self.signing.verifying_key().as_bytes());
        out
    }

    /// Encrypts one group message:
    /// `0x01 0x04 || chain_id u32 || iteration u32 || ciphertext || signature(64)`.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mk = self.chain.next_message_key()?;
        let mut out = Vec::with_capacity(GROUP_HEADER_LEN + plaintext.len() + 16 + SIGNATURE_LEN);
        out.push(wire::VERSION);
        out.push(kind::SENDER_KEY_MESSAGE);
        out.extend_from_slice(&self.chain_id.to_be_bytes());
        out.extend_from_slice(&mk.index.to_be_bytes());
        let keys = kdf::message_keys(&mk.key, SENDER_KEY_MESSAGE_KEYS_INFO);
        let mut header = [0u8; GROUP_HEADER_LEN];
        header.copy_from_slice(&out);
        keys.seal_append(plaintext, &header, &mut out);
        let signature = self.signing.sign(&out);
        out.extend_from_slice(&signature.to_bytes());
        Ok(out)
    }

    /// A serializable copy for the client's store.
    pub fn to_pickle(&self) -> SenderKeyPickle {
        SenderKeyPickle {
            version: SenderKeyPickle::VERSION,
            chain_id: self.chain_id,
            chain_key: self.chain.key,
            iteration: self.chain.index,
            signing_seed: Some(self.signing.to_bytes()),
            signing_public: self.signing.verifying_key().to_bytes(),
            skipped: Vec::new(),
            max_skip: MAX_SKIP,
            max_skipped_keys: MAX_SKIPPED_KEYS,
        }
    }

    /// Restores a sender key from its pickle.
    pub fn from_pickle(pickle: &SenderKeyPickle) -> Result<Self, Error> {
        if pickle.version != SenderKeyPickle::VERSION {
            return Err(Error::InvalidPickle("unknown sender key pickle version"));
        }
        let seed = pickle.signing_seed.ok_or(Error::InvalidPickle(
            "sender key pickle without signing key",
        ))?;
        Ok(Self {
            chain_id: pickle.chain_id,
            chain: ChainKey::new(pickle.chain_key, pickle.iteration),
            signing: SigningKey::from_bytes(&seed),
        })
    }
}

impl ZeroizeOnDrop for SenderKey {}

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKey")
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.chain.index)
            .finish_non_exhaustive()
    }
}

/// The receiving side of one member's sender key. Zeroized on drop.
pub struct SenderKeyReceiver {
    chain_id: u32,
    chain: ChainKey,
    verifying: VerifyingKey,
    skipped: SkippedKeys,
    config: RatchetConfig,
}

impl SenderKeyReceiver {
    /// Builds the receiving state from a distribution message (which must
    /// have arrived over an authenticated pairwise session).
    pub fn from_distribution(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        r.header(kind::SENDER_KEY_DISTRIBUTION)?;
        let chain_id = r.u32()?;
        let iteration = r.u32()?;
        let chain_key: [u8; 32] = r.array()?;
        let public: [u8; 32] = r.array()?;
        r.finish()?;
        let verifying = VerifyingKey::from_bytes(&public).map_err(|_| Error::InvalidSigningKey)?;
        Ok(Self {
            chain_id,
            chain: ChainKey::new(chain_key, iteration),
            verifying,
            skipped: SkippedKeys::default(),
            config: RatchetConfig::default(),
        })
    }

    /// Replaces the limits on skipped message keys.
    pub fn with_config(mut self, config: RatchetConfig) -> Self {
        self.config = config;
        self.skipped.extend(Vec::new(), config.max_skipped_keys);
        self
    }

    /// The chain id.
    pub fn chain_id(&self) -> u32 {
        self.chain_id
    }

    /// Reads the chain id of a group message without verifying anything, so
    /// a client can pick the right receiver.
    pub fn message_chain_id(bytes: &[u8]) -> Result<u32, Error> {
        let mut r = Reader::new(bytes);
        r.header(kind::SENDER_KEY_MESSAGE)?;
        r.u32()
    }

    /// Verifies the signature, then decrypts a group message. Out-of-order
    /// messages are accepted within the skip limits; a replay fails. On any
    /// error the state is unchanged.
    pub fn decrypt(&mut self, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        let min = GROUP_HEADER_LEN + crate::aead::TAG_LEN + SIGNATURE_LEN;
        if bytes.len() < min {
            return Err(Error::Truncated {
                needed: min - bytes.len(),
            });
        }
        let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
        let mut r = Reader::new(signed);
        r.header(kind::SENDER_KEY_MESSAGE)?;
        let chain_id = r.u32()?;
        let iteration = r.u32()?;
        let ciphertext = r.rest();
        if chain_id != self.chain_id {
            return Err(Error::ChainMismatch);
        }
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(signature);
        self.verifying
            .verify_strict(signed, &Signature::from_bytes(&sig))
            .map_err(|_| Error::BadSignature("group message"))?;
        let aad = &signed[..GROUP_HEADER_LEN];
        let open = |key: &[u8; 32]| {
            kdf::message_keys(key, SENDER_KEY_MESSAGE_KEYS_INFO).open(ciphertext, aad)
        };
        let chain_tag = chain_tag(chain_id);

        if let Some(pos) = self.skipped.find(&chain_tag, iteration) {
            let plaintext = match self.skipped.get(pos) {
                Some(entry) => open(&entry.key)?,
                None => return Err(Error::DecryptionFailed),
            };
            self.skipped.remove(pos);
            return Ok(plaintext);
        }
        if iteration < self.chain.index {
            return Err(Error::DuplicateMessage { index: iteration });
        }
        let gap = u64::from(iteration - self.chain.index);
        if gap > u64::from(self.config.max_skip) {
            return Err(Error::TooManySkipped {
                gap,
                max: self.config.max_skip,
            });
        }
        let mut chain = self.chain.clone();
        let mut skipped = Vec::new();
        while chain.index < iteration {
            let mk = chain.next_message_key()?;
            skipped.push(SkippedKey {
                chain: chain_tag,
                index: mk.index,
                key: mk.key,
            });
        }
        let mk = chain.next_message_key()?;
        let plaintext = open(&mk.key)?;
        self.chain = chain;
        self.skipped.extend(skipped, self.config.max_skipped_keys);
        Ok(plaintext)
    }

    /// A serializable copy for the client's store.
    pub fn to_pickle(&self) -> SenderKeyPickle {
        SenderKeyPickle {
            version: SenderKeyPickle::VERSION,
            chain_id: self.chain_id,
            chain_key: self.chain.key,
            iteration: self.chain.index,
            signing_seed: None,
            signing_public: self.verifying.to_bytes(),
            skipped: self
                .skipped
                .iter()
                .map(|s| crate::ratchet::SkippedPickle {
                    ratchet_key: s.chain,
                    index: s.index,
                    key: s.key,
                })
                .collect(),
            max_skip: self.config.max_skip,
            max_skipped_keys: self.config.max_skipped_keys,
        }
    }

    /// Restores a receiver from its pickle.
    pub fn from_pickle(pickle: &SenderKeyPickle) -> Result<Self, Error> {
        if pickle.version != SenderKeyPickle::VERSION {
            return Err(Error::InvalidPickle("unknown sender key pickle version"));
        }
        let verifying = VerifyingKey::from_bytes(&pickle.signing_public)
            .map_err(|_| Error::InvalidPickle("sender key signing key"))?;
        let config = RatchetConfig {
            max_skip: pickle.max_skip,
            max_skipped_keys: pickle.max_skipped_keys,
        };
        let mut skipped = SkippedKeys::default();
        skipped.extend(
            pickle
                .skipped
                .iter()
                .map(|s| SkippedKey {
                    chain: s.ratchet_key,
                    index: s.index,
                    key: s.key,
                })
                .collect(),
            config.max_skipped_keys,
        );
        Ok(Self {
            chain_id: pickle.chain_id,
            chain: ChainKey::new(pickle.chain_key, pickle.iteration),
            verifying,
            skipped,
            config,
        })
    }
}

fn chain_tag(chain_id: u32) -> [u8; 32] {
    let mut tag = [0u8; 32];
    tag[..4].copy_from_slice(&chain_id.to_be_bytes());
    tag
}

impl ZeroizeOnDrop for SenderKeyReceiver {}

impl fmt::Debug for SenderKeyReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyReceiver")
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.chain.index)
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// Serializable sender-key state (sending or receiving side). Zeroized on drop.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SenderKeyPickle {
    /// Format version; currently 1.
    pub version: u32,
    /// Chain id.
    pub chain_id: u32,
    /// Current chain key.
    pub chain_key: [u8; 32],
    /// Index of the next message key.
    pub iteration: u32,
    /// Ed25519 seed (sending side only).
    #[serde(default)]
    pub signing_seed: Option<[u8; 32]>,
    /// Ed25519 public key.
    pub signing_public: [u8; 32],
    /// Skipped message keys (receiving side), oldest first.
    #[serde(default)]
    pub skipped: Vec<crate::ratchet::SkippedPickle>,
    /// [`RatchetConfig::max_skip`].
    #[serde(default = "crate::ratchet::default_max_skip")]
    pub max_skip: u32,
    /// [`RatchetConfig::max_skipped_keys`].
    #[serde(default = "crate::ratchet::default_max_skipped_keys")]
    pub max_skipped_keys: usize,
}

impl SenderKeyPickle {
    /// Current pickle version.
    pub const VERSION: u32 = 1;
}

impl fmt::Debug for SenderKeyPickle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyPickle")
            .field("version", &self.version)
            .field("chain_id", &self.chain_id)
            .finish_non_exhaustive()
    }
}
