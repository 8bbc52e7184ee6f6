//! Account state and soft deletion, token lifecycle columns (revoke reason, rotation link,
//! network restriction, where it was last used), and per-org token policies.
//!
//! Additive: every new column is nullable or has a default, so rows written before it read as
//! "active", "not restricted", "not used from anywhere known". Tokens revoked before reasons
//! were recorded were revoked by an admin (the only way then).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ServiceAccounts {
    Table,
    State,
    DeletedAt,
}

#[derive(DeriveIden)]
enum Tokens {
    Table,
    Id,
    OrgId,
    ExpireAt,
    RevokeReason,
    PreviousTokenId,
    AllowedCidrs,
    LastUsedAppId,
    LastUsedClientIp,
}

#[derive(DeriveIden)]
enum TokenPolicies {
    Table,
    OrgId,
    MaxLifetimeSeconds,
    DefaultLifetimeSeconds,
    Revision,
    UpdatedAt,
    UpdatedBy,
}

/// The display-name index, now only over accounts that are not deleted, so a deleted
/// account's name can be used again at once. The name is matched by the persistence crate.
const NAME_INDEX: &str = "service_accounts_org_display_name_key";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for column in [
            string(ServiceAccounts::State).default("active").to_owned(),
            timestamp_with_time_zone_null(ServiceAccounts::DeletedAt).to_owned(),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(ServiceAccounts::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        let db = manager.get_connection();
        db.execute_unprepared(&format!("DROP INDEX {NAME_INDEX}"))
            .await?;
        db.execute_unprepared(&format!(
            "CREATE UNIQUE INDEX {NAME_INDEX} ON service_accounts (org_id, display_name_key) \
             WHERE deleted_at IS NULL"
        ))
        .await?;

        for column in [
            string_null(Tokens::RevokeReason).to_owned(),
            string_null(Tokens::PreviousTokenId).to_owned(),
            string(Tokens::AllowedCidrs).default("").to_owned(),
            string_null(Tokens::LastUsedAppId).to_owned(),
            string_null(Tokens::LastUsedClientIp).to_owned(),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(Tokens::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE tokens SET revoke_reason = 'admin' \
                 WHERE revoked_at IS NOT NULL AND revoke_reason IS NULL",
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tokens_org_expire_at")
                    .table(Tokens::Table)
                    .col(Tokens::OrgId)
                    .col(Tokens::ExpireAt)
                    .col(Tokens::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TokenPolicies::Table)
                    .col(string(TokenPolicies::OrgId).primary_key())
                    .col(big_integer_null(TokenPolicies::MaxLifetimeSeconds))
                    .col(big_integer_null(TokenPolicies::DefaultLifetimeSeconds))
                    .col(big_integer(TokenPolicies::Revision))
                    .col(timestamp_with_time_zone(TokenPolicies::UpdatedAt))
                    .col(string(TokenPolicies::UpdatedBy))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(TokenPolicies::Table).to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("tokens_org_expire_at")
                    .table(Tokens::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Tokens::RevokeReason,
            Tokens::PreviousTokenId,
            Tokens::AllowedCidrs,
            Tokens::LastUsedAppId,
            Tokens::LastUsedClientIp,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tokens::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        // Deleted accounts' rows would break the old index and the old meaning of a row.
        manager
            .get_connection()
            .execute_unprepared(
                "DELETE FROM tokens WHERE service_account_id IN \
                 (SELECT id FROM service_accounts WHERE deleted_at IS NOT NULL)",
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "DELETE FROM service_account_apps WHERE service_account_id IN \
                 (SELECT id FROM service_accounts WHERE deleted_at IS NOT NULL)",
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared("DELETE FROM service_accounts WHERE deleted_at IS NOT NULL")
            .await?;
        let db = manager.get_connection();
        db.execute_unprepared(&format!("DROP INDEX {NAME_INDEX}"))
            .await?;
        db.execute_unprepared(&format!(
            "CREATE UNIQUE INDEX {NAME_INDEX} ON service_accounts (org_id, display_name_key)"
        ))
        .await?;
        for column in [ServiceAccounts::State, ServiceAccounts::DeletedAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ServiceAccounts::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
