//! The initial schema. Ids are UUIDv7 in their text form, so ordering by id is ordering by
//! creation time on every backend; names of unique indexes are matched by the persistence crate.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ServiceAccounts {
    Table,
    Id,
    OrgId,
    DisplayName,
    DisplayNameKey,
    Description,
    AllApps,
    CreatedAt,
    UpdatedAt,
    CreatedBy,
    Revision,
}

#[derive(DeriveIden)]
enum ServiceAccountApps {
    Table,
    ServiceAccountId,
    AppId,
}

#[derive(DeriveIden)]
enum Tokens {
    Table,
    Id,
    ServiceAccountId,
    OrgId,
    DisplayName,
    TokenHash,
    Scopes,
    Hint,
    CreatedAt,
    CreatedBy,
    ExpireAt,
    RevokedAt,
    RevokedBy,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    OrgId,
    Actor,
    Action,
    TargetType,
    TargetId,
    RequestId,
    CreatedAt,
    Details,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ServiceAccounts::Table)
                    .col(string(ServiceAccounts::Id).primary_key())
                    .col(string(ServiceAccounts::OrgId))
                    .col(string(ServiceAccounts::DisplayName))
                    .col(string(ServiceAccounts::DisplayNameKey))
                    .col(text(ServiceAccounts::Description))
                    .col(boolean(ServiceAccounts::AllApps))
                    .col(timestamp_with_time_zone(ServiceAccounts::CreatedAt))
                    .col(timestamp_with_time_zone(ServiceAccounts::UpdatedAt))
                    .col(string(ServiceAccounts::CreatedBy))
                    .col(big_integer(ServiceAccounts::Revision))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("service_accounts_org_display_name_key")
                    .table(ServiceAccounts::Table)
                    .col(ServiceAccounts::OrgId)
                    .col(ServiceAccounts::DisplayNameKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("service_accounts_org_id")
                    .table(ServiceAccounts::Table)
                    .col(ServiceAccounts::OrgId)
                    .col(ServiceAccounts::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ServiceAccountApps::Table)
                    .col(string(ServiceAccountApps::ServiceAccountId))
                    .col(string(ServiceAccountApps::AppId))
                    .primary_key(
                        Index::create()
                            .col(ServiceAccountApps::ServiceAccountId)
                            .col(ServiceAccountApps::AppId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                ServiceAccountApps::Table,
                                ServiceAccountApps::ServiceAccountId,
                            )
                            .to(ServiceAccounts::Table, ServiceAccounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Tokens::Table)
                    .col(string(Tokens::Id).primary_key())
                    .col(string(Tokens::ServiceAccountId))
                    .col(string(Tokens::OrgId))
                    .col(string(Tokens::DisplayName))
                    .col(binary(Tokens::TokenHash))
                    .col(string(Tokens::Scopes))
                    .col(string(Tokens::Hint))
                    .col(timestamp_with_time_zone(Tokens::CreatedAt))
                    .col(string(Tokens::CreatedBy))
                    .col(timestamp_with_time_zone_null(Tokens::ExpireAt))
                    .col(timestamp_with_time_zone_null(Tokens::RevokedAt))
                    .col(string_null(Tokens::RevokedBy))
                    .col(timestamp_with_time_zone_null(Tokens::LastUsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Tokens::Table, Tokens::ServiceAccountId)
                            .to(ServiceAccounts::Table, ServiceAccounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tokens_token_hash_key")
                    .table(Tokens::Table)
                    .col(Tokens::TokenHash)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tokens_service_account_id")
                    .table(Tokens::Table)
                    .col(Tokens::ServiceAccountId)
                    .col(Tokens::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(string(AuditEvents::Id).primary_key())
                    .col(string(AuditEvents::OrgId))
                    .col(string(AuditEvents::Actor))
                    .col(string(AuditEvents::Action))
                    .col(string(AuditEvents::TargetType))
                    .col(string(AuditEvents::TargetId))
                    .col(string(AuditEvents::RequestId))
                    .col(timestamp_with_time_zone(AuditEvents::CreatedAt))
                    .col(text(AuditEvents::Details))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_events_org_id")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::OrgId)
                    .col(AuditEvents::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditEvents::Table.into_iden(),
            Tokens::Table.into_iden(),
            ServiceAccountApps::Table.into_iden(),
            ServiceAccounts::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
