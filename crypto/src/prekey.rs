//! Signed prekeys, one-time prekeys and the public prekey bundle.

use std::fmt;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;
use crate::identity::{Identity, PublicIdentity};
use crate::wire::{self, Reader, kind};

/// Prefix of the message an identity signs to certify a signed prekey; the
/// message is `context || id u32 || public(32) || created_ms u64` (as in
/// `docs/protocol.md`).
pub const SIGNED_PREKEY_SIGNATURE_CONTEXT: &[u8] = b"courier-signed-prekey-v1";

/// Length of [`SignedPreKeyPublic::to_bytes`].
pub const SIGNED_PREKEY_PUBLIC_LEN: usize = 108;
/// Length of [`OneTimePreKeyPublic::to_bytes`].
pub const ONE_TIME_PREKEY_PUBLIC_LEN: usize = 36;
/// Largest batch [`OneTimePreKey::generate_batch`] produces at once.
pub const ONE_TIME_PREKEY_BATCH_MAX: u32 = 10_000;

fn random_secret(rng: &mut impl CryptoRng) -> StaticSecret {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let secret = StaticSecret::from(bytes);
    bytes.zeroize();
    secret
}

fn spk_signature_message(id: u32, timestamp: u64, key: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_PREKEY_SIGNATURE_CONTEXT.len() + 44);
    m.extend_from_slice(SIGNED_PREKEY_SIGNATURE_CONTEXT);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(key);
    m.extend_from_slice(&timestamp.to_be_bytes());
    m
}

/// A signed prekey (secret half). Zeroized on drop.
pub struct SignedPreKey {
    secret: StaticSecret,
    public: SignedPreKeyPublic,
}

impl SignedPreKey {
    /// Generates a signed prekey with the given id and creation time
    /// (`created_ms`: Unix milliseconds, passed in by the caller). Draws 32
    /// random bytes for the X25519 secret.
    pub fn generate(
        identity: &Identity,
        id: u32,
        timestamp: u64,
        rng: &mut impl CryptoRng,
    ) -> Self {
        Self::from_secret(identity, id, timestamp, random_secret(rng))
    }

    fn from_secret(identity: &Identity, id: u32, timestamp: u64, secret: StaticSecret) -> Self {
        let key = PublicKey::from(&secret);
        let signature = identity.sign(&spk_signature_message(id, timestamp, key.as_bytes()));
        Self {
            secret,
            public: SignedPreKeyPublic {
                id,
                timestamp,
                key,
                signature,
            },
        }
    }

    /// The key id.
    pub fn id(&self) -> u32 {
        self.public.id
    }

    /// The public half with its signature.
    pub fn public(&self) -> &SignedPreKeyPublic {
        &self.public
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    /// A serializable copy for the client's store.
    pub fn to_pickle(&self) -> PreKeyPickle {
        PreKeyPickle {
            version: PreKeyPickle::VERSION,
            id: self.public.id,
            timestamp: self.public.timestamp,
            secret: self.secret.to_bytes(),
            signature: self.public.signature.to_vec(),
        }
    }

    /// Restores a signed prekey; the signature is recomputed with `identity`
    /// (Ed25519 signatures are deterministic) and checked against the stored one.
    pub fn from_pickle(identity: &Identity, pickle: &PreKeyPickle) -> Result<Self, Error> {
        if pickle.version != PreKeyPickle::VERSION {
            return Err(Error::InvalidPickle("unknown prekey pickle version"));
        }
        let spk = Self::from_secret(
            identity,
            pickle.id,
            pickle.timestamp,
            StaticSecret::from(pickle.secret),
        );
        if spk.public.signature[..] != pickle.signature[..] {
            return Err(Error::InvalidPickle(
                "signed prekey belongs to another identity",
            ));
        }
        Ok(spk)
    }
}

impl ZeroizeOnDrop for SignedPreKey {}

impl fmt::Debug for SignedPreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPreKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Serializable secret state of a signed or one-time prekey. Zeroized on drop.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct PreKeyPickle {
    /// Format version; currently 1.
    pub version: u32,
    /// Key id.
    pub id: u32,
    /// Creation time (signed prekeys only; 0 for one-time prekeys).
    #[serde(default)]
    pub timestamp: u64,
    /// X25519 secret bytes.
    pub secret: [u8; 32],
    /// Ed25519 signature (signed prekeys only; empty for one-time prekeys).
    #[serde(default)]
    pub signature: Vec<u8>,
}

impl PreKeyPickle {
    /// Current pickle version.
    pub const VERSION: u32 = 1;
}

impl fmt::Debug for PreKeyPickle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreKeyPickle")
            .field("version", &self.version)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The public half of a signed prekey, as published: not yet verified until
/// it is placed in a [`PreKeyBundle`].
#[derive(Clone, PartialEq, Eq)]
pub struct SignedPreKeyPublic {
    id: u32,
    timestamp: u64,
    key: PublicKey,
    signature: [u8; 64],
}

impl SignedPreKeyPublic {
    /// Builds the public half from its parts as carried in the key directory
    /// (`SignedPreKey { id, public, signature, created_ms }`); not verified
    /// until placed in a [`PreKeyBundle`] (or [`Self::verify`]).
    pub fn from_parts(id: u32, key: [u8; 32], signature: [u8; 64], created_ms: u64) -> Self {
        Self {
            id,
            timestamp: created_ms,
            key: PublicKey::from(key),
            signature,
        }
    }

    /// The Ed25519 signature by the owner's identity.
    pub fn signature(&self) -> [u8; 64] {
        self.signature
    }

    /// Key id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Creation time (Unix milliseconds) as given to [`SignedPreKey::generate`].
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// X25519 public key bytes.
    pub fn key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub(crate) fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// Verifies the signature with the owner's identity.
    pub fn verify(&self, identity: &PublicIdentity) -> Result<(), Error> {
        identity
            .verify(
                &spk_signature_message(self.id, self.timestamp, self.key.as_bytes()),
                &self.signature,
            )
            .map_err(|_| Error::BadSignature("signed prekey"))
    }

    /// `id u32 BE || timestamp u64 BE || key(32) || signature(64)` (108 bytes).
    pub fn to_bytes(&self) -> [u8; SIGNED_PREKEY_PUBLIC_LEN] {
        let mut out = [0u8; SIGNED_PREKEY_PUBLIC_LEN];
        out[..4].copy_from_slice(&self.id.to_be_bytes());
        out[4..12].copy_from_slice(&self.timestamp.to_be_bytes());
        out[12..44].copy_from_slice(self.key.as_bytes());
        out[44..].copy_from_slice(&self.signature);
        out
    }

    /// Parses the 108-byte encoding (does not verify: see [`Self::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        r.finish()?;
        Ok(v)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(Self {
            id: r.u32()?,
            timestamp: r.u64()?,
            key: PublicKey::from(r.array::<32>()?),
            signature: r.array()?,
        })
    }
}

impl fmt::Debug for SignedPreKeyPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPreKeyPublic")
            .field("id", &self.id)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// A one-time prekey (secret half). Zeroized on drop.
pub struct OneTimePreKey {
    secret: StaticSecret,
    public: OneTimePreKeyPublic,
}

impl OneTimePreKey {
    /// Generates `count` keys (at most [`ONE_TIME_PREKEY_BATCH_MAX`]) with
    /// consecutive ids starting at `first_id` (wrapping), 32 random bytes each.
    pub fn generate_batch(first_id: u32, count: u32, rng: &mut impl CryptoRng) -> Vec<Self> {
        let count = count.min(ONE_TIME_PREKEY_BATCH_MAX);
        (0..count)
            .map(|i| Self::from_secret(first_id.wrapping_add(i), random_secret(rng)))
            .collect()
    }

    fn from_secret(id: u32, secret: StaticSecret) -> Self {
        let key = PublicKey::from(&secret);
        Self {
            secret,
            public: OneTimePreKeyPublic { id, key },
        }
    }

    /// Key id.
    pub fn id(&self) -> u32 {
        self.public.id
    }

    /// The public half.
    pub fn public(&self) -> &OneTimePreKeyPublic {
        &self.public
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    /// A serializable copy for the client's store.
    pub fn to_pickle(&self) -> PreKeyPickle {
        PreKeyPickle {
            version: PreKeyPickle::VERSION,
            id: self.public.id,
            timestamp: 0,
            secret: self.secret.to_bytes(),
            signature: Vec::new(),
        }
    }

    /// Restores a one-time prekey from its pickle.
    pub fn from_pickle(pickle: &PreKeyPickle) -> Result<Self, Error> {
        if pickle.version != PreKeyPickle::VERSION {
            return Err(Error::InvalidPickle("unknown prekey pickle version"));
        }
        Ok(Self::from_secret(
            pickle.id,
            StaticSecret::from(pickle.secret),
        ))
    }
}

impl ZeroizeOnDrop for OneTimePreKey {}

impl fmt::Debug for OneTimePreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePreKey")
            .field("id", &self.public.id)
            .finish_non_exhaustive()
    }
}

/// The public half of a one-time prekey.
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimePreKeyPublic {
    id: u32,
    key: PublicKey,
}

impl OneTimePreKeyPublic {
    /// Builds the public half from its parts.
    pub fn from_parts(id: u32, key: [u8; 32]) -> Self {
        Self {
            id,
            key: PublicKey::from(key),
        }
    }

    /// Key id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// X25519 public key bytes.
    pub fn key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub(crate) fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// `id u32 BE || key(32)` (36 bytes).
    pub fn to_bytes(&self) -> [u8; ONE_TIME_PREKEY_PUBLIC_LEN] {
        let mut out = [0u8; ONE_TIME_PREKEY_PUBLIC_LEN];
        out[..4].copy_from_slice(&self.id.to_be_bytes());
        out[4..].copy_from_slice(self.key.as_bytes());
        out
    }

    /// Parses the 36-byte encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        r.finish()?;
        Ok(v)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(Self {
            id: r.u32()?,
            key: PublicKey::from(r.array::<32>()?),
        })
    }
}

impl fmt::Debug for OneTimePreKeyPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePreKeyPublic")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Everything an initiator needs to start a session with a device: its
/// identity, a signed prekey and optionally a one-time prekey. A value of
/// this type has always had both signatures verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyBundle {
    identity: PublicIdentity,
    signed_prekey: SignedPreKeyPublic,
    one_time_prekey: Option<OneTimePreKeyPublic>,
}

impl PreKeyBundle {
    /// Assembles a bundle, verifying the signed prekey's signature.
    pub fn new(
        identity: PublicIdentity,
        signed_prekey: SignedPreKeyPublic,
        one_time_prekey: Option<OneTimePreKeyPublic>,
    ) -> Result<Self, Error> {
        signed_prekey.verify(&identity)?;
        Ok(Self {
            identity,
            signed_prekey,
            one_time_prekey,
        })
    }

    /// The device's identity.
    pub fn identity(&self) -> &PublicIdentity {
        &self.identity
    }

    /// The signed prekey.
    pub fn signed_prekey(&self) -> &SignedPreKeyPublic {
        &self.signed_prekey
    }

    /// The one-time prekey, if the directory had one left.
    pub fn one_time_prekey(&self) -> Option<&OneTimePreKeyPublic> {
        self.one_time_prekey.as_ref()
    }

    /// `0x01 0x06 || identity(128) || signed_prekey(108) || flag(1) || [one_time_prekey(36)]`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 128 + 108 + 1 + 36);
        out.push(wire::VERSION);
        out.push(kind::PREKEY_BUNDLE);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.signed_prekey.to_bytes());
        match &self.one_time_prekey {
            Some(opk) => {
                out.push(1);
                out.extend_from_slice(&opk.to_bytes());
            }
            None => out.push(0),
        }
        out
    }

    /// Parses and verifies a bundle.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        r.header(kind::PREKEY_BUNDLE)?;
        let identity = PublicIdentity::read(&mut r)?;
        let signed_prekey = SignedPreKeyPublic::read(&mut r)?;
        let one_time_prekey = match r.u8()? {
            0 => None,
            1 => Some(OneTimePreKeyPublic::read(&mut r)?),
            _ => return Err(Error::Malformed("one-time prekey flag")),
        };
        r.finish()?;
        Self::new(identity, signed_prekey, one_time_prekey)
    }
}
