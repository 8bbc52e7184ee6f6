//! Cross-replica change notifications over PostgreSQL LISTEN/NOTIFY.
//!
//! Every transaction that changes what introspection would answer for an account also runs
//! `pg_notify(CHANNEL, account_id)`; PostgreSQL delivers it to every listener when, and only if,
//! the transaction commits. SQLite is single-node and has no such channel.

use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement};
use service_accounts_domain::ids::ServiceAccountId;
use tokio::task::JoinHandle;

pub const CHANNEL: &str = "service_accounts_changes";
/// The listener's `application_name`, so operators (and tests) can find its backend.
pub const LISTENER_APPLICATION_NAME: &str = "service-accounts-listener";

/// What a listener reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The listener is (again) subscribed: notifications from now on will arrive.
    Subscribed,
    /// Something about this account changed.
    Account(ServiceAccountId),
    /// The subscription is gone: notifications may be missed until the next `Subscribed`.
    Lost,
}

/// Queues a change notification in `db`'s transaction (a no-op on SQLite).
pub(crate) async fn notify(
    db: &impl ConnectionTrait,
    account: ServiceAccountId,
) -> Result<(), DbErr> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [CHANNEL.into(), account.to_string().into()],
    ))
    .await?;
    Ok(())
}

/// Listens on `database_url` (PostgreSQL) and calls `on_change` for every change, reconnecting
/// forever with backoff. Runs until the task is aborted.
pub fn watch(database_url: &str, on_change: impl Fn(Change) + Send + 'static) -> JoinHandle<()> {
    let url = with_application_name(database_url);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            match subscribe(&url).await {
                Ok(mut listener) => {
                    backoff = Duration::from_millis(50);
                    on_change(Change::Subscribed);
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(notification)) => {
                                match ServiceAccountId::parse(notification.payload()) {
                                    Ok(account) => on_change(Change::Account(account)),
                                    Err(_) => tracing::warn!(
                                        payload = notification.payload(),
                                        "ignoring a malformed change notification"
                                    ),
                                }
                            }
                            Ok(None) => {
                                tracing::warn!("change listener connection lost; reconnecting");
                                break;
                            }
                            Err(error) => {
                                tracing::warn!(%error, "change listener failed; reconnecting");
                                break;
                            }
                        }
                    }
                    on_change(Change::Lost);
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "cannot subscribe to change notifications");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    })
}

async fn subscribe(url: &str) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    // Reconnection is ours, so that we know exactly when the subscription is live again.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

fn with_application_name(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={LISTENER_APPLICATION_NAME}")
}
