//! Login by device signature, access and refresh tokens.
//!
//! Tokens are 32 random bytes, base64url; the store keeps only their SHA-256.
//! A refresh token is single use: refreshing rotates it, and presenting a
//! used one revokes the whole session, because then two parties hold the
//! chain (token theft).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use courier_protocol::{DeviceId, Username, Validate, login_signing_bytes};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{RelayError, Result};
use crate::relay::{AuthedDevice, Relay, Revocation};
use crate::store::{ChallengeRecord, NewSession, RotateOutcome, TokenHash, TokenHashes};
use crate::types::{ChallengeResponse, LoginRequest, TokenResponse};

/// SHA-256 of a secret's text.
pub fn hash_secret(secret: &str) -> TokenHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Checks an Ed25519 signature (strict: no malleable or small-order keys).
pub(crate) fn verify(
    public: &[u8],
    message: &[u8],
    signature: &[u8],
    what: &'static str,
) -> Result<()> {
    let public: &[u8; 32] = public
        .try_into()
        .map_err(|_| RelayError::BadRequest("identity key must be 32 bytes".into()))?;
    let signature: &[u8; 64] = signature
        .try_into()
        .map_err(|_| RelayError::InvalidSignature(what))?;
    let key = VerifyingKey::from_bytes(public)
        .map_err(|_| RelayError::BadRequest("identity key is not a valid Ed25519 key".into()))?;
    key.verify_strict(message, &Signature::from_bytes(signature))
        .map_err(|_| RelayError::InvalidSignature(what))
}

impl Relay {
    pub(crate) fn new_token(&self) -> (String, TokenHash) {
        let token = URL_SAFE_NO_PAD.encode(self.random_bytes::<32>());
        let hash = hash_secret(&token);
        (token, hash)
    }

    fn new_token_pair(&self, now_ms: u64) -> (TokenResponse, TokenHashes) {
        let (access, access_hash) = self.new_token();
        let (refresh, refresh_hash) = self.new_token();
        let response = TokenResponse {
            access_token: access,
            access_expires_ms: now_ms + self.config.access_token_ms,
            refresh_token: refresh,
            refresh_expires_ms: now_ms + self.config.refresh_token_ms,
        };
        let hashes = TokenHashes {
            access: access_hash,
            access_expires_ms: response.access_expires_ms,
            refresh: refresh_hash,
            refresh_expires_ms: response.refresh_expires_ms,
        };
        (response, hashes)
    }

    /// Issues a login challenge for a registered device.
    pub async fn challenge(&self, user: &Username, device: DeviceId) -> Result<ChallengeResponse> {
        let user = user.clone();
        self.store
            .device(&user, device)
            .await?
            .ok_or(RelayError::UnknownDevice)?;
        let now = self.now_ms();
        let id = URL_SAFE_NO_PAD.encode(self.random_bytes::<16>());
        let nonce = self.random_bytes::<32>();
        let expires_ms = now + self.config.challenge_ms;
        self.store
            .put_challenge(ChallengeRecord {
                id: id.clone(),
                user,
                device,
                nonce,
                expires_ms,
            })
            .await?;
        Ok(ChallengeResponse {
            challenge_id: id,
            nonce: nonce.to_vec().into(),
            expires_ms,
        })
    }

    /// Answers a challenge with the device's signature over
    /// [`courier_protocol::login_signing_bytes`];
    /// yields a new session's tokens. The challenge is spent either way.
    pub async fn login(&self, request: LoginRequest) -> Result<TokenResponse> {
        request.validate()?;
        let challenge = self
            .store
            .take_challenge(&request.challenge_id)
            .await?
            .ok_or(RelayError::InvalidChallenge)?;
        let now = self.now_ms();
        if challenge.expires_ms <= now {
            return Err(RelayError::InvalidChallenge);
        }
        let device = self
            .store
            .device(&challenge.user, challenge.device)
            .await?
            .ok_or(RelayError::UnknownDevice)?;
        let signed = login_signing_bytes(
            &self.config.name,
            &challenge.user,
            challenge.device,
            &challenge.nonce,
        );
        verify(
            device.keys.identity_key.as_slice(),
            &signed,
            request.signature.as_slice(),
            "login",
        )?;
        let (response, tokens) = self.new_token_pair(now);
        let session = URL_SAFE_NO_PAD.encode(self.random_bytes::<16>());
        self.store
            .create_session(NewSession {
                id: session,
                user: challenge.user,
                device: challenge.device,
                tokens,
            })
            .await?;
        Ok(response)
    }

    /// Rotates a refresh token. Reusing a rotated token revokes its session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse> {
        let now = self.now_ms();
        let (response, tokens) = self.new_token_pair(now);
        match self
            .store
            .rotate_refresh(&hash_secret(refresh_token), now, tokens)
            .await?
        {
            RotateOutcome::Rotated { session, .. } => {
                // The store deleted the session's old access tokens; only
                // they leave the cache (an index lookup, not a scan).
                self.revoke_cached(Revocation::Session(session));
                Ok(response)
            }
            RotateOutcome::Reused { session } => {
                // That session is revoked; every other session's cached
                // tokens (here and in other processes) stay.
                self.revoke_cached(Revocation::Session(session));
                Err(RelayError::InvalidRefreshToken)
            }
            RotateOutcome::Invalid => Err(RelayError::InvalidRefreshToken),
        }
    }

    /// Checks an access token. Revocation is immediate: a revoked session's
    /// tokens are gone from the store and from this relay's token cache
    /// (another process sharing the store drops them when its notifier
    /// relays [`crate::Notifier::revoked`], else within
    /// [`crate::Config::access_cache_ms`]).
    pub async fn authenticate(&self, access_token: &str) -> Result<AuthedDevice> {
        self.authenticate_until(access_token)
            .await
            .map(|(device, _)| device)
    }

    /// Like [`Relay::authenticate`], also returning when the token expires
    /// (Unix ms): a long-lived connection (the WebSocket) ends then.
    pub async fn authenticate_until(&self, access_token: &str) -> Result<(AuthedDevice, u64)> {
        let hash = hash_secret(access_token);
        let now = self.now_ms();
        let record = match self.access_cache.get(&hash, now) {
            Some(record) => record,
            None => {
                let generation = self.access_cache.generation();
                let record = self
                    .store
                    .access(&hash)
                    .await?
                    .ok_or(RelayError::Unauthenticated)?;
                self.access_cache.fill(hash, &record, generation, now);
                record
            }
        };
        if record.expires_ms <= now {
            return Err(RelayError::TokenExpired);
        }
        let low = self.config.prekeys_low_water;
        let device = AuthedDevice {
            user: record.user,
            device: record.device,
            session: record.session,
            prekeys_low: (record.one_time_count < low).then_some(record.one_time_count),
        };
        Ok((device, record.expires_ms))
    }

    /// Ends the caller's session: its access and refresh tokens stop working.
    pub async fn logout(&self, device: &AuthedDevice) -> Result<()> {
        let revoked = self.store.revoke_session(&device.session).await;
        // Also on failure: the store may have committed before the error.
        self.revoke_cached(Revocation::Session(device.session.clone()));
        revoked
    }

    /// Drops revoked tokens from this relay's cache and tells the notifier,
    /// so other processes sharing the store drop them too.
    fn revoke_cached(&self, revocation: Revocation) {
        self.forget_revoked(&revocation);
        self.notifier.revoked(&revocation);
    }

    /// Drops cached access tokens that another process sharing the store
    /// revoked (see [`crate::Notifier::revoked`]); the store already has
    /// them deleted, so this is all a revocation needs here.
    pub fn forget_revoked(&self, revocation: &Revocation) {
        match revocation {
            Revocation::Session(session) => self.access_cache.forget_session(session),
            Revocation::Device(user, device) => self.access_cache.forget_device(user, *device),
            Revocation::All => self.access_cache.clear(),
        }
    }
}
