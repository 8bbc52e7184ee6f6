//! Maps sea-orm errors onto the domain's `StoreError`, recognising our unique indexes by name.
//!
//! Inside an operation, sea-orm calls use `?` into [`Failure`]; each operation converts to
//! `StoreError` once, at its edge ([`run`]).

use std::future::Future;

use sea_orm::{DbErr, RuntimeErr, SqlErr};
use service_accounts_domain::StoreError;
use service_accounts_domain::error::Conflict;

/// PostgreSQL reports the index name; SQLite reports `table.column` pairs. Match either.
const CONFLICTS: &[(&[&str], Conflict)] = &[
    (
        &[
            "service_accounts_org_display_name_key",
            "service_accounts.display_name_key",
        ],
        Conflict::ServiceAccountDisplayName,
    ),
    (
        &["tokens_token_hash_key", "tokens.token_hash"],
        Conflict::TokenHash,
    ),
];

/// A failure inside one storage operation.
#[derive(Debug)]
pub(crate) enum Failure {
    Db(DbErr),
    Store(StoreError),
}

impl From<DbErr> for Failure {
    fn from(error: DbErr) -> Self {
        Failure::Db(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Store(error)
    }
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Db(error) => store_error(error),
            Failure::Store(error) => error,
        }
    }
}

/// Runs one storage operation, converting its failure once.
pub(crate) async fn run<T>(
    operation: impl Future<Output = Result<T, Failure>>,
) -> Result<T, StoreError> {
    operation.await.map_err(StoreError::from)
}

pub(crate) fn store_error(error: DbErr) -> StoreError {
    if let Some(SqlErr::UniqueConstraintViolation(message)) = error.sql_err() {
        for (needles, conflict) in CONFLICTS {
            if needles.iter().any(|n| message.contains(n)) {
                return StoreError::Conflict(*conflict);
            }
        }
    }
    if is_unavailable(&error) {
        return StoreError::Unavailable(error.to_string());
    }
    StoreError::Other(error.to_string())
}

/// SQLite's "database is busy/locked" result codes, with their extended forms: another writer
/// held the lock for longer than the busy timeout. Retrying later may succeed.
const SQLITE_BUSY_OR_LOCKED: &[&str] = &["5", "6", "261", "262", "517"];

fn is_unavailable(error: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    match error {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e)) => {
            match &**e {
                Sqlx::Io(_)
                | Sqlx::Tls(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Protocol(_) => true,
                Sqlx::Database(db) => db
                    .code()
                    .is_some_and(|code| SQLITE_BUSY_OR_LOCKED.contains(&code.as_ref())),
                _ => false,
            }
        }
        _ => false,
    }
}
