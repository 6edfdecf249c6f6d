//! Mailboxes: accepting messages (one by one, or a batch with a few
//! multi-row statements), per-source shares, fetch, ack and purge.

use std::collections::{BTreeMap, HashMap};

use courier_protocol::{Bytes, DeviceId, Username};
use courier_relay::RelayError;
use courier_relay::store::{AcceptOutcome, MailboxRef, NewMessage, OnCommit, PurgeReport};
use courier_relay::types::{Envelope, kind_code, kind_from_code};
use sqlx::Row as _;
use tokio::sync::oneshot;

use super::accounts::device_pk;
use super::dialect::{Conn, Db, PG, Row};
use super::outbox::{insert_outbox, insert_outboxes};
use super::query::{
    CHUNK_ROWS, device_id, envelope_id, i, in_list, ph, q, relay_name, row_list, u, username,
};
use super::writer::{Accepts, AckJob, Acks, Job, SqlStore};
use crate::error::Result;

pub(super) async fn accept_in(c: &mut Conn, mut m: NewMessage) -> Result<AcceptOutcome> {
    // Rows are keyed by the message key (source and envelope id), so only
    // the same source's retry meets an existing row.
    let id = m.key.to_vec();
    // Assume every local recipient exists; corrected below if some are
    // skipped (federated delivery), which saves a statement per message.
    let planned = (m.local.len() + m.remote.len()) as i64;
    let inserted = q("INSERT INTO messages (id, envelope, digest, origin, kind, body, refs, received_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
        .bind(&id[..])
        .bind(m.id.as_bytes().as_slice())
        .bind(&m.digest[..])
        .bind(m.origin.as_str())
        .bind(kind_code(m.kind))
        .bind(m.body.as_slice())
        .bind(planned)
        .bind(i(m.received_ms))
        .bind(i(m.expires_ms))
        .execute(&mut *c)
        .await?
        .rows_affected();
    if inserted == 0 {
        let row = q("SELECT digest, received_ms FROM messages WHERE id = ?")
            .bind(&id[..])
            .fetch_one(&mut *c)
            .await?;
        let digest: Vec<u8> = row.try_get(0)?;
        return if digest == m.digest {
            Ok(AcceptOutcome::Duplicate {
                accepted_ms: u(row.try_get(1)?),
            })
        } else {
            Err(RelayError::Conflict("envelope id already used").into())
        };
    }
    let mut delivered = Vec::with_capacity(m.local.len());
    let local = std::mem::take(&mut m.local);
    for r in local {
        let bytes = i(m.entry_bytes(&r));
        // One statement claims the sequence number and checks depth and size.
        let row = q("UPDATE devices SET next_seq = next_seq + 1, depth = depth + 1, bytes = bytes + ? WHERE username = ? AND device = ? AND depth < ? AND bytes + ? <= ? RETURNING pk, next_seq - 1, depth, bytes")
            .bind(bytes)
            .bind(r.user.as_str())
            .bind(i64::from(r.device.0))
            .bind(i64::from(m.depth_max))
            .bind(bytes)
            .bind(i(m.bytes_max))
            .fetch_optional(&mut *c)
            .await?;
        let Some(row) = row else {
            if device_pk(c, &r.user, r.device).await?.is_some() {
                return Err(RelayError::MailboxFull.into());
            }
            if m.skip_unknown {
                continue;
            }
            let account = q("SELECT 1 FROM accounts WHERE username = ?")
                .bind(r.user.as_str())
                .fetch_optional(&mut *c)
                .await?;
            return Err(if account.is_some() {
                RelayError::UnknownDevice
            } else {
                RelayError::UnknownUser
            }
            .into());
        };
        let pk: i64 = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        if let Some(k) = &r.quota_key {
            let counted = [Share {
                pk,
                key: k,
                entries: 1,
                bytes,
                deep: deep(&row, m.per_source_max, m.per_source_bytes_max)?,
            }];
            if !count_shares(c, &counted, m.per_source_max, m.per_source_bytes_max).await? {
                return Err(RelayError::MailboxQuota.into());
            }
        }
        q("INSERT INTO mailbox (device_pk, seq, message_id, header, expires_ms, quota_key, bytes) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(pk)
            .bind(seq)
            .bind(&id[..])
            .bind(r.header.as_slice())
            .bind(i(m.expires_ms))
            .bind(r.quota_key.as_ref().map(|k| k.as_slice()))
            .bind(bytes)
            .execute(&mut *c)
            .await?;
        delivered.push(MailboxRef {
            user: r.user,
            device: r.device,
            seq: u(seq),
        });
    }
    if delivered.is_empty() && m.remote.is_empty() {
        return Err(RelayError::UnknownDevice.into());
    }
    insert_outbox(c, &m).await?;
    let refs = (delivered.len() + m.remote.len()) as i64;
    if refs != planned {
        q("UPDATE messages SET refs = ? WHERE id = ?")
            .bind(refs)
            .bind(&id[..])
            .execute(&mut *c)
            .await?;
    }
    Ok(AcceptOutcome::Accepted { delivered })
}

/// One fewer reference to a message per occurrence of its id in `ids` (the
/// message ids of deleted mailbox or outbox entries); a body goes with its
/// message's last reference.
///
/// One `UPDATE … WHERE id IN (…)` per distinct `n` (almost always just
/// `n = 1`). Not `UPDATE … FROM (VALUES …)`: without table statistics
/// SQLite plans that join as a scan of all of `messages` probing the
/// values, so every batch of acks cost time proportional to every message
/// still kept for deduplication (57 µs per released row after 100,000
/// messages; the scan was the gateway's bottleneck).
pub(super) async fn release_many(c: &mut Conn, ids: Vec<Vec<u8>>) -> Result<()> {
    let mut counts: HashMap<Vec<u8>, i64> = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let mut by_count: BTreeMap<i64, Vec<Vec<u8>>> = BTreeMap::new();
    for (id, n) in counts {
        by_count.entry(n).or_default().push(id);
    }
    for (n, ids) in by_count {
        for chunk in ids.chunks(CHUNK_ROWS) {
            let sql = format!(
                "UPDATE messages SET refs = refs - {}, body = CASE WHEN refs <= {} THEN NULL ELSE body END WHERE id IN ({})",
                ph(1),
                ph(2),
                in_list(3, chunk.len())
            );
            let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(n).bind(n);
            for id in chunk {
                query = query.bind(&id[..]);
            }
            query.execute(&mut *c).await?;
        }
    }
    Ok(())
}

/// Applies every ack of a batch with four statements: look up the devices,
/// delete their entries, release the messages, lower the depths. Returns the
/// number of entries each job deleted (an entry acked twice in one batch
/// counts for the first job). Unknown devices and seqs delete nothing.
pub(super) async fn ack_many(c: &mut Conn, acks: &Acks) -> Result<Vec<u32>> {
    let mut devices: Vec<(&Username, DeviceId)> =
        acks.iter().map(|a| (&a.user, a.device)).collect();
    devices.sort_unstable();
    devices.dedup();
    let mut pks: HashMap<(&Username, DeviceId), i64> = HashMap::with_capacity(devices.len());
    for chunk in devices.chunks(CHUNK_ROWS) {
        let sql = format!(
            "WITH d(username, device) AS (VALUES {}) SELECT devices.pk, devices.username, devices.device FROM devices JOIN d ON devices.username = d.username AND devices.device = d.device",
            row_list(1, 2, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (user, device) in chunk {
            query = query.bind(user.as_str()).bind(i64::from(device.0));
        }
        for r in query.fetch_all(&mut *c).await? {
            let user = username(r.try_get(1)?)?;
            let device = device_id(r.try_get(2)?)?;
            if let Ok(k) = devices.binary_search(&(&user, device)) {
                pks.insert(devices[k], r.try_get(0)?);
            }
        }
    }
    // (device pk, seq) -> index of the first job acking it.
    let mut wanted: HashMap<(i64, i64), usize> = HashMap::new();
    for (n, ack) in acks.iter().enumerate() {
        if let Some(&pk) = pks.get(&(&ack.user, ack.device)) {
            for seq in &ack.seqs {
                wanted.entry((pk, i(*seq))).or_insert(n);
            }
        }
    }
    let keys: Vec<(i64, i64)> = wanted.keys().copied().collect();
    let mut counts = vec![0u32; acks.len()];
    let mut released = Vec::new();
    let mut emptied = Vec::new();
    for chunk in keys.chunks(CHUNK_ROWS) {
        let sql = format!(
            "WITH a(pk, seq) AS (VALUES {}) DELETE FROM mailbox WHERE (device_pk, seq) IN (SELECT pk, seq FROM a) RETURNING device_pk, seq, message_id, bytes",
            row_list(1, 2, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (pk, seq) in chunk {
            query = query.bind(*pk).bind(*seq);
        }
        for r in query.fetch_all(&mut *c).await? {
            let pk: i64 = r.try_get(0)?;
            let seq: i64 = r.try_get(1)?;
            if let Some(&n) = wanted.get(&(pk, seq)) {
                counts[n] += 1;
            }
            released.push(r.try_get(2)?);
            emptied.push((pk, r.try_get(3)?));
        }
    }
    release_many(c, released).await?;
    lower_depths(c, emptied).await?;
    Ok(counts)
}

/// Lowers each device's mailbox depth by one and its bytes by the entry's
/// per occurrence of its pk in `devices` (pk and bytes of deleted entries).
pub(super) async fn lower_depths(c: &mut Conn, devices: Vec<(i64, i64)>) -> Result<()> {
    let mut depths: HashMap<i64, (i64, i64)> = HashMap::new();
    for (pk, bytes) in devices {
        let d = depths.entry(pk).or_default();
        d.0 += 1;
        d.1 += bytes;
    }
    let depths: Vec<(i64, (i64, i64))> = depths.into_iter().collect();
    for chunk in depths.chunks(CHUNK_ROWS) {
        let sql = format!(
            "WITH d(pk, n, b) AS (VALUES {}) UPDATE devices SET depth = depth - d.n, bytes = bytes - d.b FROM d WHERE devices.pk = d.pk",
            row_list(1, 3, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (pk, (n, b)) in chunk {
            query = query.bind(*pk).bind(*n).bind(*b);
        }
        query.execute(&mut *c).await?;
    }
    Ok(())
}

/// What some new entries add to one (device, quota key) share.
pub(super) struct Share<'a> {
    pk: i64,
    key: &'a [u8; 16],
    entries: i64,
    bytes: i64,
    /// The device's mailbox, these entries included, holds more than one
    /// share may (in entries or bytes), so this one must be counted.
    deep: bool,
}

/// Whether a device row returned by a claim (`…, depth, bytes` as its last
/// two columns) is deep enough that a source could exceed its share.
pub(super) fn deep(row: &Row, entries_max: u32, bytes_max: u64) -> Result<bool> {
    let n = row.len();
    let depth: i64 = row.try_get(n - 2)?;
    let bytes: i64 = row.try_get(n - 1)?;
    Ok(depth > i64::from(entries_max) || bytes > i(bytes_max))
}

/// Checks that each share stays within `entries_max` and `bytes_max`.
///
/// Counted only where it could matter: a source cannot hold more of a
/// mailbox than the mailbox holds, so while a device's mailbox (with the
/// new entries) is within one share, nothing is read. Only a deep mailbox
/// (a device offline for long, or a flood) costs a count of the source's
/// entries, over that device's rows alone (bounded by the depth limit).
/// No counter is kept, so acks and purge stay exactly as they were: the
/// hot path (online devices, shallow mailboxes) pays nothing.
pub(super) async fn count_shares(
    c: &mut Conn,
    shares: &[Share<'_>],
    entries_max: u32,
    bytes_max: u64,
) -> Result<bool> {
    let (entries_max, bytes_max) = (i64::from(entries_max), i(bytes_max));
    for s in shares {
        if s.entries > entries_max || s.bytes > bytes_max {
            return Ok(false);
        }
        if !s.deep {
            continue;
        }
        let row = q("SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM mailbox WHERE device_pk = ? AND quota_key = ?")
            .bind(s.pk)
            .bind(s.key.as_slice())
            .fetch_one(&mut *c)
            .await?;
        let held: i64 = row.try_get(0)?;
        let held_bytes: i64 = row.try_get(1)?;
        if held + s.entries > entries_max || held_bytes.saturating_add(s.bytes) > bytes_max {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Stores several local messages with a few multi-row statements: messages,
/// then one sequence claim per recipient device, then (for mailboxes deeper
/// than one share only) the per-source counts, then mailbox rows. Returns `None` (caller rolls back and goes
/// one by one) if any message needs individual treatment.
pub(super) async fn accept_many(
    c: &mut Conn,
    batch: &Accepts,
) -> Result<Option<Vec<AcceptOutcome>>> {
    let mut ids: Vec<&[u8; 16]> = batch.iter().map(|(m, _, _)| &m.key).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1])
        || batch
            .iter()
            .any(|(m, _, _)| m.local.is_empty() && m.remote.is_empty())
    {
        return Ok(None);
    }
    for chunk in batch.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO messages (id, envelope, digest, origin, kind, body, refs, received_ms, expires_ms) VALUES {} ON CONFLICT (id) DO NOTHING",
            row_list(1, 9, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (m, _, _) in chunk {
            query = query
                .bind(m.key.as_slice())
                .bind(m.id.as_bytes().as_slice())
                .bind(&m.digest[..])
                .bind(m.origin.as_str())
                .bind(kind_code(m.kind))
                .bind(m.body.as_slice())
                .bind((m.local.len() + m.remote.len()) as i64)
                .bind(i(m.received_ms))
                .bind(i(m.expires_ms));
        }
        let inserted = query.execute(&mut *c).await?.rows_affected();
        if inserted != chunk.len() as u64 {
            // A retry (or a conflicting id) is in the batch.
            return Ok(None);
        }
    }
    // Entries and bytes per recipient device, in batch order.
    let mut order: Vec<(&Username, DeviceId)> = Vec::new();
    let mut counts: HashMap<(&Username, DeviceId), Claim> = HashMap::new();
    for (m, _, _) in batch {
        for r in &m.local {
            let e = counts.entry((&r.user, r.device)).or_insert_with(|| {
                order.push((&r.user, r.device));
                Claim::default()
            });
            e.entries += 1;
            e.bytes += i(m.entry_bytes(r));
        }
    }
    // Claim in a fixed order, so two processes sharing PostgreSQL lock
    // device rows in the same order and cannot deadlock each other here.
    order.sort();
    // The batch is held to its strictest limits; a message that would only
    // pass under its own looser ones is then stored one by one.
    let min = |f: fn(&NewMessage) -> u64| batch.iter().map(|(m, _, _)| f(m)).min().unwrap_or(0);
    let depth_max = u32::try_from(min(|m| u64::from(m.depth_max))).unwrap_or(u32::MAX);
    let bytes_max = min(|m| m.bytes_max);
    let per_source_max = u32::try_from(min(|m| u64::from(m.per_source_max))).unwrap_or(u32::MAX);
    let per_source_bytes_max = min(|m| m.per_source_bytes_max);
    let share = (per_source_max, per_source_bytes_max);
    if !claim_sequences(c, &order, &mut counts, depth_max, bytes_max, share).await? {
        // Unknown device or full mailbox: sort it out one by one.
        return Ok(None);
    }
    let mut shares: BTreeMap<(i64, &[u8; 16]), (i64, i64, bool)> = BTreeMap::new();
    for (m, _, _) in batch {
        for r in &m.local {
            if let (Some(key), Some(claim)) = (&r.quota_key, counts.get(&(&r.user, r.device))) {
                let s = shares.entry((claim.pk, key)).or_insert((0, 0, claim.deep));
                s.0 += 1;
                s.1 += i(m.entry_bytes(r));
            }
        }
    }
    let shares: Vec<Share<'_>> = shares
        .into_iter()
        .map(|((pk, key), (entries, bytes, deep))| Share {
            pk,
            key,
            entries,
            bytes,
            deep,
        })
        .collect();
    if !count_shares(c, &shares, per_source_max, per_source_bytes_max).await? {
        // A source over its share: sort it out one by one.
        return Ok(None);
    }
    // (device pk, seq, message key, header, expires, quota key, bytes)
    type MailboxRow<'a> = (i64, i64, &'a [u8], &'a [u8], i64, Option<&'a [u8]>, i64);
    let mut rows: Vec<MailboxRow<'_>> = Vec::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    for (m, _, _) in batch {
        let mut delivered = Vec::with_capacity(m.local.len());
        for r in &m.local {
            let Some(slot) = counts.get_mut(&(&r.user, r.device)) else {
                return Ok(None);
            };
            let seq = slot.next;
            slot.next += 1;
            rows.push((
                slot.pk,
                seq,
                m.key.as_slice(),
                r.header.as_slice(),
                i(m.expires_ms),
                r.quota_key.as_ref().map(|k| k.as_slice()),
                i(m.entry_bytes(r)),
            ));
            delivered.push(MailboxRef {
                user: r.user.clone(),
                device: r.device,
                seq: u(seq),
            });
        }
        outcomes.push(AcceptOutcome::Accepted { delivered });
    }
    for chunk in rows.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO mailbox (device_pk, seq, message_id, header, expires_ms, quota_key, bytes) VALUES {}",
            row_list(1, 7, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (pk, seq, id, header, expires, key, bytes) in chunk {
            query = query
                .bind(*pk)
                .bind(*seq)
                .bind(*id)
                .bind(*header)
                .bind(*expires)
                .bind(*key)
                .bind(*bytes);
        }
        query.execute(&mut *c).await?;
    }
    insert_outboxes(c, batch.iter().map(|(m, _, _)| m)).await?;
    Ok(Some(outcomes))
}

/// What a batch claims of one device's mailbox.
#[derive(Default)]
pub(super) struct Claim {
    /// Entries to add.
    entries: i64,
    /// Their bytes.
    bytes: i64,
    /// The device's pk (filled in by the claim).
    pk: i64,
    /// The next sequence number to hand out (filled in by the claim).
    next: i64,
    /// The mailbox, claim included, is deeper than one source's share
    /// (filled in by the claim; see [`count_shares`]).
    deep: bool,
}

/// Claims `entries` sequence numbers and `bytes` for each device in `order`
/// (sorted); fills in each claim's `pk` and first seq. One statement per
/// chunk of devices instead of one per device. False if a device is unknown
/// or its mailbox would exceed `depth_max` or `bytes_max`.
pub(super) async fn claim_sequences<'a>(
    c: &mut Conn,
    order: &[(&'a Username, DeviceId)],
    counts: &mut HashMap<(&'a Username, DeviceId), Claim>,
    depth_max: u32,
    bytes_max: u64,
    share: (u32, u64),
) -> Result<bool> {
    for chunk in order.chunks(CHUNK_ROWS) {
        if PG {
            // Row locks in key order first: the UPDATE … FROM below locks
            // in join order, which two processes could see differently.
            let sql = format!(
                "WITH v(username, device) AS (VALUES {}) SELECT 1 FROM devices JOIN v ON devices.username = v.username AND devices.device = v.device ORDER BY devices.username, devices.device FOR UPDATE OF devices",
                row_list(1, 2, chunk.len())
            );
            let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
            for key in chunk {
                query = query.bind(key.0.as_str()).bind(i64::from(key.1.0));
            }
            query.fetch_all(&mut *c).await?;
        }
        let n = chunk.len() * 4;
        let sql = format!(
            "WITH v(username, device, k, b) AS (VALUES {}) UPDATE devices SET next_seq = devices.next_seq + v.k, depth = devices.depth + v.k, bytes = devices.bytes + v.b FROM v WHERE devices.username = v.username AND devices.device = v.device AND devices.depth + v.k <= {} AND devices.bytes + v.b <= {} RETURNING devices.pk, devices.username, devices.device, devices.next_seq, devices.depth, devices.bytes",
            row_list(1, 4, chunk.len()),
            ph(n + 1),
            ph(n + 2)
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for key in chunk {
            let (k, b) = counts.get(key).map_or((0, 0), |c| (c.entries, c.bytes));
            query = query
                .bind(key.0.as_str())
                .bind(i64::from(key.1.0))
                .bind(k)
                .bind(b);
        }
        let rows = query
            .bind(i64::from(depth_max))
            .bind(i(bytes_max))
            .fetch_all(&mut *c)
            .await?;
        if rows.len() != chunk.len() {
            return Ok(false);
        }
        for r in rows {
            let user = username(r.try_get(1)?)?;
            let device = device_id(r.try_get(2)?)?;
            let Ok(k) = chunk.binary_search(&(&user, device)) else {
                return Ok(false);
            };
            let Some(slot) = counts.get_mut(&chunk[k]) else {
                return Ok(false);
            };
            let next: i64 = r.try_get(3)?;
            slot.pk = r.try_get(0)?;
            slot.next = next - slot.entries;
            slot.deep = deep(&r, share.0, share.1)?;
        }
    }
    Ok(true)
}

pub(super) async fn accept(store: &SqlStore, message: NewMessage) -> Result<AcceptOutcome> {
    store.queue_accept(message, None).await
}

pub(super) async fn accept_then(
    store: &SqlStore,
    message: NewMessage,
    committed: OnCommit,
) -> Result<AcceptOutcome> {
    store.queue_accept(message, Some(committed)).await
}

pub(super) async fn fetch(
    store: &SqlStore,
    user: &Username,
    device: DeviceId,
    after: u64,
    limit: u32,
    bytes_max: usize,
    now_ms: u64,
) -> Result<Vec<Envelope>> {
    use futures::TryStreamExt as _;
    // Rows are decoded one at a time and the read stops at the byte
    // cap, so a mailbox of big entries never sits in memory whole.
    let mut rows = q("SELECT m.seq, g.envelope, g.origin, m.header, g.body, g.received_ms, m.expires_ms, g.kind FROM mailbox m JOIN messages g ON g.id = m.message_id WHERE m.device_pk = (SELECT pk FROM devices WHERE username = ? AND device = ?) AND m.seq > ? AND m.expires_ms > ? ORDER BY m.seq LIMIT ?")
        .bind(user.as_str())
        .bind(i64::from(device.0))
        .bind(i(after))
        .bind(i(now_ms))
        .bind(i64::from(limit))
        .fetch(&store.read);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while bytes <= bytes_max {
        let Some(r) = rows.try_next().await? else {
            break;
        };
        let envelope = Envelope {
            seq: u(r.try_get(0)?),
            id: envelope_id(r.try_get(1)?)?,
            origin: relay_name(r.try_get(2)?)?,
            header: Bytes(r.try_get(3)?),
            body: Bytes(r.try_get::<Option<Vec<u8>>, _>(4)?.unwrap_or_default()),
            received_ms: u(r.try_get(5)?),
            expires_ms: u(r.try_get(6)?),
            kind: kind_from_code(r.try_get(7)?),
        };
        bytes += envelope.header.len() + envelope.body.len();
        out.push(envelope);
    }
    Ok(out)
}

pub(super) async fn ack(
    store: &SqlStore,
    user: &Username,
    device: DeviceId,
    seqs: &[u64],
) -> Result<u32> {
    let (reply, answer) = oneshot::channel();
    let job = AckJob {
        user: user.clone(),
        device,
        seqs: seqs.to_vec(),
        reply,
    };
    store
        .writer
        .send(Job::Ack(Box::new(job)))
        .await
        .map_err(|_| RelayError::Store("writer stopped".into()))?;
    answer
        .await
        .map_err(|_| RelayError::Store("writer stopped".into()))?
}

pub(super) async fn purge_expired(store: &SqlStore, now_ms: u64) -> Result<PurgeReport> {
    let now = i(now_ms);
    let mut report = PurgeReport::default();
    // Mailbox entries in bounded steps, so one purge never holds the
    // writer for long.
    loop {
        let n = store
            .write(move |c| {
                Box::pin(async move {
                    let rows = q("DELETE FROM mailbox WHERE (device_pk, seq) IN (SELECT device_pk, seq FROM mailbox WHERE expires_ms <= ? LIMIT 500) RETURNING device_pk, message_id, bytes")
                        .bind(now)
                        .fetch_all(&mut *c)
                        .await?;
                    // Batched like acks: two statements, not two per entry.
                    let mut released = Vec::with_capacity(rows.len());
                    let mut devices = Vec::with_capacity(rows.len());
                    for r in &rows {
                        devices.push((r.try_get(0)?, r.try_get(2)?));
                        released.push(r.try_get(1)?);
                    }
                    release_many(c, released).await?;
                    lower_depths(c, devices).await?;
                    Ok(rows.len() as u64)
                })
            })
            .await?;
        report.mailbox_entries += n;
        if n < 500 {
            break;
        }
    }
    let (messages, auth) = store
        .write(move |c| {
            Box::pin(async move {
                let messages = q("DELETE FROM messages WHERE expires_ms <= ? AND refs <= 0")
                    .bind(now)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                let mut auth = 0;
                for sql in [
                    "DELETE FROM challenges WHERE expires_ms <= ?",
                    "DELETE FROM links WHERE expires_ms <= ?",
                    "DELETE FROM invites WHERE expires_ms <= ? OR used = 1",
                    "DELETE FROM access_tokens WHERE expires_ms <= ?",
                    "DELETE FROM refresh_tokens WHERE expires_ms <= ?",
                ] {
                    auth += q(sql).bind(now).execute(&mut *c).await?.rows_affected();
                }
                q("DELETE FROM sessions WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = sessions.id)")
                    .execute(&mut *c)
                    .await?;
                Ok((messages, auth))
            })
        })
        .await?;
    report.messages = messages;
    report.auth_records = auth;
    Ok(report)
}
