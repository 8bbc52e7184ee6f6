//! The one way an admin change is committed.
//!
//! The change's statements have run in `txn`; [`Database::commit`] adds its audit event and,
//! when the event's action can alter introspection answers, a change notification for other
//! replicas, in the same transaction, then tells this replica's cache. A new mutation therefore
//! gets cache coherence by passing its event here, which the store trait's signature requires.

use sea_orm::{DatabaseTransaction, EntityTrait};
use service_accounts_domain::audit::AuditEvent;
use service_accounts_domain::changes::{Change, ChangeBus};
use service_accounts_domain::issued::prefix;
use service_accounts_domain::token::TokenHash;

use crate::Database;
use crate::changes::{notify, payload};
use crate::entity::audit_event;
use crate::error::Failure;
use crate::rows::audit_row;

impl Database {
    pub(crate) async fn commit(
        &self,
        txn: DatabaseTransaction,
        event: &AuditEvent,
    ) -> Result<(), Failure> {
        self.commit_issuing(txn, event, None).await
    }

    /// [`Self::commit`] for a change that issues the token with this hash: every replica also
    /// learns that it was issued (see `service_accounts_domain::issued`).
    pub(crate) async fn commit_issuing(
        &self,
        txn: DatabaseTransaction,
        event: &AuditEvent,
        issued: Option<&TokenHash>,
    ) -> Result<(), Failure> {
        audit_event::Entity::insert(audit_row(event))
            .exec_without_returning(&txn)
            .await?;
        let stale = Change::of_event(event);
        let issued = issued.map(|hash| Change::TokenIssued(prefix(hash)));
        for change in stale.iter().chain(&issued) {
            if let Some(payload) = payload(change, &self.origin) {
                notify(&txn, &payload).await?;
            }
        }
        // Armed before the commit: this replica publishes the change once the commit is done,
        // and also if the caller stops waiting during it (an extra invalidation costs one cache
        // miss; a missed one would serve a revoked token).
        let _publish = stale.map(|change| PublishOnDrop {
            bus: &self.changes,
            change,
        });
        txn.commit().await?;
        if let Some(issued) = issued {
            self.changes.publish(&issued);
        }
        tracing::info!(
            target: "audit",
            action = %event.action.as_str(),
            org_id = %event.org_id,
            actor = %event.actor,
            target_type = %event.target.type_name(),
            target_id = %event.target.id(),
            request_id = %event.request_id,
            details = %event.details,
            "admin change committed"
        );
        Ok(())
    }
}

/// Publishes `change` when dropped: arm it before a commit.
pub(crate) struct PublishOnDrop<'a> {
    pub(crate) bus: &'a ChangeBus,
    pub(crate) change: Change,
}

impl Drop for PublishOnDrop<'_> {
    fn drop(&mut self) {
        self.bus.publish(&self.change);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use service_accounts_domain::audit::{AuditAction, Target};
    use service_accounts_domain::ids::{AuditEventId, OrgId, UserId};
    use service_accounts_domain::service_account::{
        AccountState, AppAccess, Description, DisplayName, ServiceAccount,
    };
    use service_accounts_domain::store::AdminStore;
    use service_accounts_domain::time;

    use super::*;

    use service_accounts_domain::changes::Subscriber;
    use service_accounts_domain::ids::ServiceAccountId;

    /// The accounts of the changes published, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<ServiceAccountId>>);

    impl Subscriber for Recorder {
        fn changed(&self, change: &Change) {
            if let Change::Account { account, .. } = change {
                self.0.lock().unwrap().push(*account);
            }
        }
    }

    fn event(action: AuditAction, account: ServiceAccountId) -> AuditEvent {
        AuditEvent {
            id: AuditEventId::generate(),
            org_id: OrgId::parse("org").unwrap(),
            actor: UserId::parse("admin").unwrap(),
            action,
            target: Target::ServiceAccount(account),
            request_id: "request".into(),
            create_time: time::now(),
            details: "{}".into(),
        }
    }

    #[tokio::test]
    async fn changes_that_alter_introspection_are_published_once_committed_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let recorder = Arc::new(Recorder::default());
        let db = crate::connect(&url, 2)
            .await
            .unwrap()
            .publishing_to(ChangeBus::new(vec![recorder.clone()]));
        db.migrate().await.unwrap();
        let now = time::now();
        let mut account = ServiceAccount {
            id: ServiceAccountId::generate(),
            org_id: OrgId::parse("org").unwrap(),
            display_name: DisplayName::parse("Bot").unwrap(),
            description: Description::parse("").unwrap(),
            app_access: AppAccess::AllApps,
            create_time: now,
            update_time: now,
            created_by: UserId::parse("admin").unwrap(),
            state: AccountState::Active,
            last_used_time: None,
            revision: 1,
        };
        let create = event(AuditAction::ServiceAccountCreate, account.id);
        db.create_service_account(&account, 10, &create)
            .await
            .unwrap();
        assert!(
            recorder.0.lock().unwrap().is_empty(),
            "a new account has no tokens"
        );

        account.display_name = DisplayName::parse("Renamed").unwrap();
        account.revision = 2;
        let update = event(AuditAction::ServiceAccountUpdate, account.id);
        db.update_service_account(&account, 1, &update)
            .await
            .unwrap();
        assert_eq!(*recorder.0.lock().unwrap(), [account.id]);
        let stored = db
            .get_service_account(&account.org_id, account.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.display_name.as_str(), "Renamed");

        // A stale write commits nothing and publishes nothing.
        let stale = event(AuditAction::ServiceAccountUpdate, account.id);
        assert!(
            db.update_service_account(&account, 1, &stale)
                .await
                .is_err()
        );
        assert_eq!(recorder.0.lock().unwrap().len(), 1);
        db.close().await.unwrap();
    }

    #[test]
    fn an_armed_publication_fires_even_when_the_commit_is_abandoned() {
        let recorder = Arc::new(Recorder::default());
        let account = ServiceAccountId::generate();
        drop(PublishOnDrop {
            bus: &ChangeBus::new(vec![recorder.clone()]),
            change: Change::Account {
                org: OrgId::parse("org").unwrap(),
                account,
                token: None,
            },
        });
        assert_eq!(*recorder.0.lock().unwrap(), [account]);
    }
}
