//! The audit trail.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::AuditRecord;
use service_accounts_domain::query::{After, AuditQuery};
use service_accounts_domain::store::{AuditStore, StoreResult};

use super::query::{Segment, audit_predicate, condition, keyset};
use crate::Database;
use crate::entity::audit_event;
use crate::error::run;
use crate::rows;

impl AuditStore for Database {
    async fn list_audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        run(async {
            let mut select = audit_event::Entity::find()
                .filter(audit_event::Column::OrgId.eq(query.org.as_str()));
            if let Some(filter) = &query.filter {
                select = select.filter(condition(filter, &audit_predicate));
            }
            let reader = self.reader().await?;
            let events = keyset(
                select,
                audit_event::Column::CreatedAt,
                audit_event::Column::Id,
                query.order.descending,
                Segment::Set,
                query.after.map(|after| After {
                    time: after.time,
                    id: after.id.as_uuid().hyphenated().to_string(),
                }),
                u64::from(query.limit),
            )
            .all(&reader)
            .await?;
            reader.done().await?;
            Ok(events
                .into_iter()
                .map(rows::audit_record)
                .collect::<Result<_, StoreError>>()?)
        })
        .await
    }
}
