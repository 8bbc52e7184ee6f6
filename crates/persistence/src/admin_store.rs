//! The admin side of storage: accounts, their app grants, tokens as admins see them, and the
//! audit trail. Every mutation ends in [`Database::commit`].

use std::collections::HashMap;

use chrono::TimeDelta;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseTransaction, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    SqlErr,
};
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::{AuditEvent, AuditRecord};
use service_accounts_domain::changes::Change;
use service_accounts_domain::ids::{OrgId, ServiceAccountId, TokenId};
use service_accounts_domain::policy::{StoredPolicy, TokenPolicy};
use service_accounts_domain::service_account::{AppAccess, ServiceAccount};
use service_accounts_domain::store::{AdminStore, Created, Ending, Issue, Rotated, StoreResult};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::{Revocation, Token, TokenHash};

use crate::Database;
use crate::entity::{
    audit_event, service_account, service_account_app as app, token, token_policy,
};
use crate::error::{Failure, run};
use crate::rows::{self, account_row, token_row};

/// Accounts that are not deleted.
fn live_accounts() -> sea_orm::Select<service_account::Entity> {
    service_account::Entity::find().filter(service_account::Column::DeletedAt.is_null())
}

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
            let count = live_accounts()
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
            let Some(row) = live_accounts()
                .filter(service_account::Column::Id.eq(id.to_string()))
                .filter(service_account::Column::OrgId.eq(org.as_str()))
                .one(&self.db)
                .await?
            else {
                return Ok(None);
            };
            let apps = app_ids(&self.db, &row.id).await?;
            let mut last_used = last_used_times(&self.db, vec![row.id.clone()]).await?;
            let last_used = last_used.remove(&row.id);
            Ok(Some(rows::service_account(row, apps, last_used)?))
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
            let mut query = live_accounts().filter(service_account::Column::OrgId.eq(org.as_str()));
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
            let mut last_used =
                last_used_times(&self.db, accounts.iter().map(|r| r.id.clone()).collect()).await?;
            let page = accounts
                .into_iter()
                .map(|row| {
                    let ids = apps.remove(&row.id).unwrap_or_default();
                    let last_used = last_used.remove(&row.id);
                    rows::service_account(row, ids, last_used)
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
            row.deleted_at = NotSet;
            let updated = service_account::Entity::update_many()
                .set(row)
                .filter(service_account::Column::Id.eq(id.as_str()))
                .filter(service_account::Column::OrgId.eq(account.org_id.as_str()))
                .filter(service_account::Column::DeletedAt.is_null())
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
        revocation: &Revocation,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        run(async {
            let txn = self.write_transaction().await?;
            let id = id.to_string();
            // The lock token creation takes: no token is issued to an account being deleted.
            self.serialize_on(&txn, &format!("service_account:{id}"))
                .await?;
            let deleted = service_account::Entity::update_many()
                .col_expr(
                    service_account::Column::DeletedAt,
                    Expr::value(revocation.at),
                )
                .filter(service_account::Column::Id.eq(id.as_str()))
                .filter(service_account::Column::OrgId.eq(org.as_str()))
                .filter(service_account::Column::DeletedAt.is_null())
                .exec(&txn)
                .await?;
            if deleted.rows_affected == 0 {
                return Ok(false);
            }
            revoke(
                &txn,
                Condition::all().add(token::Column::ServiceAccountId.eq(id.as_str())),
                revocation,
            )
            .await?;
            self.commit(txn, event).await?;
            Ok(true)
        })
        .await
    }

    async fn purge_deleted(&self, before: Timestamp) -> StoreResult<u64> {
        run(async {
            let txn = self.write_transaction().await?;
            let purged: Vec<(String, String)> = service_account::Entity::find()
                .select_only()
                .column(service_account::Column::Id)
                .column(service_account::Column::OrgId)
                .filter(service_account::Column::DeletedAt.lt(before))
                .into_tuple()
                .all(&txn)
                .await?;
            let ids: Vec<String> = purged.iter().map(|(id, _)| id.clone()).collect();
            for chunk in ids.chunks(500) {
                token::Entity::delete_many()
                    .filter(token::Column::ServiceAccountId.is_in(chunk.iter().cloned()))
                    .exec(&txn)
                    .await?;
                app::Entity::delete_many()
                    .filter(app::Column::ServiceAccountId.is_in(chunk.iter().cloned()))
                    .exec(&txn)
                    .await?;
                service_account::Entity::delete_many()
                    .filter(service_account::Column::Id.is_in(chunk.iter().cloned()))
                    .exec(&txn)
                    .await?;
            }
            // Their tokens now introspect as unknown rather than revoked.
            let changes = purge_changes(&purged);
            for change in &changes {
                let typed = crate::changes::payload(change, &self.origin);
                for payload in typed
                    .into_iter()
                    .chain(crate::changes::legacy_payload(change))
                {
                    crate::changes::notify(&txn, &payload).await?;
                }
            }
            self.commit_then_publish(txn, changes).await?;
            Ok(ids.len() as u64)
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
            // Re-checked under the account's lock, which deletion takes too, so a token never
            // outlives a concurrent delete.
            let account_exists = live_accounts()
                .filter(service_account::Column::Id.eq(account.as_str()))
                .filter(service_account::Column::OrgId.eq(org.as_str()))
                .one(&txn)
                .await?
                .is_some();
            if !account_exists {
                return Ok(Created::NoParent);
            }
            if !under_quota(&txn, &account, token.create_time, max_live).await? {
                return Ok(Created::OverQuota);
            }
            if !insert_token(&txn, org, token, hash).await? {
                return Ok(Created::NoParent);
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
        revocation: &Revocation,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        run(async {
            let txn = self.write_transaction().await?;
            let revoked = revoke(
                &txn,
                Condition::all()
                    .add(token::Column::Id.eq(id.to_string()))
                    .add(token::Column::OrgId.eq(org.as_str()))
                    .add(token::Column::ServiceAccountId.eq(account.to_string())),
                revocation,
            )
            .await?;
            if revoked == 0 {
                return Ok(false);
            }
            self.commit(txn, event).await?;
            Ok(true)
        })
        .await
    }

    async fn list_expiring_tokens(
        &self,
        org: &OrgId,
        from: Timestamp,
        until: Timestamp,
        after: Option<(Timestamp, TokenId)>,
        limit: u32,
    ) -> StoreResult<Vec<Token>> {
        run(async {
            let mut query = token::Entity::find()
                .filter(token::Column::OrgId.eq(org.as_str()))
                .filter(token::Column::RevokedAt.is_null())
                .filter(token::Column::ExpireAt.gte(from))
                .filter(token::Column::ExpireAt.lte(until));
            if let Some((time, id)) = after {
                query = query.filter(
                    Condition::any().add(token::Column::ExpireAt.gt(time)).add(
                        Condition::all()
                            .add(token::Column::ExpireAt.eq(time))
                            .add(token::Column::Id.gt(id.to_string())),
                    ),
                );
            }
            let tokens = query
                .order_by_asc(token::Column::ExpireAt)
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

    async fn update_token(
        &self,
        org: &OrgId,
        token: &Token,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        run(async {
            let txn = self.write_transaction().await?;
            let updated = token::Entity::update_many()
                .col_expr(
                    token::Column::DisplayName,
                    Expr::value(token.display_name.as_str()),
                )
                .col_expr(
                    token::Column::AllowedCidrs,
                    Expr::value(token.allowed_cidrs.to_stored()),
                )
                .filter(token::Column::Id.eq(token.id.to_string()))
                .filter(token::Column::OrgId.eq(org.as_str()))
                .filter(token::Column::ServiceAccountId.eq(token.service_account_id.to_string()))
                .exec(&txn)
                .await?;
            if updated.rows_affected != 1 {
                return Err(StoreError::Stale.into());
            }
            self.commit(txn, event).await
        })
        .await
    }

    async fn rotate_token(
        &self,
        org: &OrgId,
        old: TokenId,
        ending: &Ending,
        issue: Issue<'_>,
        event: &AuditEvent,
    ) -> StoreResult<Rotated> {
        let Issue {
            token: new,
            hash,
            max_live,
        } = issue;
        run(async {
            let txn = self.write_transaction().await?;
            let account = new.service_account_id.to_string();
            self.serialize_on(&txn, &format!("service_account:{account}"))
                .await?;
            let now = new.create_time;
            let old_token = Condition::all()
                .add(token::Column::Id.eq(old.to_string()))
                .add(token::Column::OrgId.eq(org.as_str()))
                .add(token::Column::ServiceAccountId.eq(account.as_str()));
            let live = Condition::all()
                .add(token::Column::RevokedAt.is_null())
                .add(
                    token::Column::ExpireAt
                        .is_null()
                        .or(token::Column::ExpireAt.gt(now)),
                );
            let ended = match ending {
                Ending::Revoke(revocation) => revoke(&txn, old_token.add(live), revocation).await?,
                Ending::ExpireBy(at) => {
                    // Only ever earlier: a token expiring before the grace period ends keeps
                    // its own expiry.
                    token::Entity::update_many()
                        .col_expr(token::Column::ExpireAt, Expr::value(*at))
                        .filter(old_token.clone().add(live.clone()))
                        .filter(
                            token::Column::ExpireAt
                                .is_null()
                                .or(token::Column::ExpireAt.gt(*at)),
                        )
                        .exec(&txn)
                        .await?;
                    token::Entity::find()
                        .filter(old_token.add(live))
                        .count(&txn)
                        .await?
                }
            };
            if ended == 0 {
                return Ok(Rotated::OldTokenEnded);
            }
            if !under_quota(&txn, &account, now, max_live).await? {
                return Ok(Rotated::OverQuota);
            }
            if !insert_token(&txn, org, new, hash).await? {
                return Ok(Rotated::OldTokenEnded);
            }
            self.commit_issuing(txn, event, Some(hash)).await?;
            Ok(Rotated::Rotated)
        })
        .await
    }

    async fn get_token_policy(&self, org: &OrgId) -> StoreResult<StoredPolicy> {
        run(async {
            let Some(row) = token_policy::Entity::find_by_id(org.as_str())
                .one(&self.db)
                .await?
            else {
                return Ok(StoredPolicy::default());
            };
            Ok(StoredPolicy {
                policy: TokenPolicy {
                    max_lifetime: row.max_lifetime_seconds.map(TimeDelta::seconds),
                    default_lifetime: row.default_lifetime_seconds.map(TimeDelta::seconds),
                },
                revision: row.revision,
            })
        })
        .await
    }

    async fn put_token_policy(
        &self,
        org: &OrgId,
        policy: &TokenPolicy,
        expected_revision: i64,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        run(async {
            let txn = self.write_transaction().await?;
            let row = token_policy::ActiveModel {
                org_id: Set(org.to_string()),
                max_lifetime_seconds: Set(policy.max_lifetime.map(|d| d.num_seconds())),
                default_lifetime_seconds: Set(policy.default_lifetime.map(|d| d.num_seconds())),
                revision: Set(expected_revision + 1),
                updated_at: Set(event.create_time),
                updated_by: Set(event.actor.to_string()),
            };
            if expected_revision == 0 {
                let inserted = token_policy::Entity::insert(row)
                    .exec_without_returning(&txn)
                    .await;
                match inserted {
                    Ok(_) => {}
                    // Another admin stored the org's first policy meanwhile.
                    Err(error)
                        if matches!(
                            error.sql_err(),
                            Some(SqlErr::UniqueConstraintViolation(_))
                        ) =>
                    {
                        return Err(StoreError::Stale.into());
                    }
                    Err(error) => return Err(error.into()),
                }
            } else {
                let updated = token_policy::Entity::update_many()
                    .set(row)
                    .filter(token_policy::Column::OrgId.eq(org.as_str()))
                    .filter(token_policy::Column::Revision.eq(expected_revision))
                    .exec(&txn)
                    .await?;
                if updated.rows_affected != 1 {
                    return Err(StoreError::Stale.into());
                }
            }
            self.commit(txn, event).await
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

/// Revokes the tokens matching `which` that are not revoked yet; returns how many.
async fn revoke(
    txn: &DatabaseTransaction,
    which: Condition,
    revocation: &Revocation,
) -> Result<u64, DbErr> {
    let updated = token::Entity::update_many()
        .col_expr(token::Column::RevokedAt, Expr::value(revocation.at))
        .col_expr(
            token::Column::RevokedBy,
            Expr::value(revocation.by.to_string()),
        )
        .col_expr(
            token::Column::RevokeReason,
            Expr::value(revocation.reason.as_str()),
        )
        .filter(which)
        .filter(token::Column::RevokedAt.is_null())
        .exec(txn)
        .await?;
    Ok(updated.rows_affected)
}

/// Whether the account has fewer than `max_live` tokens that are neither revoked nor expired
/// at `now`. Run under the account's lock, so the count holds until the insert.
async fn under_quota(
    txn: &DatabaseTransaction,
    account: &str,
    now: Timestamp,
    max_live: u32,
) -> Result<bool, DbErr> {
    let live = token::Entity::find()
        .filter(token::Column::ServiceAccountId.eq(account))
        .filter(token::Column::RevokedAt.is_null())
        .filter(
            token::Column::ExpireAt
                .is_null()
                .or(token::Column::ExpireAt.gt(now)),
        )
        .count(txn)
        .await?;
    Ok(live < u64::from(max_live))
}

/// Inserts a new token; `false` if its account is gone (a foreign-key violation).
async fn insert_token(
    txn: &DatabaseTransaction,
    org: &OrgId,
    token: &Token,
    hash: &TokenHash,
) -> Result<bool, Failure> {
    match token::Entity::insert(token_row(org, token, hash))
        .exec_without_returning(txn)
        .await
    {
        Ok(_) => Ok(true),
        Err(error)
            if matches!(
                error.sql_err(),
                Some(SqlErr::ForeignKeyConstraintViolation(_))
            ) =>
        {
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// The latest last-used time of each listed account's tokens (accounts without a used token
/// are absent).
async fn last_used_times(
    db: &impl ConnectionTrait,
    accounts: Vec<String>,
) -> Result<HashMap<String, Timestamp>, DbErr> {
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, Option<Timestamp>)> = token::Entity::find()
        .select_only()
        .column(token::Column::ServiceAccountId)
        .column_as(token::Column::LastUsedAt.max(), "last_used_at")
        .filter(token::Column::ServiceAccountId.is_in(accounts))
        .filter(token::Column::LastUsedAt.is_not_null())
        .group_by(token::Column::ServiceAccountId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(account, at)| at.map(|at| (account, at)))
        .collect())
}

/// What a purge of these accounts (id, org) publishes: an invalidation each, or, past a few
/// dozen accounts, one "everything" instead of a notification per account.
fn purge_changes(purged: &[(String, String)]) -> Vec<Change> {
    const MOST_ONE_BY_ONE: usize = 64;
    if purged.len() > MOST_ONE_BY_ONE {
        return vec![Change::Everything];
    }
    let accounts: Option<Vec<Change>> = purged
        .iter()
        .map(|(id, org)| {
            Some(Change::Account {
                org: OrgId::parse(org).ok()?,
                account: ServiceAccountId::parse(id).ok()?,
                token: None,
            })
        })
        .collect();
    accounts.unwrap_or_else(|| vec![Change::Everything])
}
