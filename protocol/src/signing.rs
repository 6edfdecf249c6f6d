//! The exact bytes that are signed and verified.
//!
//! Relay, gateway and client all build signed data with these functions, so
//! a signature made by one verifies in the others. This crate does not sign
//! or verify (it has no crypto dependencies); `courier-crypto` signs and
//! `courier-relay` verifies, both over these bytes.
//!
//! Every layout starts with an ASCII domain string naming the purpose and its
//! version, so a signature made for one purpose never verifies for another.
//! Structured payloads (device lists, descriptors) use the postcard encoding
//! of the value (no version byte): unsigned integers as LEB128 varints,
//! strings and byte strings as varint length then bytes, sequences as varint
//! count then elements, `Option` as `0x00` or `0x01` then the value. These
//! functions write that encoding by hand so they cannot fail; a test pins
//! them to `postcard::to_allocvec`.

use crate::api::DeviceList;
use crate::federation::RelayDescriptor;
use crate::{DeviceId, RelayName, Username};

/// Domain string of the login challenge signature.
pub const LOGIN_DOMAIN: &[u8] = b"courier-login-v1";
/// Domain string of the identity key's signature over the X25519 DH key.
pub const DH_KEY_DOMAIN: &[u8] = b"courier-dh-key-v1";
/// Domain string of the signed prekey signature.
pub const SIGNED_PREKEY_DOMAIN: &[u8] = b"courier-signed-prekey-v1";
/// Domain string of the device list signature.
pub const DEVICE_LIST_DOMAIN: &[u8] = b"courier-device-list-v1";
/// Domain string of the relay descriptor signature.
pub const DESCRIPTOR_DOMAIN: &[u8] = b"courier-descriptor-v1";

/// Bytes a device signs to log in:
/// `"courier-login-v1" || relay || 0x00 || username || 0x00 || device (u32 BE) || nonce`.
///
/// Relay name and username never contain `0x00`, so the separators make the
/// layout unambiguous; binding the relay name stops a challenge answered for
/// one relay from being replayed to another.
pub fn login_signing_bytes(
    relay: &RelayName,
    username: &Username,
    device: DeviceId,
    nonce: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        LOGIN_DOMAIN.len() + relay.as_str().len() + username.as_str().len() + 6 + nonce.len(),
    );
    out.extend_from_slice(LOGIN_DOMAIN);
    out.extend_from_slice(relay.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(username.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(&device.0.to_be_bytes());
    out.extend_from_slice(nonce);
    out
}

/// Bytes the identity key signs to bind the device's X25519 key:
/// `"courier-dh-key-v1" || dh_key`.
pub fn dh_key_signing_bytes(dh_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DH_KEY_DOMAIN.len() + dh_key.len());
    out.extend_from_slice(DH_KEY_DOMAIN);
    out.extend_from_slice(dh_key);
    out
}

/// Bytes the identity key signs for a signed prekey:
/// `"courier-signed-prekey-v1" || id (u32 BE) || public || created_ms (u64 BE)`.
pub fn signed_prekey_signing_bytes(id: u32, public: &[u8], created_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNED_PREKEY_DOMAIN.len() + 12 + public.len());
    out.extend_from_slice(SIGNED_PREKEY_DOMAIN);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(public);
    out.extend_from_slice(&created_ms.to_be_bytes());
    out
}

/// Bytes the signer device's identity key signs for a device list:
/// `"courier-device-list-v1" || postcard(list)`, where `postcard(list)` is
/// `str(address) || varint(version) || varint(count) || count × (varint(device) || bytes(identity_key))`.
pub fn device_list_signing_bytes(list: &DeviceList) -> Vec<u8> {
    let mut out = Postcard(Vec::with_capacity(64 + list.devices.len() * 40));
    out.0.extend_from_slice(DEVICE_LIST_DOMAIN);
    out.str(&list.address.to_string());
    out.varint(list.version);
    out.varint(list.devices.len() as u64);
    for entry in &list.devices {
        out.varint(u64::from(entry.device.0));
        out.bytes(entry.identity_key.as_slice());
    }
    out.0
}

/// Bytes the relay key signs for its descriptor:
/// `"courier-descriptor-v1" || postcard(descriptor)`, where `postcard(descriptor)` is
/// `str(name) || str(peer_id) || seq(addresses) || str(http_url) || str(version) || seq(features) || varint(issued_ms)`.
pub fn descriptor_signing_bytes(descriptor: &RelayDescriptor) -> Vec<u8> {
    let mut out = Postcard(Vec::with_capacity(256));
    out.0.extend_from_slice(DESCRIPTOR_DOMAIN);
    out.str(descriptor.name.as_str());
    out.str(&descriptor.peer_id);
    out.strs(&descriptor.addresses);
    out.str(&descriptor.http_url);
    out.str(&descriptor.version);
    out.strs(&descriptor.features);
    out.varint(descriptor.issued_ms);
    out.0
}

/// A writer for the subset of the postcard format the signed layouts use.
struct Postcard(Vec<u8>);

impl Postcard {
    fn varint(&mut self, mut v: u64) {
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(low);
                return;
            }
            self.0.push(low | 0x80);
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn strs(&mut self, items: &[String]) {
        self.varint(items.len() as u64);
        for s in items {
            self.str(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DeviceListEntry;
    use crate::{Address, Bytes};

    fn list() -> DeviceList {
        DeviceList {
            address: Address::parse("alice@relay-a.example").unwrap(),
            version: 300,
            devices: vec![
                DeviceListEntry {
                    device: DeviceId(1),
                    identity_key: Bytes(vec![7; 32]),
                },
                DeviceListEntry {
                    device: DeviceId(200),
                    identity_key: Bytes(vec![9; 32]),
                },
            ],
        }
    }

    fn descriptor() -> RelayDescriptor {
        RelayDescriptor {
            name: RelayName::parse("relay-a.example").unwrap(),
            peer_id: "12D3KooWExample".into(),
            addresses: vec!["/ip4/127.0.0.1/udp/4433/quic-v1".into()],
            http_url: "http://127.0.0.1:8080".into(),
            version: "0.1.0".into(),
            features: vec!["wire-v1".into()],
            issued_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn structured_layouts_equal_domain_plus_postcard() {
        let l = list();
        let mut expected = DEVICE_LIST_DOMAIN.to_vec();
        expected.extend(postcard::to_allocvec(&l).unwrap());
        assert_eq!(device_list_signing_bytes(&l), expected);

        let d = descriptor();
        let mut expected = DESCRIPTOR_DOMAIN.to_vec();
        expected.extend(postcard::to_allocvec(&d).unwrap());
        assert_eq!(descriptor_signing_bytes(&d), expected);
    }

    #[test]
    fn login_layout_is_pinned() {
        let bytes = login_signing_bytes(
            &RelayName::parse("r.example").unwrap(),
            &Username::parse("bob").unwrap(),
            DeviceId(0x0102_0304),
            &[0xaa, 0xbb],
        );
        assert_eq!(
            bytes,
            b"courier-login-v1r.example\0bob\0\x01\x02\x03\x04\xaa\xbb"
        );
    }

    #[test]
    fn key_layouts_are_pinned() {
        assert_eq!(dh_key_signing_bytes(&[1, 2]), b"courier-dh-key-v1\x01\x02");
        assert_eq!(
            signed_prekey_signing_bytes(5, &[0xee], 0x0102),
            b"courier-signed-prekey-v1\0\0\0\x05\xee\0\0\0\0\0\0\x01\x02"
        );
    }

    #[test]
    fn a_signature_for_one_purpose_never_covers_another() {
        let domains = [
            LOGIN_DOMAIN,
            DH_KEY_DOMAIN,
            SIGNED_PREKEY_DOMAIN,
            DEVICE_LIST_DOMAIN,
            DESCRIPTOR_DOMAIN,
        ];
        for (i, a) in domains.iter().enumerate() {
            for (j, b) in domains.iter().enumerate() {
                assert!(i == j || !a.starts_with(b), "{i} is prefixed by {j}");
            }
        }
    }
}
