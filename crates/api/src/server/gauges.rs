//! Metrics sampled from the running server: cache, pool and last-used flushes.

use std::sync::Arc;

use opentelemetry::KeyValue;
use service_accounts_domain::cache::IntrospectionCache;
use service_accounts_persistence::Database;

use crate::telemetry::{self, ServiceMetrics};

pub(super) fn record_flush(metrics: &ServiceMetrics, result: Result<usize, ()>) {
    match result {
        Ok(0) => {}
        Ok(written) => {
            metrics
                .last_used_flushes
                .add(1, &[KeyValue::new("result", "ok")]);
            metrics.last_used_tokens.add(written as u64, &[]);
        }
        Err(()) => metrics
            .last_used_flushes
            .add(1, &[KeyValue::new("result", "error")]),
    }
}

/// Cache and pool gauges, sampled at export time. Kept alive for as long as the server runs.
pub(super) fn register_gauges(
    cache: &Arc<IntrospectionCache>,
    db: &Database,
) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
    let meter = telemetry::meter();
    let stats_cache = cache.clone();
    let lookups = meter
        .u64_observable_counter("service_accounts.introspection.cache.lookups")
        .with_description("Introspection cache lookups, by result (hit, miss)")
        .with_callback(move |observer| {
            let stats = stats_cache.stats();
            observer.observe(stats.hits, &[KeyValue::new("result", "hit")]);
            observer.observe(stats.misses, &[KeyValue::new("result", "miss")]);
        })
        .build();
    let invalidation_cache = cache.clone();
    let invalidations = meter
        .u64_observable_counter("service_accounts.introspection.cache.invalidations")
        .with_description("Cache invalidations (an account's entries, or all of them)")
        .with_callback(move |observer| {
            observer.observe(invalidation_cache.stats().invalidations, &[])
        })
        .build();
    let trust_cache = cache.clone();
    let trusted = meter
        .u64_observable_gauge("service_accounts.introspection.cache.trusted")
        .with_description("1 while the change channel is live and the cache is used, 0 otherwise")
        .with_callback(move |observer| {
            observer.observe(u64::from(trust_cache.stats().trusted), &[])
        })
        .build();
    let entry_cache = cache.clone();
    let entries = meter
        .u64_observable_gauge("service_accounts.introspection.cache.entries")
        .with_description("Cached tokens")
        .with_callback(move |observer| observer.observe(entry_cache.entry_count(), &[]))
        .build();
    let pool_db = db.clone();
    let pool = meter
        .u64_observable_gauge("service_accounts.db.pool.connections")
        .with_description("Pooled database connections, by state (idle, in_use)")
        .with_callback(move |observer| {
            let (open, idle) = pool_db.pool_usage();
            observer.observe(idle as u64, &[KeyValue::new("state", "idle")]);
            observer.observe(
                u64::from(open).saturating_sub(idle as u64),
                &[KeyValue::new("state", "in_use")],
            );
        })
        .build();
    vec![
        Box::new(lookups),
        Box::new(invalidations),
        Box::new(trusted),
        Box::new(entries),
        Box::new(pool),
    ]
}
