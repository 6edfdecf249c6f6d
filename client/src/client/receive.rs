//! Receiving: open the seal, check the sender against its pinned keys,
//! decrypt, and store everything one envelope changes in one batch before it
//! is acknowledged.

use super::*;

impl Inner {
    pub(super) async fn receive_pending(&mut self) -> Result<usize, Error> {
        let mut processed = 0;
        let mut after = None;
        let mut later: Vec<Envelope> = Vec::new();
        loop {
            let tr = self.transport.clone();
            let page = authed!(self, |t| tr.fetch(&t, after, None))?;
            let mut acks = Vec::new();
            for envelope in &page.envelopes {
                after = Some(envelope.seq);
                match self.process(envelope).await? {
                    Outcome::Done => acks.push(envelope.seq),
                    Outcome::Later => later.push(envelope.clone()),
                }
            }
            // Envelopes that waited for a sender key may be readable now.
            let mut still = Vec::new();
            for envelope in later.drain(..) {
                match self.process(&envelope).await? {
                    Outcome::Done => acks.push(envelope.seq),
                    Outcome::Later => still.push(envelope),
                }
            }
            later = still;
            processed += acks.len();
            if !acks.is_empty() {
                if self.config.fail_before_ack {
                    return Err(Error::FaultInjected);
                }
                let tr = self.transport.clone();
                authed!(self, |t| tr.ack(&t, &acks))?;
            }
            if !page.more || page.envelopes.is_empty() {
                break;
            }
        }
        Ok(processed)
    }

    pub(super) async fn take_inbox(&self) -> Result<Vec<Message>, Error> {
        let rows = self.store.scan(Table::Inbox, "").await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut batch = Batch::new();
        for (key, _) in rows {
            if let Some(m) = self.get_json::<Message>(Table::Messages, &key).await? {
                out.push(m);
            }
            batch.delete(Table::Inbox, key);
        }
        self.store.apply(batch).await?;
        Ok(out)
    }

    /// Decrypts one envelope and stores everything it changes in one batch.
    pub(super) async fn process(&mut self, envelope: &Envelope) -> Result<Outcome, Error> {
        let id = envelope.id.to_string();
        if self.store.get(Table::Processed, &id).await?.is_some() {
            return Ok(Outcome::Done);
        }
        let now = self.now();
        let mut batch = Batch::new();
        batch.put(Table::Processed, id.clone(), now.to_be_bytes().to_vec());
        let shown = match envelope.kind {
            EnvelopeKind::DeliveryFailure => Some(self.delivery_failure(envelope)?),
            EnvelopeKind::Message => match self.decrypt(envelope, &mut batch).await {
                Ok(Some(m)) => Some(m),
                Ok(None) => None,
                Err(Error::Crypto(courier_crypto::Error::ChainMismatch))
                | Err(Error::MissingSenderKey) => {
                    return Ok(Outcome::Later);
                }
                // The sender's keys could not be read now (its relay is down):
                // leave the envelope for later instead of blocking the mailbox.
                Err(Error::RelayUnreachable(m)) | Err(Error::BadResponse(m)) => {
                    tracing::warn!(envelope = %id, reason = %m, "sender's device list unavailable; will retry");
                    return Ok(Outcome::Later);
                }
                // A claimed sender that does not exist cannot be verified.
                Err(Error::UnknownRecipient(address)) => {
                    tracing::warn!(envelope = %id, %address, "dropping envelope from an unknown sender");
                    let mut batch = Batch::new();
                    batch.put(Table::Processed, id.clone(), now.to_be_bytes().to_vec());
                    self.store.apply(batch).await?;
                    return Ok(Outcome::Done);
                }
                Err(Error::IdentityChanged { address }) => {
                    // Surfaced in the conversation, never silently trusted.
                    tracing::warn!(%address, "message from a changed identity refused");
                    let me = self.me()?.account.clone();
                    let mut batch = Batch::new();
                    batch.put(Table::Processed, id.clone(), now.to_be_bytes().to_vec());
                    let m = Message {
                        id: id.clone(),
                        from: address.clone(),
                        from_device: DeviceId(0),
                        to: Some(me.address),
                        group: None,
                        text: format!(
                            "[identity of {address} changed; message refused — run `courier-client trust {address}` after checking]"
                        ),
                        sent_ms: envelope.id.unix_ms(),
                        received_ms: now,
                        outgoing: false,
                    };
                    let key = message_key(now, envelope.seq, &id);
                    batch.put(Table::Messages, key.clone(), json(&m)?);
                    batch.put(Table::Inbox, key, Vec::new());
                    self.store.apply(batch).await?;
                    return Ok(Outcome::Done);
                }
                Err(Error::Crypto(e)) => {
                    // Undecryptable (forged, replayed, or keys lost): dropping
                    // it is all a client can do; it never blocks the mailbox.
                    tracing::warn!(envelope = %id, error = %e, "dropping undecryptable envelope");
                    let mut batch = Batch::new();
                    batch.put(Table::Processed, id.clone(), now.to_be_bytes().to_vec());
                    self.store.apply(batch).await?;
                    return Ok(Outcome::Done);
                }
                Err(e) => return Err(e),
            },
        };
        if let Some(m) = shown {
            let key = message_key(now, envelope.seq, &id);
            batch.put(Table::Messages, key.clone(), json(&m)?);
            batch.put(Table::Inbox, key, Vec::new());
        }
        self.store.apply(batch).await?;
        Ok(Outcome::Done)
    }

    pub(super) fn delivery_failure(&self, envelope: &Envelope) -> Result<Message, Error> {
        let me = self.me()?.account.clone();
        let notice: courier_protocol::api::DeliveryFailureNotice =
            serde_json::from_slice(envelope.body.as_slice())
                .map_err(|e| Error::BadResponse(format!("delivery failure notice: {e}")))?;
        let who: Vec<String> = notice
            .recipients
            .iter()
            .map(|r| format!("{}/{} ({})", r.to, r.device, r.code))
            .collect();
        Ok(Message {
            id: envelope.id.to_string(),
            from: me.address.clone(),
            from_device: DeviceId(0),
            to: None,
            group: None,
            text: format!(
                "[message {} not delivered to {}]",
                notice.id,
                who.join(", ")
            ),
            sent_ms: envelope.received_ms,
            received_ms: self.now(),
            outgoing: false,
        })
    }

    /// Opens the sealed header, checks the sender against its pinned keys,
    /// decrypts the body; adds the state changes to `batch`.
    pub(super) async fn decrypt(
        &mut self,
        envelope: &Envelope,
        batch: &mut Batch,
    ) -> Result<Option<Message>, Error> {
        let me = self.me()?.account.clone();
        let unsealed = sealed::open(&self.me()?.identity, envelope.header.as_slice())?;
        let sender = Address::parse(&unsealed.sender.address)
            .map_err(|_| Error::Crypto(courier_crypto::Error::Malformed("sender address")))?;
        let sender_device = DeviceId(unsealed.sender.device);
        if sender == me.address && sender_device == me.device {
            return Err(Error::Crypto(courier_crypto::Error::Malformed(
                "message from this very device",
            )));
        }
        // The sealed identity must be the one pinned for that device.
        let claimed = hexs(&unsealed.sender_identity.signing_key());
        let mut contact = match self
            .get_json::<Contact>(Table::Contacts, &sender.to_string())
            .await?
        {
            Some(c) if c.devices.contains_key(&sender_device.0) => c,
            _ => self.contact(&sender, true).await?,
        };
        match contact.devices.get(&sender_device.0) {
            Some(k) if *k == claimed => {}
            Some(_) => return Err(Error::IdentityChanged { address: sender }),
            None => {
                // Not in the sender's list: maybe it changed since; re-read once.
                contact = self.contact(&sender, true).await?;
                if contact.devices.get(&sender_device.0) != Some(&claimed) {
                    return Err(Error::IdentityChanged { address: sender });
                }
            }
        }
        let (&tag, payload) = unsealed.content.split_first().ok_or(Error::Crypto(
            courier_crypto::Error::Truncated { needed: 1 },
        ))?;
        let now = self.now();
        let (group_ref, group_key) = match tag {
            TAG_DIRECT | TAG_GROUP_WITH_KEY => {
                let plaintext = self
                    .session_decrypt(
                        &sender,
                        sender_device,
                        &unsealed,
                        payload,
                        &mut contact,
                        batch,
                    )
                    .await?;
                if tag == TAG_DIRECT {
                    let key = DirectKey::decode(&plaintext)?;
                    let body = content::open_body(envelope.body.as_slice(), &key)?;
                    let Content::Direct { to, text, sent_ms } = Content::decode(&body)? else {
                        return Err(Error::Crypto(courier_crypto::Error::Malformed(
                            "content kind",
                        )));
                    };
                    let outgoing = sender == me.address;
                    return Ok(Some(Message {
                        id: envelope.id.to_string(),
                        from: sender,
                        from_device: sender_device,
                        to: outgoing.then_some(to),
                        group: None,
                        text,
                        sent_ms,
                        received_ms: now,
                        outgoing,
                    }));
                }
                let d = GroupKeyDelivery::decode(&plaintext)?;
                ((d.group, d.hash), Some(d.distribution))
            }
            TAG_GROUP => (content::decode_group_ref(payload)?, None),
            _ => return Err(Error::Crypto(courier_crypto::Error::UnexpectedType(tag))),
        };
        let (gid, hash) = group_ref;
        if content::body_hash(envelope.body.as_slice()) != hash {
            return Err(Error::Crypto(courier_crypto::Error::Malformed(
                "body does not match its header",
            )));
        }
        let gid_hex = hexs(&gid);
        let rkey = format!("{gid_hex}/{}", session_key(&sender, sender_device));
        let mut receivers: Vec<SenderKeyPickle> = self
            .get_json(Table::SenderKeys, &rkey)
            .await?
            .unwrap_or_default();
        if let Some(dist) = group_key {
            let r = SenderKeyReceiver::from_distribution(&dist)?;
            receivers.retain(|p| p.chain_id != r.chain_id());
            receivers.insert(0, r.to_pickle());
            receivers.truncate(RECEIVERS_PER_DEVICE_MAX);
        }
        let chain = SenderKeyReceiver::message_chain_id(envelope.body.as_slice())?;
        let Some(index) = receivers.iter().position(|p| p.chain_id == chain) else {
            return Err(Error::MissingSenderKey);
        };
        let mut receiver = SenderKeyReceiver::from_pickle(&receivers[index])?;
        let plaintext = Zeroizing::new(receiver.decrypt(envelope.body.as_slice())?);
        receivers[index] = receiver.to_pickle();
        batch.put(Table::SenderKeys, rkey, json(&receivers)?);
        let Content::Group {
            group,
            text,
            sent_ms,
        } = Content::decode(&plaintext)?
        else {
            return Err(Error::Crypto(courier_crypto::Error::Malformed(
                "content kind",
            )));
        };
        if group.id != gid_hex {
            return Err(Error::Crypto(courier_crypto::Error::Malformed(
                "group id mismatch",
            )));
        }
        let (name, member) = self.file_group(&group, &sender, batch).await?;
        if !member {
            // A removed member still holding old keys is not heard.
            tracing::warn!(%sender, group = %name, "group message from a non-member ignored");
            return Ok(None);
        }
        if text.is_empty() {
            return Ok(None);
        }
        let outgoing = sender == me.address;
        Ok(Some(Message {
            id: envelope.id.to_string(),
            from: sender,
            from_device: sender_device,
            to: None,
            group: Some(name),
            text,
            sent_ms,
            received_ms: now,
            outgoing,
        }))
    }

    /// Updates (or creates) the local record of a group from a member's
    /// message; returns its local name and whether the sender is a member.
    pub(super) async fn file_group(
        &mut self,
        info: &GroupInfo,
        sender: &Address,
        batch: &mut Batch,
    ) -> Result<(String, bool), Error> {
        let me = self.me()?.account.address.clone();
        let groups = self.store.scan(Table::Groups, "").await?;
        let mut existing = None;
        for (name, v) in &groups {
            let g: GroupRecord = serde_json::from_slice(v)?;
            if g.info.id == info.id {
                existing = Some((name.clone(), g));
                break;
            }
        }
        // Only a current member may change the group.
        let (name, mut record) = match existing {
            Some((name, record)) => {
                let member = record.info.members.contains(sender);
                if !member || info.epoch <= record.info.epoch {
                    return Ok((name, member));
                }
                (name, record)
            }
            None => {
                let taken: BTreeSet<&String> = groups.iter().map(|(n, _)| n).collect();
                let mut name = info.name.clone();
                if taken.contains(&name) || name.is_empty() || name.contains('/') {
                    name = format!("{}-{}", info.name.replace('/', "_"), &info.id[..8]);
                }
                let record = GroupRecord {
                    info: info.clone(),
                    left: false,
                };
                (name, record)
            }
        };
        record.info.members = info.members.clone();
        record.info.epoch = info.epoch;
        record.left = !info.members.contains(&me);
        batch.put(Table::Groups, name.clone(), json(&record)?);
        Ok((name, info.members.contains(sender)))
    }

    /// Decrypts a pairwise session message from a device, starting a session
    /// from a prekey message when needed; stages the session in `batch`.
    pub(super) async fn session_decrypt(
        &mut self,
        sender: &Address,
        device: DeviceId,
        unsealed: &sealed::Unsealed,
        message: &[u8],
        contact: &mut Contact,
        batch: &mut Batch,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let mut sessions = self.load_sessions(sender, device).await?;
        let mut result = None;
        for i in 0..sessions.sessions.len() {
            // Decrypt on a copy: a failed attempt must leave the session unchanged.
            let mut s = Session::from_pickle(&sessions.sessions[i].to_pickle())?;
            if unsealed.verify_sender(s.remote_identity()).is_err() {
                continue;
            }
            if let Ok(p) = s.decrypt(message) {
                sessions.sessions.remove(i);
                sessions.sessions.insert(0, s);
                result = Some(Zeroizing::new(p));
                break;
            }
        }
        let plaintext = match result {
            Some(p) => p,
            None => {
                if MessageKind::of(message)? != MessageKind::PreKey {
                    return Err(Error::Crypto(courier_crypto::Error::DecryptionFailed));
                }
                let prekey = PreKeyMessage::from_bytes(message)?;
                unsealed.verify_sender(prekey.identity())?;
                let spk_pickle: PreKeyPickle = self
                    .get_json(Table::PreKeys, &format!("s/{}", prekey.signed_prekey_id()))
                    .await?
                    .ok_or(Error::Crypto(courier_crypto::Error::PreKeyMismatch {
                        expected: prekey.signed_prekey_id(),
                        supplied: 0,
                    }))?;
                let identity = &self.me.as_ref().ok_or(Error::NotRegistered)?.identity;
                let spk = SignedPreKey::from_pickle(identity, &spk_pickle)?;
                let otk = match prekey.one_time_prekey_id() {
                    Some(id) => {
                        let p: PreKeyPickle = self
                            .get_json(Table::PreKeys, &format!("o/{id}"))
                            .await?
                            .ok_or(Error::Crypto(courier_crypto::Error::OneTimePreKeyMismatch))?;
                        Some((id, OneTimePreKey::from_pickle(&p)?))
                    }
                    None => None,
                };
                let (session, plaintext) =
                    Session::respond(identity, &spk, otk.as_ref().map(|(_, k)| k), &prekey)?;
                if let Some((id, _)) = otk {
                    batch.delete(Table::PreKeys, format!("o/{id}"));
                }
                sessions.sessions.insert(0, session);
                Zeroizing::new(plaintext)
            }
        };
        sessions.sessions.truncate(SESSIONS_PER_DEVICE_MAX);
        contact
            .identities
            .insert(device.0, hexs(&unsealed.sender_identity.to_bytes()));
        batch.put(
            Table::Sessions,
            session_key(sender, device),
            json(&sessions.pickles())?,
        );
        batch.put(Table::Contacts, sender.to_string(), json(&*contact)?);
        Ok(plaintext)
    }
}
