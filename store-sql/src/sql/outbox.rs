//! The outbox: entries waiting for other relays, their leases, retries,
//! expiry and the due-time view the drainer reads.

use std::sync::OnceLock;

use courier_protocol::{Bytes, RelayName};
use courier_relay::store::{
    AcceptOutcome, MailboxRef, NewMessage, OutboxDestination, OutboxDue, OutboxEntry, OutboxId,
};
use courier_relay::types::{FedRecipient, kind_from_code};
use sqlx::Row as _;

use super::dialect::{Conn, Db, PG, Row};
use super::mailbox::{accept_in, release_many};
use super::query::{
    CHUNK_ROWS, decode, encode, envelope_id, i, in_list, ph, q, relay_name, row_list, u,
};
use super::writer::SqlStore;
use crate::error::Result;

pub(super) async fn insert_outbox(c: &mut Conn, m: &NewMessage) -> Result<()> {
    insert_outboxes(c, std::iter::once(m)).await
}

/// One outbox row per (message, destination relay), in multi-row statements.
pub(super) async fn insert_outboxes<'m>(
    c: &mut Conn,
    messages: impl Iterator<Item = &'m NewMessage>,
) -> Result<()> {
    // (relay, message key, recipients, sealed sender, due, expires)
    type OutboxRow<'a> = (&'a str, &'a [u8], Vec<u8>, Option<&'a [u8]>, i64, i64);
    let mut rows: Vec<OutboxRow<'m>> = Vec::new();
    for m in messages {
        for remote in &m.remote {
            rows.push((
                remote.relay.as_str(),
                m.key.as_slice(),
                encode(&remote.recipients)?,
                m.sender.as_ref().map(|b| b.as_slice()),
                // Due at once; its acceptance time keeps the outbox in
                // due-time order, which `outbox_take` reads by index.
                i(m.received_ms),
                i(m.expires_ms),
            ));
        }
    }
    for chunk in rows.chunks(CHUNK_ROWS) {
        // `attempts` starts at its column default, 0.
        let sql = format!(
            "INSERT INTO outbox (relay, message_id, recipients, sender, next_attempt_ms, expires_ms) VALUES {}",
            row_list(1, 6, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (relay, id, recipients, sender, due, expires) in chunk {
            query = query
                .bind(*relay)
                .bind(*id)
                .bind(&recipients[..])
                .bind(*sender)
                .bind(*due)
                .bind(*expires);
        }
        query.execute(&mut *c).await?;
    }
    Ok(())
}

pub(super) const OUTBOX_SELECT: &str = "SELECT o.id, o.relay, g.envelope, g.kind, g.body, o.recipients, o.expires_ms, o.attempts, o.sender FROM outbox o JOIN messages g ON g.id = o.message_id";

pub(super) fn outbox_row(r: &Row) -> Result<OutboxEntry> {
    let sender = r.try_get::<Option<Vec<u8>>, _>(8)?.map(Bytes);
    let recipients: Vec<u8> = r.try_get(5)?;
    Ok(OutboxEntry {
        id: r.try_get(0)?,
        relay: relay_name(r.try_get(1)?)?,
        envelope: envelope_id(r.try_get(2)?)?,
        kind: kind_from_code(r.try_get(3)?),
        body: Bytes(r.try_get::<Option<Vec<u8>>, _>(4)?.unwrap_or_default()),
        recipients: decode::<Vec<FedRecipient>>(&recipients)?,
        expires_ms: u(r.try_get(6)?),
        attempts: u32::try_from(r.try_get::<i64, _>(7)?).unwrap_or(u32::MAX),
        sender,
    })
}

/// Deletes outbox entries and releases their messages: two statements per
/// chunk however many entries. Returns how many existed.
pub(super) async fn delete_outboxes(c: &mut Conn, ids: &[OutboxId]) -> Result<u32> {
    let mut n = 0;
    for chunk in ids.chunks(CHUNK_ROWS) {
        let sql = format!(
            "DELETE FROM outbox WHERE id IN ({}) RETURNING message_id",
            in_list(1, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        let mut released = Vec::new();
        for r in query.fetch_all(&mut *c).await? {
            released.push(r.try_get(0)?);
            n += 1;
        }
        release_many(c, released).await?;
    }
    Ok(n)
}

pub(super) async fn outbox_take(
    store: &SqlStore,
    relay: &RelayName,
    max: u32,
    now_ms: u64,
    lease_until_ms: u64,
) -> Result<Vec<OutboxEntry>> {
    let relay = relay.clone();
    store.write(move |c| {
        Box::pin(async move {
            static SQL: OnceLock<String> = OnceLock::new();
            let sql = SQL.get_or_init(|| {
                format!(
                    // Due-time order straight off the `outbox_due` index,
                    // so a backlog costs no sort and LIMIT stops early.
                    "{OUTBOX_SELECT} WHERE o.relay = ? AND o.next_attempt_ms <= ? AND o.expires_ms > ? ORDER BY o.next_attempt_ms, o.id LIMIT ?{}",
                    if PG { " FOR UPDATE OF o SKIP LOCKED" } else { "" }
                )
            });
            let rows = q(sql.as_str())
                .bind(relay.as_str())
                .bind(i(now_ms))
                .bind(i(now_ms))
                .bind(i64::from(max))
                .fetch_all(&mut *c)
                .await?;
            let entries = rows.iter().map(outbox_row).collect::<Result<Vec<_>>>()?;
            // The lease: one statement per chunk, not one per entry.
            for chunk in entries.chunks(CHUNK_ROWS) {
                let sql = format!(
                    "UPDATE outbox SET next_attempt_ms = {} WHERE id IN ({})",
                    ph(1),
                    in_list(2, chunk.len())
                );
                let mut query =
                    sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(i(lease_until_ms));
                for e in chunk {
                    query = query.bind(e.id);
                }
                query.execute(&mut *c).await?;
            }
            Ok(entries)
        })
    })
    .await
}

pub(super) async fn outbox_delete(store: &SqlStore, ids: &[OutboxId]) -> Result<u32> {
    let ids = ids.to_vec();
    store
        .write(move |c| Box::pin(async move { delete_outboxes(c, &ids).await }))
        .await
}

pub(super) async fn outbox_reschedule(
    store: &SqlStore,
    id: OutboxId,
    next_attempt_ms: u64,
) -> Result<()> {
    store
        .write(move |c| {
            Box::pin(async move {
                q("UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ? WHERE id = ?")
                    .bind(i(next_attempt_ms))
                    .bind(id)
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
}

pub(super) async fn outbox_expired(
    store: &SqlStore,
    now_ms: u64,
    max: u32,
) -> Result<Vec<OutboxEntry>> {
    static SQL: OnceLock<String> = OnceLock::new();
    let sql = SQL
        .get_or_init(|| format!("{OUTBOX_SELECT} WHERE o.expires_ms <= ? ORDER BY o.id LIMIT ?"));
    let rows = q(sql.as_str())
        .bind(i(now_ms))
        .bind(i64::from(max))
        .fetch_all(&store.read)
        .await?;
    rows.iter().map(outbox_row).collect()
}

pub(super) async fn outbox_expire(
    store: &SqlStore,
    id: OutboxId,
    notice: Option<NewMessage>,
) -> Result<Vec<MailboxRef>> {
    store
        .write(move |c| {
            Box::pin(async move {
                if delete_outboxes(c, &[id]).await? == 0 {
                    return Ok(Vec::new());
                }
                match notice {
                    Some(notice) => match accept_in(c, notice).await? {
                        AcceptOutcome::Accepted { delivered } => Ok(delivered),
                        AcceptOutcome::Duplicate { .. } => Ok(Vec::new()),
                    },
                    None => Ok(Vec::new()),
                }
            })
        })
        .await
}

pub(super) async fn outbox_destinations(store: &SqlStore) -> Result<Vec<OutboxDestination>> {
    let rows =
        q("SELECT relay, COUNT(*), MIN(next_attempt_ms) FROM outbox GROUP BY relay ORDER BY relay")
            .fetch_all(&store.read)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(OutboxDestination {
                relay: relay_name(r.try_get(0)?)?,
                pending: u(r.try_get(1)?),
                next_attempt_ms: u(r.try_get(2)?),
            })
        })
        .collect()
}

pub(super) async fn outbox_due(
    store: &SqlStore,
    now_ms: u64,
    entries_max: u32,
    destinations_max: u32,
) -> Result<OutboxDue> {
    // The inner scan reads at most `entries_max` rows off the
    // `outbox_by_due` index (migration 0004), however large the outbox.
    let rows = q("SELECT relay, COUNT(*), MIN(next_attempt_ms) FROM (SELECT relay, next_attempt_ms, id FROM outbox WHERE next_attempt_ms <= ? AND expires_ms > ? ORDER BY next_attempt_ms, id LIMIT ?) due GROUP BY relay ORDER BY MIN(next_attempt_ms), relay LIMIT ?")
        .bind(i(now_ms))
        .bind(i(now_ms))
        .bind(i64::from(entries_max))
        .bind(i64::from(destinations_max))
        .fetch_all(&store.read)
        .await?;
    let destinations = rows
        .iter()
        .map(|r| {
            Ok(OutboxDestination {
                relay: relay_name(r.try_get(0)?)?,
                pending: u(r.try_get(1)?),
                next_attempt_ms: u(r.try_get(2)?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next: Option<i64> = q("SELECT MIN(next_attempt_ms) FROM outbox WHERE next_attempt_ms > ?")
        .bind(i(now_ms))
        .fetch_one(&store.read)
        .await?
        .try_get(0)?;
    Ok(OutboxDue {
        destinations,
        next_due_ms: next.map(u),
    })
}

pub(super) async fn outbox_wake(
    store: &SqlStore,
    relay: &RelayName,
    now_ms: u64,
    later_than_ms: u64,
) -> Result<u64> {
    let relay = relay.to_string();
    store
        .write(move |c| {
            Box::pin(async move {
                let done = q(
                    "UPDATE outbox SET next_attempt_ms = ? WHERE relay = ? AND next_attempt_ms > ?",
                )
                .bind(i(now_ms))
                .bind(relay)
                .bind(i(later_than_ms))
                .execute(&mut *c)
                .await?;
                Ok(done.rows_affected())
            })
        })
        .await
}
