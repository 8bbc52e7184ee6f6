//! Service accounts and their app grants.

use std::collections::HashMap;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::AuditEvent;
use service_accounts_domain::changes::Change;
use service_accounts_domain::ids::{OrgId, ServiceAccountId};
use service_accounts_domain::labels::Labels;
use service_accounts_domain::query::AccountQuery;
use service_accounts_domain::service_account::{AppAccess, ServiceAccount};
use service_accounts_domain::store::{AccountStore, Created, StoreResult};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::Revocation;

use super::query::{account_predicate, condition};
use super::{live_accounts, revoke};
use crate::Database;
use crate::entity::{
    service_account, service_account_app as app, service_account_label as label, token,
};
use crate::error::{Failure, run};
use crate::rows::{self, account_row};

impl AccountStore for Database {
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
            let id = account.id.to_string();
            write_apps(&txn, &id, &account.app_access).await?;
            write_labels(&txn, &id, &account.labels).await?;
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
            let reader = self.reader().await?;
            let row = live_accounts()
                .filter(service_account::Column::Id.eq(id.to_string()))
                .filter(service_account::Column::OrgId.eq(org.as_str()))
                .one(&reader)
                .await?;
            let account = match row {
                Some(row) => accounts(&reader, vec![row]).await?.pop(),
                None => None,
            };
            reader.done().await?;
            Ok(account)
        })
        .await
    }

    async fn list_service_accounts(
        &self,
        query: &AccountQuery,
    ) -> StoreResult<Vec<ServiceAccount>> {
        run(async {
            let mut select =
                live_accounts().filter(service_account::Column::OrgId.eq(query.org.as_str()));
            if let Some(filter) = &query.filter {
                select = select.filter(condition(filter, &account_predicate));
            }
            if let Some(after) = query.after {
                select = select.filter(service_account::Column::Id.gt(after.to_string()));
            }
            let reader = self.reader().await?;
            let rows = select
                .order_by_asc(service_account::Column::Id)
                .limit(u64::from(query.limit))
                .all(&reader)
                .await?;
            let accounts = accounts(&reader, rows).await?;
            reader.done().await?;
            Ok(accounts)
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
            write_labels(&txn, &id, &account.labels).await?;
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
                label::Entity::delete_many()
                    .filter(label::Column::ServiceAccountId.is_in(chunk.iter().cloned()))
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
}

/// The accounts of these rows, in their order, with their grants, labels and last use: a
/// query each for the whole page, grouped in one pass.
async fn accounts(
    db: &impl ConnectionTrait,
    rows: Vec<service_account::Model>,
) -> Result<Vec<ServiceAccount>, Failure> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let explicit: Vec<String> = rows
        .iter()
        .filter(|r| !r.all_apps)
        .map(|r| r.id.clone())
        .collect();
    let mut apps: HashMap<String, Vec<String>> = HashMap::new();
    if !explicit.is_empty() {
        for grant in app::Entity::find()
            .filter(app::Column::ServiceAccountId.is_in(explicit))
            .order_by_asc(app::Column::AppId)
            .all(db)
            .await?
        {
            apps.entry(grant.service_account_id)
                .or_default()
                .push(grant.app_id);
        }
    }
    let mut labels: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for row in label::Entity::find()
        .filter(label::Column::ServiceAccountId.is_in(ids.clone()))
        .all(db)
        .await?
    {
        labels
            .entry(row.service_account_id)
            .or_default()
            .push((row.key, row.value));
    }
    let mut last_used = last_used_times(db, ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let app_ids = apps.remove(&row.id).unwrap_or_default();
            let labels = labels.remove(&row.id).unwrap_or_default();
            let last_used = last_used.remove(&row.id);
            rows::service_account(row, app_ids, &labels, last_used)
        })
        .collect::<Result<_, StoreError>>()?)
}

/// Replaces the account's labels with `labels`.
async fn write_labels(
    db: &impl ConnectionTrait,
    account: &str,
    labels: &Labels,
) -> Result<(), Failure> {
    label::Entity::delete_many()
        .filter(label::Column::ServiceAccountId.eq(account))
        .exec(db)
        .await?;
    if !labels.is_empty() {
        label::Entity::insert_many(labels.iter().map(|(key, value)| label::ActiveModel {
            service_account_id: Set(account.to_owned()),
            key: Set(key.to_owned()),
            value: Set(value.to_owned()),
        }))
        .exec_without_returning(db)
        .await?;
    }
    Ok(())
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
