//! The audit trail.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::AuditRecord;
use service_accounts_domain::ids::OrgId;
use service_accounts_domain::store::{AuditStore, StoreResult};

use crate::Database;
use crate::entity::audit_event;
use crate::error::run;
use crate::rows::{self};

impl AuditStore for Database {
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
