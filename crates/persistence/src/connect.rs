//! Connecting, migrating and the pool: the [`Database`] handle every store method runs on.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use service_accounts_domain::StoreError;
use service_accounts_domain::changes::ChangeBus;
use service_accounts_migrations::{Migrator, MigratorTrait};

use crate::error::{Failure, run, store_error};
use crate::pooling::{QueryPath, Reader, pooled_begin};

/// Advisory lock key that serialises migrations across replicas ("sa-migr" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_612d_6d69_6772;

/// The storage adapter. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Database {
    pub(crate) db: DatabaseConnection,
    /// Where [`Self::write_transaction`] runs. On a SQLite file, a pool of one connection of its
    /// own: writers then wait their turn in the pool's first-come queue. Left to SQLite's busy
    /// handler, which retries after growing sleeps, a writer could wait through many batches of
    /// a large last-used flush. Elsewhere, the same pool as `db`.
    writer: DatabaseConnection,
    /// Where this replica's committed changes are published (its cache, its change feed).
    pub(crate) changes: ChangeBus,
    /// Names this process in the change notifications it sends, so that it skips its own.
    pub(crate) origin: Arc<str>,
    /// Whether queries go through a transaction pooler (see [`crate::pooling`]).
    path: QueryPath,
    /// Held while any clone lives: see [`lock_sqlite_file`].
    _file_lock: Option<Arc<File>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.db.get_database_backend())
            .finish_non_exhaustive()
    }
}

/// Opens a pool to `url` (`sqlite://…` or `postgres://…`) and checks that it answers.
pub async fn connect(
    url: &str,
    max_connections: u32,
    path: QueryPath,
) -> Result<Database, StoreError> {
    let db = connect_lazy(url, max_connections, path).await?;
    db.ping().await?;
    Ok(db)
}

/// Like [`connect`], but connects on first use, so that a server can come up (and report
/// NOT_SERVING) before its database answers.
pub async fn connect_lazy(
    url: &str,
    max_connections: u32,
    path: QueryPath,
) -> Result<Database, StoreError> {
    let file_lock = lock_sqlite_file(url)?;
    let pool = async |max_connections| {
        let mut options = options(url, max_connections, path);
        options.connect_lazy(true);
        sea_orm::Database::connect(options)
            .await
            .map_err(store_error)
    };
    let db = pool(max_connections).await?;
    // An in-memory database exists once per connection unless shared: it keeps one pool.
    let writer = match file_lock {
        Some(_) => pool(1).await?,
        None => db.clone(),
    };
    Ok(Database {
        db,
        writer,
        // Nobody listens until told: commands such as `migrate` serve no introspection.
        changes: ChangeBus::default(),
        origin: crate::changes::new_origin().into(),
        path,
        _file_lock: file_lock,
    })
}

/// SQLite has no change notifications between processes, so a second server on the same file
/// would serve revoked tokens from its cache. One process per file: the second is refused.
/// The lock is the operating system's (released when the process ends, however it ends).
fn lock_sqlite_file(url: &str) -> Result<Option<Arc<File>>, StoreError> {
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Other(format!("invalid SQLite URL: {e}")))?;
    let path = options.get_filename();
    if path.to_string_lossy().starts_with("file:") {
        return Ok(None); // in memory: private to this process
    }
    let lock_path = format!("{}.lock", path.display());
    let fail = |e: std::io::Error| StoreError::Other(format!("{lock_path}: {e}"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(fail)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(fail)?;
            write!(file, "{}", std::process::id()).map_err(fail)?;
            Ok(Some(Arc::new(file)))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file
                .rewind()
                .and_then(|()| file.read_to_string(&mut holder));
            Err(StoreError::Other(format!(
                "the SQLite database {} is in use by another process (pid {}): the embedded \
                 mode serves from one process; run several replicas on PostgreSQL",
                path.display(),
                holder.trim()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
    }
}

/// How long PostgreSQL lets one of our sessions sit idle inside a transaction. Our transactions
/// never wait on anything but the database, so only a lost client gets near it.
pub(crate) const IDLE_IN_TRANSACTION_TIMEOUT: &str = "5s";

fn options(url: &str, max_connections: u32, path: QueryPath) -> ConnectOptions {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        // WAL lets introspection read while an admin write commits; the busy timeout makes
        // concurrent writers queue instead of failing.
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
                .create_if_missing(true)
        })
        // A replica cut off mid-transaction (a partition that closes nothing) would otherwise
        // hold its row locks forever and block every other replica's revocations of those rows.
        // Through a transaction pooler, sessions are shared: see `crate::pooling`.
        .map_sqlx_postgres_opts(move |o| match path {
            QueryPath::Direct => o.options([(
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            )]),
            QueryPath::Pooler => o.statement_cache_capacity(0).extra_float_digits(None),
        });
    options
}

impl Database {
    /// Every committed change that alters introspection answers is published on `changes`.
    pub fn publishing_to(self, changes: ChangeBus) -> Self {
        Self { changes, ..self }
    }

    pub(crate) fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == sea_orm::DbBackend::Postgres
    }

    /// Applies pending migrations. Returns how many were applied.
    ///
    /// On PostgreSQL, replicas starting together take turns: the migration runs in one
    /// transaction holding an advisory lock, and the others find nothing left to do.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        run(async {
            // One transaction on one connection: on SQLite a pooled connection in the middle of
            // a read could otherwise see the schema from before a step of the migration.
            let txn = self.begin().await?;
            if self.is_postgres() {
                txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                    .await?;
            }
            let pending = Migrator::get_pending_migrations(&txn).await?.len();
            Migrator::up(&txn, None).await?;
            txn.commit().await?;
            Ok::<_, Failure>(pending)
        })
        .await
    }

    /// Sends `payload` on the change channel outside any change (heartbeats): one statement in
    /// the simple protocol, so one round trip on either query path. The payload is the
    /// replica's own (letters, digits, `:` and `-`), never input, and is checked to be.
    pub(crate) async fn notify_raw(&self, payload: &str) -> Result<(), StoreError> {
        if !payload
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-')
        {
            return Err(StoreError::Other(format!("not a heartbeat: {payload:?}")));
        }
        let channel = crate::changes::CHANNEL;
        self.db
            .execute_unprepared(&format!("SELECT pg_notify('{channel}', '{payload}')"))
            .await
            .map(drop)
            .map_err(store_error)
    }

    /// A transaction on the pool, ready for statements on either query path.
    pub(crate) async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.db.begin().await?;
        self.prepare(&txn).await?;
        Ok(txn)
    }

    /// Where a read runs: the pool, or a transaction when a transaction pooler is in the way.
    pub(crate) async fn reader(&self) -> Result<Reader<'_>, DbErr> {
        match self.path {
            QueryPath::Direct => Ok(Reader::Pool(&self.db)),
            QueryPath::Pooler => Ok(Reader::Transaction(self.begin().await?)),
        }
    }

    async fn prepare(&self, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        if self.path == QueryPath::Pooler && self.is_postgres() {
            txn.execute_unprepared(&pooled_begin()).await?;
        }
        Ok(())
    }

    /// Pooled connections: (open, idle).
    pub fn pool_usage(&self) -> (u32, usize) {
        match self.db.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
            sea_orm::DbBackend::Sqlite => {
                let pool = self.db.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => (0, 0),
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(store_error)
    }

    pub async fn close(self) -> Result<(), StoreError> {
        self.writer.close().await.map_err(store_error)?;
        self.db.close().await.map_err(store_error)
    }

    /// Serialises the rest of `txn` with every other transaction that names `key` (a quota's
    /// subject), so that a count and the insert it allows are atomic. SQLite writers are already
    /// serialised by [`Self::write_transaction`]; PostgreSQL takes a transaction-scoped advisory
    /// lock.
    pub(crate) async fn serialize_on(
        &self,
        txn: &DatabaseTransaction,
        key: &str,
    ) -> Result<(), Failure> {
        if self.is_postgres() {
            txn.execute_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                [key.into()],
            ))
            .await?;
        }
        Ok(())
    }

    /// A transaction that takes SQLite's write lock up front: a deferred one that reads first
    /// fails with SQLITE_BUSY, without waiting, if another writer commits in between.
    pub(crate) async fn write_transaction(&self) -> Result<DatabaseTransaction, Failure> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let txn = self.writer.begin_with_options(options).await?;
        self.prepare(&txn).await?;
        Ok(txn)
    }
}
