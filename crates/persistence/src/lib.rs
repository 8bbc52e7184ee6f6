//! sea-orm implementation of the domain's store ports, for SQLite (embedded default) and
//! PostgreSQL (production) from one codebase.
//!
//! - [`connect`]: the pool, migrations, the [`Database`] handle.
//! - `admin_store` (a file per resource) / `token_store`: the domain's `AdminStore` and `TokenStore`.
//! - `commit`: the one function that commits an audited change and publishes it.
//! - [`QueryPath`]: straight to PostgreSQL, or through a transaction pooler (`pooling`).
//! - [`changes`]: cross-replica change notifications (PostgreSQL LISTEN/NOTIFY).
//! - `rows`: rows to domain values and back; `error`: storage errors to the domain's.

mod admin_store;
pub mod changes;
mod commit;
mod connect;
mod entity;
mod error;
mod pooling;
mod rows;
mod token_store;

pub use connect::{Database, connect, connect_lazy};
pub use pooling::QueryPath;
