//! Tokens as admins manage them (introspection reads them in `token_store`).

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, DatabaseTransaction, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    SqlErr,
};
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::AuditEvent;
use service_accounts_domain::ids::{OrgId, ServiceAccountId, TokenId};
use service_accounts_domain::query::{After, ListedToken, TokenQuery, TokenTime};
use service_accounts_domain::store::{
    Created, Ending, Issue, Rotated, StoreResult, TokenAdminStore,
};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::{Revocation, Token, TokenHash};

use super::query::{Segment, condition, keyset, segments, time_column, token_predicate};
use super::{live_accounts, revoke};
use crate::Database;
use crate::entity::{service_account, token};
use crate::error::{Failure, run};
use crate::rows::{self, listed, token_row};

impl TokenAdminStore for Database {
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
            let reader = self.reader().await?;
            let row = token::Entity::find_by_id(id.to_string())
                .filter(token::Column::OrgId.eq(org.as_str()))
                .filter(token::Column::ServiceAccountId.eq(account.to_string()))
                .one(&reader)
                .await?;
            reader.done().await?;
            Ok(row.map(rows::token).transpose()?)
        })
        .await
    }

    async fn list_tokens(&self, query: &TokenQuery) -> StoreResult<Vec<ListedToken>> {
        run(async {
            let mut select = token::Entity::find()
                .find_also_related(service_account::Entity)
                .filter(token::Column::OrgId.eq(query.org.as_str()))
                .filter(service_account::Column::DeletedAt.is_null());
            if let Some(account) = query.account {
                select = select.filter(token::Column::ServiceAccountId.eq(account.to_string()));
            }
            if let Some(filter) = &query.filter {
                select = select.filter(condition(filter, &|p, negated| {
                    token_predicate(p, negated, query.now)
                }));
            }
            let key = time_column(query.order.by);
            let reader = self.reader().await?;
            let after = query.after.map(|after| After {
                time: after.time,
                id: after.id.to_string(),
            });
            let mut rows = Vec::new();
            for segment in segments(
                query.order.by != TokenTime::Create,
                query.order.unset_first(),
                after.as_ref().map(|a| a.time),
            ) {
                let wanted = u64::from(query.limit) - rows.len() as u64;
                if wanted == 0 {
                    break;
                }
                let cursor = after
                    .clone()
                    .filter(|a| a.time.is_some() == (segment == Segment::Set));
                let page = keyset(
                    select.clone(),
                    key,
                    token::Column::Id,
                    query.order.descending,
                    segment,
                    cursor,
                    wanted,
                );
                rows.extend(page.all(&reader).await?);
            }
            reader.done().await?;
            Ok(rows
                .into_iter()
                .map(listed)
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
