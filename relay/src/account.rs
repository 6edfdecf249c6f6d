//! Accounts: username rules, registration policy, invite codes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use courier_protocol::{Address, DeviceId, Validate};

use crate::auth::{hash_secret, verify};
use crate::device::check_device_list_signature;
use crate::error::{RelayError, Result};
use crate::relay::{Registration, Relay};
use crate::store::{DeviceRecord, InviteRecord, NewAccount};
use crate::types::{DeviceKeys, RegisterRequest, RegisterResponse};

/// Checks the shape of device keys and the identity key's signature over
/// the DH key.
pub(crate) fn check_device_keys(keys: &DeviceKeys) -> Result<()> {
    keys.validate()?;
    verify(
        keys.identity_key.as_slice(),
        &keys.dh_key_signing_bytes(),
        keys.dh_key_signature.as_slice(),
        "dh key",
    )
}

impl Relay {
    /// Creates a single-use invite code valid for `valid_ms` (operator action).
    pub async fn create_invite(&self, valid_ms: u64) -> Result<String> {
        let code = URL_SAFE_NO_PAD.encode(self.random_bytes::<15>());
        self.store
            .create_invite(InviteRecord {
                code_hash: hash_secret(&code),
                expires_ms: self.now_ms() + valid_ms,
            })
            .await?;
        Ok(code)
    }

    /// Registers an account with its first device. The device list must be
    /// version 1, list exactly device 1 with the given identity key, and be
    /// signed by it.
    pub async fn register(&self, request: RegisterRequest) -> Result<RegisterResponse> {
        request.validate()?;
        let user = request.username.clone();
        let invite = match (self.config.registration, &request.invite) {
            (Registration::Invite, None) => return Err(RelayError::InviteRequired),
            (Registration::Invite, Some(code)) => Some(hash_secret(code)),
            (Registration::Open, _) => None,
        };
        check_device_keys(&request.device)?;
        let address = Address::new(user.clone(), self.config.name.clone());
        let list = &request.device_list;
        if list.list.address != address {
            return Err(RelayError::BadRequest(
                "device list names another address".into(),
            ));
        }
        if list.list.version != 1 || list.signer != DeviceId(1) {
            return Err(RelayError::BadRequest(
                "a new account's device list is version 1 signed by device 1".into(),
            ));
        }
        if list.list.devices.len() != 1
            || list.list.devices[0].device != DeviceId(1)
            || list.list.devices[0].identity_key != request.device.identity_key
        {
            return Err(RelayError::BadRequest(
                "a new account's device list holds exactly device 1".into(),
            ));
        }
        check_device_list_signature(list, request.device.identity_key.as_slice())?;
        let now = self.now_ms();
        self.store
            .register(NewAccount {
                device: DeviceRecord {
                    user: user.clone(),
                    device: DeviceId(1),
                    keys: request.device,
                    signed_prekey: None,
                    one_time_count: 0,
                    created_ms: now,
                },
                device_list: request.device_list,
                invite,
                now_ms: now,
            })
            .await?;
        Ok(RegisterResponse {
            address,
            device: DeviceId(1),
        })
    }
}
