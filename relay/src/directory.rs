//! Key directory: signed prekeys, one-time prekeys, bundles.

use courier_protocol::{Address, DeviceId, Validate};

use crate::auth::verify;
use crate::error::{RelayError, Result};
use crate::prekey_budget::Requester;
use crate::relay::{AuthedDevice, Relay};
use crate::types::{
    DeviceBundle, KeyBundleResponse, PreKeyCount, SignedPreKey, UploadOneTimePreKeys,
};

impl Relay {
    /// Uploads or replaces the caller's signed prekey; its signature must
    /// verify against the device's identity key.
    pub async fn set_signed_prekey(&self, device: &AuthedDevice, key: SignedPreKey) -> Result<()> {
        key.validate()?;
        let record = self
            .store
            .device(&device.user, device.device)
            .await?
            .ok_or(RelayError::UnknownDevice)?;
        verify(
            record.keys.identity_key.as_slice(),
            &key.signing_bytes(),
            key.signature.as_slice(),
            "signed prekey",
        )?;
        self.store
            .set_signed_prekey(&device.user, device.device, key)
            .await
    }

    /// Adds one-time prekeys to the caller's pool (capped per device).
    pub async fn upload_one_time_prekeys(
        &self,
        device: &AuthedDevice,
        upload: UploadOneTimePreKeys,
    ) -> Result<PreKeyCount> {
        upload.validate()?;
        let count = self
            .store
            .add_one_time_prekeys(
                &device.user,
                device.device,
                upload.prekeys,
                self.config.prekeys_per_device_max,
            )
            .await?;
        self.access_cache
            .set_prekeys(&device.user, device.device, count);
        Ok(self.prekey_count_of(count))
    }

    /// How many one-time prekeys the caller has left.
    pub async fn prekey_count(&self, device: &AuthedDevice) -> Result<PreKeyCount> {
        let record = self
            .store
            .device(&device.user, device.device)
            .await?
            .ok_or(RelayError::UnknownDevice)?;
        Ok(self.prekey_count_of(record.one_time_count))
    }

    fn prekey_count_of(&self, one_time: u32) -> PreKeyCount {
        PreKeyCount {
            one_time,
            low_water: self.config.prekeys_low_water,
        }
    }

    /// The key bundle of a local address for `requester`: every device with
    /// a signed prekey (or only `device`), each with a one-time prekey taken
    /// from its pool if one is left and the requester's and the device's
    /// budgets allow it ([`crate::prekey_budget`]); otherwise without one
    /// (X3DH then uses the signed prekey alone). Addresses of other relays
    /// give `NotLocal`.
    pub async fn key_bundle(
        &self,
        requester: &Requester,
        address: &Address,
        device: Option<DeviceId>,
    ) -> Result<KeyBundleResponse> {
        if address.relay != self.config.name {
            return Err(RelayError::NotLocal);
        }
        let user = &address.user;
        let device_list = self
            .store
            .device_list(user)
            .await?
            .ok_or(RelayError::UnknownUser)?;
        let mut records = self.store.devices(user).await?;
        if let Some(wanted) = device {
            records.retain(|r| r.device == wanted);
            if records.is_empty() {
                return Err(RelayError::UnknownDevice);
            }
        }
        let mut bundles = Vec::with_capacity(records.len());
        for record in records {
            let Some(signed_prekey) = record.signed_prekey else {
                if device.is_some() {
                    return Err(RelayError::NotFound);
                }
                continue;
            };
            // No store round trip at all once the budget is spent.
            let (one_time_prekey, remaining) =
                if self
                    .prekey_budget
                    .take(requester, user, record.device, self.now_ms())
                {
                    let taken = self.store.take_one_time_prekey(user, record.device).await?;
                    if taken.0.is_none() {
                        self.prekey_budget.refund(requester, user, record.device);
                    }
                    taken
                } else {
                    (None, record.one_time_count)
                };
            if one_time_prekey.is_some() {
                self.access_cache
                    .set_prekeys(user, record.device, remaining);
            }
            if one_time_prekey.is_some() && remaining < self.config.prekeys_low_water {
                self.notifier.prekeys_low(user, record.device, remaining);
            }
            bundles.push(DeviceBundle {
                device: record.device,
                keys: record.keys,
                signed_prekey,
                one_time_prekey,
            });
        }
        Ok(KeyBundleResponse {
            address: address.clone(),
            device_list,
            bundles,
        })
    }
}
