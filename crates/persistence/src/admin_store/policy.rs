//! The org's token policy.

use chrono::TimeDelta;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, SqlErr};
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::AuditEvent;
use service_accounts_domain::ids::OrgId;
use service_accounts_domain::policy::{StoredPolicy, TokenPolicy};
use service_accounts_domain::store::{PolicyStore, StoreResult};

use crate::Database;
use crate::entity::token_policy;
use crate::error::run;

impl PolicyStore for Database {
    async fn get_token_policy(&self, org: &OrgId) -> StoreResult<StoredPolicy> {
        run(async {
            let reader = self.reader().await?;
            let row = token_policy::Entity::find_by_id(org.as_str())
                .one(&reader)
                .await?;
            reader.done().await?;
            let Some(row) = row else {
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
}
