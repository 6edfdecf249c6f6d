//! Devices: linking a new device to an account and the signed device list.
//!
//! Link flow: the new device opens a link request with its keys and gets a
//! short code and a secret; an existing device of the account reads the
//! request by code and approves it with a new device list (old list plus the
//! new device, version + 1) signed by its own identity key; the new device
//! polls the status with its secret, learns its device id and logs in with
//! its own key. The relay cannot add a device on its own: other users check
//! the list's signature against a device they already trust.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use courier_protocol::{Address, DeviceId, Username, Validate};

use crate::account::check_device_keys;
use crate::auth::{hash_secret, verify};
use crate::error::{RelayError, Result};
use crate::relay::{AuthedDevice, Relay};
use crate::store::{DeviceRecord, LinkRecord};
use crate::types::{
    ApproveLinkRequest, ApproveLinkResponse, DeviceList, LinkInfo, LinkRequest, LinkResponse,
    LinkStatus, SignedDeviceList,
};

/// Characters of link codes: no 0/O, 1/I/L or U, so they survive being read aloud.
const LINK_CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTVWXYZ23456789";
/// Length of a link code.
pub const LINK_CODE_CHARS: usize = 8;

pub(crate) fn check_device_list_signature(
    list: &SignedDeviceList,
    signer_key: &[u8],
) -> Result<()> {
    verify(
        signer_key,
        &list.list.signing_bytes(),
        list.signature.as_slice(),
        "device list",
    )
}

impl Relay {
    /// The current signed device list of a local account.
    pub async fn device_list(&self, user: &Username) -> Result<SignedDeviceList> {
        self.store
            .device_list(user)
            .await?
            .ok_or(RelayError::UnknownUser)
    }

    /// A new device asks to join an account.
    pub async fn open_link(&self, request: LinkRequest) -> Result<LinkResponse> {
        request.validate()?;
        let user = request.username.clone();
        check_device_keys(&request.device)?;
        if self.store.devices(&user).await?.is_empty() {
            return Err(RelayError::UnknownUser);
        }
        let random = self.random_bytes::<LINK_CODE_CHARS>();
        let code: String = random
            .iter()
            .map(|b| LINK_CODE_ALPHABET[*b as usize % LINK_CODE_ALPHABET.len()] as char)
            .collect();
        let secret = URL_SAFE_NO_PAD.encode(self.random_bytes::<32>());
        let expires_ms = self.now_ms() + self.config.link_ms;
        self.store
            .put_link(LinkRecord {
                code: code.clone(),
                secret_hash: hash_secret(&secret),
                user,
                keys: request.device,
                expires_ms,
                approved: None,
            })
            .await?;
        Ok(LinkResponse {
            code,
            secret,
            expires_ms,
        })
    }

    async fn pending_link(&self, code: &str) -> Result<LinkRecord> {
        let link = self
            .store
            .link(&code.to_ascii_uppercase())
            .await?
            .ok_or(RelayError::InvalidLinkCode)?;
        if link.expires_ms <= self.now_ms() || link.approved.is_some() {
            return Err(RelayError::InvalidLinkCode);
        }
        Ok(link)
    }

    /// An existing device reads a pending link request of its own account.
    pub async fn link_info(&self, approver: &AuthedDevice, code: &str) -> Result<LinkInfo> {
        let link = self.pending_link(code).await?;
        if link.user != approver.user {
            return Err(RelayError::InvalidLinkCode);
        }
        Ok(LinkInfo {
            username: link.user,
            device: link.keys,
            expires_ms: link.expires_ms,
        })
    }

    /// An existing device approves a link with the new signed device list:
    /// the current list plus the new device (id = highest current id + 1,
    /// the link's identity key), version + 1, signed by the approver.
    pub async fn approve_link(
        &self,
        approver: &AuthedDevice,
        code: &str,
        request: ApproveLinkRequest,
    ) -> Result<ApproveLinkResponse> {
        request.validate()?;
        let link = self.pending_link(code).await?;
        if link.user != approver.user {
            return Err(RelayError::InvalidLinkCode);
        }
        let signer = self
            .store
            .device(&approver.user, approver.device)
            .await?
            .ok_or(RelayError::UnknownDevice)?;
        let current = self
            .store
            .device_list(&approver.user)
            .await?
            .ok_or(RelayError::UnknownUser)?;
        let new = &request.device_list;
        let new_id = next_device_id(&current.list);
        check_link_list(&approver.user, &current.list, new, &link, new_id, self)?;
        if new.signer != approver.device {
            return Err(RelayError::BadRequest(
                "the approver must sign the device list".into(),
            ));
        }
        check_device_list_signature(new, signer.keys.identity_key.as_slice())?;
        let now = self.now_ms();
        self.store
            .approve_link(
                &link.code,
                DeviceRecord {
                    user: link.user.clone(),
                    device: new_id,
                    keys: link.keys.clone(),
                    signed_prekey: None,
                    one_time_count: 0,
                    created_ms: now,
                },
                request.device_list,
                self.config.devices_per_account_max,
                now,
            )
            .await?;
        Ok(ApproveLinkResponse { device: new_id })
    }

    /// The new device polls its link request with its secret.
    pub async fn link_status(&self, code: &str, secret: &str) -> Result<LinkStatus> {
        let link = self
            .store
            .link(&code.to_ascii_uppercase())
            .await?
            .ok_or(RelayError::InvalidLinkCode)?;
        if link.secret_hash != hash_secret(secret) {
            return Err(RelayError::InvalidLinkCode);
        }
        if link.approved.is_none() && link.expires_ms <= self.now_ms() {
            return Err(RelayError::InvalidLinkCode);
        }
        Ok(LinkStatus {
            approved: link.approved.is_some(),
            device: link.approved,
        })
    }
}

fn next_device_id(list: &DeviceList) -> DeviceId {
    DeviceId(list.devices.iter().map(|d| d.device.0).max().unwrap_or(0) + 1)
}

fn check_link_list(
    user: &Username,
    current: &DeviceList,
    new: &SignedDeviceList,
    link: &LinkRecord,
    new_id: DeviceId,
    relay: &Relay,
) -> Result<()> {
    let address = Address::new(user.clone(), relay.config.name.clone());
    if new.list.address != address {
        return Err(RelayError::BadRequest(
            "device list names another address".into(),
        ));
    }
    if new.list.version != current.version + 1 {
        return Err(RelayError::Conflict(
            "device list version must be the current one + 1",
        ));
    }
    let mut expected = current.devices.clone();
    expected.push(crate::types::DeviceListEntry {
        device: new_id,
        identity_key: link.keys.identity_key.clone(),
    });
    if new.list.devices != expected {
        return Err(RelayError::BadRequest(format!(
            "device list must be the current list plus device {new_id} with the link's identity key"
        )));
    }
    Ok(())
}
