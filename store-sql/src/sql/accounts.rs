//! Accounts, devices, device lists, invites and device links.

use std::sync::OnceLock;

use courier_protocol::{Bytes, DeviceId, Username};
use courier_relay::RelayError;
use courier_relay::store::{DeviceRecord, InviteRecord, LinkRecord, NewAccount};
use courier_relay::types::{DeviceKeys, SignedDeviceList, SignedPreKey};
use sqlx::Row as _;

use super::dialect::{Conn, Row};
use super::query::{corrupt, decode, device_id, encode, i, q, u, username};
use super::writer::SqlStore;
use crate::error::Result;

pub(super) async fn device_pk(
    c: &mut Conn,
    user: &Username,
    device: DeviceId,
) -> Result<Option<i64>> {
    let row = q("SELECT pk FROM devices WHERE username = ? AND device = ?")
        .bind(user.as_str())
        .bind(i64::from(device.0))
        .fetch_optional(&mut *c)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get::<i64, _>(0)?),
        None => None,
    })
}

pub(super) const DEVICE_COLUMNS: &str = "username, device, identity_key, dh_key, dh_key_signature, spk_id, spk_public, spk_signature, spk_created_ms, otk_count, created_ms";

pub(super) fn device_row(r: &Row) -> Result<DeviceRecord> {
    let spk_id: Option<i64> = r.try_get(5)?;
    let signed_prekey = match spk_id {
        Some(id) => Some(SignedPreKey {
            id: u32::try_from(id).map_err(|_| corrupt("prekey id"))?,
            public: Bytes(r.try_get::<Option<Vec<u8>>, _>(6)?.unwrap_or_default()),
            signature: Bytes(r.try_get::<Option<Vec<u8>>, _>(7)?.unwrap_or_default()),
            created_ms: u(r.try_get::<Option<i64>, _>(8)?.unwrap_or(0)),
        }),
        None => None,
    };
    Ok(DeviceRecord {
        user: username(r.try_get(0)?)?,
        device: device_id(r.try_get(1)?)?,
        keys: DeviceKeys {
            identity_key: Bytes(r.try_get(2)?),
            dh_key: Bytes(r.try_get(3)?),
            dh_key_signature: Bytes(r.try_get(4)?),
        },
        signed_prekey,
        one_time_count: u32::try_from(r.try_get::<i64, _>(9)?).unwrap_or(0),
        created_ms: u(r.try_get(10)?),
    })
}

pub(super) async fn insert_device(c: &mut Conn, d: &DeviceRecord) -> Result<()> {
    q("INSERT INTO devices (username, device, identity_key, dh_key, dh_key_signature, otk_count, next_seq, depth, created_ms) VALUES (?, ?, ?, ?, ?, 0, 1, 0, ?)")
        .bind(d.user.as_str())
        .bind(i64::from(d.device.0))
        .bind(d.keys.identity_key.as_slice())
        .bind(d.keys.dh_key.as_slice())
        .bind(d.keys.dh_key_signature.as_slice())
        .bind(i(d.created_ms))
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub(super) async fn create_invite(store: &SqlStore, invite: InviteRecord) -> Result<()> {
    store
        .write(move |c| {
            Box::pin(async move {
                q("INSERT INTO invites (code_hash, expires_ms, used) VALUES (?, ?, 0)")
                    .bind(&invite.code_hash[..])
                    .bind(i(invite.expires_ms))
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
}

pub(super) async fn register(store: &SqlStore, account: NewAccount) -> Result<()> {
    let list = encode(&account.device_list)?;
    store.write(move |c| {
        Box::pin(async move {
            let user = account.device.user.as_str();
            // The invite first: without a valid one, whether a name is
            // taken is none of the caller's business. A taken name
            // below fails the operation, whose savepoint (or
            // transaction) then undoes the invite's use.
            if let Some(code) = account.invite {
                let used = q("UPDATE invites SET used = 1 WHERE code_hash = ? AND used = 0 AND expires_ms > ?")
                    .bind(&code[..])
                    .bind(i(account.now_ms))
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                if used == 0 {
                    return Err(RelayError::InvalidInvite.into());
                }
            }
            let inserted = q("INSERT INTO accounts (username, created_ms, list_version, device_list) VALUES (?, ?, ?, ?) ON CONFLICT (username) DO NOTHING")
                .bind(user)
                .bind(i(account.now_ms))
                .bind(i(account.device_list.list.version))
                .bind(&list[..])
                .execute(&mut *c)
                .await?
                .rows_affected();
            if inserted == 0 {
                return Err(RelayError::UsernameTaken.into());
            }
            insert_device(c, &account.device).await
        })
    })
    .await
}

pub(super) async fn device(
    store: &SqlStore,
    user: &Username,
    device: DeviceId,
) -> Result<Option<DeviceRecord>> {
    static SQL: OnceLock<String> = OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE username = ? AND device = ?")
    });
    let row = q(sql.as_str())
        .bind(user.as_str())
        .bind(i64::from(device.0))
        .fetch_optional(&store.read)
        .await?;
    row.as_ref().map(device_row).transpose()
}

pub(super) async fn devices(store: &SqlStore, user: &Username) -> Result<Vec<DeviceRecord>> {
    static SQL: OnceLock<String> = OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE username = ? ORDER BY device")
    });
    let rows = q(sql.as_str())
        .bind(user.as_str())
        .fetch_all(&store.read)
        .await?;
    rows.iter().map(device_row).collect()
}

pub(super) async fn device_list(
    store: &SqlStore,
    user: &Username,
) -> Result<Option<SignedDeviceList>> {
    let row = q("SELECT device_list FROM accounts WHERE username = ?")
        .bind(user.as_str())
        .fetch_optional(&store.read)
        .await?;
    match row {
        Some(r) => Ok(Some(decode(&r.try_get::<Vec<u8>, _>(0)?)?)),
        None => Ok(None),
    }
}

pub(super) async fn put_link(store: &SqlStore, l: LinkRecord) -> Result<()> {
    store.write(move |c| {
        Box::pin(async move {
            let inserted = q("INSERT INTO links (code, secret_hash, username, identity_key, dh_key, dh_key_signature, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (code) DO NOTHING")
                .bind(l.code.as_str())
                .bind(&l.secret_hash[..])
                .bind(l.user.as_str())
                .bind(l.keys.identity_key.as_slice())
                .bind(l.keys.dh_key.as_slice())
                .bind(l.keys.dh_key_signature.as_slice())
                .bind(i(l.expires_ms))
                .execute(&mut *c)
                .await?
                .rows_affected();
            if inserted == 0 {
                return Err(RelayError::Conflict("link code in use").into());
            }
            Ok(())
        })
    })
    .await
}

pub(super) async fn link(store: &SqlStore, code: &str) -> Result<Option<LinkRecord>> {
    let row = q("SELECT code, secret_hash, username, identity_key, dh_key, dh_key_signature, expires_ms, approved_device FROM links WHERE code = ?")
        .bind(code)
        .fetch_optional(&store.read)
        .await?;
    let Some(r) = row else { return Ok(None) };
    let secret: Vec<u8> = r.try_get(1)?;
    Ok(Some(LinkRecord {
        code: r.try_get(0)?,
        secret_hash: secret.try_into().map_err(|_| corrupt("secret hash"))?,
        user: username(r.try_get(2)?)?,
        keys: DeviceKeys {
            identity_key: Bytes(r.try_get(3)?),
            dh_key: Bytes(r.try_get(4)?),
            dh_key_signature: Bytes(r.try_get(5)?),
        },
        expires_ms: u(r.try_get(6)?),
        approved: r.try_get::<Option<i64>, _>(7)?.map(device_id).transpose()?,
    }))
}

pub(super) async fn approve_link(
    store: &SqlStore,
    code: &str,
    device: DeviceRecord,
    list: SignedDeviceList,
    devices_max: u32,
    now_ms: u64,
) -> Result<()> {
    let code = code.to_owned();
    let encoded = encode(&list)?;
    store.write(move |c| {
        Box::pin(async move {
            let row = q("SELECT approved_device, expires_ms FROM links WHERE code = ?")
                .bind(code.as_str())
                .fetch_optional(&mut *c)
                .await?;
            let pending = match &row {
                Some(r) => {
                    r.try_get::<Option<i64>, _>(0)?.is_none()
                        && u(r.try_get(1)?) > now_ms
                }
                None => false,
            };
            if !pending {
                return Err(RelayError::InvalidLinkCode.into());
            }
            let user = device.user.as_str();
            let row = q("SELECT list_version, (SELECT COUNT(*) FROM devices WHERE username = ?) FROM accounts WHERE username = ?")
                .bind(user)
                .bind(user)
                .fetch_optional(&mut *c)
                .await?
                .ok_or(RelayError::UnknownUser)?;
            let version = u(row.try_get(0)?);
            let count = u(row.try_get(1)?);
            if count >= u64::from(devices_max) {
                return Err(RelayError::TooManyDevices.into());
            }
            if list.list.version != version + 1 {
                return Err(RelayError::Conflict("device list changed meanwhile").into());
            }
            if device_pk(c, &device.user, device.device).await?.is_some() {
                return Err(RelayError::Conflict("device list changed meanwhile").into());
            }
            insert_device(c, &device).await?;
            q("UPDATE accounts SET list_version = ?, device_list = ? WHERE username = ?")
                .bind(i(list.list.version))
                .bind(&encoded[..])
                .bind(user)
                .execute(&mut *c)
                .await?;
            q("UPDATE links SET approved_device = ? WHERE code = ?")
                .bind(i64::from(device.device.0))
                .bind(code.as_str())
                .execute(&mut *c)
                .await?;
            Ok(())
        })
    })
    .await
}
