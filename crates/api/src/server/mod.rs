//! Wires storage, use cases, gRPC services and the optional HTTP listener together
//! ([`App::build`]), and runs them until shutdown ([`App::run`]).

mod admin_keys;
mod background;
mod gauges;
mod grpc_listener;
mod services;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use service_accounts_domain::StoreError;
use service_accounts_domain::admin::AdminService;
use service_accounts_domain::cache::IntrospectionCache;
use service_accounts_domain::changes::{Change, ChangeBus};
use service_accounts_domain::feed::ChangeFeed;
use service_accounts_domain::introspection::Introspector;
use service_accounts_domain::issued::IssuedTokens;
use service_accounts_persistence::Database;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;

pub use admin_keys::authenticator;
use grpc_listener::Limits as GrpcLimits;

use crate::admin_api::AdminApi;
use crate::config::{DatabaseUrl, ServeConfig, StorageConfig};
use crate::dev_key::DevKeyError;
use crate::envoy_api::{self, EnvoyAuthApi};
use crate::error::ClientCertRule;
use crate::http::HttpApi;
use crate::introspection_api::{IntrospectionApi, TokenIntrospectionServer, Watches};
use crate::introspection_clients::IntrospectionClients;
use crate::leak_api::LeakApi;
use crate::pb;
use crate::pb::leak_reporting_server::LeakReportingServer;
use crate::pb::service_account_admin_server::ServiceAccountAdminServer;
use crate::secret_scanning::GithubKeys;
use crate::telemetry::{RpcLayer, ServiceMetrics};
use background::Background;
use services::{Health, Services};

/// Admin requests are small; the largest legitimate one grants 1000 app ids.
const MAX_ADMIN_MESSAGE_BYTES: usize = 256 * 1024;
/// An introspection request is a 50-character token and a few short strings.
const MAX_INTROSPECT_MESSAGE_BYTES: usize = 16 * 1024;
/// A leak report: up to 1,000 tokens of 50 characters and a source of up to 2 KiB, with framing.
const MAX_LEAK_REPORT_BYTES: usize = 128 * 1024;
/// Envoy's `CheckRequest` carries the checked request's headers (Envoy caps those at 60 KiB by
/// default) and a few attributes; the documented configuration sends no request body.
const MAX_ENVOY_CHECK_MESSAGE_BYTES: usize = 256 * 1024;
/// Request metadata: an admin JWT is about 1 KiB; nothing legitimate needs more than this.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

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
    #[error("cannot use GitHub secret-scanning keys: {0}")]
    GithubKeys(String),
    #[error("cannot use introspection clients: {0}")]
    IntrospectionClients(String),
    #[error(
        "--database-listen-url is for PostgreSQL: both it and --database-url must be postgres:// URLs"
    )]
    ListenUrlWithoutPostgres,
    #[error("cannot listen on {address} for HTTP: {reason}")]
    HttpListen {
        address: SocketAddr,
        reason: std::io::Error,
    },
}

/// Connects to the database and applies pending migrations.
pub async fn open_database(
    storage: &StorageConfig,
    max_connections: u32,
) -> Result<Database, ServeError> {
    let db = service_accounts_persistence::connect(
        storage.database_url().expose(),
        max_connections,
        storage.query_path(),
    )
    .await
    .map_err(ServeError::Database)?;
    let applied = db.migrate().await.map_err(ServeError::Migration)?;
    if applied > 0 {
        tracing::info!(applied, "database migrations applied");
    }
    Ok(db)
}

/// Serves until `shutdown` resolves, then drains in-flight RPCs (bounded by the grace period),
/// flushes last-used times and closes the database.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let local_embedded = config.storage.database_url().is_sqlite()
        && listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    App::build(config, local_embedded)
        .await?
        .run(listener, shutdown)
        .await
}

/// The router's layers, as tonic stacks them: the optional per-RPC telemetry, then (inside it)
/// the open-RPC count that tells the connection cap which gRPC connections are busy.
type GrpcLayers = tower::layer::util::Stack<
    grpc_listener::OpenRpcsLayer,
    tower::layer::util::Stack<
        tower::util::Either<RpcLayer, tower::layer::util::Identity>,
        tower::layer::util::Identity,
    >,
>;

/// Everything a server runs, built but not yet serving.
pub struct App {
    config: ServeConfig,
    jwks: Option<Arc<crate::jwks::JwksEndpoint>>,
    database_url: DatabaseUrl,
    db: Database,
    cache: Arc<IntrospectionCache>,
    /// Local commits and other replicas' changes, to the cache and the issued-token filter.
    changes: ChangeBus,
    /// Told when storage must be read again for the issued-token filter.
    reload_issued: Arc<tokio::sync::Notify>,
    /// Cancelled when the server stops: background tasks and change streams end.
    stopping: CancellationToken,
    introspector: Arc<Introspector<Database>>,
    metrics: ServiceMetrics,
    health: Health,
    router: Router<GrpcLayers>,
    /// The gRPC port's connections under its cap, which the router's layer marks busy.
    grpc_connections: Arc<grpc_listener::Connections>,
    grpc_tls: Option<TlsAcceptor>,
    http: Option<Http>,
}

/// The HTTP listener, when `--http-listen` is set.
struct Http {
    address: SocketAddr,
    api: Arc<HttpApi<Database>>,
    tls: Option<TlsAcceptor>,
}

impl App {
    /// Builds the services. Touches no database yet: the port can open and report NOT_SERVING
    /// before storage answers.
    pub async fn build(config: ServeConfig, local_embedded: bool) -> Result<Self, ServeError> {
        let trust = config.admin_trust();
        let auth = Arc::new(authenticator(
            &trust,
            config.storage.data_dir(),
            local_embedded,
        )?);
        let jwks = admin_keys::jwks_endpoint(
            &trust,
            config.admin_jwks_ca.as_deref(),
            config.admin_jwks_refresh_interval,
            &auth,
        )
        .await?;
        let cache = Arc::new(IntrospectionCache::new(
            config.introspection_cache_capacity,
            config
                .introspection_cache_max_mib
                .saturating_mul(1024 * 1024),
            config.introspection_cache_max_age,
        ));
        let database_url = config.storage.database_url();
        if config.storage.database_listen_url.is_some()
            && !(database_url.is_postgres() && config.storage.listen_url().is_postgres())
        {
            return Err(ServeError::ListenUrlWithoutPostgres);
        }
        let issued = Arc::new(IssuedTokens::default());
        // On PostgreSQL, down until this replica hears the others.
        let feed = Arc::new(ChangeFeed::new(
            config.watch_history as usize,
            !database_url.is_postgres(),
        ));
        let reload_issued = Arc::new(tokio::sync::Notify::new());
        let reload = reload_issued.clone();
        // The cache first: whatever follows it sees a change only once the cache has dropped
        // what the change made stale.
        let changes = ChangeBus::new(vec![
            cache.clone(),
            issued.clone(),
            feed.clone(),
            Arc::new(move |change: &Change| {
                if *change == Change::Subscribed {
                    reload.notify_one();
                }
            }),
        ]);
        let db = service_accounts_persistence::connect_lazy(
            database_url.expose(),
            config.storage.db_max_connections,
            config.storage.query_path(),
        )
        .await
        .map_err(ServeError::Database)?
        .publishing_to(changes.clone());
        let lanes =
            config.introspection_max_lookups + (config.introspection_max_lookups / 4).max(1);
        if lanes >= config.storage.db_max_connections {
            tracing::warn!(
                lookups = lanes,
                pool = config.storage.db_max_connections,
                "introspection lookups can take every database connection; \
                 lower --introspection-max-lookups or raise --db-max-connections"
            );
        }
        let introspector = Arc::new(Introspector::new(
            db.clone(),
            cache.clone(),
            issued,
            config.introspection_max_lookups as usize,
        ));
        let admin = AdminApi::new(
            AdminService::new(db.clone(), config.quotas()),
            auth,
            jwks.clone(),
        );
        let metrics = ServiceMetrics::new(config.rpc_telemetry());
        let tls = config.tls();
        let client_cert = ClientCertRule {
            required: tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        };
        let stopping = CancellationToken::new();
        let watches = Watches {
            feed,
            heartbeat: config.watch_heartbeat_interval,
            slots: Arc::new(Semaphore::new(config.max_watchers as usize)),
            max: config.max_watchers as usize,
            stopping: stopping.clone(),
        };
        let introspection =
            IntrospectionApi::new(introspector.clone(), metrics.clone(), client_cert, watches);
        let leaks = LeakApi::new(
            db.clone(),
            config.leak_report_tokens_per_minute,
            client_cert,
        );
        // Envoy's `Check` asks what `Introspect` answers, so the same callers may ask it.
        let envoy_check = EnvoyAuthApi::new(introspector.clone(), client_cert, config.challenge());
        let http = match config.http_listen {
            None => None,
            Some(address) => Some(Http {
                address,
                api: Arc::new({
                    let api = HttpApi::new(introspector.clone(), client_cert, config.rpc_timeout)
                        .with_challenge(config.challenge())
                        .with_oauth2(
                            config
                                .introspection_clients
                                .as_deref()
                                .map(IntrospectionClients::load)
                                .transpose()
                                .map_err(ServeError::IntrospectionClients)?
                                .map(Arc::new),
                            config.issuer.clone(),
                        );
                    match &config.github_secret_scanning_keys {
                        None => api,
                        Some(path) => api.with_github(
                            GithubKeys::load(path).map_err(ServeError::GithubKeys)?,
                            db.clone(),
                        ),
                    }
                }),
                tls: tls.as_ref().map(tls::http_tls_acceptor).transpose()?,
            }),
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| ServeError::Transport(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| ServeError::Transport(e.to_string()))?;
        let grpc_tls = tls.as_ref().map(tls::grpc_tls_acceptor).transpose()?;
        let grpc_connections =
            grpc_listener::Connections::new(GrpcLimits::from(&config.connections).max_connections);
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_keepalive_interval(Some(config.connections.grpc_keepalive_interval))
            .http2_keepalive_timeout(Some(config.connections.grpc_keepalive_timeout))
            .timeout(config.rpc_timeout)
            .layer(tower::util::option_layer(
                config.rpc_telemetry().then(RpcLayer::new),
            ))
            .layer(grpc_listener::OpenRpcsLayer::new(grpc_connections.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        // Each service with the largest request it takes.
        let (router, health) = Services::new(router)
            .add(
                ServiceAccountAdminServer::new(admin)
                    .max_decoding_message_size(MAX_ADMIN_MESSAGE_BYTES),
            )
            .add(LeakReportingServer::new(leaks).max_decoding_message_size(MAX_LEAK_REPORT_BYTES))
            .add(
                TokenIntrospectionServer::new(introspection)
                    .max_decoding_message_size(MAX_INTROSPECT_MESSAGE_BYTES),
            )
            .add(
                AuthorizationServer::new(envoy_check)
                    .max_decoding_message_size(MAX_ENVOY_CHECK_MESSAGE_BYTES),
            )
            .into_parts(health_reporter);
        health.set(ServingStatus::NotServing).await;
        Ok(Self {
            config,
            jwks,
            database_url,
            db,
            cache,
            changes,
            reload_issued,
            stopping,
            introspector,
            metrics,
            health,
            router,
            grpc_connections,
            grpc_tls,
            http,
        })
    }

    /// Listens at once, reports SERVING once storage answers and is migrated, serves until
    /// `shutdown`, then tears everything down.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let Self {
            config,
            jwks,
            database_url,
            db,
            cache,
            changes,
            reload_issued,
            stopping,
            introspector,
            metrics,
            health,
            router,
            grpc_connections,
            grpc_tls,
            http,
        } = self;
        // Both ports open, or neither: a taken HTTP port is a start-up mistake.
        let http = match http {
            None => None,
            Some(http) => match TcpListener::bind(http.address).await {
                Ok(listener) => Some((http, listener)),
                Err(reason) => {
                    db.close().await.ok();
                    return Err(ServeError::HttpListen {
                        address: http.address,
                        reason,
                    });
                }
            },
        };
        let mut background = Background::new(stopping);
        if let Some(clients) = http
            .as_ref()
            .and_then(|(h, _)| h.api.introspection_clients())
        {
            background.spawn(move |stop| clients.watch(stop));
        }
        if let Some(jwks) = jwks {
            let interval = config.admin_jwks_refresh_interval;
            background.spawn(move |stop| jwks.keep_fresh(interval, stop));
        }
        if database_url.is_postgres() {
            // Not trusted until the subscription is live, from before the first RPC.
            changes.publish(&Change::Lost);
            let (url, db) = (config.storage.listen_url(), db.clone());
            background.spawn(|stop| background::follow_changes(url, db, changes, stop));
        }
        let (flush_introspector, flush_metrics) = (introspector.clone(), metrics.clone());
        let interval = config.last_used_flush_interval;
        background.spawn(move |stop| {
            background::flush_last_used(flush_introspector, flush_metrics, interval, stop)
        });
        let _gauges = gauges::register_gauges(&cache, &db);

        let local_addr = listener.local_addr().ok();
        let stopping = background.stopping();
        let limits = GrpcLimits::from(&config.connections);
        let mut server = tokio::spawn(grpc_listener::serve(
            router,
            listener,
            grpc_tls,
            grpc_connections,
            limits.handshake_timeout,
            async move { stopping.cancelled().await },
        ));
        let http_address = http
            .as_ref()
            .and_then(|(_, listener)| listener.local_addr().ok());
        let (http_api, mut http_server) = match http {
            None => (None, None),
            Some((http, listener)) => {
                let limits = crate::http::Limits::from(&config.connections);
                let serving = crate::http::serve(
                    http.api.clone(),
                    listener,
                    http.tls,
                    limits,
                    background.stopping(),
                );
                (Some(http.api), Some(tokio::spawn(serving)))
            }
        };
        tracing::info!(
            address = ?local_addr,
            http_address = ?http_address,
            "listening; NOT_SERVING until storage is ready"
        );

        tokio::pin!(shutdown);
        let startup = async {
            db.ping().await.map_err(ServeError::Database)?;
            let applied = db.migrate().await.map_err(ServeError::Migration)?;
            if applied > 0 {
                tracing::info!(applied, "database migrations applied");
            }
            Ok::<(), ServeError>(())
        };
        let mut drain_grace = Duration::ZERO;
        let outcome = match tokio::select! {
            result = startup => Some(result),
            () = &mut shutdown => None,
        } {
            None => Ok(()),
            Some(Err(error)) => Err(error),
            Some(Ok(())) => {
                drain_grace = config.shutdown_grace;
                health.set(ServingStatus::Serving).await;
                if let Some(api) = &http_api {
                    api.set_ready();
                }
                tracing::info!("storage ready; SERVING");
                let (loader, reload) = (introspector.clone(), reload_issued.clone());
                background.spawn(move |stop| background::load_issued_tokens(loader, reload, stop));
                let (purge_db, retention) = (db.clone(), config.deleted_retention);
                background.spawn(move |stop| background::purge_deleted(purge_db, retention, stop));
                let (ready_db, ready_health) = (db.clone(), health.clone());
                let interval = config.readiness_interval;
                background.spawn(move |stop| {
                    background::follow_storage(ready_db, ready_health, interval, stop)
                });
                tokio::select! {
                    result = &mut server => Err(ServeError::Transport(match result {
                        Ok(Ok(())) => "stopped unexpectedly".to_owned(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    })),
                    () = &mut shutdown => {
                        tracing::info!("shutting down: draining in-flight RPCs");
                        Ok(())
                    }
                }
            }
        };

        // One teardown, whatever happened above. A failed start has nothing worth draining.
        health.set(ServingStatus::NotServing).await;
        background.stopping().cancel();
        // Both listeners drain at once, within one grace period.
        let drained_by = tokio::time::Instant::now() + drain_grace;
        if tokio::time::timeout_at(drained_by, &mut server)
            .await
            .is_err()
        {
            if drain_grace > Duration::ZERO {
                tracing::warn!(grace = ?drain_grace, "grace period over; cutting remaining RPCs");
            }
            server.abort();
        }
        if let Some(http_server) = &mut http_server
            && tokio::time::timeout_at(drained_by, &mut *http_server)
                .await
                .is_err()
        {
            if drain_grace > Duration::ZERO {
                tracing::warn!(grace = ?drain_grace, "grace period over; cutting remaining HTTP requests");
            }
            http_server.abort();
        }
        background.stop().await;
        // Again: the storage watch may have reported SERVING while it was being stopped.
        health.set(ServingStatus::NotServing).await;
        match introspector.flush_last_used().await {
            Ok(0) => {}
            Ok(written) => {
                gauges::record_flush(&metrics, Ok(written));
                tracing::info!(written, "last-used times flushed");
            }
            Err(error) => {
                gauges::record_flush(&metrics, Err(()));
                tracing::error!(%error, "last-used times could not be flushed at shutdown");
            }
        }
        if let Err(error) = db.close().await {
            tracing::warn!(%error, "closing the database");
        }
        outcome
    }
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(envoy_api::FILE_DESCRIPTOR_SET)
}
