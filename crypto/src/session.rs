//! Pairwise sessions: X3DH to start, the Double Ratchet afterwards, and the
//! prekey message that carries the X3DH initial data.

use std::fmt;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;
use crate::identity::{Identity, PublicIdentity};
use crate::prekey::{OneTimePreKey, PreKeyBundle, SignedPreKey};
use crate::ratchet::{DoubleRatchet, RatchetConfig, RatchetPickle};
use crate::wire::{self, Reader, kind};
use crate::x3dh::{self, ASSOCIATED_DATA_LEN};

/// What kind of session message a byte string is, from its first two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A [`PreKeyMessage`]: starts a session (or belongs to one not yet
    /// confirmed by a reply).
    PreKey,
    /// A plain Double Ratchet message.
    Ratchet,
}

impl MessageKind {
    /// Classifies `bytes` by their version and type bytes.
    pub fn of(bytes: &[u8]) -> Result<Self, Error> {
        match bytes {
            [wire::VERSION, kind::PREKEY_MESSAGE, ..] => Ok(Self::PreKey),
            [wire::VERSION, kind::RATCHET_MESSAGE, ..] => Ok(Self::Ratchet),
            [wire::VERSION, other, ..] => Err(Error::UnexpectedType(*other)),
            [other, _, ..] => Err(Error::UnsupportedVersion(*other)),
            _ => Err(Error::Truncated {
                needed: 2 - bytes.len(),
            }),
        }
    }
}

/// A prekey message: the initiator's identity, its X3DH ephemeral (base)
/// key, the ids of the responder's prekeys used, and the first ratchet message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyMessage {
    identity: PublicIdentity,
    base_key: [u8; 32],
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
    message: Vec<u8>,
}

impl PreKeyMessage {
    /// The initiator's identity (its signature already verified).
    pub fn identity(&self) -> &PublicIdentity {
        &self.identity
    }

    /// The initiator's X3DH ephemeral public key; identifies the session.
    pub fn base_key(&self) -> &[u8; 32] {
        &self.base_key
    }

    /// Id of the signed prekey the initiator used.
    pub fn signed_prekey_id(&self) -> u32 {
        self.signed_prekey_id
    }

    /// Id of the one-time prekey the initiator used, if any.
    pub fn one_time_prekey_id(&self) -> Option<u32> {
        self.one_time_prekey_id
    }

    /// The embedded ratchet message.
    pub fn ratchet_message(&self) -> &[u8] {
        &self.message
    }

    /// `0x01 0x02 || identity(128) || base_key(32) || spk_id u32 || flag(1)
    /// || [opk_id u32] || ratchet message`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 128 + 32 + 9 + self.message.len());
        out.push(wire::VERSION);
        out.push(kind::PREKEY_MESSAGE);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.base_key);
        out.extend_from_slice(&self.signed_prekey_id.to_be_bytes());
        match self.one_time_prekey_id {
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.message);
        out
    }

    /// Parses a prekey message and verifies the initiator identity's signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        r.header(kind::PREKEY_MESSAGE)?;
        let identity = PublicIdentity::read(&mut r)?;
        let base_key = r.array()?;
        let signed_prekey_id = r.u32()?;
        let one_time_prekey_id = match r.u8()? {
            0 => None,
            1 => Some(r.u32()?),
            _ => return Err(Error::Malformed("one-time prekey flag")),
        };
        let message = r.rest();
        crate::ratchet::parse_message(message)?;
        Ok(Self {
            identity,
            base_key,
            signed_prekey_id,
            one_time_prekey_id,
            message: message.to_vec(),
        })
    }
}

#[derive(Clone, Copy)]
struct Pending {
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
}

/// A pairwise Double Ratchet session with one remote device.
///
/// Not serializable itself: store it with [`Session::to_pickle`].
pub struct Session {
    ratchet: DoubleRatchet,
    remote_identity: PublicIdentity,
    local_identity: PublicIdentity,
    associated_data: [u8; ASSOCIATED_DATA_LEN],
    base_key: [u8; 32],
    pending: Option<Pending>,
}

impl Session {
    /// Starts a session with the device that published `bundle` (X3DH as
    /// initiator). Draws 32 random bytes for the X3DH ephemeral key, then 32
    /// for the first ratchet key. Messages are sent as [`PreKeyMessage`]s
    /// until the first reply is decrypted.
    pub fn initiate(
        identity: &Identity,
        bundle: &PreKeyBundle,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, Error> {
        let init = x3dh::initiate(identity, bundle, rng)?;
        let ratchet =
            DoubleRatchet::initiator(init.secret.key(), &bundle.signed_prekey().key(), rng)?;
        Ok(Self {
            ratchet,
            remote_identity: bundle.identity().clone(),
            local_identity: identity.public().clone(),
            associated_data: *init.secret.associated_data(),
            base_key: init.ephemeral_public,
            pending: Some(Pending {
                signed_prekey_id: init.signed_prekey_id,
                one_time_prekey_id: init.one_time_prekey_id,
            }),
        })
    }

    /// Accepts a session from a [`PreKeyMessage`] (X3DH as responder) and
    /// decrypts its first message. The caller looks up the prekeys the
    /// message names ([`PreKeyMessage::signed_prekey_id`],
    /// [`PreKeyMessage::one_time_prekey_id`]) and deletes the one-time
    /// prekey once this succeeds.
    ///
    /// Without a one-time prekey nothing here stops the same prekey message
    /// from being accepted again (a replay under a new envelope id would
    /// start the session anew and show its first message twice): the caller
    /// must remember the [`PreKeyMessage::base_key`]s each signed prekey
    /// accepted, for as long as it keeps that signed prekey, and refuse a
    /// repeat with [`Error::ReplayedPreKeyMessage`] before calling this.
    pub fn respond(
        identity: &Identity,
        signed_prekey: &SignedPreKey,
        one_time_prekey: Option<&OneTimePreKey>,
        message: &PreKeyMessage,
    ) -> Result<(Self, Vec<u8>), Error> {
        if signed_prekey.id() != message.signed_prekey_id {
            return Err(Error::PreKeyMismatch {
                expected: message.signed_prekey_id,
                supplied: signed_prekey.id(),
            });
        }
        match (message.one_time_prekey_id, one_time_prekey) {
            (None, None) => {}
            (Some(expected), Some(opk)) if expected != opk.id() => {
                return Err(Error::PreKeyMismatch {
                    expected,
                    supplied: opk.id(),
                });
            }
            (Some(_), Some(_)) => {}
            _ => return Err(Error::OneTimePreKeyMismatch),
        }
        let secret = x3dh::respond(
            identity,
            signed_prekey,
            one_time_prekey,
            &message.identity,
            &message.base_key,
        )?;
        let spk_secret = signed_prekey.secret().to_bytes();
        let mut session = Self {
            ratchet: DoubleRatchet::responder(secret.key(), &spk_secret),
            remote_identity: message.identity.clone(),
            local_identity: identity.public().clone(),
            associated_data: *secret.associated_data(),
            base_key: message.base_key,
            pending: None,
        };
        let mut spk_secret = spk_secret;
        spk_secret.zeroize();
        let plaintext = session
            .ratchet
            .decrypt(&message.message, &session.associated_data)?;
        Ok((session, plaintext))
    }

    /// Replaces the ratchet limits (default: [`RatchetConfig::default`]).
    pub fn with_config(mut self, config: RatchetConfig) -> Self {
        self.ratchet.set_config(config);
        self
    }

    /// The remote device's identity, authenticated by X3DH.
    pub fn remote_identity(&self) -> &PublicIdentity {
        &self.remote_identity
    }

    /// Our own identity as used in this session.
    pub fn local_identity(&self) -> &PublicIdentity {
        &self.local_identity
    }

    /// The X3DH base key (initiator's ephemeral public key) that identifies this session.
    pub fn base_key(&self) -> &[u8; 32] {
        &self.base_key
    }

    /// Whether a prekey message belongs to this session (same base key and identities).
    pub fn matches(&self, message: &PreKeyMessage) -> bool {
        message.base_key == self.base_key && message.identity == self.remote_identity
    }

    /// Number of stored skipped message keys.
    pub fn skipped_keys(&self) -> usize {
        self.ratchet.skipped_keys()
    }

    /// Encrypts a message. While the initiator has not yet received a reply
    /// the output is a [`PreKeyMessage`], otherwise a ratchet message.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<u8>, Error> {
        let message = self
            .ratchet
            .encrypt(plaintext, &self.associated_data, rng)?;
        match self.pending {
            Some(pending) => Ok(PreKeyMessage {
                identity: self.local_identity.clone(),
                base_key: self.base_key,
                signed_prekey_id: pending.signed_prekey_id,
                one_time_prekey_id: pending.one_time_prekey_id,
                message,
            }
            .to_bytes()),
            None => Ok(message),
        }
    }

    /// Decrypts a ratchet message or a prekey message of this session. On any
    /// error the session is unchanged; decrypting the same message twice fails.
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Vec<u8>, Error> {
        match MessageKind::of(message)? {
            MessageKind::Ratchet => {
                let plaintext = self.ratchet.decrypt(message, &self.associated_data)?;
                self.pending = None;
                Ok(plaintext)
            }
            MessageKind::PreKey => {
                let prekey = PreKeyMessage::from_bytes(message)?;
                if !self.matches(&prekey) {
                    return Err(Error::SessionMismatch);
                }
                self.ratchet.decrypt(&prekey.message, &self.associated_data)
            }
        }
    }

    /// A serializable copy of the session for the client's store.
    pub fn to_pickle(&self) -> SessionPickle {
        SessionPickle {
            version: SessionPickle::VERSION,
            ratchet: self.ratchet.to_pickle(),
            remote_identity: self.remote_identity.to_bytes().to_vec(),
            local_identity: self.local_identity.to_bytes().to_vec(),
            associated_data: self.associated_data.to_vec(),
            base_key: self.base_key,
            pending_signed_prekey_id: self.pending.map(|p| p.signed_prekey_id),
            pending_one_time_prekey_id: self.pending.and_then(|p| p.one_time_prekey_id),
        }
    }

    /// Restores a session from its pickle.
    pub fn from_pickle(pickle: &SessionPickle) -> Result<Self, Error> {
        if pickle.version != SessionPickle::VERSION {
            return Err(Error::InvalidPickle("unknown session pickle version"));
        }
        let remote_identity = PublicIdentity::from_bytes(&pickle.remote_identity)
            .map_err(|_| Error::InvalidPickle("remote identity"))?;
        let local_identity = PublicIdentity::from_bytes(&pickle.local_identity)
            .map_err(|_| Error::InvalidPickle("local identity"))?;
        let associated_data: [u8; ASSOCIATED_DATA_LEN] = pickle
            .associated_data
            .as_slice()
            .try_into()
            .map_err(|_| Error::InvalidPickle("associated data length"))?;
        Ok(Self {
            ratchet: DoubleRatchet::from_pickle(&pickle.ratchet)?,
            remote_identity,
            local_identity,
            associated_data,
            base_key: pickle.base_key,
            pending: pickle.pending_signed_prekey_id.map(|id| Pending {
                signed_prekey_id: id,
                one_time_prekey_id: pickle.pending_one_time_prekey_id,
            }),
        })
    }
}

impl ZeroizeOnDrop for Session {}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("remote_identity", &self.remote_identity)
            .field("ratchet", &self.ratchet)
            .field("pending_prekey", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

/// Serializable session state. Zeroized on drop.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SessionPickle {
    /// Format version; currently 1.
    pub version: u32,
    /// The Double Ratchet state.
    pub ratchet: RatchetPickle,
    /// Remote [`PublicIdentity`] encoding (128 bytes).
    pub remote_identity: Vec<u8>,
    /// Local [`PublicIdentity`] encoding (128 bytes).
    pub local_identity: Vec<u8>,
    /// X3DH associated data (128 bytes).
    pub associated_data: Vec<u8>,
    /// X3DH base key.
    pub base_key: [u8; 32],
    /// Signed prekey id while prekey messages are still being sent.
    #[serde(default)]
    pub pending_signed_prekey_id: Option<u32>,
    /// One-time prekey id while prekey messages are still being sent.
    #[serde(default)]
    pub pending_one_time_prekey_id: Option<u32>,
}

impl SessionPickle {
    /// Current pickle version.
    pub const VERSION: u32 = 1;
}

impl fmt::Debug for SessionPickle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionPickle")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}
