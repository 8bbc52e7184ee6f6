//! sea-orm implementation of the domain's store ports, for SQLite (embedded default) and
//! PostgreSQL (production) from one codebase.

pub mod changes;
mod convert;
mod entity;
mod error;
mod store;

pub use store::{Database, connect, connect_lazy};
