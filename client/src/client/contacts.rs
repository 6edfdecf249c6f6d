//! Contacts: verified, pinned device lists (trust on first use, identity
//! change detection) and the pairwise sessions with their devices.

use super::*;

impl Inner {
    pub(super) fn contact_from_list(
        &self,
        list: &SignedDeviceList,
        old: Option<&Contact>,
    ) -> Contact {
        let devices: BTreeMap<u32, String> = list
            .list
            .devices
            .iter()
            .map(|e| (e.device.0, hexs(e.identity_key.as_slice())))
            .collect();
        let identities = old
            .map(|c| {
                c.identities
                    .iter()
                    .filter(|(d, _)| c.devices.get(d) == devices.get(d))
                    .map(|(d, v)| (*d, v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Contact {
            address: list.list.address.clone(),
            version: list.list.version,
            devices,
            identities,
            fetched_ms: self.now(),
        }
    }

    /// The verified, pinned device list of `address`, fetched again when
    /// stale (or `refresh`). Fails with [`Error::IdentityChanged`] when the
    /// relay's list is not signed by a pinned device or changes a pinned key.
    pub(super) async fn contact(
        &mut self,
        address: &Address,
        refresh: bool,
    ) -> Result<Contact, Error> {
        self.contact_with_bundles(address, refresh)
            .await
            .map(|(c, _)| c)
    }

    pub(super) async fn contact_with_bundles(
        &mut self,
        address: &Address,
        refresh: bool,
    ) -> Result<(Contact, Vec<DeviceBundle>), Error> {
        let me = self.me()?.account.clone();
        let old: Option<Contact> = self.get_json(Table::Contacts, &address.to_string()).await?;
        let local = address.relay == me.address.relay;
        if let Some(c) = &old {
            let fresh =
                self.now().saturating_sub(c.fetched_ms) < self.config.device_list_refresh_ms;
            if !refresh && (fresh && !local) {
                return Ok((c.clone(), Vec::new()));
            }
        }
        let (list, bundles) = if local {
            let list = self
                .transport
                .device_list(&address.user)
                .await
                .map_err(|e| Error::about(address, e))?;
            (list, Vec::new())
        } else {
            let tr = self.transport.clone();
            let resp = authed!(self, |t| tr.key_bundle(&t, address, None))
                .map_err(|e| Error::about(address, e))?;
            (resp.device_list, resp.bundles)
        };
        if list.list.address != *address {
            return Err(Error::BadResponse(format!(
                "device list of {address} names another address"
            )));
        }
        verify_list(&list)?;
        if let Some(c) = &old {
            let signer_key = list.signer_key().map(|k| hexs(k.as_slice()));
            let signer_pinned = c.devices.get(&list.signer.0).cloned();
            let unchanged =
                c.version == list.list.version
                    && list.list.devices.iter().all(|e| {
                        c.devices.get(&e.device.0) == Some(&hexs(e.identity_key.as_slice()))
                    })
                    && list.list.devices.len() == c.devices.len();
            let signed_by_known = signer_pinned.is_some() && signer_pinned == signer_key;
            let keys_kept = list.list.devices.iter().all(|e| {
                c.devices
                    .get(&e.device.0)
                    .is_none_or(|k| *k == hexs(e.identity_key.as_slice()))
            });
            let accepted_update = signed_by_known && keys_kept && list.list.version > c.version;
            if !(unchanged || accepted_update) {
                return Err(Error::IdentityChanged {
                    address: address.clone(),
                });
            }
        }
        let contact = self.contact_from_list(&list, old.as_ref());
        // A local contact is re-read on every send; an unchanged list needs
        // no write (the fetch time only matters for remote contacts).
        if let Some(c) = old
            .as_ref()
            .filter(|c| local && c.version == contact.version && c.devices == contact.devices)
        {
            return Ok((c.clone(), bundles));
        }
        let mut batch = Batch::new();
        batch.put(Table::Contacts, address.to_string(), json(&contact)?);
        // Sessions with devices no longer listed are dropped.
        if let Some(c) = &old {
            for d in c
                .devices
                .keys()
                .filter(|d| !contact.devices.contains_key(d))
            {
                batch.delete(Table::Sessions, session_key(address, DeviceId(*d)));
            }
        }
        self.store.apply(batch).await?;
        Ok((contact, bundles))
    }

    pub(super) async fn load_sessions(
        &self,
        address: &Address,
        device: DeviceId,
    ) -> Result<DeviceSessions, Error> {
        let pickles: Vec<SessionPickle> = self
            .get_json(Table::Sessions, &session_key(address, device))
            .await?
            .unwrap_or_default();
        let sessions = pickles
            .iter()
            .map(Session::from_pickle)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DeviceSessions { sessions })
    }

    /// A session with each device of `contact` (starting new ones from
    /// fetched bundles), in device order.
    pub(super) async fn sessions_for(
        &mut self,
        contact: &mut Contact,
        devices: &[DeviceId],
        mut bundles: Vec<DeviceBundle>,
    ) -> Result<Vec<(DeviceId, DeviceSessions)>, Error> {
        let address = contact.address.clone();
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for &d in devices {
            let s = self.load_sessions(&address, d).await?;
            if s.sessions.is_empty() {
                missing.push(d);
            }
            out.push((d, s));
        }
        for d in missing {
            let bundle = match bundles.iter().position(|b| b.device == d) {
                Some(i) => bundles.swap_remove(i),
                None => {
                    let tr = self.transport.clone();
                    let resp = authed!(self, |t| tr.key_bundle(&t, &address, Some(d)))
                        .map_err(|e| Error::about(&address, e))?;
                    match resp.bundles.into_iter().find(|b| b.device == d) {
                        Some(b) => b,
                        // A listed device without keys yet cannot be reached.
                        None => continue,
                    }
                }
            };
            if contact.devices.get(&d.0) != Some(&hexs(bundle.keys.identity_key.as_slice())) {
                return Err(Error::IdentityChanged { address });
            }
            let bundle = prekey_bundle(&bundle)?;
            let me = self.me.as_ref().ok_or(Error::NotRegistered)?;
            let session = Session::initiate(&me.identity, &bundle, &mut self.rng)?;
            contact
                .identities
                .insert(d.0, hexs(&bundle.identity().to_bytes()));
            if let Some((_, s)) = out.iter_mut().find(|(dev, _)| *dev == d) {
                s.sessions.insert(0, session);
            }
        }
        out.retain(|(_, s)| !s.sessions.is_empty());
        Ok(out)
    }
}
