//! Client-side cryptography for Courier: device identities, X3DH, the Double
//! Ratchet, sender keys for groups and sealed sender. Relays never link this
//! crate for decryption.
//!
//! What it does not do: storage, networking, clocks or randomness of its
//! own. All randomness comes from an injected [`rand_core::CryptoRng`] (so a
//! simulation is deterministic from its seed) and timestamps are passed in.
//! Live state types are not serializable; each has a versioned `*Pickle`
//! type (serde) for the client's own store. The wire formats and every
//! parameter are specified in `docs/crypto.md`.
//!
//! # Flow
//!
//! ```
//! use courier_crypto::{Identity, OneTimePreKey, PreKeyBundle, PreKeyMessage, Session,
//!                      SignedPreKey, sealed, SenderKey, SenderKeyReceiver};
//! # use core::convert::Infallible;
//! # use rand_core::{TryCryptoRng, TryRng};
//! # struct Rng(u64);
//! # impl TryRng for Rng {
//! #     type Error = Infallible;
//! #     fn try_next_u32(&mut self) -> Result<u32, Infallible> { Ok(self.try_next_u64()? as u32) }
//! #     fn try_next_u64(&mut self) -> Result<u64, Infallible> {
//! #         self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
//! #         Ok(self.0 >> 11)
//! #     }
//! #     fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
//! #         for b in dst { *b = self.try_next_u64()? as u8; } Ok(())
//! #     }
//! # }
//! # impl TryCryptoRng for Rng {}
//! # fn main() -> Result<(), courier_crypto::Error> {
//! // Use a real CSPRNG (e.g. rand::rngs::SysRng / StdRng) in a client.
//! let mut rng = Rng(7);
//!
//! // Bob publishes his identity, a signed prekey and one-time prekeys.
//! let bob = Identity::generate(&mut rng);
//! let bob_spk = SignedPreKey::generate(&bob, 1, 1_700_000_000_000, &mut rng);
//! let bob_opks = OneTimePreKey::generate_batch(100, 10, &mut rng);
//! let bundle = PreKeyBundle::new(
//!     bob.public().clone(),
//!     bob_spk.public().clone(),
//!     Some(bob_opks[0].public().clone()),
//! )?;
//! let bundle = PreKeyBundle::from_bytes(&bundle.to_bytes())?; // what Alice fetches
//!
//! // Alice starts a session and sends a (prekey) message, sealed.
//! let alice = Identity::generate(&mut rng);
//! let mut alice_session = Session::initiate(&alice, &bundle, &mut rng)?;
//! let first = alice_session.encrypt(b"hi bob", &mut rng)?;
//! let from = sealed::SenderAddress { address: "alice@relay-a.example".into(), device: 1 };
//! let envelope = sealed::seal(&alice, &from, bob.public(), &first, &mut rng)?;
//!
//! // Bob opens the envelope, looks up the prekeys named, and responds.
//! let unsealed = sealed::open(&bob, &envelope)?;
//! let prekey_message = PreKeyMessage::from_bytes(&unsealed.content)?;
//! let opk = bob_opks.iter().find(|k| Some(k.id()) == prekey_message.one_time_prekey_id());
//! let (mut bob_session, plaintext) = Session::respond(&bob, &bob_spk, opk, &prekey_message)?;
//! unsealed.verify_sender(bob_session.remote_identity())?;
//! assert_eq!(plaintext, b"hi bob");
//!
//! // Replies use the ratchet.
//! let reply = bob_session.encrypt(b"hi alice", &mut rng)?;
//! assert_eq!(alice_session.decrypt(&reply)?, b"hi alice");
//!
//! // Groups: Alice distributes a sender key over the pairwise session.
//! let mut group_key = SenderKey::generate(&mut rng);
//! let dist = alice_session.encrypt(&group_key.distribution_message(), &mut rng)?;
//! let mut from_alice = SenderKeyReceiver::from_distribution(&bob_session.decrypt(&dist)?)?;
//! let group_message = group_key.encrypt(b"hello group")?;
//! assert_eq!(from_alice.decrypt(&group_message)?, b"hello group");
//!
//! // Sessions are stored as pickles.
//! let stored = serde_json::to_string(&alice_session.to_pickle()).expect("json");
//! let restored = Session::from_pickle(&serde_json::from_str(&stored).expect("json"))?;
//! assert_eq!(restored.remote_identity(), bob.public());
//! # Ok(())
//! # }
//! ```

mod aead;
pub mod error;
pub mod identity;
mod kdf;
pub mod prekey;
pub mod ratchet;
pub mod sealed;
pub mod sender_key;
pub mod session;
pub mod wire;
pub mod x3dh;

pub use error::Error;
pub use identity::{Identity, IdentityPickle, PublicIdentity};
pub use prekey::{
    OneTimePreKey, OneTimePreKeyPublic, PreKeyBundle, PreKeyPickle, SignedPreKey,
    SignedPreKeyPublic,
};
pub use rand_core;
pub use ratchet::RatchetConfig;
pub use sealed::{SenderAddress, Unsealed};
pub use sender_key::{SenderKey, SenderKeyPickle, SenderKeyReceiver};
pub use session::{MessageKind, PreKeyMessage, Session, SessionPickle};
