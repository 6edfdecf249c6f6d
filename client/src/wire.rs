//! The bridge between a device's identity (`courier-crypto`) and the relay's
//! wire types (`courier-protocol`): the device keys a relay publishes,
//! signed device lists, login answers, prekey uploads and the shape of an
//! outgoing message. The message *content* layout (bodies, headers' inner
//! payloads) is in [`crate::content`].
//!
//! This is the one copy: the SDK's `Client`, the simulator's devices, the
//! load tool and the test kits build their requests with it, so a change in
//! what a relay checks is made once. It lives in the SDK rather than in
//! `courier-protocol` (which knows no keys) or `courier-crypto` (which
//! knows no wire types) because it is the one place that needs both.
//!
//! What it deliberately does not do: IO, or any state.

use courier_crypto::{
    Identity, OneTimePreKey, OneTimePreKeyPublic, PreKeyBundle, PublicIdentity, SignedPreKey,
    SignedPreKeyPublic,
};
use courier_protocol::api::{
    self, ChallengeResponse, DeviceBundle, DeviceKeys, DeviceList, DeviceListEntry, LoginRequest,
    SignedDeviceList, UploadOneTimePreKeys,
};
use courier_protocol::signing;
use courier_protocol::{Address, Bytes, DeviceId, EnvelopeId, OutgoingMessage, RecipientEntry};

use crate::Error;

/// The device keys a relay publishes for `identity`: its Ed25519 signing
/// key, its X25519 key and the signature binding the two.
pub fn device_keys(identity: &Identity) -> DeviceKeys {
    let public = identity.public();
    let dh = public.dh_key();
    DeviceKeys {
        identity_key: Bytes(public.signing_key().to_vec()),
        dh_key: Bytes(dh.to_vec()),
        dh_key_signature: Bytes(identity.sign(&signing::dh_key_signing_bytes(&dh)).to_vec()),
    }
}

/// The verified public identity described by published device keys.
pub fn public_identity(keys: &DeviceKeys) -> Result<PublicIdentity, Error> {
    let mut bytes = Vec::with_capacity(128);
    bytes.extend_from_slice(keys.identity_key.as_slice());
    bytes.extend_from_slice(keys.dh_key.as_slice());
    bytes.extend_from_slice(keys.dh_key_signature.as_slice());
    Ok(PublicIdentity::from_bytes(&bytes)?)
}

/// The verified prekey bundle of a device, as a key bundle answer names it.
pub fn prekey_bundle(bundle: &DeviceBundle) -> Result<PreKeyBundle, Error> {
    let identity = public_identity(&bundle.keys)?;
    let spk = &bundle.signed_prekey;
    let mut bytes = Vec::with_capacity(108);
    bytes.extend_from_slice(&spk.id.to_be_bytes());
    bytes.extend_from_slice(&spk.created_ms.to_be_bytes());
    bytes.extend_from_slice(spk.public.as_slice());
    bytes.extend_from_slice(spk.signature.as_slice());
    let spk = SignedPreKeyPublic::from_bytes(&bytes)?;
    let otk = match &bundle.one_time_prekey {
        Some(k) => {
            let mut bytes = Vec::with_capacity(36);
            bytes.extend_from_slice(&k.id.to_be_bytes());
            bytes.extend_from_slice(k.public.as_slice());
            Some(OneTimePreKeyPublic::from_bytes(&bytes)?)
        }
        None => None,
    };
    Ok(PreKeyBundle::new(identity, spk, otk)?)
}

/// Checks that a device list is signed by the device it names as signer,
/// with the key the list itself holds for that device.
pub fn verify_list(list: &SignedDeviceList) -> Result<(), Error> {
    let key = list
        .signer_key()
        .ok_or_else(|| Error::BadResponse("device list signer is not listed".into()))?;
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| Error::BadResponse("device list key length".into()))?;
    let sig: [u8; 64] = list
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| Error::BadResponse("device list signature length".into()))?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| Error::BadResponse("device list key".into()))?;
    vk.verify_strict(
        &list.list.signing_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| Error::BadResponse("device list signature does not verify".into()))
}

/// `list` signed by `identity`, the key of device `signer`.
pub fn sign_list(identity: &Identity, list: DeviceList, signer: DeviceId) -> SignedDeviceList {
    let signature = Bytes(identity.sign(&list.signing_bytes()).to_vec());
    SignedDeviceList {
        list,
        signer,
        signature,
    }
}

/// The first device list of a new account: version 1, holding device 1
/// with `keys`, signed by it. What registration sends.
pub fn first_device_list(
    identity: &Identity,
    address: Address,
    keys: &DeviceKeys,
) -> SignedDeviceList {
    let list = DeviceList {
        address,
        version: 1,
        devices: vec![DeviceListEntry {
            device: DeviceId(1),
            identity_key: keys.identity_key.clone(),
        }],
    };
    sign_list(identity, list, DeviceId(1))
}

/// The login request answering `challenge` for device `device` of `address`.
pub fn login_answer(
    identity: &Identity,
    address: &Address,
    device: DeviceId,
    challenge: &ChallengeResponse,
) -> LoginRequest {
    let bytes = signing::login_signing_bytes(
        &address.relay,
        &address.user,
        device,
        challenge.nonce.as_slice(),
    );
    LoginRequest {
        challenge_id: challenge.challenge_id.clone(),
        signature: Bytes(identity.sign(&bytes).to_vec()),
    }
}

/// The upload of a signed prekey, signed over the relay's layout by
/// `identity` (the relay checks that signature, clients check the
/// `courier-crypto` one inside the bundle).
pub fn signed_prekey_upload(identity: &Identity, spk: &SignedPreKey) -> api::SignedPreKey {
    let public = spk.public();
    let key = public.key();
    let created_ms = public.timestamp();
    let signature = identity.sign(&signing::signed_prekey_signing_bytes(
        spk.id(),
        &key,
        created_ms,
    ));
    api::SignedPreKey {
        id: spk.id(),
        public: Bytes(key.to_vec()),
        signature: Bytes(signature.to_vec()),
        created_ms,
    }
}

/// The upload of one-time prekeys (public halves only).
pub fn one_time_prekeys_upload(keys: &[OneTimePreKey]) -> UploadOneTimePreKeys {
    UploadOneTimePreKeys {
        prekeys: keys
            .iter()
            .map(|k| api::OneTimePreKey {
                id: k.id(),
                public: Bytes(k.public().key().to_vec()),
            })
            .collect(),
    }
}

/// An outgoing message: one body for all recipients and one header per
/// recipient device, in the order given.
pub fn outgoing(
    id: EnvelopeId,
    body: Vec<u8>,
    recipients: impl IntoIterator<Item = (Address, DeviceId, Bytes)>,
    ttl_secs: u64,
) -> OutgoingMessage {
    OutgoingMessage {
        id,
        body: Bytes(body),
        recipients: recipients
            .into_iter()
            .map(|(to, device, header)| RecipientEntry { to, device, header })
            .collect(),
        ttl_secs,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn address() -> Address {
        "alice@relay.example".parse().expect("address")
    }

    #[test]
    fn a_signed_list_verifies_and_a_tampered_one_does_not() {
        let mut rng = StdRng::from_seed([1; 32]);
        let identity = Identity::generate(&mut rng);
        let keys = device_keys(&identity);
        let signed = first_device_list(&identity, address(), &keys);
        verify_list(&signed).expect("own list verifies");

        let mut tampered = signed.clone();
        tampered.list.version = 2;
        assert!(verify_list(&tampered).is_err());

        let other = Identity::generate(&mut rng);
        let forged = sign_list(&other, signed.list.clone(), DeviceId(1));
        assert!(verify_list(&forged).is_err());
    }

    #[test]
    fn published_keys_give_back_the_identity() {
        let mut rng = StdRng::from_seed([2; 32]);
        let identity = Identity::generate(&mut rng);
        let keys = device_keys(&identity);
        let public = public_identity(&keys).expect("keys verify");
        assert_eq!(public.signing_key(), identity.public().signing_key());

        let mut bad = keys.clone();
        bad.dh_key.0[0] ^= 1;
        assert!(public_identity(&bad).is_err());
    }

    #[test]
    fn an_uploaded_prekey_makes_a_bundle_that_verifies() {
        let mut rng = StdRng::from_seed([3; 32]);
        let identity = Identity::generate(&mut rng);
        let spk = SignedPreKey::generate(&identity, 7, 1_700_000_000_000, &mut rng);
        let otk = OneTimePreKey::generate_batch(1, 1, &mut rng);
        let upload = signed_prekey_upload(&identity, &spk);
        assert_eq!(upload.id, 7);
        let bundle = DeviceBundle {
            device: DeviceId(1),
            keys: device_keys(&identity),
            signed_prekey: upload,
            one_time_prekey: one_time_prekeys_upload(&otk).prekeys.pop(),
        };
        prekey_bundle(&bundle).expect("bundle verifies");
    }
}
