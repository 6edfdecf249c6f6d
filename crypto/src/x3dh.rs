//! X3DH key agreement (Signal's published specification), with separate
//! Ed25519 and X25519 identity keys instead of XEdDSA.
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   [DH4 = DH(EK_A, OPK_B)]
//! SK  = HKDF-SHA256(salt = 32 × 0x00, ikm = 32 × 0xFF || DH1 || DH2 || DH3 [|| DH4],
//!                   info = "Courier_X3DH_v1", L = 32)
//! AD  = Encode(IK_A) || Encode(IK_B),  Encode(IK) = Ed25519 public || X25519 public
//! ```

use std::fmt;

use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Error;
use crate::identity::{Identity, PublicIdentity};
use crate::kdf;
use crate::prekey::{OneTimePreKey, PreKeyBundle, SignedPreKey};

/// HKDF info string for the X3DH shared secret.
pub const X3DH_INFO: &[u8] = b"Courier_X3DH_v1";
/// Length of the X3DH associated data.
pub const ASSOCIATED_DATA_LEN: usize = 128;

/// The X3DH result: the shared secret SK and the associated data AD.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret {
    key: [u8; 32],
    associated_data: [u8; ASSOCIATED_DATA_LEN],
}

impl SharedSecret {
    /// SK, the 32-byte shared secret (the initial root key).
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// AD = Encode(IK_initiator) || Encode(IK_responder), 128 bytes.
    pub fn associated_data(&self) -> &[u8; ASSOCIATED_DATA_LEN] {
        &self.associated_data
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// What the initiator learns and must send: the shared secret plus the
/// public values the responder needs.
#[derive(Debug)]
pub struct Initiation {
    /// SK and AD.
    pub secret: SharedSecret,
    /// The initiator's ephemeral public key EK_A (the session's base key).
    pub ephemeral_public: [u8; 32],
    /// Id of the responder's signed prekey used.
    pub signed_prekey_id: u32,
    /// Id of the responder's one-time prekey used, if any.
    pub one_time_prekey_id: Option<u32>,
}

/// Initiator side: draws 32 random bytes for the ephemeral key.
pub fn initiate(
    identity: &Identity,
    bundle: &PreKeyBundle,
    rng: &mut impl CryptoRng,
) -> Result<Initiation, Error> {
    let mut ephemeral = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(ephemeral.as_mut());
    initiate_with_ephemeral(identity, bundle, &ephemeral)
}

/// Initiator side with a given ephemeral secret (for test vectors).
pub fn initiate_with_ephemeral(
    identity: &Identity,
    bundle: &PreKeyBundle,
    ephemeral_secret: &[u8; 32],
) -> Result<Initiation, Error> {
    let ek = StaticSecret::from(*ephemeral_secret);
    let spk = bundle.signed_prekey().public_key();
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 5));
    ikm.extend_from_slice(&[0xFF; 32]);
    ikm.extend_from_slice(kdf::dh(identity.dh_secret(), spk)?.as_ref());
    ikm.extend_from_slice(kdf::dh(&ek, bundle.identity().dh_public())?.as_ref());
    ikm.extend_from_slice(kdf::dh(&ek, spk)?.as_ref());
    if let Some(opk) = bundle.one_time_prekey() {
        ikm.extend_from_slice(kdf::dh(&ek, opk.public_key())?.as_ref());
    }
    Ok(Initiation {
        secret: derive(&ikm, identity.public(), bundle.identity()),
        ephemeral_public: PublicKey::from(&ek).to_bytes(),
        signed_prekey_id: bundle.signed_prekey().id(),
        one_time_prekey_id: bundle.one_time_prekey().map(|k| k.id()),
    })
}

/// Responder side: recomputes SK and AD from the initiator's identity and
/// ephemeral key with the prekeys the initiator named.
pub fn respond(
    identity: &Identity,
    signed_prekey: &SignedPreKey,
    one_time_prekey: Option<&OneTimePreKey>,
    initiator: &PublicIdentity,
    ephemeral_public: &[u8; 32],
) -> Result<SharedSecret, Error> {
    let ek = PublicKey::from(*ephemeral_public);
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 5));
    ikm.extend_from_slice(&[0xFF; 32]);
    ikm.extend_from_slice(kdf::dh(signed_prekey.secret(), initiator.dh_public())?.as_ref());
    ikm.extend_from_slice(kdf::dh(identity.dh_secret(), &ek)?.as_ref());
    ikm.extend_from_slice(kdf::dh(signed_prekey.secret(), &ek)?.as_ref());
    if let Some(opk) = one_time_prekey {
        ikm.extend_from_slice(kdf::dh(opk.secret(), &ek)?.as_ref());
    }
    Ok(derive(&ikm, initiator, identity.public()))
}

fn derive(ikm: &[u8], initiator: &PublicIdentity, responder: &PublicIdentity) -> SharedSecret {
    let key = kdf::hkdf::<32>(&[0u8; 32], ikm, X3DH_INFO);
    let mut associated_data = [0u8; ASSOCIATED_DATA_LEN];
    associated_data[..64].copy_from_slice(&initiator.encode_keys());
    associated_data[64..].copy_from_slice(&responder.encode_keys());
    SharedSecret {
        key,
        associated_data,
    }
}
