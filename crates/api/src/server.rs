//! Wires storage, use cases and gRPC services together, and runs them until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use opentelemetry::KeyValue;
use service_accounts_domain::StoreError;
use service_accounts_domain::admin::AdminService;
use service_accounts_domain::cache::IntrospectionCache;
use service_accounts_domain::introspection::Introspector;
use service_accounts_persistence::Database;
use service_accounts_persistence::changes::{self, Change};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::admin_api::AdminApi;
use crate::auth::{AdminAuthenticator, KeyConfigError};
use crate::dev_key::{self, DevKey, DevKeyError};
use crate::introspection_api::IntrospectionApi;
use crate::pb;
use crate::pb::service_account_admin_server::ServiceAccountAdminServer;
use crate::pb::token_introspection_server::TokenIntrospectionServer;
use crate::telemetry::{self, RpcLayer, ServiceMetrics};

/// Admin requests are small; the largest legitimate one grants 1000 app ids.
const MAX_ADMIN_MESSAGE_BYTES: usize = 256 * 1024;
/// An introspection request is a 50-character token and a few short strings.
const MAX_INTROSPECT_MESSAGE_BYTES: usize = 16 * 1024;

/// Who may sign admin JWTs.
#[derive(Debug, Clone)]
pub struct AdminTrust {
    /// A JWKS file with the issuer and audience its keys sign for.
    pub jwks: Option<JwksTrust>,
    /// Trust the development key in the data dir even though a JWKS is configured.
    pub trust_dev_key: bool,
}

#[derive(Debug, Clone)]
pub struct JwksTrust {
    pub path: PathBuf,
    pub issuer: String,
    pub audience: String,
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub database_url: String,
    pub db_max_connections: u32,
    pub data_dir: PathBuf,
    pub admin_trust: AdminTrust,
    pub cache_capacity: u64,
    pub cache_max_age: Duration,
    pub last_used_flush_interval: Duration,
    pub shutdown_grace: Duration,
    /// How often storage is pinged for the health status.
    pub readiness_interval: Duration,
    /// Give every RPC a span and a duration measurement (when traces and metrics are exported).
    pub rpc_telemetry: bool,
    pub tls: Option<TlsFiles>,
}

/// PEM files for TLS, and optionally the CA whose client certificates introspection requires.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, ServeError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| ServeError::Tls(format!("{}: {e}", path.display())))
    };
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    if let Some(ca) = &files.client_ca {
        // Optional at the handshake so that admin callers (JWT) need no certificate; a
        // certificate that is presented must chain to this CA. Introspection insists on one.
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(config)
}

/// Why the server could not start or stopped abnormally. Each is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot connect to the database: {0}")]
    Database(StoreError),
    #[error("database migration failed: {0}")]
    Migration(StoreError),
    #[error("cannot use admin JWKS {path}: {reason}")]
    Jwks { path: PathBuf, reason: String },
    #[error(transparent)]
    DevKey(#[from] DevKeyError),
    #[error(
        "no admin signing keys: set --admin-jwks with --admin-jwt-issuer and --admin-jwt-audience, \
         or --admin-trust-dev-key for a development setup"
    )]
    NoAdminKeys,
    #[error("gRPC server failed: {0}")]
    Transport(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Connects to the database and applies pending migrations.
pub async fn open_database(url: &str, max_connections: u32) -> Result<Database, ServeError> {
    let db = service_accounts_persistence::connect(url, max_connections)
        .await
        .map_err(ServeError::Database)?;
    let applied = db.migrate().await.map_err(ServeError::Migration)?;
    if applied > 0 {
        tracing::info!(applied, "database migrations applied");
    }
    Ok(db)
}

/// Builds the admin JWT verifier. The development key is trusted only when asked for
/// (`trust_dev_key`), or by default for the local embedded setup (SQLite on a loopback address)
/// when no JWKS is configured: a production deployment never trusts it by accident.
pub fn authenticator(
    trust: &AdminTrust,
    data_dir: &std::path::Path,
    local_embedded: bool,
) -> Result<AdminAuthenticator, ServeError> {
    let mut auth = AdminAuthenticator::default();
    if let Some(jwks) = &trust.jwks {
        let fail = |reason: String| ServeError::Jwks {
            path: jwks.path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&jwks.path).map_err(|e| fail(e.to_string()))?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        auth.trust(&set, &jwks.issuer, &jwks.audience)
            .map_err(|e: KeyConfigError| fail(e.to_string()))?;
    }
    let use_dev_key = trust.trust_dev_key || (trust.jwks.is_none() && local_embedded);
    if trust.jwks.is_none() && !use_dev_key {
        return Err(ServeError::NoAdminKeys);
    }
    if use_dev_key {
        let key = DevKey::load_or_create(data_dir)?;
        auth.trust(&key.jwks(), dev_key::ISSUER, dev_key::AUDIENCE)
            .map_err(|e| ServeError::Jwks {
                path: data_dir.to_owned(),
                reason: e.to_string(),
            })?;
        tracing::warn!(
            data_dir = %data_dir.display(),
            "trusting the local development admin key; configure --admin-jwks for production"
        );
    }
    Ok(auth)
}

/// Serves until `shutdown` resolves, then drains in-flight RPCs (bounded by the grace period),
/// flushes last-used times and closes the database.
pub async fn serve(
    options: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let local_embedded = options.database_url.starts_with("sqlite:")
        && listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let auth = Arc::new(authenticator(
        &options.admin_trust,
        &options.data_dir,
        local_embedded,
    )?);
    // The port opens before the database is reached, reporting NOT_SERVING until storage
    // answers and migrations have run.
    let db = service_accounts_persistence::connect_lazy(
        &options.database_url,
        options.db_max_connections,
    )
    .await
    .map_err(ServeError::Database)?;

    let cache = Arc::new(IntrospectionCache::new(
        options.cache_capacity,
        options.cache_max_age,
    ));
    let watcher = options
        .database_url
        .starts_with("postgres")
        .then(|| watch_changes(&options.database_url, db.clone(), cache.clone()));
    // Every committed change that alters introspection answers reaches this replica's cache.
    let db = db.publishing_to(cache.clone());
    let introspector = Arc::new(Introspector::new(db.clone(), cache.clone()));
    let admin = AdminApi::new(AdminService::new(db.clone()), auth);
    let metrics = ServiceMetrics::new();
    let require_client_cert = options.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let introspection =
        IntrospectionApi::new(introspector.clone(), metrics.clone(), require_client_cert);

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Transport(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Transport(e.to_string()))?;

    let (stop, stopped) = watch::channel(false);
    let flusher = tokio::spawn(flush_last_used(
        introspector.clone(),
        metrics.clone(),
        options.last_used_flush_interval,
        stopped.clone(),
    ));

    let local_addr = listener.local_addr().ok();
    let mut stopped_server = stopped.clone();
    let _gauges = register_gauges(&cache, &db);
    let mut builder = tonic::transport::Server::builder();
    if let Some(files) = &options.tls {
        builder = builder
            .tls_config(tls_config(files)?)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let router = builder
        .layer(tower::util::option_layer(
            options.rpc_telemetry.then(RpcLayer::new),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ServiceAccountAdminServer::new(admin)
                .max_decoding_message_size(MAX_ADMIN_MESSAGE_BYTES),
        )
        .add_service(
            TokenIntrospectionServer::new(introspection)
                .max_decoding_message_size(MAX_INTROSPECT_MESSAGE_BYTES),
        );
    // Small unary responses must not wait for Nagle's algorithm.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        until_stopped(&mut stopped_server).await;
    }));
    tracing::info!(address = ?local_addr, "listening; NOT_SERVING until storage is ready");

    tokio::pin!(shutdown);
    let startup = async {
        db.ping().await.map_err(ServeError::Database)?;
        let applied = db.migrate().await.map_err(ServeError::Migration)?;
        if applied > 0 {
            tracing::info!(applied, "database migrations applied");
        }
        Ok::<(), ServeError>(())
    };
    let started = tokio::select! {
        result = startup => Some(result),
        () = &mut shutdown => None,
    };
    if !matches!(started, Some(Ok(()))) {
        let _ = stop.send(true);
        server.abort();
        let _ = flusher.await;
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        return started.unwrap_or(Ok(()));
    }
    set_health(&health, ServingStatus::Serving).await;
    tracing::info!("storage ready; SERVING");
    let readiness = tokio::spawn(watch_storage(
        db.clone(),
        health.clone(),
        options.readiness_interval,
        stopped.clone(),
    ));

    let outcome = tokio::select! {
        result = &mut server => Err(ServeError::Transport(match result {
            Ok(Ok(())) => "stopped unexpectedly".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        })),
        () = &mut shutdown => {
            tracing::info!("shutting down: draining in-flight RPCs");
            set_health(&health, ServingStatus::NotServing).await;
            let _ = stop.send(true);
            match tokio::time::timeout(options.shutdown_grace, &mut server).await {
                Ok(_) => Ok(()),
                Err(_) => {
                    tracing::warn!(grace = ?options.shutdown_grace, "grace period over; cutting remaining RPCs");
                    server.abort();
                    Ok(())
                }
            }
        }
    };
    let _ = stop.send(true);
    let _ = readiness.await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    let _ = flusher.await;
    match introspector.flush_last_used().await {
        Ok(written) => {
            record_flush(&metrics, Ok(written));
            tracing::info!(written, "last-used times flushed");
        }
        Err(error) => {
            record_flush(&metrics, Err(()));
            tracing::error!(%error, "last-used times could not be flushed at shutdown");
        }
    }
    if let Err(error) = db.close().await {
        tracing::warn!(%error, "closing the database");
    }
    outcome
}

/// Health follows storage: NOT_SERVING while the database does not answer, so that load
/// balancers route around a replica that could only fail.
async fn watch_storage(
    db: Database,
    health: tonic_health::server::HealthReporter,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut serving = true;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = until_stopped(&mut stopped) => return,
        }
        let healthy = tokio::time::timeout(interval, db.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if healthy == serving || *stopped.borrow() {
            continue;
        }
        serving = healthy;
        let status = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if healthy {
            tracing::info!("storage answers again; health is SERVING");
        } else {
            tracing::warn!("storage does not answer; health is NOT_SERVING");
        }
        set_health(&health, status).await;
    }
}

async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <ServiceAccountAdminServer<AdminApi<Database>> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health
        .set_service_status(
            <TokenIntrospectionServer<IntrospectionApi<Database>> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Keeps the cache coherent with other replicas: PostgreSQL change notifications invalidate it,
/// and while the subscription is down the cache is not trusted at all.
fn watch_changes(
    database_url: &str,
    db: Database,
    cache: Arc<IntrospectionCache>,
) -> tokio::task::JoinHandle<()> {
    cache.distrust();
    changes::watch(database_url, db, move |change| match change {
        Change::Subscribed => {
            tracing::info!("subscribed to change notifications; introspection cache enabled");
            cache.trust();
        }
        Change::Account(account) => cache.invalidate_account(account),
        Change::Lost => {
            tracing::warn!(
                "change notifications lost; introspection cache disabled until resubscribed"
            );
            cache.distrust();
        }
    })
}

async fn flush_last_used(
    introspector: Arc<Introspector<Database>>,
    metrics: ServiceMetrics,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                match introspector.flush_last_used().await {
                    Ok(written) => record_flush(&metrics, Ok(written)),
                    Err(error) => {
                        record_flush(&metrics, Err(()));
                        tracing::warn!(%error, "last-used flush failed; will retry");
                    }
                }
            }
            () = until_stopped(&mut stopped) => return,
        }
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means "stop".
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

fn record_flush(metrics: &ServiceMetrics, result: Result<usize, ()>) {
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
fn register_gauges(
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
