//! Queries through a transaction pooler (PgBouncer's `pool_mode = transaction`).
//!
//! Such a pooler gives a client a server connection for one transaction at a time. Two things
//! sqlx does by default break there: it prepares named statements (`sqlx_s_1`, …) once per client
//! connection and reuses them later, when the server connection may be another one; and it
//! parses a statement and executes it in two exchanges, between which the pooler may switch
//! server connections when no transaction is open. So, on that path ([`QueryPath::Pooler`]):
//!
//! - every statement runs inside a transaction, reads included ([`Reader`]);
//! - nothing is cached across transactions (statement cache off), and each transaction starts by
//!   dropping the statements other clients left on its server connection ([`pooled_begin`]);
//! - no session state is set at connect (no startup `options`, no `extra_float_digits`, which
//!   PgBouncer refuses): the idle-in-transaction timeout is set per transaction instead.
//!
//! The price: a read that takes one round trip on a direct connection ([`QueryPath::Direct`],
//! which keeps prepared statements and reads on the pool) takes about five here (`BEGIN`, the
//! step above, parse, execute, `COMMIT`).

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, Statement,
};

/// How queries reach the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueryPath {
    /// Straight to PostgreSQL (or a session pooler), or SQLite.
    #[default]
    Direct,
    /// Through a transaction pooler such as PgBouncer in transaction pooling.
    Pooler,
}

/// Run first in every transaction on [`QueryPath::Pooler`], in one round trip: named statements
/// another client prepared on this server connection would collide with ours (sqlx numbers them
/// from 1 on every client connection), and the session-level timeout set at connect on a direct
/// connection has to be set for the transaction here.
pub(crate) fn pooled_begin() -> String {
    format!(
        "DEALLOCATE ALL; SET LOCAL idle_in_transaction_session_timeout = '{}'",
        crate::connect::IDLE_IN_TRANSACTION_TIMEOUT
    )
}

/// Where a read runs: on the pool, or (through a transaction pooler) in a transaction of its
/// own. Finish it with [`Reader::done`]; one dropped early rolls back, which a read may.
pub(crate) enum Reader<'a> {
    Pool(&'a DatabaseConnection),
    Transaction(DatabaseTransaction),
}

impl Reader<'_> {
    /// Ends the read (commits its transaction, if it has one).
    pub(crate) async fn done(self) -> Result<(), DbErr> {
        match self {
            Reader::Pool(_) => Ok(()),
            Reader::Transaction(txn) => txn.commit().await,
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Reader<'_> {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Reader::Pool(db) => db.get_database_backend(),
            Reader::Transaction(txn) => txn.get_database_backend(),
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Reader::Pool(db) => db.execute_raw(stmt).await,
            Reader::Transaction(txn) => txn.execute_raw(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Reader::Pool(db) => db.execute_unprepared(sql).await,
            Reader::Transaction(txn) => txn.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Reader::Pool(db) => db.query_one_raw(stmt).await,
            Reader::Transaction(txn) => txn.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Reader::Pool(db) => db.query_all_raw(stmt).await,
            Reader::Transaction(txn) => txn.query_all_raw(stmt).await,
        }
    }
}
