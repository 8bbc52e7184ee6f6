//! Cross-replica change notifications over PostgreSQL LISTEN/NOTIFY.
//!
//! Every transaction that changes what introspection would answer for an account also runs
//! `pg_notify(CHANNEL, payload)` with the [`Change`]; PostgreSQL delivers it to every listener
//! when, and only if, the transaction commits. SQLite is single-node and has no such channel.
//!
//! Payloads: the sending process's origin, a space, then `account <account id> <token id or ->
//! <org id>`, `issued:<hex prefix>` or `everything`; and heartbeats. A replica skips its own
//! (it published them itself when it committed).
//!
//! Rolling upgrades: an account change is also sent as the bare account id, right after, which
//! is all that replicas of the previous release read. A replica of this release skips that copy
//! when it follows the typed one from the same sender; a bare id alone comes from an older
//! replica and is read as `everything` (it names no org, and dropping everything is always
//! correct). `issued:` without an origin is read as before.

use std::time::{Duration, Instant};

use std::str::FromStr;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement};
use service_accounts_domain::changes::{Change, ChangeBus};
use service_accounts_domain::ids::{OrgId, ServiceAccountId, TokenId};
use tokio::task::JoinHandle;

use crate::Database;

pub const CHANNEL: &str = "service_accounts_changes";
/// The listener's `application_name`, so operators (and tests) can find its backend.
pub const LISTENER_APPLICATION_NAME: &str = "service-accounts-listener";

const ISSUED_PREFIX: &str = "issued:";
const ACCOUNT_PREFIX: &str = "account ";
const EVERYTHING: &str = "everything";

/// The notification for a change other replicas must hear of (`None`: a local-only change).
pub(crate) fn payload(change: &Change, origin: &str) -> Option<String> {
    body(change).map(|body| format!("{origin} {body}"))
}

fn body(change: &Change) -> Option<String> {
    match change {
        Change::Account {
            org,
            account,
            token,
        } => {
            let token = token.map_or_else(|| "-".to_owned(), |t| t.to_string());
            Some(format!("{ACCOUNT_PREFIX}{account} {token} {org}"))
        }
        Change::TokenIssued(prefix) => Some(format!("{ISSUED_PREFIX}{prefix:016x}")),
        Change::Everything => Some(EVERYTHING.to_owned()),
        Change::Subscribed | Change::Lost => None,
    }
}

/// What replicas of the previous release read of `change`, sent right after [`payload`].
pub(crate) fn legacy_payload(change: &Change) -> Option<String> {
    match change {
        Change::Account { account, .. } => Some(account.to_string()),
        _ => None,
    }
}

/// A new origin: 32 hex digits.
pub(crate) fn new_origin() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The origin (when the sender named one) and the change a notification announces; `None` for
/// a malformed one.
pub(crate) fn parse(payload: &str) -> Option<(Option<&str>, Change)> {
    match payload.split_once(' ') {
        Some((origin, body))
            if origin.len() == 32 && origin.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            parse_body(body).map(|change| (Some(origin), change))
        }
        _ => parse_body(payload).map(|change| (None, change)),
    }
}

fn parse_body(payload: &str) -> Option<Change> {
    if payload == EVERYTHING || ServiceAccountId::parse(payload).is_ok() {
        return Some(Change::Everything);
    }
    if let Some(hex) = payload.strip_prefix(ISSUED_PREFIX) {
        return u64::from_str_radix(hex, 16).ok().map(Change::TokenIssued);
    }
    let mut parts = payload.strip_prefix(ACCOUNT_PREFIX)?.splitn(3, ' ');
    let account = ServiceAccountId::parse(parts.next()?).ok()?;
    let token = match parts.next()? {
        "-" => None,
        id => Some(TokenId::parse(id).ok()?),
    };
    let org = OrgId::parse(parts.next()?).ok()?;
    Some(Change::Account {
        org,
        account,
        token,
    })
}

/// Queues a change notification in `db`'s transaction (a no-op on SQLite): a [`payload`].
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

/// Listens on `database_url` (PostgreSQL) and publishes every change on `bus`, reconnecting
/// forever with backoff: [`Change::Subscribed`] when the subscription is live, [`Change::Lost`]
/// when it is not. Liveness is proven end to end: every [`HEARTBEAT_INTERVAL`] the
/// replica notifies itself through `db` (its ordinary pool), and a subscription that has not
/// delivered that heartbeat within [`HEARTBEAT_TIMEOUT`] is lost.
/// Runs until the task is aborted.
pub fn watch(database_url: &str, db: Database, bus: ChangeBus) -> JoinHandle<()> {
    let url = database_url.to_owned();
    let me = format!("{HEARTBEAT_PREFIX}{}", uuid::Uuid::now_v7());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            match subscribe(&url).await {
                Ok(listener) => {
                    backoff = Duration::from_millis(50);
                    tracing::info!(
                        "subscribed to change notifications; introspection cache enabled"
                    );
                    bus.publish(&Change::Subscribed);
                    follow(listener, &db, &me, &bus).await;
                    tracing::warn!(
                        "change notifications lost; introspection cache disabled until resubscribed"
                    );
                    bus.publish(&Change::Lost);
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
async fn follow(listener: PgListener, db: &Database, me: &str, bus: &ChangeBus) {
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
    // The last typed account change and its sender's backend, whose bare-id copy comes next.
    let mut last_typed: Option<(u32, ServiceAccountId)> = None;
    loop {
        tokio::select! {
            message = received.recv() => match message {
                Some(Ok(Some(notification))) => {
                    let payload = notification.payload();
                    let sender = notification.process_id();
                    let typed = std::mem::take(&mut last_typed);
                    if payload == me {
                        last_heard = Instant::now();
                    } else if payload.starts_with(HEARTBEAT_PREFIX) {
                        // Another replica's heartbeat.
                    } else if let Ok(account) = ServiceAccountId::parse(payload) {
                        if typed != Some((sender, account)) {
                            bus.publish(&Change::Everything);
                        }
                    } else if let Some((origin, change)) = parse(payload) {
                        if let Change::Account { account, .. } = &change {
                            last_typed = Some((sender, *account));
                        }
                        if origin != Some(db.origin.as_ref()) {
                            bus.publish(&change);
                        }
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
    // No startup parameter a session-pooling PgBouncer would refuse (sqlx sends
    // `extra_float_digits` unless told not to); named, so that operators can find the backend.
    let options = PgConnectOptions::from_str(url)?
        .extra_float_digits(None)
        .application_name(LISTENER_APPLICATION_NAME);
    // sqlx's listener keeps a pool of one for its connection: no lifetime or idle limit.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    // Reconnection is ours, so that we know exactly when the subscription is live again.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_other_replicas_hear_of_reads_back_as_itself() {
        let changes = [
            Change::Account {
                org: OrgId::parse("acme:eu/1").unwrap(),
                account: ServiceAccountId::generate(),
                token: Some(TokenId::generate()),
            },
            Change::Account {
                org: OrgId::parse("acme").unwrap(),
                account: ServiceAccountId::generate(),
                token: None,
            },
            Change::TokenIssued(0x0123_4567_89ab_cdef),
            Change::Everything,
        ];
        let origin = new_origin();
        for change in changes {
            let payload = payload(&change, &origin).unwrap();
            assert_eq!(parse(&payload), Some((Some(origin.as_str()), change)));
        }
        assert_eq!(payload(&Change::Lost, &origin), None);
        assert_eq!(payload(&Change::Subscribed, &origin), None);
    }

    #[test]
    fn an_older_replicas_bare_account_id_drops_everything_and_garbage_is_ignored() {
        let account = ServiceAccountId::generate().to_string();
        assert_eq!(parse(&account), Some((None, Change::Everything)));
        assert_eq!(
            parse("issued:00000000000000ff"),
            Some((None, Change::TokenIssued(255)))
        );
        let origin = new_origin();
        for garbage in [
            "",
            "account x - acme",
            "account",
            "issued:zz",
            "heartbeat",
            &format!("{origin} "),
            &format!("{origin} nonsense"),
        ] {
            assert_eq!(parse(garbage), None, "{garbage:?}");
        }
    }
}
