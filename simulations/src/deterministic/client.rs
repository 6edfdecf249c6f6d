//! The simulated clients' cryptography: real `courier-crypto` (X3DH, Double
//! Ratchet, sender keys, sealed sender) in the message layout of the client
//! SDK, built with the SDK's own `content` module (`docs/client.md`):
//! - direct: body = `0x01 || nonce || AES-256-GCM(random key)`; each
//!   recipient device's header = sealed-sender(ratchet(`0x01 || key || body hash`));
//! - group: body = sender-key message; header = sealed-sender(ratchet(
//!   `0x03 || group || body hash || distribution`)) the first time a device
//!   gets this sender's key, else `0x02 || group || body hash`.
//!
//! What is simplified, and why: pairwise sessions are set up with the real
//! X3DH code but the handshake is exchanged in-process at first use instead
//! of through the key directory, so thousands of sessions cost no extra
//! simulated round trips (the key directory is exercised in loopback mode).

use std::collections::BTreeMap;

use courier_client::content::{self, TAG_DIRECT, TAG_GROUP, TAG_GROUP_WITH_KEY};
use courier_crypto::prekey::{OneTimePreKey, PreKeyBundle, SignedPreKey};
use courier_crypto::sealed::{self, SenderAddress};
use courier_crypto::session::{PreKeyMessage, Session};
use courier_crypto::{Identity, SenderKey, SenderKeyReceiver};

use crate::checker::DeviceIx;
use crate::rng::SimRng;

/// Why a simulated client could not encrypt or decrypt.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The crypto library refused.
    #[error("crypto: {0}")]
    Crypto(#[from] courier_crypto::Error),
    /// The SDK's message layout refused (a body that does not match its
    /// header, a short key).
    #[error("layout: {0}")]
    Layout(#[from] courier_client::Error),
    /// A layout check failed.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// No session or sender key for this message (yet).
    #[error("no key for {0}")]
    NoKey(&'static str),
}

/// One device's keys and sessions.
pub struct DeviceCrypto {
    identity: Identity,
    signed_prekey: SignedPreKey,
    one_time: Option<OneTimePreKey>,
    sessions: BTreeMap<DeviceIx, Session>,
    /// Our sender key per group.
    sender_keys: BTreeMap<u32, SenderKey>,
    /// (group, device) pairs that hold our current sender key.
    distributed: std::collections::BTreeSet<(u32, DeviceIx)>,
    /// Sender keys of others, by (group, sending device).
    receivers: BTreeMap<(u32, DeviceIx), SenderKeyReceiver>,
}

impl std::fmt::Debug for DeviceCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCrypto")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// What a received copy opened to.
#[derive(Debug)]
pub enum OpenedMessage {
    /// The plaintext and the device that sent it.
    Plaintext {
        /// Sender device.
        sender: DeviceIx,
        /// Plaintext.
        plaintext: Vec<u8>,
    },
    /// A group message whose sender key has not arrived yet; retry with
    /// [`DeviceCrypto::open_group_body`] once it has.
    AwaitingKey {
        /// Group.
        group: u32,
        /// Sender device.
        sender: DeviceIx,
    },
}

/// A device's public address as sealed-sender content names it.
pub fn sender_address(ix: DeviceIx) -> SenderAddress {
    SenderAddress {
        address: format!("sim-device-{ix}"),
        device: ix,
    }
}

impl DeviceCrypto {
    /// Fresh identity, signed prekey and one one-time prekey.
    pub fn generate(rng: &mut SimRng, now_ms: u64) -> Self {
        let identity = Identity::generate(rng);
        let signed_prekey = SignedPreKey::generate(&identity, 1, now_ms, rng);
        let one_time = OneTimePreKey::generate_batch(1, 1, rng).pop();
        DeviceCrypto {
            identity,
            signed_prekey,
            one_time,
            sessions: BTreeMap::new(),
            sender_keys: BTreeMap::new(),
            distributed: Default::default(),
            receivers: BTreeMap::new(),
        }
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// True when a pairwise session with `peer` exists.
    pub fn has_session(&self, peer: DeviceIx) -> bool {
        self.sessions.contains_key(&peer)
    }

    /// Sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn bundle(&self) -> Result<PreKeyBundle, ClientError> {
        Ok(PreKeyBundle::new(
            self.identity.public().clone(),
            self.signed_prekey.public().clone(),
            self.one_time.as_ref().map(|k| k.public().clone()),
        )?)
    }

    /// Direct message encryption for `recipients` (device index, crypto).
    /// Returns the body and one header per recipient, in order.
    pub fn encrypt_direct(
        &mut self,
        me: DeviceIx,
        recipients: &[DeviceIx],
        plaintext: &[u8],
        rng: &mut SimRng,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), ClientError> {
        let (body, key) = content::seal_body(plaintext, rng)?;
        let mut content = Vec::with_capacity(65);
        content.push(TAG_DIRECT);
        content.extend_from_slice(&key.encode());
        let mut headers = Vec::with_capacity(recipients.len());
        for &r in recipients {
            headers.push(self.seal_for(me, r, &content, rng)?);
        }
        Ok((body, headers))
    }

    /// Group message encryption: one sender-key encryption of the body, a
    /// small sealed header per recipient (with our sender key the first
    /// time that device hears from us in this group).
    pub fn encrypt_group(
        &mut self,
        me: DeviceIx,
        group: u32,
        recipients: &[DeviceIx],
        plaintext: &[u8],
        rng: &mut SimRng,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), ClientError> {
        let sk = self
            .sender_keys
            .entry(group)
            .or_insert_with(|| SenderKey::generate(rng));
        let distribution = sk.distribution_message();
        let body = sk.encrypt(plaintext)?;
        let hash = content::body_hash(&body);
        let mut headers = Vec::with_capacity(recipients.len());
        for &r in recipients {
            let first = self.distributed.insert((group, r));
            let mut content = Vec::with_capacity(49 + distribution.len());
            content.push(if first { TAG_GROUP_WITH_KEY } else { TAG_GROUP });
            content.extend_from_slice(&group_id(group));
            content.extend_from_slice(&hash);
            if first {
                content.extend_from_slice(&distribution);
            }
            headers.push(self.seal_for(me, r, &content, rng)?);
        }
        Ok((body, headers))
    }

    fn seal_for(
        &mut self,
        me: DeviceIx,
        to: DeviceIx,
        content: &[u8],
        rng: &mut SimRng,
    ) -> Result<Vec<u8>, ClientError> {
        let session = self
            .sessions
            .get_mut(&to)
            .ok_or(ClientError::NoKey("pairwise session"))?;
        let inner = session.encrypt(content, rng)?;
        let recipient = session.remote_identity().clone();
        Ok(sealed::seal(
            &self.identity,
            &sender_address(me),
            &recipient,
            &inner,
            rng,
        )?)
    }

    /// Opens a received copy: unseals the header, decrypts it with the
    /// pairwise session and then the body. `sender_of` maps the sealed
    /// sender address back to a device.
    pub fn open(
        &mut self,
        header: &[u8],
        body: &[u8],
        sender_of: impl Fn(&SenderAddress) -> Option<DeviceIx>,
    ) -> Result<OpenedMessage, ClientError> {
        let unsealed = sealed::open(&self.identity, header)?;
        let sender = sender_of(&unsealed.sender).ok_or(ClientError::Malformed("sender"))?;
        let session = self
            .sessions
            .get_mut(&sender)
            .ok_or(ClientError::NoKey("pairwise session"))?;
        let content = unsealed.decrypt(session)?;
        let hash = content::body_hash(body);
        match content.first() {
            Some(&TAG_DIRECT) => {
                let key = content::DirectKey::decode(&content[1..])?;
                let plaintext = content::open_body(body, &key)?.to_vec();
                Ok(OpenedMessage::Plaintext { sender, plaintext })
            }
            Some(&tag @ (TAG_GROUP | TAG_GROUP_WITH_KEY)) if content.len() >= 49 => {
                if content[17..49] != hash {
                    return Err(ClientError::Malformed("body does not match its header"));
                }
                let group = group_from_id(&content[1..17])?;
                if tag == TAG_GROUP_WITH_KEY {
                    let receiver = SenderKeyReceiver::from_distribution(&content[49..])?;
                    // A newer key replaces an older one of the same sender.
                    self.receivers.insert((group, sender), receiver);
                }
                match self.open_group_body(group, sender, body) {
                    Ok(plaintext) => Ok(OpenedMessage::Plaintext { sender, plaintext }),
                    Err(ClientError::NoKey(_)) => Ok(OpenedMessage::AwaitingKey { group, sender }),
                    Err(e) => Err(e),
                }
            }
            _ => Err(ClientError::Malformed("header content")),
        }
    }

    /// Decrypts a group body with the sender key we hold for (group, sender).
    pub fn open_group_body(
        &mut self,
        group: u32,
        sender: DeviceIx,
        body: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let receiver = self
            .receivers
            .get_mut(&(group, sender))
            .ok_or(ClientError::NoKey("sender key"))?;
        Ok(receiver.decrypt(body)?)
    }

    /// True when we hold a sender key of (group, sender).
    pub fn has_sender_key(&self, group: u32, sender: DeviceIx) -> bool {
        self.receivers.contains_key(&(group, sender))
    }
}

/// Sets up a pairwise session between two devices with the real X3DH and
/// Double Ratchet code, exchanging the prekey message and one reply
/// in-process so both sides leave with a confirmed session.
pub fn establish(
    a_ix: DeviceIx,
    a: &mut DeviceCrypto,
    b_ix: DeviceIx,
    b: &mut DeviceCrypto,
    rng: &mut SimRng,
) -> Result<(), ClientError> {
    let bundle = b.bundle()?;
    let mut sa = Session::initiate(&a.identity, &bundle, rng)?;
    let hello = sa.encrypt(b"courier-sim-handshake", rng)?;
    let prekey = PreKeyMessage::from_bytes(&hello)?;
    let otk = match prekey.one_time_prekey_id() {
        Some(id) if b.one_time.as_ref().is_some_and(|k| k.id() == id) => b.one_time.take(),
        Some(_) => return Err(ClientError::NoKey("one-time prekey")),
        None => None,
    };
    let (mut sb, _) = Session::respond(&b.identity, &b.signed_prekey, otk.as_ref(), &prekey)?;
    let reply = sb.encrypt(b"courier-sim-handshake-reply", rng)?;
    sa.decrypt(&reply)?;
    a.sessions.insert(b_ix, sa);
    b.sessions.insert(a_ix, sb);
    Ok(())
}

fn group_id(group: u32) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(b"simg");
    id[12..].copy_from_slice(&group.to_be_bytes());
    id
}

fn group_from_id(id: &[u8]) -> Result<u32, ClientError> {
    if id.len() != 16 || &id[..4] != b"simg" {
        return Err(ClientError::Malformed("group id"));
    }
    let mut g = [0u8; 4];
    g.copy_from_slice(&id[12..16]);
    Ok(u32::from_be_bytes(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: &SenderAddress) -> Option<DeviceIx> {
        Some(a.device)
    }

    #[test]
    fn direct_and_group_messages_round_trip_with_real_crypto() {
        let mut rng = SimRng::new(9);
        let mut a = DeviceCrypto::generate(&mut rng, 0);
        let mut b = DeviceCrypto::generate(&mut rng, 0);
        let mut c = DeviceCrypto::generate(&mut rng, 0);
        establish(0, &mut a, 1, &mut b, &mut rng).unwrap();
        establish(0, &mut a, 2, &mut c, &mut rng).unwrap();
        let (body, headers) = a.encrypt_direct(0, &[1], b"hello b", &mut rng).unwrap();
        match b.open(&headers[0], &body, addr).unwrap() {
            OpenedMessage::Plaintext { sender, plaintext } => {
                assert_eq!((sender, plaintext.as_slice()), (0, &b"hello b"[..]));
            }
            other => panic!("{other:?}"),
        }
        // Replaying the same copy fails: the ratchet key is spent.
        assert!(b.open(&headers[0], &body, addr).is_err());
        let (g1, h1) = a.encrypt_group(0, 7, &[1, 2], b"first", &mut rng).unwrap();
        let (g2, h2) = a.encrypt_group(0, 7, &[1, 2], b"second", &mut rng).unwrap();
        // c gets the second (key-less) message first: it waits for the key.
        assert!(matches!(
            c.open(&h2[1], &g2, addr).unwrap(),
            OpenedMessage::AwaitingKey {
                group: 7,
                sender: 0
            }
        ));
        assert!(matches!(
            c.open(&h1[1], &g1, addr).unwrap(),
            OpenedMessage::Plaintext { .. }
        ));
        assert_eq!(c.open_group_body(7, 0, &g2).unwrap(), b"second");
        assert!(matches!(
            b.open(&h1[0], &g1, addr).unwrap(),
            OpenedMessage::Plaintext { .. }
        ));
    }
}
