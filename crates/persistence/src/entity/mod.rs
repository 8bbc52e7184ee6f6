//! sea-orm entities, one per table created by the migrations.

pub mod audit_event;
pub mod service_account;
pub mod service_account_app;
pub mod service_account_label;
pub mod token;
pub mod token_policy;
