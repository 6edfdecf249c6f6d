//! Device identity: an Ed25519 signing key and an X25519 DH key whose public
//! half is signed by the Ed25519 key.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;
use crate::wire::Reader;

/// Prefix of the message the Ed25519 key signs to certify the X25519 key
/// (the `dh_key_signature` of `DeviceKeys` in `docs/protocol.md`).
pub const IDENTITY_DH_SIGNATURE_CONTEXT: &[u8] = b"courier-dh-key-v1";

/// Length of [`PublicIdentity::to_bytes`].
pub const PUBLIC_IDENTITY_LEN: usize = 128;

/// A device's identity key pair (secret). Zeroized on drop.
pub struct Identity {
    signing: SigningKey,
    dh: StaticSecret,
    public: PublicIdentity,
}

impl Identity {
    /// Generates a fresh identity: 32 random bytes for the Ed25519 seed, then
    /// 32 random bytes for the X25519 secret, in that order.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut seed = [0u8; 32];
        let mut dh = [0u8; 32];
        rng.fill_bytes(&mut seed);
        rng.fill_bytes(&mut dh);
        let identity = Self::from_secret_bytes(&seed, &dh);
        seed.zeroize();
        dh.zeroize();
        identity
    }

    /// Rebuilds an identity from its Ed25519 seed and X25519 secret bytes.
    pub fn from_secret_bytes(signing_seed: &[u8; 32], dh_secret: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(signing_seed);
        let dh = StaticSecret::from(*dh_secret);
        let dh_public = PublicKey::from(&dh);
        let signature = signing.sign(&dh_signature_message(dh_public.as_bytes()));
        let public = PublicIdentity {
            signing_key: signing.verifying_key(),
            dh_key: dh_public,
            signature,
        };
        Self {
            signing,
            dh,
            public,
        }
    }

    /// The public half, to publish in the key directory.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// Signs `message` with the Ed25519 identity key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    pub(crate) fn dh_secret(&self) -> &StaticSecret {
        &self.dh
    }

    /// A serializable copy of the secret keys for the client's store.
    pub fn to_pickle(&self) -> IdentityPickle {
        IdentityPickle {
            version: IdentityPickle::VERSION,
            signing_seed: self.signing.to_bytes(),
            dh_secret: self.dh.to_bytes(),
        }
    }

    /// Restores an identity from its pickle.
    pub fn from_pickle(pickle: &IdentityPickle) -> Result<Self, Error> {
        if pickle.version != IdentityPickle::VERSION {
            return Err(Error::InvalidPickle("unknown identity pickle version"));
        }
        Ok(Self::from_secret_bytes(
            &pickle.signing_seed,
            &pickle.dh_secret,
        ))
    }
}

// SigningKey and StaticSecret zeroize themselves on drop.
impl ZeroizeOnDrop for Identity {}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Serializable secret state of an [`Identity`]. Zeroized on drop.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct IdentityPickle {
    /// Format version; currently 1.
    pub version: u32,
    /// Ed25519 secret seed.
    pub signing_seed: [u8; 32],
    /// X25519 secret scalar bytes.
    pub dh_secret: [u8; 32],
}

impl IdentityPickle {
    /// Current pickle version.
    pub const VERSION: u32 = 1;
}

impl fmt::Debug for IdentityPickle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityPickle")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn dh_signature_message(dh_public: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(IDENTITY_DH_SIGNATURE_CONTEXT.len() + 32);
    m.extend_from_slice(IDENTITY_DH_SIGNATURE_CONTEXT);
    m.extend_from_slice(dh_public);
    m
}

/// A device's public identity: Ed25519 key, X25519 key and the Ed25519
/// signature over the X25519 key. A value of this type has always had its
/// signature verified.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    signing_key: VerifyingKey,
    dh_key: PublicKey,
    signature: Signature,
}

impl PublicIdentity {
    /// Parses and verifies the 128-byte encoding
    /// `ed25519_public(32) || x25519_public(32) || signature(64)`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let id = Self::read(&mut r)?;
        r.finish()?;
        Ok(id)
    }

    /// Builds and verifies an identity from its three parts, as carried in
    /// the key directory (`DeviceKeys { identity_key, dh_key, dh_key_signature }`).
    pub fn from_parts(
        signing_key: &[u8; 32],
        dh_key: &[u8; 32],
        dh_key_signature: &[u8; 64],
    ) -> Result<Self, Error> {
        Self::verified(*signing_key, *dh_key, *dh_key_signature)
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, Error> {
        let signing: [u8; 32] = r.array()?;
        let dh: [u8; 32] = r.array()?;
        let sig: [u8; 64] = r.array()?;
        Self::verified(signing, dh, sig)
    }

    fn verified(signing: [u8; 32], dh: [u8; 32], sig: [u8; 64]) -> Result<Self, Error> {
        let signing_key =
            VerifyingKey::from_bytes(&signing).map_err(|_| Error::InvalidSigningKey)?;
        let signature = Signature::from_bytes(&sig);
        signing_key
            .verify_strict(&dh_signature_message(&dh), &signature)
            .map_err(|_| Error::BadSignature("identity DH key"))?;
        Ok(Self {
            signing_key,
            dh_key: PublicKey::from(dh),
            signature,
        })
    }

    /// The 128-byte encoding.
    pub fn to_bytes(&self) -> [u8; PUBLIC_IDENTITY_LEN] {
        let mut out = [0u8; PUBLIC_IDENTITY_LEN];
        out[..32].copy_from_slice(self.signing_key.as_bytes());
        out[32..64].copy_from_slice(self.dh_key.as_bytes());
        out[64..].copy_from_slice(&self.signature.to_bytes());
        out
    }

    /// `ed25519_public || x25519_public` (64 bytes): the `Encode(IK)` used in
    /// X3DH associated data.
    pub fn encode_keys(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(self.signing_key.as_bytes());
        out[32..].copy_from_slice(self.dh_key.as_bytes());
        out
    }

    /// The Ed25519 public key bytes.
    pub fn signing_key(&self) -> [u8; 32] {
        self.signing_key.to_bytes()
    }

    /// The X25519 public key bytes.
    pub fn dh_key(&self) -> [u8; 32] {
        self.dh_key.to_bytes()
    }

    /// The Ed25519 signature over [`IDENTITY_DH_SIGNATURE_CONTEXT`] || X25519 key.
    pub fn dh_key_signature(&self) -> [u8; 64] {
        self.signature.to_bytes()
    }

    /// A short hex fingerprint (first 8 bytes of the Ed25519 key) for logs.
    pub fn fingerprint(&self) -> String {
        self.signing_key.as_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Verifies an Ed25519 signature by this identity (strict verification).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), Error> {
        self.signing_key
            .verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| Error::BadSignature("message"))
    }

    pub(crate) fn dh_public(&self) -> &PublicKey {
        &self.dh_key
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({})", self.fingerprint())
    }
}
