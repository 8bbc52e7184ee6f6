//! Test support: a real server on an ephemeral port, over real SQLite or PostgreSQL, called with
//! the generated tonic clients. `use crate::support::*;` brings in everything below.
//!
//! - [`app`]: configure a [`Setup`], start a [`TestApp`], add replicas on the same database.
//! - [`database`]: a fresh database per test, dropped afterwards.
//! - [`clients`] and [`calls`]: channels, health, one-line RPCs and assertions.
//! - [`wait`]: [`wait_until`] and [`Wait`], instead of hand-written polling loops.
//! - [`plain_http`]: a plain HTTP client for the HTTP listener and gateways.
//! - [`process`]: the binary as a child process (start, SERVING, SIGTERM, exit).
//! - [`pgbouncer`]: a real PgBouncer in transaction pooling, to stop and start again.
//! - [`proxy`]: a TCP proxy to slow, freeze or cut a replica's link to PostgreSQL.
//! - [`logs`]: every log line the in-process servers emit.
//! - [`pki`] and [`keys`]: certificates and admin-JWT signing keys made at test time.

pub mod app;
pub mod calls;
pub mod clients;
pub mod database;
pub mod keys;
pub mod logs;
pub mod pgbouncer;
pub mod pki;
pub mod plain_http;
pub mod process;
pub mod proxy;
pub mod wait;

pub use app::*;
pub use calls::*;
pub use clients::*;
pub use database::*;
pub use keys::*;
pub use logs::*;
pub use pgbouncer::PgBouncer;
pub use pki::*;
pub use plain_http::*;
pub use process::*;
pub use proxy::*;
pub use wait::*;

/// Runs a test body against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::support::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::support::postgres_admin_url().is_some() {
                        super::$name($crate::support::Backend::Postgres).await;
                    }
                }
            }
        )*
    };
}
