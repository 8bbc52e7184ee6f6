//! The server's background tasks, under one cancellation and stopped by one teardown, whether
//! the start failed or the server is shutting down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use service_accounts_domain::changes::{Change, ChangeBus};
use service_accounts_domain::introspection::Introspector;
use service_accounts_domain::store::AccountStore;
use service_accounts_domain::time;
use service_accounts_persistence::Database;
use service_accounts_persistence::changes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use super::gauges::record_flush;
use super::services::Health;
use crate::config::DatabaseUrl;
use crate::telemetry::ServiceMetrics;

pub(super) struct Background {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Tasks stop when `stop` is cancelled (by [`Self::stop`] or by anyone holding it).
    pub fn new(stop: CancellationToken) -> Self {
        Self {
            stop,
            tasks: Vec::new(),
        }
    }

    /// Cancelled when the server stops.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// A task that watches the token itself, so that it can finish what it is doing.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(
        &mut self,
        task: impl FnOnce(CancellationToken) -> F,
    ) {
        self.tasks.push(tokio::spawn(task(self.stop.clone())));
    }

    /// Cancels every task and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Writes coalesced last-used times every `interval`; a flush under way finishes first.
pub(super) async fn flush_last_used(
    introspector: Arc<Introspector<Database>>,
    metrics: ServiceMetrics,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let started = std::time::Instant::now();
                match introspector.flush_last_used().await {
                    Ok(written) => {
                        record_flush(&metrics, Ok(written));
                        if written > 0 {
                            let took_ms = started.elapsed().as_millis() as u64;
                            tracing::debug!(written, took_ms, "last-used times flushed");
                        }
                    }
                    Err(error) => {
                        record_flush(&metrics, Err(()));
                        tracing::warn!(%error, "last-used flush failed; will retry");
                    }
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Purges deleted accounts once their retention is over: at start, then every half retention
/// (at most hourly, at least every second). Every replica may run it; purging is idempotent.
pub(super) async fn purge_deleted(db: Database, retention: Duration, stop: CancellationToken) {
    let Ok(retention_delta) = chrono::TimeDelta::from_std(retention) else {
        return;
    };
    let interval = (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let Some(before) = time::now().checked_sub_signed(retention_delta) else {
            continue;
        };
        match db.purge_deleted(before).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "deleted service accounts purged after retention"),
            Err(error) => {
                tracing::warn!(%error, "purging deleted service accounts failed; will retry")
            }
        }
    }
}

/// Health follows storage: NOT_SERVING while the database does not answer, so that load
/// balancers route around a replica that could only fail.
pub(super) async fn follow_storage(
    db: Database,
    health: Health,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut serving = true;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let healthy = tokio::time::timeout(interval, db.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if healthy == serving || stop.is_cancelled() {
            continue;
        }
        serving = healthy;
        if healthy {
            tracing::info!("storage answers again; health is SERVING");
            health.set(ServingStatus::Serving).await;
        } else {
            tracing::warn!("storage does not answer; health is NOT_SERVING");
            health.set(ServingStatus::NotServing).await;
        }
    }
}

/// Keeps this replica coherent with the others: their changes arrive as PostgreSQL
/// notifications and are published on `changes`, and so is the subscription going down (the
/// cache is then not trusted at all) and coming back.
pub(super) async fn follow_changes(
    database_url: DatabaseUrl,
    db: Database,
    changes: ChangeBus,
    stop: CancellationToken,
) {
    let watcher = changes::watch(database_url.expose(), db, changes.clone());
    stop.cancelled().await;
    watcher.abort();
    // Wait until it can publish nothing more (it could otherwise trust the cache again), then:
    // RPCs still draining must not trust entries nobody keeps coherent.
    let _ = watcher.await;
    changes.publish(&Change::Lost);
}

/// Reads which tokens storage holds once storage answers, and again whenever `reload` is
/// notified, so that made-up tokens cannot delay lookups of issued ones (see
/// `service_accounts_domain::issued`). A failed read is retried.
pub(super) async fn load_issued_tokens(
    introspector: Arc<Introspector<Database>>,
    reload: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        let mut delay = Duration::from_secs(1);
        loop {
            match introspector.load_issued().await {
                Ok(count) => {
                    tracing::info!(count, "issued tokens known; lookups ordered");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "cannot read issued tokens");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
        tokio::select! {
            () = reload.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}
