//! Account lifecycle of a device: registration, challenge login and token
//! renewal, prekey upload, refill and rotation, approving a linked device.

use super::*;
use crate::wire;

impl Inner {
    pub(super) async fn register(
        &mut self,
        username: &str,
        invite: Option<&str>,
        relay_url: &str,
        candidates: &[String],
    ) -> Result<Address, Error> {
        if let Some(me) = &self.me {
            return Err(Error::AlreadyRegistered(me.account.address.clone()));
        }
        let user = Username::parse(username).map_err(|e| Error::Invalid(e.to_string()))?;
        let identity = Identity::generate(&mut self.rng);
        let keys = device_keys(&identity);
        // The relay says its name; only a relay without `GET /v1/relay`
        // leaves the caller's guesses to try.
        let names: Vec<String> = match self.transport.relay_info().await? {
            Some(info) => vec![info.name.to_string()],
            None => candidates.to_vec(),
        };
        let mut last = None;
        for name in names {
            let Ok(relay) = RelayName::parse(&name) else {
                continue;
            };
            let device_list =
                wire::first_device_list(&identity, Address::new(user.clone(), relay), &keys);
            let req = RegisterRequest {
                username: user.clone(),
                invite: invite.map(str::to_owned),
                device: keys.clone(),
                device_list: device_list.clone(),
            };
            match self.transport.register(&req).await {
                Ok(resp) => {
                    let account = Account {
                        address: resp.address.clone(),
                        device: resp.device,
                        relay_url: relay_url.to_owned(),
                    };
                    self.install(account, identity).await?;
                    let contact = self.contact_from_list(&device_list, None);
                    let mut batch = Batch::new();
                    batch.put(Table::Contacts, resp.address.to_string(), json(&contact)?);
                    self.store.apply(batch).await?;
                    self.maintain_keys(true).await?;
                    return Ok(resp.address);
                }
                // The relay refuses a list naming another relay: try the next name.
                Err(TransportError::Api(e)) if e.code == ErrorCode::BadRequest => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        // Every guess was refused: the relay has another name.
        Err(Error::Invalid(match last {
            Some(e) => format!(
                "the relay refused the relay names tried ({}): register as USER@RELAYNAME",
                e.message
            ),
            None => "the relay's name is unknown: register as USER@RELAYNAME".into(),
        }))
    }

    pub(super) async fn drop_tokens(&mut self) -> Result<(), Error> {
        if let Some(me) = &mut self.me
            && let Some(t) = &mut me.tokens
        {
            // Keep the refresh token; only the access token is suspect.
            t.access_expires_ms = 0;
        }
        Ok(())
    }

    /// A valid access token: cached, refreshed, or from a fresh challenge login.
    pub(super) async fn token(&mut self) -> Result<String, Error> {
        let now = self.now();
        let me = self.me()?;
        if let Some(t) = &me.tokens {
            if t.access_expires_ms > now + 30_000 {
                return Ok(t.access_token.clone());
            }
            if t.refresh_expires_ms > now + 5_000 {
                let req = RefreshRequest {
                    refresh_token: t.refresh_token.clone(),
                };
                match self.transport.refresh(&req).await {
                    Ok(tokens) => return self.save_tokens(tokens).await,
                    Err(TransportError::Api(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let (user, device, relay) = {
            let a = &me.account;
            (a.address.user.clone(), a.device, a.address.relay.clone())
        };
        let challenge = match self
            .transport
            .challenge(&ChallengeRequest {
                username: user.clone(),
                device,
            })
            .await
        {
            Ok(c) => c,
            Err(TransportError::Api(e))
                if matches!(e.code, ErrorCode::UnknownUser | ErrorCode::UnknownDevice) =>
            {
                return Err(Error::NotRegistered);
            }
            Err(e) => return Err(e.into()),
        };
        let address = Address::new(user, relay);
        let answer = wire::login_answer(&self.me()?.identity, &address, device, &challenge);
        let tokens = self.transport.login(&answer).await?;
        self.save_tokens(tokens).await
    }

    pub(super) async fn save_tokens(&mut self, tokens: TokenResponse) -> Result<String, Error> {
        let mut batch = Batch::new();
        batch.put(Table::Meta, "tokens", json(&tokens)?);
        self.store.apply(batch).await?;
        let access = tokens.access_token.clone();
        if let Some(me) = &mut self.me {
            me.tokens = Some(tokens);
        }
        Ok(access)
    }

    /// Rotates the signed prekey when due and refills one-time prekeys when
    /// the relay's pool is under its low-water mark. `force` checks the pool
    /// now instead of at most every `prekey_check_interval_ms`.
    pub(super) async fn maintain_keys(&mut self, force: bool) -> Result<(), Error> {
        self.me()?;
        let now = self.now();
        let mut state: KeyState = self
            .get_json(Table::Meta, "keys")
            .await?
            .unwrap_or_default();
        if state.signed_prekey_id == 0
            || self.rotate_signed_prekey
            || now.saturating_sub(state.signed_prekey_created_ms)
                >= self.config.signed_prekey_rotation_ms
        {
            self.rotate_signed_prekey(&mut state, now).await?;
            self.rotate_signed_prekey = false;
        }
        if force
            || now.saturating_sub(state.last_count_check_ms) >= self.config.prekey_check_interval_ms
        {
            let tr = self.transport.clone();
            let count = authed!(self, |t| tr.prekey_count(&t))?;
            let target = self.config.one_time_prekeys_target.max(count.low_water);
            if count.one_time < count.low_water.max(1) || (force && count.one_time < target / 2) {
                self.refill_one_time(&mut state, target.saturating_sub(count.one_time))
                    .await?;
            }
            state.last_count_check_ms = now;
            let mut batch = Batch::new();
            batch.put(Table::Meta, "keys", json(&state)?);
            self.store.apply(batch).await?;
        }
        Ok(())
    }

    pub(super) async fn rotate_signed_prekey(
        &mut self,
        state: &mut KeyState,
        now: u64,
    ) -> Result<(), Error> {
        let id = state.signed_prekey_id.wrapping_add(1).max(1);
        let (spk, upload) = {
            let me = self.me.as_ref().ok_or(Error::NotRegistered)?;
            let spk = SignedPreKey::generate(&me.identity, id, now, &mut self.rng);
            let upload = wire::signed_prekey_upload(&me.identity, &spk);
            (spk, upload)
        };
        let previous = state.signed_prekey_id;
        state.signed_prekey_id = id;
        state.signed_prekey_created_ms = now;
        // Store the secret before the public half is published.
        let mut batch = Batch::new();
        batch.put(Table::PreKeys, format!("s/{id}"), json(&spk.to_pickle())?);
        batch.put(Table::Meta, "keys", json(&*state)?);
        // Keep the previous key for messages already on their way; drop older.
        for (key, _) in self.store.scan(Table::PreKeys, "s/").await? {
            let old: u32 = key[2..].parse().unwrap_or(0);
            if old != id && old != previous {
                batch.delete(Table::PreKeys, key);
                // The base keys it accepted go with it: a replay naming it
                // now fails for want of the key itself.
                batch.delete(Table::PreKeys, format!("n/{old}"));
                for (used, _) in self
                    .store
                    .scan(Table::PreKeys, &format!("b/{old}/"))
                    .await?
                {
                    batch.delete(Table::PreKeys, used);
                }
            }
        }
        self.store.apply(batch).await?;
        let tr = self.transport.clone();
        authed!(self, |t| tr.put_signed_prekey(&t, &upload))?;
        Ok(())
    }

    pub(super) async fn refill_one_time(
        &mut self,
        state: &mut KeyState,
        count: u32,
    ) -> Result<(), Error> {
        let mut remaining = count;
        while remaining > 0 {
            let n = remaining.min(ONE_TIME_PREKEYS_PER_UPLOAD_MAX as u32);
            let first = state.next_one_time_id.max(1);
            let keys = OneTimePreKey::generate_batch(first, n, &mut self.rng);
            state.next_one_time_id = first.wrapping_add(n);
            let mut batch = Batch::new();
            for k in &keys {
                batch.put(
                    Table::PreKeys,
                    format!("o/{}", k.id()),
                    json(&k.to_pickle())?,
                );
            }
            batch.put(Table::Meta, "keys", json(&*state)?);
            self.store.apply(batch).await?;
            let req = wire::one_time_prekeys_upload(&keys);
            let tr = self.transport.clone();
            authed!(self, |t| tr.upload_one_time_prekeys(&t, &req))?;
            remaining -= n;
        }
        Ok(())
    }

    pub(super) async fn approve(&mut self, code: &str) -> Result<DeviceId, Error> {
        let me = self.me()?.account.clone();
        let tr = self.transport.clone();
        let info = authed!(self, |t| tr.link_info(&t, code)).map_err(|e| match e {
            TransportError::Api(api)
                if api.code == ErrorCode::InvalidLinkCode || api.code == ErrorCode::NotFound =>
            {
                Error::Invalid(format!("unknown or expired link code {code}"))
            }
            other => other.into(),
        })?;
        let current = self.contact(&me.address, true).await?;
        let used: BTreeSet<u32> = current.devices.keys().copied().collect();
        if used.len() >= DEVICES_PER_ACCOUNT_MAX {
            return Err(Error::Api(ErrorCode::TooManyDevices.into()));
        }
        let new = (1..=u32::MAX)
            .find(|d| !used.contains(d))
            .ok_or_else(|| Error::Invalid("no free device id".into()))?;
        let mut devices: Vec<DeviceListEntry> = current
            .devices
            .iter()
            .map(|(d, k)| {
                Ok(DeviceListEntry {
                    device: DeviceId(*d),
                    identity_key: Bytes(
                        hex::decode(k).map_err(|_| Error::Corrupt("pinned key".into()))?,
                    ),
                })
            })
            .collect::<Result<_, Error>>()?;
        devices.push(DeviceListEntry {
            device: DeviceId(new),
            identity_key: info.device.identity_key.clone(),
        });
        let list = DeviceList {
            address: me.address.clone(),
            version: current.version + 1,
            devices,
        };
        let signed = sign_list(&self.me()?.identity, list, me.device);
        let req = ApproveLinkRequest {
            device_list: signed.clone(),
        };
        let resp = authed!(self, |t| tr.approve_link(&t, code, &req))?;
        let contact = self.contact_from_list(&signed, Some(&current));
        let mut batch = Batch::new();
        batch.put(Table::Contacts, me.address.to_string(), json(&contact)?);
        self.store.apply(batch).await?;
        Ok(resp.device)
    }
}
