//! Cross-replica change notifications over PostgreSQL LISTEN/NOTIFY.
//!
//! Every transaction that changes what introspection would answer for an account also runs
//! `pg_notify(CHANNEL, account_id)`; PostgreSQL delivers it to every listener when, and only if,
//! the transaction commits. SQLite is single-node and has no such channel.

use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement};
use service_accounts_domain::ids::ServiceAccountId;
use tokio::task::JoinHandle;

use crate::Database;

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
    /// A token was issued (the first 8 bytes of its hash).
    TokenIssued(u64),
    /// The subscription is gone: notifications may be missed until the next `Subscribed`.
    Lost,
}

const ISSUED_PREFIX: &str = "issued:";

pub(crate) fn issued_payload(prefix: u64) -> String {
    format!("{ISSUED_PREFIX}{prefix:016x}")
}

/// Queues a change notification in `db`'s transaction (a no-op on SQLite): an account id, or an
/// [`issued_payload`].
pub(crate) async fn notify(db: &impl ConnectionTrait, payload: &str) -> Result<(), DbErr> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [CHANNEL.into(), payload.into()],
    ))
    .await?;
    Ok(())
}

/// How often each replica sends itself a heartbeat through PostgreSQL.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
/// A subscription whose own heartbeat has not come back for this long is treated as lost: a
/// half-open connection (or a pooler that swallows notifications) never errors by itself.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
const HEARTBEAT_PREFIX: &str = "heartbeat:";

/// Listens on `database_url` (PostgreSQL) and calls `on_change` for every change, reconnecting
/// forever with backoff. Liveness is proven end to end: every [`HEARTBEAT_INTERVAL`] the
/// replica notifies itself through `db` (its ordinary pool), and a subscription that has not
/// delivered that heartbeat within [`HEARTBEAT_TIMEOUT`] is reported [`Change::Lost`].
/// Runs until the task is aborted.
pub fn watch(
    database_url: &str,
    db: Database,
    on_change: impl Fn(Change) + Send + Sync + 'static,
) -> JoinHandle<()> {
    let url = with_application_name(database_url);
    let me = format!("{HEARTBEAT_PREFIX}{}", uuid::Uuid::now_v7());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            match subscribe(&url).await {
                Ok(listener) => {
                    backoff = Duration::from_millis(50);
                    on_change(Change::Subscribed);
                    follow(listener, &db, &me, &on_change).await;
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

/// Delivers notifications until the subscription fails or its heartbeat stops coming back.
async fn follow(
    listener: PgListener,
    db: &Database,
    me: &str,
    on_change: &(impl Fn(Change) + Sync),
) {
    // The listener lives in its own task, so that waiting on it is never cancelled half-way;
    // the guard ends that task however this function ends (including when it is aborted).
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let _reader = AbortOnDrop(tokio::spawn(async move {
        let mut listener = listener;
        loop {
            let message = listener.try_recv().await;
            let end = !matches!(message, Ok(Some(_)));
            if sender.send(message).is_err() || end {
                return;
            }
        }
    }));
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            message = received.recv() => match message {
                Some(Ok(Some(notification))) => {
                    let payload = notification.payload();
                    if payload == me {
                        last_heard = Instant::now();
                    } else if payload.starts_with(HEARTBEAT_PREFIX) {
                        // Another replica's heartbeat.
                    } else if let Some(prefix) = payload
                        .strip_prefix(ISSUED_PREFIX)
                        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                    {
                        on_change(Change::TokenIssued(prefix));
                    } else if let Ok(account) = ServiceAccountId::parse(payload) {
                        on_change(Change::Account(account));
                    } else {
                        tracing::warn!("ignoring a malformed change notification");
                    }
                }
                Some(Ok(None)) | None => {
                    tracing::warn!("change listener connection lost; reconnecting");
                    break;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "change listener failed; reconnecting");
                    break;
                }
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > HEARTBEAT_TIMEOUT {
                    tracing::warn!(silent_for = ?last_heard.elapsed(), "change notifications stopped arriving; reconnecting");
                    break;
                }
                // A failure here shows up as a missing heartbeat; no need to act on it twice.
                let _ = tokio::time::timeout(HEARTBEAT_INTERVAL, db.notify_raw(me)).await;
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
