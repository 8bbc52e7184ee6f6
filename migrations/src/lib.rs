//! Schema migrations, run on start and by `service-accounts migrate`.

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

mod m20261127_000001_initial;
mod m20261129_000001_lifecycle;
mod m20261206_000001_inventory;
mod m20261207_000001_labels;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_initial::Migration),
            Box::new(m20261129_000001_lifecycle::Migration),
            Box::new(m20261206_000001_inventory::Migration),
            Box::new(m20261207_000001_labels::Migration),
        ]
    }
}
