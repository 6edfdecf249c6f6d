//! The client API: HTTP JSON request and response bodies under `/v1`.
//!
//! Request types (what a client sends) reject unknown fields so a typo or a
//! field this relay does not understand is an error, not silently ignored.
//! Response types accept unknown fields so a newer relay can add fields
//! without breaking older clients. Paths are in [`paths`].

use serde::{Deserialize, Serialize};

use crate::limits::{
    ACK_SEQS_MAX, BODY_BYTES_MAX, CODE_BYTES_MAX, DEVICES_PER_ACCOUNT_MAX, FETCH_LIMIT_MAX,
    HEADER_BYTES_MAX, NONCE_BYTES, ONE_TIME_PREKEYS_PER_UPLOAD_MAX, RECIPIENTS_MAX,
    TOKEN_BYTES_MAX,
};
use crate::signing;
use crate::validate::{
    Validate, ensure, has_duplicates, public_key, signature, text_max, text_nonempty_max,
    x25519_public_key,
};
use crate::{Address, ApiError, Bytes, DeviceId, EnvelopeId, ErrorCode, RelayName, Username};

/// Paths of the HTTP API. `{name}` marks a path parameter.
pub mod paths {
    /// Prefix of every versioned endpoint.
    pub const PREFIX: &str = "/v1";
    /// `GET` → [`super::RelayInfo`] (no auth).
    pub const RELAY: &str = "/v1/relay";
    /// `POST`: [`super::RegisterRequest`] → [`super::RegisterResponse`].
    pub const ACCOUNTS: &str = "/v1/accounts";
    /// `POST`: [`super::ChallengeRequest`] → [`super::ChallengeResponse`].
    pub const AUTH_CHALLENGE: &str = "/v1/auth/challenge";
    /// `POST`: [`super::LoginRequest`] → [`super::TokenResponse`].
    pub const AUTH_LOGIN: &str = "/v1/auth/login";
    /// `POST`: [`super::RefreshRequest`] → [`super::TokenResponse`].
    pub const AUTH_REFRESH: &str = "/v1/auth/refresh";
    /// `POST` (auth) → 204.
    pub const AUTH_LOGOUT: &str = "/v1/auth/logout";
    /// `GET` → [`super::SignedDeviceList`].
    pub const DEVICES: &str = "/v1/devices/{username}";
    /// `POST`: [`super::LinkRequest`] → [`super::LinkResponse`].
    pub const LINKS: &str = "/v1/links";
    /// `GET` (auth) → [`super::LinkInfo`].
    pub const LINK: &str = "/v1/links/{code}";
    /// `POST` (auth): [`super::ApproveLinkRequest`] → [`super::ApproveLinkResponse`].
    pub const LINK_APPROVE: &str = "/v1/links/{code}/approve";
    /// `GET ?secret=`: [`super::LinkStatusQuery`] → [`super::LinkStatus`].
    pub const LINK_STATUS: &str = "/v1/links/{code}/status";
    /// `PUT` (auth): [`super::SignedPreKey`] → 204.
    pub const KEYS_SIGNED_PREKEY: &str = "/v1/keys/signed-prekey";
    /// `POST` (auth): [`super::UploadOneTimePreKeys`] → [`super::PreKeyCount`].
    pub const KEYS_ONE_TIME: &str = "/v1/keys/one-time";
    /// `GET` (auth) → [`super::PreKeyCount`].
    pub const KEYS_COUNT: &str = "/v1/keys/count";
    /// `GET ?device=` (auth): [`super::KeyBundleQuery`] → [`super::KeyBundleResponse`].
    pub const KEYS_BUNDLE: &str = "/v1/keys/{address}";
    /// `POST` (auth): [`crate::OutgoingMessage`] → [`super::SendResponse`];
    /// `GET ?after=&limit=` (auth): [`super::FetchQuery`] → [`super::FetchResponse`].
    pub const MESSAGES: &str = "/v1/messages";
    /// `POST` (auth): [`super::AckRequest`] → [`super::AckResponse`].
    pub const MESSAGES_ACK: &str = "/v1/messages/ack";
    /// WebSocket: [`crate::ws::ServerFrame`] / [`crate::ws::ClientFrame`].
    pub const WS: &str = "/v1/ws";
    /// Liveness, unversioned.
    pub const HEALTHZ: &str = "/healthz";
    /// Readiness, unversioned.
    pub const READYZ: &str = "/readyz";
    /// Prometheus metrics, unversioned.
    pub const METRICS: &str = "/metrics";
}

/// Response header telling an authenticated device its one-time prekey pool
/// is low; the value is the number remaining.
pub const PREKEYS_LOW_HEADER: &str = "courier-prekeys-low";

/// Most bytes of [`RelayInfo::version`].
pub const RELAY_VERSION_BYTES_MAX: usize = 64;

/// Who may create an account on a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RegistrationPolicy {
    /// Anyone.
    Open,
    /// Only holders of an operator-made invite code.
    Invite,
}

/// Public facts about a relay (`GET /v1/relay`), so a client can learn the
/// name its addresses end in before registering. Holds no secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayInfo {
    /// The relay's name: the part after `@` of its users' addresses.
    pub name: RelayName,
    /// The relay software's version (informational).
    pub version: String,
    /// Who may register.
    pub registration: RegistrationPolicy,
}

impl Validate for RelayInfo {
    fn validate(&self) -> Result<(), ErrorCode> {
        text_max(&self.version, RELAY_VERSION_BYTES_MAX)
    }
}

/// A device's long-term public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceKeys {
    /// Ed25519 public identity key, 32 bytes.
    pub identity_key: Bytes,
    /// X25519 public key, 32 bytes.
    pub dh_key: Bytes,
    /// Ed25519 signature by `identity_key` over
    /// [`signing::dh_key_signing_bytes`]`(dh_key)`, 64 bytes.
    pub dh_key_signature: Bytes,
}

impl DeviceKeys {
    /// The bytes `dh_key_signature` signs.
    pub fn dh_key_signing_bytes(&self) -> Vec<u8> {
        signing::dh_key_signing_bytes(self.dh_key.as_slice())
    }
}

impl Validate for DeviceKeys {
    fn validate(&self) -> Result<(), ErrorCode> {
        public_key(self.identity_key.as_slice())?;
        x25519_public_key(self.dh_key.as_slice())?;
        signature(self.dh_key_signature.as_slice())
    }
}

/// A medium-term X25519 prekey signed by the identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedPreKey {
    /// Chosen by the device; the newest upload replaces the previous one.
    pub id: u32,
    /// X25519 public key, 32 bytes.
    pub public: Bytes,
    /// Ed25519 signature by the identity key over
    /// [`signing::signed_prekey_signing_bytes`], 64 bytes.
    pub signature: Bytes,
    /// When the device created the key, Unix milliseconds.
    pub created_ms: u64,
}

impl SignedPreKey {
    /// The bytes `signature` signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing::signed_prekey_signing_bytes(self.id, self.public.as_slice(), self.created_ms)
    }
}

impl Validate for SignedPreKey {
    fn validate(&self) -> Result<(), ErrorCode> {
        x25519_public_key(self.public.as_slice())?;
        signature(self.signature.as_slice())
    }
}

/// A single-use X25519 prekey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OneTimePreKey {
    /// Chosen by the device, unique among its one-time prekeys.
    pub id: u32,
    /// X25519 public key, 32 bytes.
    pub public: Bytes,
}

impl Validate for OneTimePreKey {
    fn validate(&self) -> Result<(), ErrorCode> {
        x25519_public_key(self.public.as_slice())
    }
}

/// One device in a [`DeviceList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceListEntry {
    /// The device id.
    pub device: DeviceId,
    /// Its Ed25519 identity key, 32 bytes.
    pub identity_key: Bytes,
}

impl Validate for DeviceListEntry {
    fn validate(&self) -> Result<(), ErrorCode> {
        public_key(self.identity_key.as_slice())
    }
}

/// The devices of an account, as its devices attest them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceList {
    /// The account.
    pub address: Address,
    /// 1 at registration; each new list is exactly the stored version + 1
    /// (relays answer `conflict` otherwise).
    pub version: u64,
    /// 1..=[`DEVICES_PER_ACCOUNT_MAX`] devices, each id once.
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::DEVICES_PER_ACCOUNT_MAX }>"
    )]
    pub devices: Vec<DeviceListEntry>,
}

impl DeviceList {
    /// The bytes a [`SignedDeviceList`] signature signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing::device_list_signing_bytes(self)
    }

    /// The entry of `device`, if listed.
    pub fn entry(&self, device: DeviceId) -> Option<&DeviceListEntry> {
        self.devices.iter().find(|e| e.device == device)
    }
}

impl Validate for DeviceList {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(self.version >= 1, ErrorCode::BadRequest)?;
        ensure(!self.devices.is_empty(), ErrorCode::BadRequest)?;
        ensure(
            self.devices.len() <= DEVICES_PER_ACCOUNT_MAX,
            ErrorCode::TooManyDevices,
        )?;
        self.devices.validate()?;
        let ids = self.devices.iter().map(|e| e.device).collect();
        ensure(!has_duplicates(ids), ErrorCode::BadRequest)
    }
}

/// A device list signed by one of the devices it lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedDeviceList {
    /// The list.
    pub list: DeviceList,
    /// The device whose identity key signed; it must be in `list` (for a
    /// link approval, in the previous list too).
    pub signer: DeviceId,
    /// Ed25519 signature over [`DeviceList::signing_bytes`], 64 bytes.
    pub signature: Bytes,
}

impl SignedDeviceList {
    /// The identity key of the signer according to the list itself, if the
    /// signer is listed.
    pub fn signer_key(&self) -> Option<&Bytes> {
        self.list.entry(self.signer).map(|e| &e.identity_key)
    }
}

impl Validate for SignedDeviceList {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.list.validate()?;
        signature(self.signature.as_slice())?;
        ensure(self.signer_key().is_some(), ErrorCode::BadRequest)
    }
}

/// `POST /v1/accounts`: creates an account and its first device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The wanted username on this relay.
    pub username: Username,
    /// Invite code, required when the relay's policy is `invite`.
    #[serde(default)]
    pub invite: Option<String>,
    /// The first device's keys.
    pub device: DeviceKeys,
    /// The initial list: version 1, the single device [`DeviceId`]`(1)` with
    /// `device.identity_key`, signed by it.
    pub device_list: SignedDeviceList,
}

impl Validate for RegisterRequest {
    fn validate(&self) -> Result<(), ErrorCode> {
        if let Some(invite) = &self.invite {
            text_max(invite, CODE_BYTES_MAX)?;
        }
        self.device.validate()?;
        self.device_list.validate()?;
        let list = &self.device_list.list;
        ensure(
            list.version == 1
                && list.address.user == self.username
                && self.device_list.signer == DeviceId(1)
                && list.devices.len() == 1
                && list.devices[0].device == DeviceId(1)
                && list.devices[0].identity_key == self.device.identity_key,
            ErrorCode::BadRequest,
        )
    }
}

/// Answer to [`RegisterRequest`] (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    /// The full address, `username@relay`.
    pub address: Address,
    /// The new device's id (always 1).
    pub device: DeviceId,
}

impl Validate for RegisterResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        Ok(())
    }
}

/// `POST /v1/auth/challenge`: asks for a login nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The account.
    pub username: Username,
    /// The device that will sign.
    pub device: DeviceId,
}

impl Validate for ChallengeRequest {
    fn validate(&self) -> Result<(), ErrorCode> {
        Ok(())
    }
}

/// Answer to [`ChallengeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChallengeResponse {
    /// Names the challenge in the [`LoginRequest`].
    pub challenge_id: String,
    /// 32 random bytes to sign with [`signing::login_signing_bytes`].
    pub nonce: Bytes,
    /// The challenge is void after this time, Unix milliseconds.
    pub expires_ms: u64,
}

impl Validate for ChallengeResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        text_nonempty_max(&self.challenge_id, TOKEN_BYTES_MAX)?;
        crate::validate::exact_len(self.nonce.as_slice(), NONCE_BYTES)
    }
}

/// `POST /v1/auth/login`: answers a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// From [`ChallengeResponse::challenge_id`].
    pub challenge_id: String,
    /// Ed25519 signature by the device's identity key over
    /// [`signing::login_signing_bytes`], 64 bytes.
    pub signature: Bytes,
}

impl Validate for LoginRequest {
    fn validate(&self) -> Result<(), ErrorCode> {
        text_nonempty_max(&self.challenge_id, TOKEN_BYTES_MAX)?;
        signature(self.signature.as_slice())
    }
}

/// Answer to [`LoginRequest`] and [`RefreshRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// Bearer token for `Authorization: Bearer …`.
    pub access_token: String,
    /// When the access token expires, Unix milliseconds.
    pub access_expires_ms: u64,
    /// Single-use token for [`RefreshRequest`].
    pub refresh_token: String,
    /// When the refresh token expires, Unix milliseconds.
    pub refresh_expires_ms: u64,
}

impl Validate for TokenResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        text_nonempty_max(&self.access_token, TOKEN_BYTES_MAX)?;
        text_nonempty_max(&self.refresh_token, TOKEN_BYTES_MAX)
    }
}

/// `POST /v1/auth/refresh`: trades a refresh token for new tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The current refresh token; reusing an old one revokes the login.
    pub refresh_token: String,
}

impl Validate for RefreshRequest {
    fn validate(&self) -> Result<(), ErrorCode> {
        text_nonempty_max(&self.refresh_token, TOKEN_BYTES_MAX)
    }
}

/// `POST /v1/links`: a new device asks to join an existing account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// The existing account.
    pub username: Username,
    /// The new device's keys.
    pub device: DeviceKeys,
}

impl Validate for LinkRequest {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.device.validate()
    }
}

/// Answer to [`LinkRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkResponse {
    /// Short code the user types on an existing device.
    pub code: String,
    /// Known only to the new device; proves it when polling the status.
    pub secret: String,
    /// The link request is void after this time, Unix milliseconds.
    pub expires_ms: u64,
}

impl Validate for LinkResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        text_nonempty_max(&self.code, CODE_BYTES_MAX)?;
        text_nonempty_max(&self.secret, TOKEN_BYTES_MAX)
    }
}

/// `GET /v1/links/{code}`: what an existing device approves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkInfo {
    /// The account.
    pub username: Username,
    /// The new device's keys, to be added to the device list.
    pub device: DeviceKeys,
    /// The link request is void after this time, Unix milliseconds.
    pub expires_ms: u64,
}

impl Validate for LinkInfo {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.device.validate()
    }
}

/// `POST /v1/links/{code}/approve`: an existing device approves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ApproveLinkRequest {
    /// The next device list: version + 1, the current entries followed by
    /// the new device (id = highest current id + 1, the link's identity
    /// key), with `signer` = the approving device, signed by it.
    pub device_list: SignedDeviceList,
}

impl Validate for ApproveLinkRequest {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.device_list.validate()
    }
}

/// Answer to [`ApproveLinkRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApproveLinkResponse {
    /// The id the new device received.
    pub device: DeviceId,
}

impl Validate for ApproveLinkResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        Ok(())
    }
}

/// Query of `GET /v1/links/{code}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct LinkStatusQuery {
    /// From [`LinkResponse::secret`].
    pub secret: String,
}

impl Validate for LinkStatusQuery {
    fn validate(&self) -> Result<(), ErrorCode> {
        text_nonempty_max(&self.secret, TOKEN_BYTES_MAX)
    }
}

/// Answer of `GET /v1/links/{code}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkStatus {
    /// Whether an existing device approved.
    pub approved: bool,
    /// The new device's id once approved.
    pub device: Option<DeviceId>,
}

impl Validate for LinkStatus {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(
            self.approved == self.device.is_some(),
            ErrorCode::BadRequest,
        )
    }
}

/// `POST /v1/keys/one-time`: adds one-time prekeys to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UploadOneTimePreKeys {
    /// 1..=[`ONE_TIME_PREKEYS_PER_UPLOAD_MAX`] keys, ids unique.
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::ONE_TIME_PREKEYS_PER_UPLOAD_MAX }>"
    )]
    pub prekeys: Vec<OneTimePreKey>,
}

impl Validate for UploadOneTimePreKeys {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(!self.prekeys.is_empty(), ErrorCode::BadRequest)?;
        ensure(
            self.prekeys.len() <= ONE_TIME_PREKEYS_PER_UPLOAD_MAX,
            ErrorCode::TooManyPrekeys,
        )?;
        self.prekeys.validate()?;
        let ids = self.prekeys.iter().map(|k| k.id).collect();
        ensure(!has_duplicates(ids), ErrorCode::BadRequest)
    }
}

/// The device's one-time prekey pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PreKeyCount {
    /// One-time prekeys remaining on the relay.
    pub one_time: u32,
    /// Below this many the relay reports the pool as low.
    pub low_water: u32,
}

impl Validate for PreKeyCount {
    fn validate(&self) -> Result<(), ErrorCode> {
        Ok(())
    }
}

/// Query of `GET /v1/keys/{address}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct KeyBundleQuery {
    /// One device only; all devices when absent.
    #[serde(default)]
    pub device: Option<DeviceId>,
}

impl Validate for KeyBundleQuery {
    fn validate(&self) -> Result<(), ErrorCode> {
        Ok(())
    }
}

/// What a sender needs to start sessions with one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceBundle {
    /// The device.
    pub device: DeviceId,
    /// Its long-term keys.
    pub keys: DeviceKeys,
    /// Its current signed prekey.
    pub signed_prekey: SignedPreKey,
    /// A one-time prekey, handed out at most once; absent when the pool is
    /// empty.
    pub one_time_prekey: Option<OneTimePreKey>,
}

impl Validate for DeviceBundle {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.keys.validate()?;
        self.signed_prekey.validate()?;
        self.one_time_prekey.validate()
    }
}

/// `GET /v1/keys/{address}`, also the federation bundle answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyBundleResponse {
    /// The account.
    pub address: Address,
    /// Its current signed device list; clients check each bundle's identity
    /// key against it.
    pub device_list: SignedDeviceList,
    /// One bundle per requested device, at most [`DEVICES_PER_ACCOUNT_MAX`].
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::DEVICES_PER_ACCOUNT_MAX }>"
    )]
    pub bundles: Vec<DeviceBundle>,
}

impl Validate for KeyBundleResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.device_list.validate()?;
        ensure(
            self.device_list.list.address == self.address,
            ErrorCode::BadRequest,
        )?;
        ensure(
            self.bundles.len() <= DEVICES_PER_ACCOUNT_MAX,
            ErrorCode::TooManyDevices,
        )?;
        self.bundles.validate()?;
        let ids = self.bundles.iter().map(|b| b.device).collect();
        ensure(!has_duplicates(ids), ErrorCode::BadRequest)
    }
}

/// Answer to `POST /v1/messages`, sent only once the message is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendResponse {
    /// The message's envelope id.
    pub id: EnvelopeId,
    /// When the relay first accepted it, Unix milliseconds (a retry returns
    /// the original time).
    pub accepted_ms: u64,
}

impl Validate for SendResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        Ok(())
    }
}

/// Query of `GET /v1/messages`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct FetchQuery {
    /// Only envelopes with a greater sequence number; from the start when
    /// absent.
    #[serde(default)]
    pub after: Option<u64>,
    /// At most this many, 1..=[`FETCH_LIMIT_MAX`]; the relay's default when
    /// absent.
    #[serde(default)]
    pub limit: Option<u32>,
}

impl Validate for FetchQuery {
    fn validate(&self) -> Result<(), ErrorCode> {
        match self.limit {
            Some(n) => ensure(
                n >= 1 && n as usize <= FETCH_LIMIT_MAX,
                ErrorCode::BadRequest,
            ),
            None => Ok(()),
        }
    }
}

/// What an envelope carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeKind {
    /// A message from another device: `header` and `body` are ciphertext.
    #[default]
    Message,
    /// A notice from the home relay that a message this device sent could
    /// not be delivered: `header` is empty and `body` is the JSON of a
    /// [`DeliveryFailureNotice`].
    DeliveryFailure,
}

/// A message waiting in a device's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Envelope {
    /// Position in the mailbox, strictly increasing; acks name it.
    pub seq: u64,
    /// The sender-chosen id.
    pub id: EnvelopeId,
    /// The relay the envelope came from (the sender's home relay). The
    /// sender itself is inside the sealed header, not visible to relays.
    pub origin: RelayName,
    /// This device's header, at most [`HEADER_BYTES_MAX`] bytes.
    pub header: Bytes,
    /// The shared ciphertext body, at most [`BODY_BYTES_MAX`] bytes.
    pub body: Bytes,
    /// When this relay stored it, Unix milliseconds.
    pub received_ms: u64,
    /// When the relay drops it undelivered, Unix milliseconds.
    pub expires_ms: u64,
    /// Message or relay notice.
    #[serde(default)]
    pub kind: EnvelopeKind,
}

impl Validate for Envelope {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(
            self.header.len() <= HEADER_BYTES_MAX && self.body.len() <= BODY_BYTES_MAX,
            ErrorCode::PayloadTooLarge,
        )
    }
}

/// Body of an [`EnvelopeKind::DeliveryFailure`] envelope (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryFailureNotice {
    /// The message that failed.
    pub id: EnvelopeId,
    /// The recipient devices it did not reach, 1..=[`RECIPIENTS_MAX`].
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::RECIPIENTS_MAX }>"
    )]
    pub recipients: Vec<FailedRecipient>,
}

impl Validate for DeliveryFailureNotice {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(!self.recipients.is_empty(), ErrorCode::BadRequest)?;
        ensure(
            self.recipients.len() <= RECIPIENTS_MAX,
            ErrorCode::TooManyRecipients,
        )
    }
}

/// One recipient device a message did not reach, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailedRecipient {
    /// The recipient's address.
    pub to: Address,
    /// The recipient device.
    pub device: DeviceId,
    /// Why: `expired`, `unknown_user`, `unknown_device`, `mailbox_full`, …
    pub code: ErrorCode,
}

/// Answer to `GET /v1/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FetchResponse {
    /// In sequence order, at most [`FETCH_LIMIT_MAX`].
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::FETCH_LIMIT_MAX }>"
    )]
    pub envelopes: Vec<Envelope>,
    /// Whether more envelopes are waiting.
    pub more: bool,
}

impl Validate for FetchResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        ensure(
            self.envelopes.len() <= FETCH_LIMIT_MAX,
            ErrorCode::PayloadTooLarge,
        )?;
        self.envelopes.validate()?;
        ensure(
            self.envelopes.windows(2).all(|w| w[0].seq < w[1].seq),
            ErrorCode::BadRequest,
        )
    }
}

/// `POST /v1/messages/ack`: deletes delivered envelopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// 1..=[`ACK_SEQS_MAX`] sequence numbers of this device's mailbox.
    #[serde(deserialize_with = "crate::validate::capped::<_, _, { crate::limits::ACK_SEQS_MAX }>")]
    pub seqs: Vec<u64>,
}

impl Validate for AckRequest {
    fn validate(&self) -> Result<(), ErrorCode> {
        validate_seqs(&self.seqs)
    }
}

/// Checks an ack list: 1..=[`ACK_SEQS_MAX`] entries.
pub(crate) fn validate_seqs(seqs: &[u64]) -> Result<(), ErrorCode> {
    ensure(!seqs.is_empty(), ErrorCode::BadRequest)?;
    ensure(seqs.len() <= ACK_SEQS_MAX, ErrorCode::PayloadTooLarge)
}

/// Answer to [`AckRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckResponse {
    /// How many envelopes were deleted now (already-deleted ones count 0, so
    /// a repeated ack is harmless).
    pub acked: u32,
}

impl Validate for AckResponse {
    fn validate(&self) -> Result<(), ErrorCode> {
        Ok(())
    }
}

impl Validate for ApiError {
    fn validate(&self) -> Result<(), ErrorCode> {
        text_max(&self.message, crate::limits::ERROR_MESSAGE_BYTES_MAX)
    }
}

impl Validate for crate::ErrorBody {
    fn validate(&self) -> Result<(), ErrorCode> {
        self.error.validate()
    }
}

impl Validate for crate::OutgoingMessage {
    fn validate(&self) -> Result<(), ErrorCode> {
        crate::OutgoingMessage::validate(self)
    }
}
