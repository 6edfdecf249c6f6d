//! Signing and checking relay descriptors with the relay's libp2p key.
//!
//! A descriptor names its PeerId; an Ed25519 PeerId embeds the public key
//! (identity multihash), so any relay can check a descriptor it got second
//! hand without asking the relay it describes.

use courier_protocol::{Bytes, RelayDescriptor, SignedDescriptor, Validate};
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};

pub use courier_relay::peering::DescriptorError;

/// Signs `descriptor` with the relay key.
pub fn sign(keypair: &Keypair, descriptor: RelayDescriptor) -> SignedDescriptor {
    // Ed25519 signing cannot fail; the error type exists for RSA/ECDSA keys,
    // which a relay key never is (checked when the key is loaded).
    let signature = keypair
        .sign(&descriptor.signing_bytes())
        .unwrap_or_default();
    SignedDescriptor {
        descriptor,
        signature: Bytes::from(signature),
    }
}

/// The Ed25519 public key inside an identity-multihash PeerId.
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let bytes = peer.to_bytes();
    // Identity multihash: code 0x00, one-byte length (keys are < 128 bytes), key.
    match bytes.as_slice() {
        [0x00, len, key @ ..] if usize::from(*len) == key.len() => {
            PublicKey::try_decode_protobuf(key)
                .ok()
                .filter(|k| k.clone().try_into_ed25519().is_ok())
        }
        _ => None,
    }
}

/// Checks limits and signature; returns the PeerId the descriptor is
/// signed by.
pub fn verify(signed: &SignedDescriptor) -> Result<PeerId, DescriptorError> {
    signed.validate().map_err(DescriptorError::Invalid)?;
    let text = &signed.descriptor.peer_id;
    let peer: PeerId = text
        .parse()
        .map_err(|_| DescriptorError::BadPeerId(text.clone()))?;
    let key = public_key_of(&peer).ok_or_else(|| DescriptorError::NotEd25519(peer.to_base58()))?;
    if !key.verify(
        &signed.descriptor.signing_bytes(),
        signed.signature.as_slice(),
    ) {
        return Err(DescriptorError::BadSignature(peer.to_base58()));
    }
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(key: &Keypair, name: &str) -> RelayDescriptor {
        RelayDescriptor {
            name: name.parse().unwrap(),
            peer_id: key.public().to_peer_id().to_base58(),
            addresses: vec!["/ip4/127.0.0.1/udp/4433/quic-v1".into()],
            http_url: "http://127.0.0.1:8080".into(),
            version: "0.1.0".into(),
            features: vec!["wire-v1".into()],
            issued_ms: 1,
        }
    }

    #[test]
    fn signed_descriptor_verifies_and_names_its_key() {
        let key = Keypair::generate_ed25519();
        let signed = sign(&key, descriptor(&key, "relay-a.example"));
        assert_eq!(verify(&signed), Ok(key.public().to_peer_id()));
    }

    #[test]
    fn tampered_or_foreign_signed_descriptor_is_refused() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut signed = sign(&key, descriptor(&key, "relay-a.example"));
        signed.descriptor.http_url = "http://evil.example".into();
        assert!(matches!(
            verify(&signed),
            Err(DescriptorError::BadSignature(_))
        ));

        // Signed by another key than the one the PeerId names.
        let forged = sign(&other, descriptor(&key, "relay-a.example"));
        assert!(matches!(
            verify(&forged),
            Err(DescriptorError::BadSignature(_))
        ));

        let mut bad_id = sign(&key, descriptor(&key, "relay-a.example"));
        bad_id.descriptor.peer_id = "not-a-peer-id".into();
        assert!(matches!(
            verify(&bad_id),
            Err(DescriptorError::BadPeerId(_))
        ));
    }
}
