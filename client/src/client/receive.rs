//! Receiving: open the seal, check the sender against its pinned keys,
//! decrypt, and store everything one envelope changes in one batch before it
//! is acknowledged.

use super::*;

/// An envelope still on the relay that could not be processed yet.
#[derive(Debug, Serialize, Deserialize)]
struct Attempts {
    /// When this device first failed to process it, Unix ms (its own clock:
    /// the relay's timestamps may be skewed).
    first_ms: u64,
    /// Receive attempts so far.
    attempts: u32,
}

/// An envelope acked on the relay but kept here until it can be opened.
#[derive(Debug, Serialize, Deserialize)]
struct Parked {
    envelope: Envelope,
    parked_ms: u64,
    /// Dropped after this, Unix ms.
    expires_ms: u64,
    /// Tried again on a timer no sooner than this (it is also tried
    /// whenever a new session or sender key arrives).
    next_retry_ms: u64,
    retries: u32,
}

impl Parked {
    fn bytes(&self) -> usize {
        self.envelope.header.len() + self.envelope.body.len()
    }
}

/// Delay before the first timed retry of a parked envelope; it doubles.
const PARKED_RETRY_MS: u64 = 60_000;
/// Longest delay between timed retries of a parked envelope.
const PARKED_RETRY_MAX_MS: u64 = 3600 * 1000;

impl Inner {
    pub(super) async fn receive_pending(&mut self) -> Result<usize, Error> {
        // Parked envelopes whose timed retry is due (a sender's relay that
        // was down may be back).
        self.retry_parked(false).await?;
        let mut processed = 0;
        let mut after = None;
        let mut later: Vec<Envelope> = Vec::new();
        loop {
            self.keys_arrived = false;
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
            if self.keys_arrived {
                self.retry_parked(true).await?;
            }
            let last = !page.more || page.envelopes.is_empty();
            if last {
                // What is still unreadable counts one attempt; past the
                // bound it is parked here and acked.
                for envelope in later.drain(..) {
                    if let Outcome::Done = self.defer(&envelope).await? {
                        acks.push(envelope.seq);
                    }
                }
            }
            processed += acks.len();
            if !acks.is_empty() {
                if self.config.fail_before_ack {
                    return Err(Error::FaultInjected);
                }
                let tr = self.transport.clone();
                authed!(self, |t| tr.ack(&t, &acks))?;
            }
            if last {
                break;
            }
        }
        Ok(processed)
    }

    /// Counts one failed attempt at `envelope`. Within the bounds
    /// ([`ClientConfig::defer_attempts_max`], [`ClientConfig::defer_max_ms`])
    /// it stays on the relay ([`Outcome::Later`]); past them it is parked in
    /// the local store and may be acked ([`Outcome::Done`]).
    pub(super) async fn defer(&mut self, envelope: &Envelope) -> Result<Outcome, Error> {
        let id = envelope.id.to_string();
        let now = self.now();
        let key = format!("a/{id}");
        let mut record = self
            .get_json::<Attempts>(Table::Deferred, &key)
            .await?
            .unwrap_or(Attempts {
                first_ms: now,
                attempts: 0,
            });
        record.attempts = record.attempts.saturating_add(1);
        let mut batch = Batch::new();
        if record.attempts < self.config.defer_attempts_max
            && now.saturating_sub(record.first_ms) < self.config.defer_max_ms
        {
            batch.put(Table::Deferred, key, json(&record)?);
            self.store.apply(batch).await?;
            return Ok(Outcome::Later);
        }
        batch.delete(Table::Deferred, key);
        let parked = Parked {
            envelope: envelope.clone(),
            parked_ms: now,
            expires_ms: envelope
                .expires_ms
                .min(now.saturating_add(self.config.parked_ttl_ms)),
            next_retry_ms: now.saturating_add(PARKED_RETRY_MS),
            retries: 0,
        };
        // Make room: expired first, then the oldest, so neither the count
        // nor the bytes of parked envelopes can grow without bound.
        let mut kept: Vec<(String, u64, usize)> = Vec::new();
        for (k, v) in self.store.scan(Table::Deferred, "p/").await? {
            match serde_json::from_slice::<Parked>(&v) {
                Ok(p) if p.expires_ms > now && k != format!("p/{id}") => {
                    kept.push((k, p.parked_ms, p.bytes()));
                }
                _ => {
                    batch.delete(Table::Deferred, k);
                }
            }
        }
        kept.sort_by_key(|(_, parked_ms, _)| *parked_ms);
        let mut count = kept.len() + 1;
        let mut bytes = kept.iter().map(|(_, _, b)| b).sum::<usize>() + parked.bytes();
        for (k, _, b) in kept {
            if count <= self.config.parked_max && bytes <= self.config.parked_bytes_max {
                break;
            }
            tracing::warn!(key = %k, "parked envelope dropped to make room");
            batch.delete(Table::Deferred, k);
            count -= 1;
            bytes -= b;
        }
        if count > self.config.parked_max || bytes > self.config.parked_bytes_max {
            // Alone over the byte bound: nothing can be kept.
            tracing::warn!(envelope = %id, "unreadable envelope too large to park; dropped");
        } else {
            tracing::warn!(envelope = %id, "unreadable envelope parked locally and acked");
            batch.put(Table::Deferred, format!("p/{id}"), json(&parked)?);
        }
        self.store.apply(batch).await?;
        Ok(Outcome::Done)
    }

    /// Tries parked envelopes again: all of them (`all`, after a new session
    /// or sender key arrived) or those whose timed retry is due. Opened ones
    /// are stored exactly once (the processed mark is written with them)
    /// and leave the park; expired ones are dropped.
    pub(super) async fn retry_parked(&mut self, mut all: bool) -> Result<(), Error> {
        // Opening one parked envelope may bring the key another needs; a
        // few rounds settle it (each round is bounded by `parked_max`).
        for _ in 0..3 {
            self.keys_arrived = false;
            let rows = self.store.scan(Table::Deferred, "p/").await?;
            if rows.is_empty() {
                break;
            }
            let now = self.now();
            for (key, value) in rows {
                let mut batch = Batch::new();
                let Ok(mut parked) = serde_json::from_slice::<Parked>(&value) else {
                    batch.delete(Table::Deferred, key);
                    self.store.apply(batch).await?;
                    continue;
                };
                if parked.expires_ms <= now {
                    tracing::warn!(envelope = %parked.envelope.id, "parked envelope expired unread");
                    batch.delete(Table::Deferred, key);
                } else if all || parked.next_retry_ms <= now {
                    match self.process(&parked.envelope).await? {
                        Outcome::Done => {
                            batch.delete(Table::Deferred, key);
                        }
                        Outcome::Later if !all => {
                            parked.retries = parked.retries.saturating_add(1);
                            let delay = PARKED_RETRY_MS
                                .saturating_mul(1 << parked.retries.min(16))
                                .min(PARKED_RETRY_MAX_MS);
                            parked.next_retry_ms = now.saturating_add(delay);
                            batch.put(Table::Deferred, key, json(&parked)?);
                        }
                        Outcome::Later => {}
                    }
                }
                self.store.apply(batch).await?;
            }
            if !self.keys_arrived {
                break;
            }
            all = true;
        }
        // Attempt counts of envelopes long gone from the relay.
        let now = self.now();
        let stale = self.config.defer_max_ms.saturating_mul(4);
        let mut batch = Batch::new();
        for (k, v) in self.store.scan(Table::Deferred, "a/").await? {
            let old = serde_json::from_slice::<Attempts>(&v)
                .map(|a| now.saturating_sub(a.first_ms) > stale)
                .unwrap_or(true);
            if old {
                batch.delete(Table::Deferred, k);
            }
        }
        self.store.apply(batch).await?;
        Ok(())
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
            // Only the home relay writes delivery-failure notices (it holds
            // the outbox); one from a federated origin is a forgery by
            // another relay: acked so it leaves the mailbox, never shown.
            EnvelopeKind::DeliveryFailure
                if envelope.origin != self.me()?.account.address.relay =>
            {
                tracing::warn!(envelope = %id, origin = %envelope.origin, "dropping a delivery-failure notice from another relay");
                None
            }
            EnvelopeKind::DeliveryFailure => Some(self.delivery_failure(envelope)?),
            EnvelopeKind::Message => match self.decrypt(envelope, &mut batch).await {
                Ok(Some(m)) => Some(m),
                Ok(None) => None,
                Err(Error::Crypto(courier_crypto::Error::ChainMismatch))
                | Err(Error::MissingSenderKey)
                | Err(Error::RefreshLimited(_)) => {
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
        let (&tag, payload) = unsealed.content.split_first().ok_or(Error::Crypto(
            courier_crypto::Error::Truncated { needed: 1 },
        ))?;
        let now = self.now();
        // Authenticate first: the inner message must prove the sealed
        // identity (a session with it, or X3DH with its key) before the
        // claimed sender is looked up, pinned or refreshed, so a forged
        // claim costs no fetch and raises no alarm.
        let (group_ref, group_key) = match tag {
            TAG_DIRECT | TAG_GROUP_WITH_KEY => {
                let plaintext = self
                    .session_decrypt(&sender, sender_device, &unsealed, payload, batch)
                    .await?;
                let mut contact = self
                    .authenticated_contact(&sender, sender_device, &unsealed.sender_identity)
                    .await?;
                contact
                    .identities
                    .insert(sender_device.0, hexs(&unsealed.sender_identity.to_bytes()));
                batch.put(Table::Contacts, sender.to_string(), json(&contact)?);
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
            // Authenticated below by the sender key's signature: that key
            // came over a session already checked against the pin.
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
        let new_key = group_key.is_some();
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
        if !new_key {
            // The signature proved the device the key was filed under; the
            // sealed identity must be the one pinned for it (checked
            // locally: a group message never makes the client fetch).
            let pinned = self
                .get_json::<Contact>(Table::Contacts, &sender.to_string())
                .await?
                .and_then(|c| c.devices.get(&sender_device.0).cloned());
            if pinned != Some(hexs(&unsealed.sender_identity.signing_key())) {
                return Err(Error::Crypto(courier_crypto::Error::SenderMismatch));
            }
        }
        receivers[index] = receiver.to_pickle();
        batch.put(Table::SenderKeys, rkey, json(&receivers)?);
        if new_key {
            self.keys_arrived = true;
        }
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
                // A first message without a one-time prekey could be
                // accepted again and again: the base keys this signed
                // prekey accepted are remembered (as long as the key is
                // kept) and a repeat is refused.
                let spk_id = prekey.signed_prekey_id();
                let used = format!("b/{spk_id}/{}", hexs(prekey.base_key()));
                if self.store.get(Table::PreKeys, &used).await?.is_some() {
                    return Err(Error::Crypto(courier_crypto::Error::ReplayedPreKeyMessage));
                }
                let count_key = format!("n/{spk_id}");
                let count: u32 = self
                    .get_json(Table::PreKeys, &count_key)
                    .await?
                    .unwrap_or(0);
                if count >= BASE_KEYS_PER_SIGNED_PREKEY_MAX {
                    self.rotate_signed_prekey = true;
                    return Err(Error::Crypto(courier_crypto::Error::SignedPreKeyExhausted(
                        spk_id,
                    )));
                }
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
                batch.put(Table::PreKeys, used, Vec::new());
                batch.put(Table::PreKeys, count_key, json(&(count + 1))?);
                sessions.sessions.insert(0, session);
                self.keys_arrived = true;
                Zeroizing::new(plaintext)
            }
        };
        sessions.sessions.truncate(SESSIONS_PER_DEVICE_MAX);
        batch.put(
            Table::Sessions,
            session_key(sender, device),
            json(&sessions.pickles())?,
        );
        Ok(plaintext)
    }

    /// The pinned contact of `sender` once a message proved it holds
    /// `identity` for `device`. A device not pinned with that key makes the
    /// client re-read the sender's device list, at most once per
    /// [`ClientConfig::contact_refresh_min_ms`] per contact; a sender whose
    /// list does not name that key is a forgery: refused without an alarm.
    /// Only the relay's list itself conflicting with the pin (which
    /// [`Inner::contact`] reports) raises [`Error::IdentityChanged`].
    pub(super) async fn authenticated_contact(
        &mut self,
        sender: &Address,
        device: DeviceId,
        identity: &PublicIdentity,
    ) -> Result<Contact, Error> {
        let claimed = hexs(&identity.signing_key());
        let pinned: Option<Contact> = self.get_json(Table::Contacts, &sender.to_string()).await?;
        let device_pinned = pinned
            .as_ref()
            .is_some_and(|c| c.devices.contains_key(&device.0));
        if let Some(c) = pinned
            && c.devices.get(&device.0) == Some(&claimed)
        {
            return Ok(c);
        }
        let now = self.now();
        let name = sender.to_string();
        if let Some(&last) = self.refreshed.get(&name)
            && now.saturating_sub(last) < self.config.contact_refresh_min_ms
        {
            if device_pinned {
                // A pinned device with another key: a forgery (a real
                // change shows in the list, re-read after the window).
                tracing::warn!(%sender, "message under a key other than the pinned one; dropped");
                return Err(Error::Crypto(courier_crypto::Error::SenderMismatch));
            }
            // Maybe a device added since: wait for the next window.
            return Err(Error::RefreshLimited(sender.clone()));
        }
        // Bounded: entries older than the window are useless anyway.
        if self.refreshed.len() >= 4096 {
            let window = self.config.contact_refresh_min_ms;
            self.refreshed
                .retain(|_, t| now.saturating_sub(*t) < window);
        }
        self.refreshed.insert(name.clone(), now);
        let contact = match self.contact(sender, true).await {
            Ok(c) => c,
            // A list that could not be read does not use up the window:
            // the envelope waits and is tried again.
            Err(e @ (Error::RelayUnreachable(_) | Error::BadResponse(_))) => {
                self.refreshed.remove(&name);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if contact.devices.get(&device.0) == Some(&claimed) {
            Ok(contact)
        } else {
            tracing::warn!(%sender, "message signed by a key the sender's device list does not name; dropped");
            Err(Error::Crypto(courier_crypto::Error::SenderMismatch))
        }
    }
}
