//! Sending: direct messages (body under a one-time content key, the key to
//! each device over its session) and group messages (sender keys), each as
//! one sealed multi-recipient submission.

use super::*;

impl Inner {
    pub(super) fn sender_address(&self) -> Result<SenderAddress, Error> {
        let a = &self.me()?.account;
        Ok(SenderAddress {
            address: a.address.to_string(),
            device: a.device.0,
        })
    }

    /// Seals a pairwise-encrypted payload for a device: `tag || session message`.
    pub(super) fn seal_session(
        &mut self,
        tag: u8,
        session: &mut Session,
        plaintext: &[u8],
    ) -> Result<Bytes, Error> {
        let message = session.encrypt(plaintext, &mut self.rng)?;
        let mut payload = Zeroizing::new(Vec::with_capacity(1 + message.len()));
        payload.push(tag);
        payload.extend_from_slice(&message);
        let recipient = session.remote_identity().clone();
        self.seal_payload(&recipient, &payload)
    }

    pub(super) fn seal_payload(
        &mut self,
        recipient: &PublicIdentity,
        payload: &[u8],
    ) -> Result<Bytes, Error> {
        let from = self.sender_address()?;
        let me = self.me.as_ref().ok_or(Error::NotRegistered)?;
        Ok(Bytes(sealed::seal(
            &me.identity,
            &from,
            recipient,
            payload,
            &mut self.rng,
        )?))
    }

    pub(super) fn new_envelope_id(&mut self) -> EnvelopeId {
        let mut random = [0u8; 10];
        self.rng.fill_bytes(&mut random);
        EnvelopeId::new(self.now(), random)
    }

    /// The devices a message from this account reaches: every device of
    /// each address in `to` plus this account's other devices.
    pub(super) async fn recipients(
        &mut self,
        to: &[Address],
    ) -> Result<Vec<(Contact, Vec<DeviceId>, Vec<DeviceBundle>)>, Error> {
        let me = self.me()?.account.clone();
        let mut out = Vec::new();
        let mut seen_self = false;
        for address in to {
            let (contact, bundles) = self.contact_with_bundles(address, false).await?;
            let mut devices = contact.device_ids();
            if *address == me.address {
                seen_self = true;
                devices.retain(|d| *d != me.device);
            } else if devices.is_empty() {
                return Err(Error::UnknownRecipient(address.clone()));
            }
            out.push((contact, devices, bundles));
        }
        if !seen_self {
            let contact = self.contact(&me.address, true).await?;
            let devices: Vec<DeviceId> = contact
                .device_ids()
                .into_iter()
                .filter(|d| *d != me.device)
                .collect();
            out.push((contact, devices, Vec::new()));
        }
        Ok(out)
    }

    pub(super) async fn submit(&mut self, message: &OutgoingMessage) -> Result<u64, Error> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tr = self.transport.clone();
            match authed!(self, |t| tr.send(&t, message)) {
                Ok(resp) => return Ok(resp.accepted_ms),
                // Same id on retry: the relay stores it at most once.
                Err(TransportError::Unreachable(_)) if attempt < SEND_ATTEMPTS_MAX => {
                    self.clock.sleep(delay).await;
                    delay *= 2;
                }
                // The relay asked to slow down: wait and send the same id again.
                Err(TransportError::Api(e))
                    if e.code == ErrorCode::RateLimited && attempt < SEND_ATTEMPTS_MAX =>
                {
                    self.clock.sleep(delay.max(Duration::from_secs(1))).await;
                    delay *= 2;
                }
                Err(TransportError::Api(e)) => {
                    if let Some(to) = message.recipients.first().map(|r| r.to.clone())
                        && matches!(e.code, ErrorCode::UnknownUser | ErrorCode::UnknownDevice)
                    {
                        return Err(Error::UnknownRecipient(to));
                    }
                    return Err(TransportError::Api(e).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stages the history record of a message being sent in the
    /// write-ahead batch; returns its key so a failed send can drop it.
    pub(super) fn stage_sent(batch: &mut Batch, message: &Message) -> Result<String, Error> {
        let key = message_key(message.received_ms, 0, &message.id);
        batch.put(Table::Messages, key.clone(), json(message)?);
        Ok(key)
    }

    /// Submits a message whose history record `key` was staged; if the
    /// relay did not take it, the record goes again.
    pub(super) async fn submit_recorded(
        &mut self,
        message: &OutgoingMessage,
        key: Option<String>,
    ) -> Result<u64, Error> {
        match self.submit(message).await {
            Ok(accepted_ms) => Ok(accepted_ms),
            Err(e) => {
                if let Some(key) = key {
                    let mut batch = Batch::new();
                    batch.delete(Table::Messages, key);
                    self.store.apply(batch).await?;
                }
                Err(e)
            }
        }
    }

    pub(super) async fn send_direct(
        &mut self,
        to: &Address,
        text: &str,
    ) -> Result<SendReceipt, Error> {
        let me = self.me()?.account.clone();
        if *to == me.address {
            return Err(Error::Invalid(
                "cannot send a direct message to yourself".into(),
            ));
        }
        self.maintain_keys(false).await?;
        let now = self.now();
        let content = Content::Direct {
            to: to.clone(),
            text: text.to_owned(),
            sent_ms: now,
        };
        let plaintext = Zeroizing::new(content.encode()?);
        let (body, key) = content::seal_body(&plaintext, &mut self.rng)?;
        let secret = key.encode();
        let targets = self.recipients(std::slice::from_ref(to)).await?;
        let mut recipients = Vec::new();
        let mut batch = Batch::new();
        for (mut contact, devices, bundles) in targets {
            let sessions = self.sessions_for(&mut contact, &devices, bundles).await?;
            if contact.address == *to && sessions.is_empty() {
                return Err(Error::UnknownRecipient(to.clone()));
            }
            for (device, mut s) in sessions {
                let header = self.seal_session(TAG_DIRECT, &mut s.sessions[0], &secret)?;
                batch.put(
                    Table::Sessions,
                    session_key(&contact.address, device),
                    json(&s.pickles())?,
                );
                recipients.push(RecipientEntry {
                    to: contact.address.clone(),
                    device,
                    header,
                });
            }
            batch.put(
                Table::Contacts,
                contact.address.to_string(),
                json(&contact)?,
            );
        }
        let id = self.new_envelope_id();
        let key = Self::stage_sent(
            &mut batch,
            &Message {
                id: id.to_string(),
                from: me.address.clone(),
                from_device: me.device,
                to: Some(to.clone()),
                group: None,
                text: text.to_owned(),
                sent_ms: now,
                received_ms: now,
                outgoing: true,
            },
        )?;
        // Write-ahead: the advanced ratchets are durable before anything leaves.
        self.store.apply(batch).await?;
        let message = OutgoingMessage {
            id,
            body: Bytes(body),
            recipients,
            ttl_secs: self.config.ttl_secs,
        };
        let accepted_ms = self.submit_recorded(&message, Some(key)).await?;
        Ok(SendReceipt {
            id: message.id,
            devices: message.recipients.len(),
            accepted_ms,
        })
    }

    pub(super) async fn group(&self, name: &str) -> Result<GroupRecord, Error> {
        self.get_json(Table::Groups, name)
            .await?
            .ok_or_else(|| Error::UnknownGroup(name.to_owned()))
    }

    pub(super) async fn group_create(
        &mut self,
        name: &str,
        members: &[Address],
    ) -> Result<(), Error> {
        let me = self.me()?.account.clone();
        if name.is_empty() || name.len() > 64 || name.contains('/') {
            return Err(Error::Invalid(
                "group name must be 1 to 64 characters without '/'".into(),
            ));
        }
        if self.store.get(Table::Groups, name).await?.is_some() {
            return Err(Error::GroupExists(name.to_owned()));
        }
        let mut all = vec![me.address.clone()];
        for m in members {
            if !all.contains(m) {
                all.push(m.clone());
            }
        }
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let record = GroupRecord {
            info: GroupInfo {
                id: hexs(&id),
                name: name.to_owned(),
                epoch: 1,
                members: all,
            },
            left: false,
        };
        // Check every member exists before storing anything.
        for m in &record.info.members {
            self.contact(m, false).await?;
        }
        let mut batch = Batch::new();
        batch.put(Table::Groups, name, json(&record)?);
        self.store.apply(batch).await?;
        self.group_send(record, "").await.map(|_| ())
    }

    pub(super) async fn group_change(
        &mut self,
        name: &str,
        changed: &[Address],
        add: bool,
    ) -> Result<(), Error> {
        let me = self.me()?.account.clone();
        let mut record = self.group(name).await?;
        if record.left {
            return Err(Error::Invalid(format!(
                "you are no longer a member of {name}"
            )));
        }
        for m in changed {
            if add {
                self.contact(m, false).await?;
                if !record.info.members.contains(m) {
                    record.info.members.push(m.clone());
                }
            } else {
                if *m == me.address {
                    return Err(Error::Invalid("cannot remove yourself".into()));
                }
                record.info.members.retain(|x| x != m);
            }
        }
        // A new epoch makes every member's next send use a new sender key.
        record.info.epoch += 1;
        let mut batch = Batch::new();
        batch.put(Table::Groups, name, json(&record)?);
        self.store.apply(batch).await?;
        self.group_send(record, "").await.map(|_| ())
    }

    pub(super) async fn group_send(
        &mut self,
        record: GroupRecord,
        text: &str,
    ) -> Result<SendReceipt, Error> {
        let me = self.me()?.account.clone();
        if record.left {
            return Err(Error::Invalid(format!(
                "you are no longer a member of {}",
                record.info.name
            )));
        }
        self.maintain_keys(false).await?;
        let now = self.now();
        let gid_hex = record.info.id.clone();
        let gid: [u8; 16] = hex::decode(&gid_hex)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Error::Corrupt("group id".into()))?;
        let own_key_name = format!("{gid_hex}/self");
        let mut own: OwnSenderKey = match self
            .get_json::<OwnSenderKey>(Table::SenderKeys, &own_key_name)
            .await?
        {
            Some(k) if k.epoch == record.info.epoch => k,
            _ => OwnSenderKey {
                epoch: record.info.epoch,
                pickle: SenderKey::generate(&mut self.rng).to_pickle(),
                distributed: BTreeSet::new(),
            },
        };
        let mut sender_key = SenderKey::from_pickle(&own.pickle)?;
        // Taken before encrypting so the receiver can read this very message.
        let distribution = Zeroizing::new(sender_key.distribution_message());
        let content = Content::Group {
            group: record.info.clone(),
            text: text.to_owned(),
            sent_ms: now,
        };
        let plaintext = Zeroizing::new(content.encode()?);
        let body = sender_key.encrypt(&plaintext)?;
        let hash = content::body_hash(&body);
        own.pickle = sender_key.to_pickle();

        let targets = self.recipients(&record.info.members).await?;
        let mut recipients = Vec::new();
        let mut newly = Vec::new();
        let mut batch = Batch::new();
        for (mut contact, devices, bundles) in targets {
            let address = contact.address.clone();
            let (have, need): (Vec<DeviceId>, Vec<DeviceId>) = devices.iter().partition(|d| {
                own.distributed.contains(&session_key(&address, **d))
                    && contact.identities.contains_key(&d.0)
            });
            for d in have {
                let identity = contact
                    .identities
                    .get(&d.0)
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or_else(|| Error::Corrupt("pinned identity".into()))?;
                let identity = PublicIdentity::from_bytes(&identity)?;
                let mut payload = Vec::with_capacity(49);
                payload.push(TAG_GROUP);
                payload.extend_from_slice(&gid);
                payload.extend_from_slice(&hash);
                let header = self.seal_payload(&identity, &payload)?;
                recipients.push(RecipientEntry {
                    to: address.clone(),
                    device: d,
                    header,
                });
            }
            let sessions = self.sessions_for(&mut contact, &need, bundles).await?;
            let delivery = GroupKeyDelivery {
                group: gid,
                hash,
                distribution: distribution.clone(),
            }
            .encode();
            for (device, mut s) in sessions {
                let header =
                    self.seal_session(TAG_GROUP_WITH_KEY, &mut s.sessions[0], &delivery)?;
                batch.put(
                    Table::Sessions,
                    session_key(&address, device),
                    json(&s.pickles())?,
                );
                recipients.push(RecipientEntry {
                    to: address.clone(),
                    device,
                    header,
                });
                newly.push(session_key(&address, device));
            }
            batch.put(Table::Contacts, address.to_string(), json(&contact)?);
        }
        batch.put(Table::SenderKeys, own_key_name.clone(), json(&own)?);
        self.store.apply(batch).await?;
        let id = self.new_envelope_id();
        if recipients.is_empty() {
            // Nobody else in the group has a device yet: nothing to submit.
            return Ok(SendReceipt {
                id,
                devices: 0,
                accepted_ms: now,
            });
        }
        let message = OutgoingMessage {
            id,
            body: Bytes(body),
            recipients,
            ttl_secs: self.config.ttl_secs,
        };
        let accepted_ms = self.submit(&message).await?;
        // Only now do those devices hold the key.
        own.distributed.extend(newly);
        let mut batch = Batch::new();
        batch.put(Table::SenderKeys, own_key_name, json(&own)?);
        if !text.is_empty() {
            Self::stage_sent(
                &mut batch,
                &Message {
                    id: message.id.to_string(),
                    from: me.address.clone(),
                    from_device: me.device,
                    to: None,
                    group: Some(record.info.name.clone()),
                    text: text.to_owned(),
                    sent_ms: now,
                    received_ms: now,
                    outgoing: true,
                },
            )?;
        }
        self.store.apply(batch).await?;
        Ok(SendReceipt {
            id: message.id,
            devices: message.recipients.len(),
            accepted_ms,
        })
    }
}
