//! Account labels (SPEC §23): a row per label, replaced with the account's other fields. Filters
//! on labels are `EXISTS` lookups, by the primary key for one account's label and by
//! `(key, value)` to find the accounts that carry one.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ServiceAccounts {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum ServiceAccountLabels {
    Table,
    ServiceAccountId,
    Key,
    Value,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ServiceAccountLabels::Table)
                    .col(string(ServiceAccountLabels::ServiceAccountId))
                    .col(string(ServiceAccountLabels::Key))
                    .col(string(ServiceAccountLabels::Value))
                    .primary_key(
                        Index::create()
                            .col(ServiceAccountLabels::ServiceAccountId)
                            .col(ServiceAccountLabels::Key),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                ServiceAccountLabels::Table,
                                ServiceAccountLabels::ServiceAccountId,
                            )
                            .to(ServiceAccounts::Table, ServiceAccounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("service_account_labels_key_value")
                    .table(ServiceAccountLabels::Table)
                    .col(ServiceAccountLabels::Key)
                    .col(ServiceAccountLabels::Value)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ServiceAccountLabels::Table).to_owned())
            .await
    }
}
