//! The introspection side of storage: one lookup by hash, and last-used times.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QueryResult,
    Statement,
};
use service_accounts_domain::StoreError;
use service_accounts_domain::ids::TokenId;
use service_accounts_domain::introspection::MAX_BATCH;
use service_accounts_domain::issued::prefix;
use service_accounts_domain::scope::Scopes;
use service_accounts_domain::service_account::AccountState;
use service_accounts_domain::store::{StoreResult, TokenStore};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::Usage;
use service_accounts_domain::token::{AccountRecord, TokenHash, TokenRecord};

use crate::Database;
use crate::entity::service_account_app as app;
use crate::error::run;
use crate::rows;

/// Tokens whose last use one statement records. Four parameters each, far below either backend's
/// limit; small enough that one statement holds SQLite's write lock for a few milliseconds.
const USES_PER_STATEMENT: usize = 250;

/// One multi-row `UPDATE` recording `uses`. A later use recorded meanwhile by another replica is
/// kept (never moves backwards); an app or address the use did not carry keeps its old value.
fn last_used_update(backend: sea_orm::DbBackend, uses: &[(TokenId, Usage)]) -> Statement {
    let mut values = Vec::with_capacity(uses.len() * 4);
    let mut rows = Vec::with_capacity(uses.len());
    for (id, usage) in uses {
        let first = values.len();
        let placeholders: Vec<String> = (first + 1..=first + 4)
            .map(|n| match backend {
                sea_orm::DbBackend::Postgres => format!("${n}"),
                _ => "?".to_owned(),
            })
            .collect();
        rows.push(format!("({})", placeholders.join(", ")));
        values.push(id.to_string().into());
        values.push(usage.at.into());
        values.push(
            usage
                .app_id
                .as_ref()
                .map(|app| app.as_str().to_owned())
                .into(),
        );
        values.push(usage.client_ip.map(|ip| ip.to_string()).into());
    }
    let sql = format!(
        "WITH uses (id, at, app_id, client_ip) AS (VALUES {}) \
         UPDATE tokens SET last_used_at = uses.at, \
         last_used_app_id = COALESCE(uses.app_id, tokens.last_used_app_id), \
         last_used_client_ip = COALESCE(uses.client_ip, tokens.last_used_client_ip) \
         FROM uses WHERE tokens.id = uses.id \
         AND (tokens.last_used_at IS NULL OR tokens.last_used_at < uses.at)",
        rows.join(", ")
    );
    Statement::from_sql_and_values(backend, sql, values)
}

/// The token-by-hash lookup of `n` hashes, in each backend's placeholder syntax. One statement
/// per batch size and backend, built once: each connection prepares the ones it runs.
fn lookup_query(backend: sea_orm::DbBackend, n: usize) -> &'static str {
    static QUERIES: LazyLock<[Vec<String>; 2]> = LazyLock::new(|| {
        let query = |placeholder: fn(usize) -> String, n: usize| {
            let list: Vec<String> = (1..=n).map(placeholder).collect();
            format!(
                "SELECT t.id AS token_id, t.token_hash, t.scopes, t.created_at, t.expire_at, \
                 t.revoked_at, t.allowed_cidrs, a.id AS account_id, a.org_id, a.display_name, a.all_apps, \
                 a.state, a.deleted_at \
                 FROM tokens t JOIN service_accounts a ON a.id = t.service_account_id \
                 WHERE t.token_hash IN ({})",
                list.join(", ")
            )
        };
        let sizes = 0..=MAX_BATCH;
        [
            sizes
                .clone()
                .map(|n| query(|i| format!("${i}"), n))
                .collect(),
            sizes.map(|n| query(|_| "?".to_owned(), n)).collect(),
        ]
    });
    let by_size = match backend {
        sea_orm::DbBackend::Postgres => &QUERIES[0],
        _ => &QUERIES[1],
    };
    &by_size[n]
}

impl TokenStore for Database {
    async fn find_tokens(
        &self,
        hashes: &[TokenHash],
    ) -> StoreResult<Vec<(TokenHash, StoreResult<TokenRecord>)>> {
        // The hot lookup: one hand-written statement for the batch's tokens and their accounts,
        // decoding only what introspection needs; a second round trip only when some account
        // has an explicit app list.
        if hashes.is_empty() || hashes.len() > MAX_BATCH {
            return Err(StoreError::Other(format!(
                "a token lookup takes 1 to {MAX_BATCH} hashes, not {}",
                hashes.len()
            )));
        }
        run(async {
            let backend = self.db.get_database_backend();
            let statement = Statement::from_sql_and_values(
                backend,
                lookup_query(backend, hashes.len()),
                hashes.iter().map(|h| h.as_bytes().to_vec().into()),
            );
            let reader = self.reader().await?;
            let rows = reader.query_all_raw(statement).await?;
            // A row that cannot be read fails the lookups of its own token only; a row whose
            // very hash cannot be read cannot be told apart, and fails the batch.
            let mut found = Vec::with_capacity(rows.len());
            for row in &rows {
                found.push((Found::hash(row)?, Found::read(row)));
            }
            let explicit: Vec<&str> = found
                .iter()
                .filter_map(|(_, f)| f.as_ref().ok())
                .filter(|f| !f.all_apps)
                .map(|f| f.account_id.as_str())
                .collect();
            let apps = apps_of(&reader, &explicit).await?;
            reader.done().await?;
            let records = found
                .into_iter()
                .map(|(hash, f)| {
                    let record = f.and_then(|f| {
                        let apps = apps.get(&f.account_id).cloned().unwrap_or_default();
                        f.into_record(hash, apps)
                    });
                    (hash, record)
                })
                .collect();
            Ok(records)
        })
        .await
    }

    async fn issued_prefixes(&self) -> StoreResult<Vec<u64>> {
        run(async {
            let reader = self.reader().await?;
            let rows = reader
                .query_all_raw(Statement::from_string(
                    self.db.get_database_backend(),
                    "SELECT token_hash FROM tokens",
                ))
                .await?;
            reader.done().await?;
            let mut prefixes = Vec::with_capacity(rows.len());
            for row in rows {
                let hash: Vec<u8> = row.try_get("", "token_hash")?;
                if let Some(hash) = TokenHash::from_slice(&hash) {
                    prefixes.push(prefix(&hash));
                }
            }
            Ok(prefixes)
        })
        .await
    }

    async fn record_last_used(&self, uses: &[(TokenId, Usage)]) -> StoreResult<()> {
        // One statement and one short transaction per batch: a flush of any size holds the write
        // lock for one batch at a time, so admin writes wait for a batch, not for the flush.
        for batch in uses.chunks(USES_PER_STATEMENT) {
            run(async {
                let txn = self.write_transaction().await?;
                let backend = txn.get_database_backend();
                if backend == sea_orm::DbBackend::Postgres {
                    // Last-used times are best effort (uses wait in memory until a flush anyway):
                    // their commits need not wait for the WAL to reach disk, and then do not
                    // queue admin commits behind hundreds of flushes of their own.
                    txn.execute_unprepared("SET LOCAL synchronous_commit = off")
                        .await?;
                }
                txn.execute_raw(last_used_update(backend, batch)).await?;
                txn.commit().await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

/// One row of the token lookup.
struct Found {
    token_id: String,
    scopes: String,
    create_time: Timestamp,
    expire_time: Option<Timestamp>,
    revoke_time: Option<Timestamp>,
    allowed_cidrs: String,
    state: String,
    deleted_at: Option<Timestamp>,
    account_id: String,
    org_id: String,
    display_name: String,
    all_apps: bool,
}

fn lookup_column(error: DbErr) -> StoreError {
    StoreError::Other(format!("token lookup row: {error}"))
}

impl Found {
    fn hash(row: &QueryResult) -> StoreResult<TokenHash> {
        let stored: Vec<u8> = row.try_get("", "token_hash").map_err(lookup_column)?;
        TokenHash::from_slice(&stored)
            .ok_or_else(|| StoreError::Other("stored token hash is not 32 bytes".into()))
    }

    fn read(row: &QueryResult) -> StoreResult<Self> {
        let column = lookup_column;
        Ok(Self {
            token_id: row.try_get("", "token_id").map_err(column)?,
            scopes: row.try_get("", "scopes").map_err(column)?,
            create_time: row.try_get("", "created_at").map_err(column)?,
            expire_time: row.try_get("", "expire_at").map_err(column)?,
            revoke_time: row.try_get("", "revoked_at").map_err(column)?,
            allowed_cidrs: row.try_get("", "allowed_cidrs").map_err(column)?,
            state: row.try_get("", "state").map_err(column)?,
            deleted_at: row.try_get("", "deleted_at").map_err(column)?,
            account_id: row.try_get("", "account_id").map_err(column)?,
            org_id: row.try_get("", "org_id").map_err(column)?,
            display_name: row.try_get("", "display_name").map_err(column)?,
            all_apps: row.try_get("", "all_apps").map_err(column)?,
        })
    }

    fn into_record(self, token_hash: TokenHash, apps: Vec<String>) -> StoreResult<TokenRecord> {
        Ok(TokenRecord {
            token_id: rows::token_id(&self.token_id)?,
            token_hash,
            scopes: Scopes::from_stored(&self.scopes),
            create_time: self.create_time,
            expire_time: self.expire_time,
            // Deletion revokes every token in its transaction; reading the account's deletion
            // too keeps that true whatever wrote the rows.
            revoke_time: self.revoke_time.or(self.deleted_at),
            allowed_cidrs: rows::allowed_cidrs(&self.allowed_cidrs)?,
            account: Arc::new(AccountRecord {
                org_id: rows::org_id(&self.org_id)?,
                service_account_id: rows::account_id(&self.account_id)?,
                display_name: self.display_name.into(),
                app_access: rows::app_access(self.all_apps, apps)?,
                disabled: rows::account_state(&self.state)? == AccountState::Disabled,
            }),
        })
    }
}

/// The explicit app lists of these accounts, in one query (none when there are none).
async fn apps_of(
    db: &impl ConnectionTrait,
    accounts: &[&str],
) -> Result<HashMap<String, Vec<String>>, DbErr> {
    let mut apps: HashMap<String, Vec<String>> = HashMap::new();
    if accounts.is_empty() {
        return Ok(apps);
    }
    let rows = app::Entity::find()
        .filter(app::Column::ServiceAccountId.is_in(accounts.iter().copied()))
        .order_by_asc(app::Column::AppId)
        .all(db)
        .await?;
    for row in rows {
        apps.entry(row.service_account_id)
            .or_default()
            .push(row.app_id);
    }
    Ok(apps)
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use sea_orm::{ActiveValue::Set, EntityTrait};
    use service_accounts_domain::audit::{AuditAction, AuditEvent, Target};
    use service_accounts_domain::ids::{AuditEventId, OrgId, ServiceAccountId, UserId};
    use service_accounts_domain::service_account::{
        AppAccess, AppId, Description, DisplayName, ServiceAccount,
    };
    use service_accounts_domain::store::AccountStore;
    use service_accounts_domain::time;

    use super::*;
    use crate::entity::token;

    /// An account with `count` tokens, straight into storage; their ids in insertion order.
    async fn tokens(db: &Database, count: usize) -> Vec<TokenId> {
        let now = time::now();
        let admin = UserId::parse("admin").unwrap();
        let account = ServiceAccount {
            id: ServiceAccountId::generate(),
            org_id: OrgId::parse("org").unwrap(),
            display_name: DisplayName::parse("Bot").unwrap(),
            description: Description::parse("").unwrap(),
            app_access: AppAccess::AllApps,
            create_time: now,
            update_time: now,
            created_by: admin.clone(),
            state: AccountState::Active,
            labels: Default::default(),
            last_used_time: None,
            revision: 1,
        };
        let created = AuditEvent {
            id: AuditEventId::generate(),
            org_id: account.org_id.clone(),
            actor: admin,
            action: AuditAction::ServiceAccountCreate,
            target: Target::ServiceAccount(account.id),
            request_id: "request".into(),
            create_time: now,
            details: "{}".into(),
            validate_only: false,
        };
        db.create_service_account(&account, 10, &created)
            .await
            .unwrap();
        let ids: Vec<TokenId> = (0..count).map(|_| TokenId::generate()).collect();
        let rows = ids.iter().enumerate().map(|(n, id)| token::ActiveModel {
            id: Set(id.to_string()),
            service_account_id: Set(account.id.to_string()),
            org_id: Set("org".into()),
            display_name: Set(format!("token {n}")),
            token_hash: Set(n.to_be_bytes().to_vec()),
            scopes: Set("mcp:tools:call".into()),
            hint: Set("emb_sa_…".into()),
            created_at: Set(now),
            created_by: Set("admin".into()),
            allowed_cidrs: Set(String::new()),
            ..Default::default()
        });
        for chunk in rows.collect::<Vec<_>>().chunks(200) {
            token::Entity::insert_many(chunk.to_vec())
                .exec(&db.db)
                .await
                .unwrap();
        }
        ids
    }

    fn used(at: Timestamp, app: Option<&str>) -> Usage {
        Usage {
            at,
            app_id: app.map(|a| AppId::parse(a).unwrap()),
            client_ip: None,
        }
    }

    #[tokio::test]
    async fn a_flush_of_several_statements_records_every_use_and_never_moves_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = crate::connect(&url, 2, crate::QueryPath::Direct)
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let count = 2 * USES_PER_STATEMENT + 1;
        let ids = tokens(&db, count).await;
        let t1 = time::now();
        let first: Vec<_> = ids.iter().map(|id| (*id, used(t1, Some("ios")))).collect();
        db.record_last_used(&first).await.unwrap();

        // An older use (another replica's, flushed late) and a newer one without an app.
        let older = t1 - Duration::seconds(5);
        let newer = t1 + Duration::seconds(5);
        let second = [
            (ids[0], used(older, Some("android"))),
            (ids[count - 1], used(newer, None)),
        ];
        db.record_last_used(&second).await.unwrap();

        let rows = token::Entity::find().all(&db.db).await.unwrap();
        assert_eq!(rows.len(), count);
        let last_id = ids[count - 1].to_string();
        let at = |row: &token::Model| row.last_used_at.map(|t| t.timestamp_micros());
        for row in &rows {
            let expected = if row.id == last_id { newer } else { t1 };
            assert_eq!(
                at(row),
                Some(expected.timestamp_micros()),
                "{}",
                row.display_name
            );
            // Kept by the newer use, which had no app; not taken from the older one.
            assert_eq!(
                row.last_used_app_id.as_deref(),
                Some("ios"),
                "{}",
                row.display_name
            );
        }
        db.close().await.unwrap();
    }
}
