//! The introspection side of storage: one lookup by hash, and last-used times.

use std::sync::Arc;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Statement};
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
use crate::entity::token;
use crate::error::run;
use crate::rows;

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
        run(async {
            let txn = self.write_transaction().await?;
            for (id, usage) in uses {
                let mut update = token::Entity::update_many()
                    .col_expr(token::Column::LastUsedAt, Expr::value(usage.at));
                if let Some(app) = &usage.app_id {
                    update =
                        update.col_expr(token::Column::LastUsedAppId, Expr::value(app.as_str()));
                }
                if let Some(ip) = usage.client_ip {
                    update = update
                        .col_expr(token::Column::LastUsedClientIp, Expr::value(ip.to_string()));
                }
                // Another replica may have written a later use: never move backwards.
                update
                    .filter(token::Column::Id.eq(id.to_string()))
                    .filter(
                        token::Column::LastUsedAt
                            .is_null()
                            .or(token::Column::LastUsedAt.lt(usage.at)),
                    )
                    .exec(&txn)
                    .await?;
            }
            txn.commit().await?;
            Ok(())
        })
        .await
    }
}
