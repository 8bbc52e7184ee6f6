//! The introspection side of storage: one lookup by hash, and last-used times.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbErr, Statement};
use service_accounts_domain::StoreError;
use service_accounts_domain::ids::TokenId;
use service_accounts_domain::issued::prefix;
use service_accounts_domain::last_used::Usage;
use service_accounts_domain::scope::Scopes;
use service_accounts_domain::service_account::AccountState;
use service_accounts_domain::store::{StoreResult, TokenStore};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::{AccountRecord, TokenHash, TokenRecord};

use crate::Database;
use crate::admin_store::app_ids;
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

/// The token-by-hash lookup, in each backend's placeholder syntax.
fn lookup_query(backend: sea_orm::DbBackend) -> &'static str {
    macro_rules! lookup {
        ($placeholder:literal) => {
            concat!(
                "SELECT t.id AS token_id, t.token_hash, t.scopes, t.expire_at, t.revoked_at, ",
                "t.allowed_cidrs, a.id AS account_id, a.org_id, a.display_name, a.all_apps, ",
                "a.state, a.deleted_at ",
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

impl TokenStore for Database {
    async fn find_token(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
        // The hot lookup: one hand-written statement (prepared once per connection) for the
        // token and its account, decoding only what introspection needs; a second round trip
        // only for accounts with an explicit app list.
        run(async {
            let backend = self.db.get_database_backend();
            let statement = Statement::from_sql_and_values(
                backend,
                lookup_query(backend),
                [hash.as_bytes().to_vec().into()],
            );
            let Some(row) = self.db.query_one_raw(statement).await? else {
                return Ok(None);
            };
            let column = |e: DbErr| StoreError::Other(format!("token lookup row: {e}"));
            let token_id: String = row.try_get("", "token_id").map_err(column)?;
            let stored_hash: Vec<u8> = row.try_get("", "token_hash").map_err(column)?;
            let scopes: String = row.try_get("", "scopes").map_err(column)?;
            let expire_time: Option<Timestamp> = row.try_get("", "expire_at").map_err(column)?;
            let revoke_time: Option<Timestamp> = row.try_get("", "revoked_at").map_err(column)?;
            let allowed_cidrs: String = row.try_get("", "allowed_cidrs").map_err(column)?;
            let state: String = row.try_get("", "state").map_err(column)?;
            let deleted_at: Option<Timestamp> = row.try_get("", "deleted_at").map_err(column)?;
            let account_id: String = row.try_get("", "account_id").map_err(column)?;
            let org_id: String = row.try_get("", "org_id").map_err(column)?;
            let display_name: String = row.try_get("", "display_name").map_err(column)?;
            let all_apps: bool = row.try_get("", "all_apps").map_err(column)?;
            let apps = if all_apps {
                Vec::new()
            } else {
                app_ids(&self.db, &account_id).await?
            };
            let token_hash = TokenHash::from_slice(&stored_hash)
                .ok_or_else(|| StoreError::Other("stored token hash is not 32 bytes".into()))?;
            Ok(Some(TokenRecord {
                token_id: rows::token_id(&token_id)?,
                token_hash,
                scopes: Scopes::from_stored(&scopes),
                expire_time,
                // Deletion revokes every token in its transaction; reading the account's
                // deletion too keeps that true whatever wrote the rows.
                revoke_time: revoke_time.or(deleted_at),
                allowed_cidrs: rows::allowed_cidrs(&allowed_cidrs)?,
                account: Arc::new(AccountRecord {
                    org_id: rows::org_id(&org_id)?,
                    service_account_id: rows::account_id(&account_id)?,
                    display_name,
                    app_access: rows::app_access(all_apps, apps)?,
                    disabled: rows::account_state(&state)? == AccountState::Disabled,
                }),
            }))
        })
        .await
    }

    async fn issued_prefixes(&self) -> StoreResult<Vec<u64>> {
        run(async {
            let rows = self
                .db
                .query_all_raw(Statement::from_string(
                    self.db.get_database_backend(),
                    "SELECT token_hash FROM tokens",
                ))
                .await?;
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
                txn.execute_raw(last_used_update(txn.get_database_backend(), batch))
                    .await?;
                txn.commit().await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
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
    use service_accounts_domain::store::AdminStore;
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
        let db = crate::connect(&url, 2).await.unwrap();
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
