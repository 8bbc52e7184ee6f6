//! The admin side of storage: accounts, their app grants, tokens as admins see them, and the
//! audit trail. Every mutation ends in [`Database::commit`].

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
};
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::{AuditEvent, AuditRecord};
use service_accounts_domain::ids::{OrgId, ServiceAccountId, TokenId, UserId};
use service_accounts_domain::service_account::{AppAccess, ServiceAccount};
use service_accounts_domain::store::{AdminStore, Created, StoreResult};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::{Token, TokenHash};

use crate::Database;
use crate::entity::{audit_event, service_account, service_account_app as app, token};
use crate::error::{Failure, run};
use crate::rows::{self, account_row};

impl AdminStore for Database {
    async fn create_service_account(
        &self,
        account: &ServiceAccount,
        max_per_org: u32,
        event: &AuditEvent,
    ) -> StoreResult<Created> {
        run(async {
            let txn = self.write_transaction().await?;
            self.serialize_on(&txn, &format!("org:{}", account.org_id))
                .await?;
            let count = service_account::Entity::find()
                .filter(service_account::Column::OrgId.eq(account.org_id.as_str()))
                .count(&txn)
                .await?;
            if count >= u64::from(max_per_org) {
                return Ok(Created::OverQuota);
            }
            service_account::Entity::insert(account_row(account))
                .exec_without_returning(&txn)
                .await?;
            write_apps(&txn, &account.id.to_string(), &account.app_access).await?;
            self.commit(txn, event).await?;
            Ok(Created::Created)
        })
        .await
    }

    async fn get_service_account(
        &self,
        org: &OrgId,
        id: ServiceAccountId,
    ) -> StoreResult<Option<ServiceAccount>> {
        run(async {
            let Some(row) = service_account::Entity::find_by_id(id.to_string())
                .filter(service_account::Column::OrgId.eq(org.as_str()))
                .one(&self.db)
                .await?
            else {
                return Ok(None);
            };
            let apps = app_ids(&self.db, &row.id).await?;
            Ok(Some(rows::service_account(row, apps)?))
        })
        .await
    }

    async fn list_service_accounts(
        &self,
        org: &OrgId,
        after: Option<ServiceAccountId>,
        limit: u32,
    ) -> StoreResult<Vec<ServiceAccount>> {
        run(async {
            let mut query = service_account::Entity::find()
                .filter(service_account::Column::OrgId.eq(org.as_str()));
            if let Some(after) = after {
                query = query.filter(service_account::Column::Id.gt(after.to_string()));
            }
            let accounts = query
                .order_by_asc(service_account::Column::Id)
                .limit(u64::from(limit))
                .all(&self.db)
                .await?;
            let explicit: Vec<String> = accounts
                .iter()
                .filter(|r| !r.all_apps)
                .map(|r| r.id.clone())
                .collect();
            // One query for the page's grants, grouped in one pass.
            let mut apps: HashMap<String, Vec<String>> = HashMap::new();
            for grant in app::Entity::find()
                .filter(app::Column::ServiceAccountId.is_in(explicit))
                .order_by_asc(app::Column::AppId)
                .all(&self.db)
                .await?
            {
                apps.entry(grant.service_account_id)
                    .or_default()
                    .push(grant.app_id);
            }
            let page = accounts
                .into_iter()
                .map(|row| {
                    let ids = apps.remove(&row.id).unwrap_or_default();
                    rows::service_account(row, ids)
                })
                .collect::<Result<_, StoreError>>()?;
            Ok(page)
        })
        .await
    }

    async fn update_service_account(
        &self,
        account: &ServiceAccount,
        expected_revision: i64,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        run(async {
            let txn = self.write_transaction().await?;
            let id = account.id.to_string();
            let mut row = account_row(account);
            // Identity columns never change.
            row.id = NotSet;
            row.org_id = NotSet;
            row.created_at = NotSet;
            row.created_by = NotSet;
            let updated = service_account::Entity::update_many()
                .set(row)
                .filter(service_account::Column::Id.eq(id.as_str()))
                .filter(service_account::Column::OrgId.eq(account.org_id.as_str()))
                .filter(service_account::Column::Revision.eq(expected_revision))
                .exec(&txn)
                .await?;
            if updated.rows_affected != 1 {
                return Err(StoreError::Stale.into());
            }
            write_apps(&txn, &id, &account.app_access).await?;
            self.commit(txn, event).await
        })
        .await
    }

    async fn delete_service_account(
        &self,
        org: &OrgId,
        id: ServiceAccountId,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        run(async {
            let txn = self.write_transaction().await?;
            let id = id.to_string();
            let exists = service_account::Entity::find_by_id(id.as_str())
                .filter(service_account::Column::OrgId.eq(org.as_str()))
                .one(&txn)
                .await?
                .is_some();
            if !exists {
                return Ok(false);
            }
            // Explicit rather than relying on ON DELETE CASCADE being enabled on every connection.
            token::Entity::delete_many()
                .filter(token::Column::ServiceAccountId.eq(id.as_str()))
                .exec(&txn)
                .await?;
            app::Entity::delete_many()
                .filter(app::Column::ServiceAccountId.eq(id.as_str()))
                .exec(&txn)
                .await?;
            service_account::Entity::delete_by_id(id.as_str())
                .exec(&txn)
                .await?;
            self.commit(txn, event).await?;
            Ok(true)
        })
        .await
    }

    async fn create_token(
        &self,
        org: &OrgId,
        token: &Token,
        hash: &TokenHash,
        max_live: u32,
        event: &AuditEvent,
    ) -> StoreResult<Created> {
        run(async {
            let txn = self.write_transaction().await?;
            let account = token.service_account_id.to_string();
            self.serialize_on(&txn, &format!("service_account:{account}"))
                .await?;
            // Re-check inside the transaction so a token never outlives a concurrent delete.
            let account_exists = service_account::Entity::find_by_id(account.as_str())
                .filter(service_account::Column::OrgId.eq(org.as_str()))
                .one(&txn)
                .await?
                .is_some();
            if !account_exists {
                return Ok(Created::NoParent);
            }
            let live = token::Entity::find()
                .filter(token::Column::ServiceAccountId.eq(account.as_str()))
                .filter(token::Column::RevokedAt.is_null())
                .filter(
                    token::Column::ExpireAt
                        .is_null()
                        .or(token::Column::ExpireAt.gt(token.create_time)),
                )
                .count(&txn)
                .await?;
            if live >= u64::from(max_live) {
                return Ok(Created::OverQuota);
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
                    return Ok(Created::NoParent);
                }
                Err(error) => return Err(error.into()),
            }
            self.commit_issuing(txn, event, Some(hash)).await?;
            Ok(Created::Created)
        })
        .await
    }

    async fn get_token(
        &self,
        org: &OrgId,
        account: ServiceAccountId,
        id: TokenId,
    ) -> StoreResult<Option<Token>> {
        run(async {
            let row = token::Entity::find_by_id(id.to_string())
                .filter(token::Column::OrgId.eq(org.as_str()))
                .filter(token::Column::ServiceAccountId.eq(account.to_string()))
                .one(&self.db)
                .await?;
            Ok(row.map(rows::token).transpose()?)
        })
        .await
    }

    async fn list_tokens(
        &self,
        org: &OrgId,
        account: ServiceAccountId,
        after: Option<TokenId>,
        limit: u32,
    ) -> StoreResult<Vec<Token>> {
        run(async {
            let mut query = token::Entity::find()
                .filter(token::Column::OrgId.eq(org.as_str()))
                .filter(token::Column::ServiceAccountId.eq(account.to_string()));
            if let Some(after) = after {
                query = query.filter(token::Column::Id.gt(after.to_string()));
            }
            let tokens = query
                .order_by_asc(token::Column::Id)
                .limit(u64::from(limit))
                .all(&self.db)
                .await?;
            Ok(tokens
                .into_iter()
                .map(rows::token)
                .collect::<Result<_, StoreError>>()?)
        })
        .await
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
        run(async {
            let txn = self.write_transaction().await?;
            let updated = token::Entity::update_many()
                .col_expr(token::Column::RevokedAt, Expr::value(at))
                .col_expr(token::Column::RevokedBy, Expr::value(by.to_string()))
                .filter(token::Column::Id.eq(id.to_string()))
                .filter(token::Column::OrgId.eq(org.as_str()))
                .filter(token::Column::ServiceAccountId.eq(account.to_string()))
                .filter(token::Column::RevokedAt.is_null())
                .exec(&txn)
                .await?;
            if updated.rows_affected == 0 {
                return Ok(false);
            }
            self.commit(txn, event).await?;
            Ok(true)
        })
        .await
    }

    async fn list_audit_events(
        &self,
        org: &OrgId,
        after: Option<uuid::Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<AuditRecord>> {
        run(async {
            let mut query =
                audit_event::Entity::find().filter(audit_event::Column::OrgId.eq(org.as_str()));
            if let Some(after) = after {
                query = query.filter(audit_event::Column::Id.gt(after.hyphenated().to_string()));
            }
            let events = query
                .order_by_asc(audit_event::Column::Id)
                .limit(u64::from(limit))
                .all(&self.db)
                .await?;
            Ok(events
                .into_iter()
                .map(rows::audit_record)
                .collect::<Result<_, StoreError>>()?)
        })
        .await
    }
}

/// The account's explicit app ids, sorted.
pub(crate) async fn app_ids(
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

/// Replaces the account's explicit app list with the one in `access`.
async fn write_apps(
    db: &impl ConnectionTrait,
    account: &str,
    access: &AppAccess,
) -> Result<(), Failure> {
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
