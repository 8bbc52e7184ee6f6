//! The one way an admin change is committed.
//!
//! The change's statements have run in `txn`; [`Database::commit`] adds its audit event and,
//! when the event's action can alter introspection answers, a change notification for other
//! replicas, in the same transaction, then tells this replica's cache. A new mutation therefore
//! gets cache coherence by passing its event here, which the store trait's signature requires.

use sea_orm::{DatabaseTransaction, EntityTrait};
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::AuditEvent;
use service_accounts_domain::changes::Change;
use service_accounts_domain::issued::prefix;
use service_accounts_domain::token::TokenHash;

use crate::Database;
use crate::changes::{legacy_payload, notify, payload};
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
        if event.validate_only {
            // Every statement of the change ran, so every check held: keep none of it.
            txn.rollback().await?;
            return Ok(());
        }
        audit_event::Entity::insert(audit_row(event))
            .exec_without_returning(&txn)
            .await?;
        let stale = Change::of_event(event);
        let issued = issued.map(|hash| Change::TokenIssued(prefix(hash)));
        for change in stale.iter().chain(&issued) {
            for payload in payload(change, &self.origin)
                .into_iter()
                .chain(legacy_payload(change))
            {
                notify(&txn, &payload).await?;
            }
        }
        self.commit_then_publish(txn, stale.into_iter().chain(issued).collect())
            .await?;
        // Exported as one OTLP log record per event with these fields as its attributes (see
        // docs/operations.md): the names are a contract with SIEM pipelines.
        tracing::info!(
            name: "service_accounts.audit",
            target: "audit",
            event_id = %event.id,
            action = %event.action.as_str(),
            org_id = %event.org_id,
            actor = %event.actor,
            target_type = %event.target.type_name(),
            target_id = %event.target.id(),
            request_id = %event.request_id,
            details = %event.details,
            create_time = %event.create_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "admin change committed"
        );
        Ok(())
    }
}

impl Database {
    /// Commits `txn`, then publishes `changes` on this replica's bus, in a task of its own: a
    /// caller that stops waiting (a cancelled RPC, a timeout) can neither leave a committed
    /// change unpublished nor have it published before the commit lands, after which a re-read
    /// of the old row could be cached again.
    pub(crate) async fn commit_then_publish(
        &self,
        txn: DatabaseTransaction,
        changes: Vec<Change>,
    ) -> Result<(), Failure> {
        let bus = self.changes.clone();
        let task = tokio::spawn(async move {
            let committed = txn.commit().await;
            // Also when the commit reports an error: whether it landed is then unknown, and an
            // extra invalidation costs one cache miss.
            for change in &changes {
                bus.publish(change);
            }
            committed
        });
        match task.await {
            Ok(committed) => Ok(committed?),
            Err(failed) => Err(Failure::Store(StoreError::Other(format!(
                "the commit task failed: {failed}"
            )))),
        }
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
    use service_accounts_domain::store::AccountStore;
    use service_accounts_domain::time;

    use super::*;

    use service_accounts_domain::changes::{ChangeBus, Subscriber};
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
            validate_only: false,
        }
    }

    /// A fresh SQLite database publishing to a recorder, holding one account.
    async fn database_with_an_account()
    -> (tempfile::TempDir, Database, Arc<Recorder>, ServiceAccount) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let recorder = Arc::new(Recorder::default());
        let db = crate::connect(&url, 2, crate::QueryPath::Direct)
            .await
            .unwrap()
            .publishing_to(ChangeBus::new(vec![recorder.clone()]));
        db.migrate().await.unwrap();
        let now = time::now();
        let account = ServiceAccount {
            id: ServiceAccountId::generate(),
            org_id: OrgId::parse("org").unwrap(),
            display_name: DisplayName::parse("Bot").unwrap(),
            description: Description::parse("").unwrap(),
            app_access: AppAccess::AllApps,
            create_time: now,
            update_time: now,
            created_by: UserId::parse("admin").unwrap(),
            state: AccountState::Active,
            labels: Default::default(),
            last_used_time: None,
            revision: 1,
        };
        let create = event(AuditAction::ServiceAccountCreate, account.id);
        db.create_service_account(&account, 10, &create)
            .await
            .unwrap();
        (dir, db, recorder, account)
    }

    #[tokio::test]
    async fn changes_that_alter_introspection_are_published_once_committed_and_others_are_not() {
        let (_dir, db, recorder, mut account) = database_with_an_account().await;
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

    #[tokio::test]
    async fn a_change_committed_after_its_caller_stopped_waiting_is_still_published() {
        let (_dir, db, recorder, mut account) = database_with_an_account().await;
        // Abandoned at each step of the way in turn, from before the first statement to after
        // the commit: whenever the rename landed, it was published.
        let (mut landed, mut abandoned) = (0, 0);
        for polls in 0..40 {
            account.display_name = DisplayName::parse(&format!("Bot {polls}")).unwrap();
            let expected = account.revision;
            account.revision += 1;
            let update = event(AuditAction::ServiceAccountUpdate, account.id);
            {
                let mut writing =
                    std::pin::pin!(db.update_service_account(&account, expected, &update));
                for _ in 0..polls {
                    if futures_poll_once(writing.as_mut()).await.is_some() {
                        break;
                    }
                    // Lets the database's worker get on with what was asked.
                    tokio::time::sleep(std::time::Duration::from_micros(300)).await;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let stored = db
                .get_service_account(&account.org_id, account.id)
                .await
                .unwrap()
                .unwrap();
            let published = recorder.0.lock().unwrap().len();
            if stored.revision == account.revision {
                assert!(published > 0, "committed but never published");
                recorder.0.lock().unwrap().clear();
                landed += 1;
            } else {
                account.revision = stored.revision;
                abandoned += 1;
            }
        }
        assert!(
            landed > 0 && abandoned > 0,
            "{landed} landed, {abandoned} abandoned"
        );
        db.close().await.unwrap();
    }

    /// Polls `future` once; its output if it was ready.
    async fn futures_poll_once<F: std::future::Future>(
        future: std::pin::Pin<&mut F>,
    ) -> Option<F::Output> {
        let mut future = Some(future);
        std::future::poll_fn(|cx| {
            let polled = future.take().unwrap().poll(cx);
            std::task::Poll::Ready(match polled {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
