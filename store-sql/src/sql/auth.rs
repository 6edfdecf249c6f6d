//! Login challenges, sessions and their access and refresh tokens.

use courier_relay::store::{
    AccessRecord, ChallengeRecord, NewSession, RotateOutcome, TokenHash, TokenHashes,
};
use sqlx::Row as _;

use super::dialect::Conn;
use super::query::{corrupt, device_id, i, q, u, username};
use super::writer::SqlStore;
use crate::error::Result;

pub(super) async fn revoke(c: &mut Conn, session: &str) -> Result<()> {
    q("DELETE FROM access_tokens WHERE session_id = ?")
        .bind(session)
        .execute(&mut *c)
        .await?;
    q("DELETE FROM refresh_tokens WHERE session_id = ?")
        .bind(session)
        .execute(&mut *c)
        .await?;
    q("DELETE FROM sessions WHERE id = ?")
        .bind(session)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub(super) async fn insert_tokens(c: &mut Conn, session: &str, t: &TokenHashes) -> Result<()> {
    q("INSERT INTO access_tokens (hash, session_id, expires_ms) VALUES (?, ?, ?)")
        .bind(&t.access[..])
        .bind(session)
        .bind(i(t.access_expires_ms))
        .execute(&mut *c)
        .await?;
    q("INSERT INTO refresh_tokens (hash, session_id, expires_ms, used) VALUES (?, ?, ?, 0)")
        .bind(&t.refresh[..])
        .bind(session)
        .bind(i(t.refresh_expires_ms))
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub(super) async fn put_challenge(store: &SqlStore, ch: ChallengeRecord) -> Result<()> {
    store.write(move |c| {
        Box::pin(async move {
            q("INSERT INTO challenges (id, username, device, nonce, expires_ms) VALUES (?, ?, ?, ?, ?)")
                .bind(ch.id.as_str())
                .bind(ch.user.as_str())
                .bind(i64::from(ch.device.0))
                .bind(&ch.nonce[..])
                .bind(i(ch.expires_ms))
                .execute(&mut *c)
                .await?;
            Ok(())
        })
    })
    .await
}

pub(super) async fn take_challenge(store: &SqlStore, id: &str) -> Result<Option<ChallengeRecord>> {
    let id = id.to_owned();
    store.write(move |c| {
        Box::pin(async move {
            let row = q("DELETE FROM challenges WHERE id = ? RETURNING id, username, device, nonce, expires_ms")
                .bind(id.as_str())
                .fetch_optional(&mut *c)
                .await?;
            let Some(r) = row else { return Ok(None) };
            let nonce: Vec<u8> = r.try_get(3)?;
            Ok(Some(ChallengeRecord {
                id: r.try_get(0)?,
                user: username(r.try_get(1)?)?,
                device: device_id(r.try_get(2)?)?,
                nonce: nonce.try_into().map_err(|_| corrupt("nonce"))?,
                expires_ms: u(r.try_get(4)?),
            }))
        })
    })
    .await
}

pub(super) async fn create_session(store: &SqlStore, s: NewSession) -> Result<()> {
    store
        .write(move |c| {
            Box::pin(async move {
                q("INSERT INTO sessions (id, username, device) VALUES (?, ?, ?)")
                    .bind(s.id.as_str())
                    .bind(s.user.as_str())
                    .bind(i64::from(s.device.0))
                    .execute(&mut *c)
                    .await?;
                insert_tokens(c, &s.id, &s.tokens).await
            })
        })
        .await
}

pub(super) async fn access(store: &SqlStore, token: &TokenHash) -> Result<Option<AccessRecord>> {
    let row = q("SELECT a.session_id, s.username, s.device, a.expires_ms, COALESCE(d.otk_count, 0) FROM access_tokens a JOIN sessions s ON s.id = a.session_id LEFT JOIN devices d ON d.username = s.username AND d.device = s.device WHERE a.hash = ?")
        .bind(&token[..])
        .fetch_optional(&store.read)
        .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(AccessRecord {
        session: r.try_get(0)?,
        user: username(r.try_get(1)?)?,
        device: device_id(r.try_get(2)?)?,
        expires_ms: u(r.try_get(3)?),
        one_time_count: u32::try_from(r.try_get::<i64, _>(4)?).unwrap_or(0),
    }))
}

pub(super) async fn rotate_refresh(
    store: &SqlStore,
    token: &TokenHash,
    now_ms: u64,
    next: TokenHashes,
) -> Result<RotateOutcome> {
    let token = *token;
    store
        .write(move |c| {
            Box::pin(async move {
                let row =
                    q("SELECT session_id, expires_ms, used FROM refresh_tokens WHERE hash = ?")
                        .bind(&token[..])
                        .fetch_optional(&mut *c)
                        .await?;
                let Some(r) = row else {
                    return Ok(RotateOutcome::Invalid);
                };
                let session: String = r.try_get(0)?;
                let expires_ms = u(r.try_get(1)?);
                let used: i64 = r.try_get(2)?;
                if used != 0 {
                    revoke(c, &session).await?;
                    return Ok(RotateOutcome::Reused { session });
                }
                if expires_ms <= now_ms {
                    return Ok(RotateOutcome::Invalid);
                }
                // Conditional on `used = 0`, so of two concurrent
                // presentations (PostgreSQL, several processes) one wins and
                // the other is seen as reuse.
                let marked = q("UPDATE refresh_tokens SET used = 1 WHERE hash = ? AND used = 0")
                    .bind(&token[..])
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                if marked == 0 {
                    revoke(c, &session).await?;
                    return Ok(RotateOutcome::Reused { session });
                }
                let row = q("SELECT username, device FROM sessions WHERE id = ?")
                    .bind(session.as_str())
                    .fetch_optional(&mut *c)
                    .await?;
                let Some(s) = row else {
                    return Ok(RotateOutcome::Invalid);
                };
                q("DELETE FROM access_tokens WHERE session_id = ?")
                    .bind(session.as_str())
                    .execute(&mut *c)
                    .await?;
                insert_tokens(c, &session, &next).await?;
                Ok(RotateOutcome::Rotated {
                    session,
                    user: username(s.try_get(0)?)?,
                    device: device_id(s.try_get(1)?)?,
                })
            })
        })
        .await
}

pub(super) async fn revoke_session(store: &SqlStore, session: &str) -> Result<()> {
    let session = session.to_owned();
    store
        .write(move |c| Box::pin(async move { revoke(c, &session).await }))
        .await
}
