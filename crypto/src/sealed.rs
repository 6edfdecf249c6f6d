//! Sealed sender: the sender's address and device travel inside an envelope
//! encrypted to the recipient's identity key, so a relay routes by recipient
//! without learning the sender.
//!
//! ```text
//! envelope  = 0x01 0x05 || E_pub(32) || AES-256-GCM(key, nonce, content, aad)
//! key||nonce = HKDF-SHA256(salt = E_pub || IK_B.x25519, ikm = DH(E, IK_B.x25519),
//!                          info = "Courier_SealedSender_v1", L = 44)
//! aad       = 0x01 0x05 || E_pub || Encode(IK_B)
//! content   = 0x01 0x07 || sender identity(128) || address_len u16 || address
//!             || device u32 || inner session message
//! ```
//!
//! The envelope itself does not prove who sent it: the recipient must check
//! that the sealed sender identity is the identity the inner session
//! authenticates ([`Unsealed::verify_sender`], [`Unsealed::decrypt`]).

use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::Error;
use crate::identity::{Identity, PublicIdentity};
use crate::kdf;
use crate::session::Session;
use crate::wire::{self, Reader, kind};

/// HKDF info string for the envelope key and nonce.
pub const SEALED_SENDER_INFO: &[u8] = b"Courier_SealedSender_v1";
/// Longest sender address accepted, in bytes of UTF-8.
pub const ADDRESS_LEN_MAX: usize = 1024;

/// Who sent a sealed message: `user@relay` and a device id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SenderAddress {
    /// The user address, e.g. `alice@relay-a.example`.
    pub address: String,
    /// The sending device's id.
    pub device: u32,
}

/// An opened envelope: the claimed sender and the inner session message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsealed {
    /// The sender's address and device.
    pub sender: SenderAddress,
    /// The sender's identity as claimed in the envelope.
    pub sender_identity: PublicIdentity,
    /// The inner session message (prekey or ratchet message bytes).
    pub content: Vec<u8>,
}

impl Unsealed {
    /// Fails unless `authenticated` (the identity the inner session
    /// authenticates) is the sealed sender identity.
    pub fn verify_sender(&self, authenticated: &PublicIdentity) -> Result<(), Error> {
        if &self.sender_identity == authenticated {
            Ok(())
        } else {
            Err(Error::SenderMismatch)
        }
    }

    /// Checks the sealed sender against `session`'s remote identity, then
    /// decrypts the inner message with it.
    pub fn decrypt(&self, session: &mut Session) -> Result<Vec<u8>, Error> {
        self.verify_sender(session.remote_identity())?;
        session.decrypt(&self.content)
    }
}

/// Seals `content` (a session message) from `sender` to `recipient`. Draws
/// 32 random bytes for the ephemeral key.
pub fn seal(
    sender_identity: &Identity,
    sender: &SenderAddress,
    recipient: &PublicIdentity,
    content: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, Error> {
    let mut ephemeral = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(ephemeral.as_mut());
    seal_with_ephemeral(sender_identity, sender, recipient, content, &ephemeral)
}

/// [`seal`] with a given ephemeral secret (for test vectors).
pub fn seal_with_ephemeral(
    sender_identity: &Identity,
    sender: &SenderAddress,
    recipient: &PublicIdentity,
    content: &[u8],
    ephemeral_secret: &[u8; 32],
) -> Result<Vec<u8>, Error> {
    let address = sender.address.as_bytes();
    if address.len() > ADDRESS_LEN_MAX {
        return Err(Error::Malformed("sender address too long"));
    }
    let secret = StaticSecret::from(*ephemeral_secret);
    let ephemeral = PublicKey::from(&secret).to_bytes();
    let shared = kdf::dh(&secret, recipient.dh_public())?;
    let keys = envelope_keys(&ephemeral, recipient, &shared);

    let mut inner = Zeroizing::new(Vec::with_capacity(
        2 + 128 + 2 + address.len() + 4 + content.len(),
    ));
    inner.push(wire::VERSION);
    inner.push(kind::SEALED_CONTENT);
    inner.extend_from_slice(&sender_identity.public().to_bytes());
    // Checked above: fits in u16.
    inner.extend_from_slice(&(address.len() as u16).to_be_bytes());
    inner.extend_from_slice(address);
    inner.extend_from_slice(&sender.device.to_be_bytes());
    inner.extend_from_slice(content);

    let aad = envelope_aad(&ephemeral, recipient);
    let mut out = Vec::with_capacity(34 + inner.len() + crate::aead::TAG_LEN);
    out.extend_from_slice(&aad[..34]);
    crate::aead::seal_append(&keys, &inner, &aad, &mut out);
    Ok(out)
}

/// Opens an envelope addressed to `identity`.
pub fn open(identity: &Identity, envelope: &[u8]) -> Result<Unsealed, Error> {
    let mut r = Reader::new(envelope);
    r.header(kind::SEALED_ENVELOPE)?;
    let ephemeral: [u8; 32] = r.array()?;
    let ciphertext = r.rest();
    let shared = kdf::dh(identity.dh_secret(), &PublicKey::from(ephemeral))?;
    let keys = envelope_keys(&ephemeral, identity.public(), &shared);
    let aad = envelope_aad(&ephemeral, identity.public());
    let inner = Zeroizing::new(crate::aead::open(&keys, ciphertext, &aad)?);

    let mut r = Reader::new(&inner);
    r.header(kind::SEALED_CONTENT)?;
    let sender_identity = PublicIdentity::read(&mut r)?;
    let len = usize::from(r.u16()?);
    if len > ADDRESS_LEN_MAX {
        return Err(Error::Malformed("sender address too long"));
    }
    let address = std::str::from_utf8(r.take(len)?)
        .map_err(|_| Error::Malformed("sender address is not UTF-8"))?
        .to_owned();
    let device = r.u32()?;
    let content = r.rest().to_vec();
    Ok(Unsealed {
        sender: SenderAddress { address, device },
        sender_identity,
        content,
    })
}

fn envelope_keys(
    ephemeral: &[u8; 32],
    recipient: &PublicIdentity,
    shared: &[u8; 32],
) -> Zeroizing<[u8; 44]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(&recipient.dh_key());
    Zeroizing::new(kdf::hkdf::<44>(&salt, shared, SEALED_SENDER_INFO))
}

fn envelope_aad(ephemeral: &[u8; 32], recipient: &PublicIdentity) -> [u8; 98] {
    let mut aad = [0u8; 98];
    aad[0] = wire::VERSION;
    aad[1] = kind::SEALED_ENVELOPE;
    aad[2..34].copy_from_slice(ephemeral);
    aad[34..].copy_from_slice(&recipient.encode_keys());
    aad
}
