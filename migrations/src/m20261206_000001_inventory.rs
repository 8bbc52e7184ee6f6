//! Indexes for the filtered listings (SPEC §22): every order a listing offers is one range of
//! an index that starts with the org, so a page reads about as many rows as it returns. The
//! audit trail is read by time (either way) instead of by id.
//!
//! Plain SQL with no input in it: partial indexes read the same on PostgreSQL and SQLite.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATE: &[&str] = &[
    "CREATE INDEX tokens_org_created_at ON tokens (org_id, created_at, id)",
    // One account's tokens in creation order (also what the live-token quota counts over).
    "CREATE INDEX tokens_account_created_at ON tokens (service_account_id, created_at, id)",
    "DROP INDEX tokens_service_account_id",
    "CREATE INDEX tokens_org_last_used_at ON tokens (org_id, last_used_at, id)",
    // "Never used" is the question asked most; its tokens, in creation order.
    "CREATE INDEX tokens_org_never_used ON tokens (org_id, created_at, id) \
     WHERE last_used_at IS NULL",
    "CREATE INDEX audit_events_org_created_at ON audit_events (org_id, created_at, id)",
    "CREATE INDEX audit_events_org_target ON audit_events (org_id, target_id, created_at, id)",
    "DROP INDEX audit_events_org_id",
];

const DROP: &[&str] = &[
    "CREATE INDEX audit_events_org_id ON audit_events (org_id, id)",
    "DROP INDEX audit_events_org_target",
    "DROP INDEX audit_events_org_created_at",
    "DROP INDEX tokens_org_never_used",
    "DROP INDEX tokens_org_last_used_at",
    "CREATE INDEX tokens_service_account_id ON tokens (service_account_id, id)",
    "DROP INDEX tokens_account_created_at",
    "DROP INDEX tokens_org_created_at",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for statement in CREATE {
            manager
                .get_connection()
                .execute_unprepared(statement)
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for statement in DROP {
            manager
                .get_connection()
                .execute_unprepared(statement)
                .await?;
        }
        Ok(())
    }
}
