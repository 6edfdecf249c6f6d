//! The relay's store secret: what keys everything the store keeps about
//! who submitted a message, so that a copy of the database alone does not
//! reveal the (sealed) sender of a message, nor let its holder confirm a
//! guess.
//!
//! Keyed with it (HMAC-SHA256, one label per use):
//! - the message key, the store's idempotency key: (source, envelope id),
//!   so deduplication is scoped to the source without storing the source;
//! - the content digest a retry must match;
//! - the quota key of each mailbox entry: (recipient device, source), so a
//!   mailbox's share per source can be counted without naming the source,
//!   and the keys of one sender differ from mailbox to mailbox;
//! - the sealed sender of an outbox entry (AES-256-GCM under a key derived
//!   from it), opened only to address a delivery-failure notice.
//!
//! The node keeps the secret in `<data-dir>/store.key` (0600), not in the
//! database; every process sharing one database must use the same file.
//! This module holds no IO: the caller hands the secret to [`crate::Config`].

use aes_gcm::aead::{Aead, Nonce};
use aes_gcm::{Aes256Gcm, Key};
use courier_protocol::{DeviceId, EnvelopeId, Username};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The store's idempotency key of a message: keyed hash of (source,
/// envelope id). Two sources may use the same envelope id.
pub type MessageKey = [u8; 16];

/// The key a mailbox entry's share is counted under: keyed hash of
/// (recipient device, source).
pub type QuotaKey = [u8; 16];

/// Length of the random nonce in front of a sealed sender.
const NONCE_LEN: usize = 12;

/// A relay's 32-byte store secret. Its `Debug` hides it.
#[derive(Clone)]
pub struct StoreSecret {
    bytes: [u8; 32],
    /// HMAC state keyed once: every MAC on the accept path clones it
    /// instead of hashing the key pads again.
    keyed: HmacSha256,
    /// The sender-sealing cipher, its key schedule expanded once: seals
    /// and opens run once per outbox entry.
    sender: Aes256Gcm,
}

impl PartialEq for StoreSecret {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for StoreSecret {}

impl std::fmt::Debug for StoreSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSecret(..)")
    }
}

impl StoreSecret {
    /// A secret from its bytes (e.g. read from `store.key`).
    pub fn new(bytes: [u8; 32]) -> Self {
        let keyed = <HmacSha256 as KeyInit>::new_from_slice(&bytes)
            .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
        let mut secret = StoreSecret {
            bytes,
            keyed,
            sender: <Aes256Gcm as aes_gcm::aead::KeyInit>::new(&Key::<Aes256Gcm>::default()),
        };
        let key: Key<Aes256Gcm> = secret.mac(b"courier store sender seal v1", &[]).into();
        secret.sender = <Aes256Gcm as aes_gcm::aead::KeyInit>::new(&key);
        secret
    }

    /// HMAC-SHA256 under the secret of a label and length-prefixed parts
    /// (length prefixes keep ("ab","c") and ("a","bc") apart).
    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut h = self.keyed.clone();
        h.update(label);
        for p in parts {
            h.update(&(p.len() as u64).to_be_bytes());
            h.update(p);
        }
        h.finalize().into_bytes().into()
    }

    fn truncated(full: [u8; 32]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// The idempotency key of envelope `id` from `source`; with `content`
    /// (a [`StoreSecret::digest`]) also scoped to the content, for sources
    /// that speak for many senders (see `Relay::accept_federated`).
    pub fn message_key(
        &self,
        source: &str,
        id: &EnvelopeId,
        content: Option<&[u8; 32]>,
    ) -> MessageKey {
        let content: &[u8] = content.map_or(&[], |c| c.as_slice());
        let mac = self.mac(
            b"courier store message key v1",
            &[source.as_bytes(), id.as_bytes(), content],
        );
        // The id's 48-bit millisecond prefix first, then 80 bits of the MAC:
        // keys stay in time order, so the `messages` primary key grows at
        // its end as envelope ids did (a purely random key made every
        // insert a random B-tree descent and dirtied pages all over the
        // index: SQLite accepts ran 8 times slower per statement). The time
        // is no secret (the `envelope` column holds the whole id); 80 bits
        // keep keys of one millisecond apart.
        let mut key = [0u8; 16];
        key[..6].copy_from_slice(&id.as_bytes()[..6]);
        key[6..].copy_from_slice(&mac[..10]);
        key
    }

    /// The keyed digest of a message's content that a retry must match.
    pub fn digest(
        &self,
        source: &str,
        body: &[u8],
        recipients: impl Iterator<Item = (String, u32, Vec<u8>)>,
    ) -> [u8; 32] {
        let mut h = self.keyed.clone();
        h.update(b"courier store digest v1");
        let mut field = |b: &[u8]| {
            h.update(&(b.len() as u64).to_be_bytes());
            h.update(b);
        };
        field(source.as_bytes());
        field(body);
        for (to, device, header) in recipients {
            field(to.as_bytes());
            field(&device.to_be_bytes());
            field(&header);
        }
        h.finalize().into_bytes().into()
    }

    /// The quota key of an entry for `user`/`device` from `source`.
    pub fn quota_key(&self, user: &Username, device: DeviceId, source: &str) -> QuotaKey {
        Self::truncated(self.mac(
            b"courier store quota key v1",
            &[
                user.as_str().as_bytes(),
                &device.0.to_be_bytes(),
                source.as_bytes(),
            ],
        ))
    }

    /// Seals the submitting device of an outbox entry: nonce || AES-256-GCM.
    /// `nonce` must be fresh random bytes.
    pub fn seal_sender(
        &self,
        nonce: [u8; NONCE_LEN],
        user: &Username,
        device: DeviceId,
    ) -> Vec<u8> {
        let mut plain = device.0.to_be_bytes().to_vec();
        plain.extend_from_slice(user.as_str().as_bytes());
        let n: Nonce<Aes256Gcm> = nonce.into();
        let mut out = nonce.to_vec();
        // Encryption fails only above 2^36 bytes; a username is tiny.
        if let Ok(ct) = self.sender.encrypt(&n, plain.as_slice()) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens a sealed sender; `None` if it was sealed under another secret
    /// or is damaged (the notice is then dropped, never misaddressed).
    pub fn open_sender(&self, sealed: &[u8]) -> Option<(Username, DeviceId)> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let n: Nonce<Aes256Gcm> = nonce.into();
        let plain = self.sender.decrypt(&n, ct).ok()?;
        if plain.len() < 4 {
            return None;
        }
        let (device, user) = plain.split_at(4);
        let device = DeviceId(u32::from_be_bytes(device.try_into().ok()?));
        let user = Username::parse(std::str::from_utf8(user).ok()?).ok()?;
        Some((user, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_the_secret_and_on_every_part() {
        let a = StoreSecret::new([1; 32]);
        let b = StoreSecret::new([2; 32]);
        let id = EnvelopeId([7; 16]);
        let key = |s: &StoreSecret, source| s.message_key(source, &id, None);
        assert_ne!(key(&a, "local:alice"), key(&b, "local:alice"));
        assert_ne!(key(&a, "local:alice"), key(&a, "local:bob"));
        assert_ne!(
            a.message_key("relay:b", &id, Some(&[1; 32])),
            a.message_key("relay:b", &id, Some(&[2; 32]))
        );
        let user = Username::parse("bob").expect("name");
        assert_ne!(
            a.quota_key(&user, DeviceId(1), "local:alice"),
            a.quota_key(&user, DeviceId(2), "local:alice")
        );
    }

    #[test]
    fn a_sealed_sender_opens_only_under_its_secret() {
        let a = StoreSecret::new([1; 32]);
        let b = StoreSecret::new([2; 32]);
        let user = Username::parse("alice").expect("name");
        let sealed = a.seal_sender([9; 12], &user, DeviceId(3));
        assert!(!sealed.windows(5).any(|w| w == b"alice"));
        assert_eq!(a.open_sender(&sealed), Some((user, DeviceId(3))));
        assert_eq!(b.open_sender(&sealed), None);
        assert_eq!(a.open_sender(&sealed[..10]), None);
    }
}
