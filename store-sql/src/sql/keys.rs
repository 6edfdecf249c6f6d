//! The key directory: signed prekeys and one-time prekeys.

use courier_protocol::{Bytes, DeviceId, Username};
use courier_relay::RelayError;
use courier_relay::types::{OneTimePreKey, SignedPreKey};
use sqlx::Row as _;

use super::accounts::device_pk;
use super::dialect::PG;
use super::query::{corrupt, i, q};
use super::writer::SqlStore;
use crate::error::Result;

pub(super) async fn set_signed_prekey(
    store: &SqlStore,
    user: &Username,
    device: DeviceId,
    key: SignedPreKey,
) -> Result<()> {
    let user = user.clone();
    store.write(move |c| {
        Box::pin(async move {
            let n = q("UPDATE devices SET spk_id = ?, spk_public = ?, spk_signature = ?, spk_created_ms = ? WHERE username = ? AND device = ?")
                .bind(i64::from(key.id))
                .bind(key.public.as_slice())
                .bind(key.signature.as_slice())
                .bind(i(key.created_ms))
                .bind(user.as_str())
                .bind(i64::from(device.0))
                .execute(&mut *c)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(RelayError::UnknownDevice.into());
            }
            Ok(())
        })
    })
    .await
}

pub(super) async fn add_one_time_prekeys(
    store: &SqlStore,
    user: &Username,
    device: DeviceId,
    keys: Vec<OneTimePreKey>,
    cap: u32,
) -> Result<u32> {
    let user = user.clone();
    store.write(move |c| {
        Box::pin(async move {
            let pk = device_pk(c, &user, device)
                .await?
                .ok_or(RelayError::UnknownDevice)?;
            for k in &keys {
                q("INSERT INTO one_time_prekeys (device_pk, key_id, public) VALUES (?, ?, ?) ON CONFLICT (device_pk, key_id) DO UPDATE SET public = excluded.public")
                    .bind(pk)
                    .bind(i64::from(k.id))
                    .bind(k.public.as_slice())
                    .execute(&mut *c)
                    .await?;
            }
            let count: i64 = q("SELECT COUNT(*) FROM one_time_prekeys WHERE device_pk = ?")
                .bind(pk)
                .fetch_one(&mut *c)
                .await?
                .try_get(0)?;
            if count > i64::from(cap) {
                // The savepoint rolls the inserts back.
                return Err(RelayError::TooManyPrekeys.into());
            }
            q("UPDATE devices SET otk_count = ? WHERE pk = ?")
                .bind(count)
                .bind(pk)
                .execute(&mut *c)
                .await?;
            Ok(u32::try_from(count).unwrap_or(u32::MAX))
        })
    })
    .await
}

pub(super) async fn take_one_time_prekey(
    store: &SqlStore,
    user: &Username,
    device: DeviceId,
) -> Result<(Option<OneTimePreKey>, u32)> {
    let user = user.clone();
    store.write(move |c| {
        Box::pin(async move {
            let pk = device_pk(c, &user, device)
                .await?
                .ok_or(RelayError::UnknownDevice)?;
            // Delete-and-return in one statement: the key is gone the
            // moment anyone sees it. SKIP LOCKED lets concurrent
            // PostgreSQL transactions take different keys.
            let sql = if PG {
                "DELETE FROM one_time_prekeys WHERE id = (SELECT id FROM one_time_prekeys WHERE device_pk = ? ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING key_id, public"
            } else {
                "DELETE FROM one_time_prekeys WHERE id = (SELECT id FROM one_time_prekeys WHERE device_pk = ? ORDER BY id LIMIT 1) RETURNING key_id, public"
            };
            let row = q(sql).bind(pk).fetch_optional(&mut *c).await?;
            let key = match row {
                Some(r) => Some(OneTimePreKey {
                    id: u32::try_from(r.try_get::<i64, _>(0)?)
                        .map_err(|_| corrupt("prekey id"))?,
                    public: Bytes(r.try_get(1)?),
                }),
                None => None,
            };
            let delta: i64 = if key.is_some() { 1 } else { 0 };
            let left: i64 = q("UPDATE devices SET otk_count = otk_count - ? WHERE pk = ? RETURNING otk_count")
                .bind(delta)
                .bind(pk)
                .fetch_one(&mut *c)
                .await?
                .try_get(0)?;
            Ok((key, u32::try_from(left).unwrap_or(0)))
        })
    })
    .await
}
