//! How database errors become [`RelayError`]s.
//!
//! The stores answer the relay with its own error type, but `?` cannot turn
//! a `sqlx::Error` into a `RelayError` here: both types are foreign to this
//! crate, so the orphan rule forbids that `From`. Inside the crate every
//! operation returns [`Result`], whose [`Error`] wraps a `RelayError` and
//! converts from both; the `Store` methods unwrap it at the boundary.

use courier_relay::RelayError;

/// A store operation's error: what the relay will see.
#[derive(Debug, Clone)]
pub(crate) struct Error(pub(crate) RelayError);

/// Result of an operation inside the stores.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl From<RelayError> for Error {
    fn from(e: RelayError) -> Self {
        Error(e)
    }
}

impl From<Error> for RelayError {
    fn from(e: Error) -> Self {
        e.0
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if is_storage_full(&e) {
            return Error(RelayError::StorageFull(e.to_string()));
        }
        Error(RelayError::Store(e.to_string()))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error(RelayError::Store(e.to_string()))
    }
}

/// Whether a database error says the disk is full: SQLite's result code 13
/// (`SQLITE_FULL`, reported as the extended code, whose low byte is the
/// primary one) or PostgreSQL's SQLSTATE `53100` (`disk_full`). The two
/// code spaces do not overlap (SQLSTATEs are five characters).
fn is_storage_full(e: &sqlx::Error) -> bool {
    const SQLITE_FULL: i64 = 13;
    let Some(code) = e.as_database_error().and_then(|d| d.code()) else {
        return false;
    };
    code == "53100" || code.parse::<i64>().is_ok_and(|n| n & 0xff == SQLITE_FULL)
}

#[cfg(test)]
mod tests {
    use courier_protocol::ErrorCode;

    use super::*;

    #[tokio::test]
    async fn sqlite_full_is_storage_full_and_other_errors_are_not() {
        use sqlx::Connection as _;
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        // A database that may not grow past a few pages: SQLITE_FULL, as
        // on a full disk.
        sqlx::raw_sql("PRAGMA max_page_count = 4; CREATE TABLE t (b BLOB)")
            .execute(&mut c)
            .await
            .unwrap();
        let mut full = None;
        for _ in 0..100 {
            if let Err(e) = sqlx::query("INSERT INTO t VALUES (randomblob(4096))")
                .execute(&mut c)
                .await
            {
                full = Some(e);
                break;
            }
        }
        let full = RelayError::from(Error::from(full.expect("the database never filled")));
        assert!(matches!(full, RelayError::StorageFull(_)), "{full:?}");
        assert_eq!(full.code(), ErrorCode::InsufficientStorage);
        let other = sqlx::query("SELECT * FROM missing")
            .execute(&mut c)
            .await
            .unwrap_err();
        assert!(matches!(
            RelayError::from(Error::from(other)),
            RelayError::Store(_)
        ));
    }
}
