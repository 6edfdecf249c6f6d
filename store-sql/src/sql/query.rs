//! Query text and value conversions shared by every operation: `?`
//! placeholders rewritten to `$1…` for PostgreSQL once per query text,
//! multi-row placeholder lists, and the row ⇄ relay type conversions.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};

use courier_protocol::{DeviceId, EnvelopeId, RelayName, Username};
use courier_relay::RelayError;

use super::dialect::{Conn, Db, PG};
use crate::error::{Error, Result};

pub(super) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// ---------------------------------------------------------------- queries

pub(super) fn dialect(sql: &'static str) -> &'static str {
    if !PG {
        return sql;
    }
    static CACHE: OnceLock<Mutex<HashMap<usize, &'static str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.entry(sql.as_ptr() as usize).or_insert_with(|| {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
        // Bounded: one entry per distinct query text in this file.
        Box::leak(out.into_boxed_str())
    })
}

pub(super) fn q(
    sql: &'static str,
) -> sqlx::query::Query<'static, Db, <Db as sqlx::Database>::Arguments> {
    sqlx::query(dialect(sql))
}

pub(super) fn i(v: u64) -> i64 {
    // Values above i64::MAX (e.g. u64::MAX "never") are clamped.
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn corrupt(what: &str) -> Error {
    RelayError::Store(format!("corrupt row: {what}")).into()
}

pub(super) fn username(text: String) -> Result<Username> {
    Username::parse(&text).map_err(|_| corrupt("username"))
}

pub(super) fn relay_name(text: String) -> Result<RelayName> {
    RelayName::parse(&text).map_err(|_| corrupt("relay name"))
}

pub(super) fn envelope_id(bytes: Vec<u8>) -> Result<EnvelopeId> {
    let b: [u8; 16] = bytes.try_into().map_err(|_| corrupt("envelope id"))?;
    Ok(EnvelopeId(b))
}

pub(super) fn device_id(v: i64) -> Result<DeviceId> {
    u32::try_from(v)
        .map(DeviceId)
        .map_err(|_| corrupt("device id"))
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| Error::from(RelayError::Store(format!("encode: {e}"))))
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    postcard::from_bytes(b).map_err(|_| corrupt("encoded value"))
}

/// Rows per multi-row statement (SQLite allows 32766 parameters, PostgreSQL 65535).
pub(super) const CHUNK_ROWS: usize = 400;

/// Placeholder number `n` (1-based) in this dialect.
pub(super) fn ph(n: usize) -> String {
    if PG { format!("${n}") } else { "?".to_owned() }
}

/// `rows` groups of `cols` placeholders, numbered from `first`.
pub(super) fn row_list(first: usize, cols: usize, rows: usize) -> String {
    let mut out = String::with_capacity(rows * (cols * 4 + 3));
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        out.push('(');
        for col in 0..cols {
            if col > 0 {
                out.push(',');
            }
            out.push_str(&ph(n));
            n += 1;
        }
        out.push(')');
    }
    out
}

/// `count` placeholders separated by commas, numbered from `first`.
pub(super) fn in_list(first: usize, count: usize) -> String {
    (first..first + count).map(ph).collect::<Vec<_>>().join(",")
}

pub(super) async fn exec(conn: &mut Conn, sql: &'static str) -> Result<()> {
    sqlx::raw_sql(sql).execute(&mut *conn).await?;
    Ok(())
}
