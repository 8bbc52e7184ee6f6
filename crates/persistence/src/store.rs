//! The store: one `DatabaseConnection`, either SQLite or PostgreSQL.

use std::time::Duration;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::AuditEvent;
use service_accounts_domain::ids::{OrgId, ServiceAccountId, TokenId, UserId};
use service_accounts_domain::introspection::TokenGrant;
use service_accounts_domain::scope::Scopes;
use service_accounts_domain::service_account::{AppAccess, ServiceAccount};
use service_accounts_domain::store::{AdminStore, StoreResult, TokenStore};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::{Token, TokenHash};
use service_accounts_migrations::{Migrator, MigratorTrait};

use crate::changes::notify;
use crate::convert;
use crate::entity::{audit_event, service_account, service_account_app as app, token};
use crate::error::store_error;

/// Advisory lock key that serialises migrations across replicas ("sa-migr" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_612d_6d69_6772;

/// The storage adapter. Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Database {
    db: DatabaseConnection,
}

/// Opens a pool to `url` (`sqlite://…` or `postgres://…`) and checks that it answers.
pub async fn connect(url: &str, max_connections: u32) -> Result<Database, StoreError> {
    let db = sea_orm::Database::connect(options(url, max_connections))
        .await
        .map_err(store_error)?;
    db.ping().await.map_err(store_error)?;
    Ok(Database { db })
}

/// Like [`connect`], but connects on first use, so that a server can come up (and report
/// NOT_SERVING) before its database answers.
pub async fn connect_lazy(url: &str, max_connections: u32) -> Result<Database, StoreError> {
    let mut options = options(url, max_connections);
    options.connect_lazy(true);
    let db = sea_orm::Database::connect(options)
        .await
        .map_err(store_error)?;
    Ok(Database { db })
}

fn options(url: &str, max_connections: u32) -> ConnectOptions {
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
        });
    options
}

impl Database {
    /// Applies pending migrations. Returns how many were applied.
    ///
    /// On PostgreSQL, replicas starting together take turns: the migration runs in one
    /// transaction holding an advisory lock, and the others find nothing left to do.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        if self.db.get_database_backend() != sea_orm::DbBackend::Postgres {
            let pending = Migrator::get_pending_migrations(&self.db)
                .await
                .map_err(store_error)?
                .len();
            Migrator::up(&self.db, None).await.map_err(store_error)?;
            return Ok(pending);
        }
        let txn = self.db.begin().await.map_err(store_error)?;
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await
            .map_err(store_error)?;
        let pending = Migrator::get_pending_migrations(&txn)
            .await
            .map_err(store_error)?
            .len();
        Migrator::up(&txn, None).await.map_err(store_error)?;
        txn.commit().await.map_err(store_error)?;
        Ok(pending)
    }

    /// Sends `payload` on the change channel outside any transaction (heartbeats).
    pub(crate) async fn notify_raw(&self, payload: &str) -> Result<(), StoreError> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [crate::changes::CHANNEL.into(), payload.into()],
            ))
            .await
            .map(drop)
            .map_err(store_error)
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
        self.db.close().await.map_err(store_error)
    }

    /// A transaction that takes SQLite's write lock up front: a deferred one that reads first
    /// fails with SQLITE_BUSY, without waiting, if another writer commits in between.
    async fn write_transaction(&self) -> Result<DatabaseTransaction, StoreError> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        self.db
            .begin_with_options(options)
            .await
            .map_err(store_error)
    }

    async fn app_ids(
        &self,
        db: &impl ConnectionTrait,
        account: &str,
    ) -> Result<Vec<String>, DbErr> {
        let rows = app::Entity::find()
            .filter(app::Column::ServiceAccountId.eq(account))
            .order_by_asc(app::Column::AppId)
            .all(db)
            .await?;
        Ok(rows.into_iter().map(|r| r.app_id).collect())
    }
}

async fn insert_event(db: &impl ConnectionTrait, event: &AuditEvent) -> Result<(), DbErr> {
    audit_event::Entity::insert(audit_event::ActiveModel {
        id: Set(event.id.to_string()),
        org_id: Set(event.org_id.to_string()),
        actor: Set(event.actor.to_string()),
        action: Set(event.action.clone()),
        target_type: Set(event.target_type.clone()),
        target_id: Set(event.target_id.clone()),
        request_id: Set(event.request_id.clone()),
        created_at: Set(event.create_time),
        details: Set(event.details.clone()),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// The token-by-hash lookup, in each backend's placeholder syntax.
fn grant_query(backend: sea_orm::DbBackend) -> &'static str {
    macro_rules! lookup {
        ($placeholder:literal) => {
            concat!(
                "SELECT t.id AS token_id, t.token_hash, t.scopes, t.expire_at, t.revoked_at, ",
                "a.id AS account_id, a.org_id, a.display_name, a.all_apps ",
                "FROM tokens t JOIN service_accounts a ON a.id = t.service_account_id ",
                "WHERE t.token_hash = ",
                $placeholder
            )
        };
    }
    match backend {
        sea_orm::DbBackend::Postgres => lookup!("$1"),
        _ => lookup!("?"),
    }
}

/// Commits a mutation and, once it is durable, logs its audit event for operators.
async fn commit_audited(txn: DatabaseTransaction, event: &AuditEvent) -> StoreResult<()> {
    txn.commit().await.map_err(store_error)?;
    tracing::info!(
        target: "audit",
        action = %event.action,
        org_id = %event.org_id,
        actor = %event.actor,
        target_type = %event.target_type,
        target_id = %event.target_id,
        request_id = %event.request_id,
        details = %event.details,
        "admin change committed"
    );
    Ok(())
}

/// Replaces the account's explicit app list with the one in `access`.
async fn write_apps(
    db: &impl ConnectionTrait,
    account: &str,
    access: &AppAccess,
) -> Result<(), DbErr> {
    app::Entity::delete_many()
        .filter(app::Column::ServiceAccountId.eq(account))
        .exec(db)
        .await?;
    if let AppAccess::Apps(apps) = access
        && !apps.is_empty()
    {
        app::Entity::insert_many(apps.iter().map(|a| app::ActiveModel {
            service_account_id: Set(account.to_owned()),
            app_id: Set(a.as_str().to_owned()),
        }))
        .exec_without_returning(db)
        .await?;
    }
    Ok(())
}

fn account_row(account: &ServiceAccount) -> service_account::ActiveModel {
    service_account::ActiveModel {
        id: Set(account.id.to_string()),
        org_id: Set(account.org_id.to_string()),
        display_name: Set(account.display_name.as_str().to_owned()),
        display_name_key: Set(account.display_name.uniqueness_key()),
        description: Set(account.description.as_str().to_owned()),
        all_apps: Set(matches!(account.app_access, AppAccess::AllApps)),
        created_at: Set(account.create_time),
        updated_at: Set(account.update_time),
        created_by: Set(account.created_by.to_string()),
        revision: Set(account.revision),
    }
}

impl AdminStore for Database {
    async fn create_service_account(
        &self,
        account: &ServiceAccount,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = self.write_transaction().await?;
        service_account::Entity::insert(account_row(account))
            .exec_without_returning(&txn)
            .await
            .map_err(store_error)?;
        write_apps(&txn, &account.id.to_string(), &account.app_access)
            .await
            .map_err(store_error)?;
        insert_event(&txn, event).await.map_err(store_error)?;
        commit_audited(txn, event).await
    }

    async fn get_service_account(
        &self,
        org: &OrgId,
        id: ServiceAccountId,
    ) -> StoreResult<Option<ServiceAccount>> {
        let Some(row) = service_account::Entity::find_by_id(id.to_string())
            .filter(service_account::Column::OrgId.eq(org.as_str()))
            .one(&self.db)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let apps = self.app_ids(&self.db, &row.id).await.map_err(store_error)?;
        convert::service_account(row, apps).map(Some)
    }

    async fn list_service_accounts(
        &self,
        org: &OrgId,
        after: Option<ServiceAccountId>,
        limit: u32,
    ) -> StoreResult<Vec<ServiceAccount>> {
        let mut query =
            service_account::Entity::find().filter(service_account::Column::OrgId.eq(org.as_str()));
        if let Some(after) = after {
            query = query.filter(service_account::Column::Id.gt(after.to_string()));
        }
        let rows = query
            .order_by_asc(service_account::Column::Id)
            .limit(u64::from(limit))
            .all(&self.db)
            .await
            .map_err(store_error)?;
        let ids: Vec<String> = rows
            .iter()
            .filter(|r| !r.all_apps)
            .map(|r| r.id.clone())
            .collect();
        let mut grants = app::Entity::find()
            .filter(app::Column::ServiceAccountId.is_in(ids))
            .order_by_asc(app::Column::AppId)
            .all(&self.db)
            .await
            .map_err(store_error)?;
        rows.into_iter()
            .map(|row| {
                let (mine, rest): (Vec<_>, Vec<_>) = grants
                    .drain(..)
                    .partition(|g| g.service_account_id == row.id);
                grants = rest;
                convert::service_account(row, mine.into_iter().map(|g| g.app_id).collect())
            })
            .collect()
    }

    async fn update_service_account(
        &self,
        account: &ServiceAccount,
        expected_revision: i64,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = self.write_transaction().await?;
        let id = account.id.to_string();
        let mut row = account_row(account);
        // Identity columns never change.
        row.id = sea_orm::ActiveValue::NotSet;
        row.org_id = sea_orm::ActiveValue::NotSet;
        row.created_at = sea_orm::ActiveValue::NotSet;
        row.created_by = sea_orm::ActiveValue::NotSet;
        let updated = service_account::Entity::update_many()
            .set(row)
            .filter(service_account::Column::Id.eq(id.as_str()))
            .filter(service_account::Column::OrgId.eq(account.org_id.as_str()))
            .filter(service_account::Column::Revision.eq(expected_revision))
            .exec(&txn)
            .await
            .map_err(store_error)?;
        if updated.rows_affected != 1 {
            return Err(StoreError::Stale);
        }
        write_apps(&txn, &id, &account.app_access)
            .await
            .map_err(store_error)?;
        insert_event(&txn, event).await.map_err(store_error)?;
        notify(&txn, account.id).await.map_err(store_error)?;
        commit_audited(txn, event).await
    }

    async fn delete_service_account(
        &self,
        org: &OrgId,
        id: ServiceAccountId,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        let txn = self.write_transaction().await?;
        let deleted = id;
        let id = id.to_string();
        let exists = service_account::Entity::find_by_id(id.as_str())
            .filter(service_account::Column::OrgId.eq(org.as_str()))
            .one(&txn)
            .await
            .map_err(store_error)?
            .is_some();
        if !exists {
            return Ok(false);
        }
        // Explicit rather than relying on ON DELETE CASCADE being enabled on every connection.
        token::Entity::delete_many()
            .filter(token::Column::ServiceAccountId.eq(id.as_str()))
            .exec(&txn)
            .await
            .map_err(store_error)?;
        app::Entity::delete_many()
            .filter(app::Column::ServiceAccountId.eq(id.as_str()))
            .exec(&txn)
            .await
            .map_err(store_error)?;
        service_account::Entity::delete_by_id(id.as_str())
            .exec(&txn)
            .await
            .map_err(store_error)?;
        insert_event(&txn, event).await.map_err(store_error)?;
        notify(&txn, deleted).await.map_err(store_error)?;
        commit_audited(txn, event).await?;
        Ok(true)
    }

    async fn create_token(
        &self,
        org: &OrgId,
        token: &Token,
        hash: &TokenHash,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        let txn = self.write_transaction().await?;
        // Re-check inside the transaction so a token never outlives a concurrent delete.
        let account_exists =
            service_account::Entity::find_by_id(token.service_account_id.to_string())
                .filter(service_account::Column::OrgId.eq(org.as_str()))
                .one(&txn)
                .await
                .map_err(store_error)?
                .is_some();
        if !account_exists {
            return Ok(false);
        }
        let inserted = token::Entity::insert(token::ActiveModel {
            id: Set(token.id.to_string()),
            service_account_id: Set(token.service_account_id.to_string()),
            org_id: Set(org.to_string()),
            display_name: Set(token.display_name.as_str().to_owned()),
            token_hash: Set(hash.as_bytes().to_vec()),
            scopes: Set(token.scopes.to_stored()),
            hint: Set(token.hint.clone()),
            created_at: Set(token.create_time),
            created_by: Set(token.created_by.to_string()),
            expire_at: Set(token.expire_time),
            revoked_at: Set(None),
            revoked_by: Set(None),
            last_used_at: Set(None),
        })
        .exec_without_returning(&txn)
        .await;
        match inserted {
            Ok(_) => {}
            // The account was deleted concurrently (the check above does not lock its row).
            Err(error)
                if matches!(
                    error.sql_err(),
                    Some(SqlErr::ForeignKeyConstraintViolation(_))
                ) =>
            {
                return Ok(false);
            }
            Err(error) => return Err(store_error(error)),
        }
        insert_event(&txn, event).await.map_err(store_error)?;
        commit_audited(txn, event).await?;
        Ok(true)
    }

    async fn get_token(
        &self,
        org: &OrgId,
        account: ServiceAccountId,
        id: TokenId,
    ) -> StoreResult<Option<Token>> {
        token::Entity::find_by_id(id.to_string())
            .filter(token::Column::OrgId.eq(org.as_str()))
            .filter(token::Column::ServiceAccountId.eq(account.to_string()))
            .one(&self.db)
            .await
            .map_err(store_error)?
            .map(convert::token)
            .transpose()
    }

    async fn list_tokens(
        &self,
        org: &OrgId,
        account: ServiceAccountId,
        after: Option<TokenId>,
        limit: u32,
    ) -> StoreResult<Vec<Token>> {
        let mut query = token::Entity::find()
            .filter(token::Column::OrgId.eq(org.as_str()))
            .filter(token::Column::ServiceAccountId.eq(account.to_string()));
        if let Some(after) = after {
            query = query.filter(token::Column::Id.gt(after.to_string()));
        }
        query
            .order_by_asc(token::Column::Id)
            .limit(u64::from(limit))
            .all(&self.db)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(convert::token)
            .collect()
    }

    async fn revoke_token(
        &self,
        org: &OrgId,
        account: ServiceAccountId,
        id: TokenId,
        at: Timestamp,
        by: &UserId,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        let txn = self.write_transaction().await?;
        let updated = token::Entity::update_many()
            .col_expr(token::Column::RevokedAt, Expr::value(at))
            .col_expr(token::Column::RevokedBy, Expr::value(by.to_string()))
            .filter(token::Column::Id.eq(id.to_string()))
            .filter(token::Column::OrgId.eq(org.as_str()))
            .filter(token::Column::ServiceAccountId.eq(account.to_string()))
            .filter(token::Column::RevokedAt.is_null())
            .exec(&txn)
            .await
            .map_err(store_error)?;
        if updated.rows_affected == 0 {
            return Ok(false);
        }
        insert_event(&txn, event).await.map_err(store_error)?;
        notify(&txn, account).await.map_err(store_error)?;
        commit_audited(txn, event).await?;
        Ok(true)
    }

    async fn list_audit_events(
        &self,
        org: &OrgId,
        after: Option<uuid::Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEvent>> {
        let mut query =
            audit_event::Entity::find().filter(audit_event::Column::OrgId.eq(org.as_str()));
        if let Some(after) = after {
            query = query.filter(audit_event::Column::Id.gt(after.hyphenated().to_string()));
        }
        query
            .order_by_asc(audit_event::Column::Id)
            .limit(u64::from(limit))
            .all(&self.db)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(convert::audit_event)
            .collect()
    }
}

impl TokenStore for Database {
    async fn find_token(&self, hash: &TokenHash) -> StoreResult<Option<TokenGrant>> {
        // The hot lookup: one hand-written statement (prepared once per connection) for the
        // token and its account, decoding only what introspection needs; a second round trip
        // only for accounts with an explicit app list.
        let backend = self.db.get_database_backend();
        let statement = Statement::from_sql_and_values(
            backend,
            grant_query(backend),
            [hash.as_bytes().to_vec().into()],
        );
        let Some(row) = self
            .db
            .query_one_raw(statement)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let column = |e: DbErr| StoreError::Other(format!("token lookup row: {e}"));
        let token_id: String = row.try_get("", "token_id").map_err(column)?;
        let stored_hash: Vec<u8> = row.try_get("", "token_hash").map_err(column)?;
        let scopes: String = row.try_get("", "scopes").map_err(column)?;
        let expire_time: Option<Timestamp> = row.try_get("", "expire_at").map_err(column)?;
        let revoke_time: Option<Timestamp> = row.try_get("", "revoked_at").map_err(column)?;
        let account_id: String = row.try_get("", "account_id").map_err(column)?;
        let org_id: String = row.try_get("", "org_id").map_err(column)?;
        let display_name: String = row.try_get("", "display_name").map_err(column)?;
        let all_apps: bool = row.try_get("", "all_apps").map_err(column)?;
        let apps = if all_apps {
            Vec::new()
        } else {
            self.app_ids(&self.db, &account_id)
                .await
                .map_err(store_error)?
        };
        let token_hash = TokenHash::from_slice(&stored_hash)
            .ok_or_else(|| StoreError::Other("stored token hash is not 32 bytes".into()))?;
        Ok(Some(TokenGrant {
            token_id: convert::token_id(&token_id)?,
            token_hash,
            org_id: convert::org_id(&org_id)?,
            service_account_id: convert::account_id(&account_id)?,
            service_account_display_name: display_name,
            scopes: Scopes::from_stored(&scopes),
            app_access: convert::app_access(all_apps, apps)?,
            expire_time,
            revoke_time,
        }))
    }

    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> StoreResult<()> {
        let txn = self.write_transaction().await?;
        for (id, at) in uses {
            token::Entity::update_many()
                .col_expr(token::Column::LastUsedAt, Expr::value(*at))
                .filter(token::Column::Id.eq(id.to_string()))
                .filter(
                    token::Column::LastUsedAt
                        .is_null()
                        .or(token::Column::LastUsedAt.lt(*at)),
                )
                .exec(&txn)
                .await
                .map_err(store_error)?;
        }
        txn.commit().await.map_err(store_error)
    }
}
