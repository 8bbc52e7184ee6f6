//! The server under test, in process: configure a [`Setup`], start it, add replicas.
//!
//! ```ignore
//! let setup = Setup::new(backend).last_used_flush_interval(Duration::from_millis(100));
//! let Some(app) = setup.start().await else {
//!     return; // PostgreSQL is not configured here
//! };
//! let b = app.replica().await; // same database and development key (PostgreSQL)
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use service_accounts_api::config::ServeConfig;
use service_accounts_api::config::{AdminTrust, JwksSource};
use service_accounts_api::dev_key::DevKey;
use service_accounts_api::pb::service_account_admin_client::ServiceAccountAdminClient;
use service_accounts_api::pb::token_introspection_client::TokenIntrospectionClient;
use service_accounts_api::server;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::clients::{connect, serving};
use super::database::{Backend, TestDatabase};
use super::logs::log_buffer;
use super::process::free_port;
use super::wait::Wait;

/// Options a test may change before the server starts.
pub struct Setup {
    pub backend: Backend,
    pub admin_trust: AdminTrust,
    pub cache_capacity: u64,
    pub last_used_flush_interval: Duration,
}

impl Setup {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            // The tests mint admin JWTs with the development key, on PostgreSQL too.
            admin_trust: AdminTrust {
                jwks: None,
                trust_dev_key: true,
            },
            cache_capacity: 10_000,
            last_used_flush_interval: Duration::from_millis(200),
        }
    }

    pub fn admin_trust(mut self, trust: AdminTrust) -> Self {
        self.admin_trust = trust;
        self
    }

    pub fn last_used_flush_interval(mut self, interval: Duration) -> Self {
        self.last_used_flush_interval = interval;
        self
    }

    /// Creates the database and starts the server; `None` when PostgreSQL is not configured.
    pub async fn start(self) -> Option<TestApp> {
        spawn_with(self).await
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub data_dir: TempDir,
    pub database: TestDatabase,
    pub options: ServeConfig,
    dev_key: DevKey,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), server::ServeError>>>,
}

/// Starts a server on SQLite or PostgreSQL; `None` when PostgreSQL is not configured here.
pub async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_with(Setup::new(backend)).await
}

pub async fn spawn_with(setup: Setup) -> Option<TestApp> {
    let mut app = unstarted(setup).await?;
    app.start().await;
    Some(app)
}

/// A test app with its database created but no server running yet.
pub async fn unstarted(setup: Setup) -> Option<TestApp> {
    log_buffer();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let database = TestDatabase::create(setup.backend, &data_dir).await?;
    let mut options = ServeConfig::for_tests(data_dir.path(), &database.url);
    options.storage.db_max_connections = 4;
    if let Some(jwks) = setup.admin_trust.jwks {
        options.admin_jwks = Some(match jwks.source {
            JwksSource::File(path) => path.to_string_lossy().into_owned(),
            JwksSource::Url(url) => url,
        });
        options.admin_jwt_issuer = Some(jwks.issuer);
        options.admin_jwt_audience = Some(jwks.audience);
    }
    options.admin_trust_dev_key = setup.admin_trust.trust_dev_key;
    options.introspection_cache_capacity = setup.cache_capacity;
    options.last_used_flush_interval = setup.last_used_flush_interval;
    options.shutdown_grace = Duration::from_secs(5);
    options.readiness_interval = Duration::from_millis(200);
    Some(TestApp::new(data_dir, database, options))
}

impl TestApp {
    fn new(data_dir: TempDir, database: TestDatabase, options: ServeConfig) -> Self {
        let dev_key = DevKey::load_or_create(data_dir.path()).expect("dev key");
        TestApp {
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir,
            database,
            options,
            dev_key,
            stop: None,
            server: None,
        }
    }

    /// A second replica: another server on the same database (and development key).
    pub async fn replica(&self) -> TestApp {
        self.replica_on(&self.database.url).await
    }

    /// A replica that reaches the database through `database_url` (for example a proxy).
    pub async fn replica_on(&self, database_url: &str) -> TestApp {
        let mut replica = self.unstarted_replica_on(database_url);
        replica.start().await;
        replica
    }

    /// A replica not started yet, so a test can change its options first.
    pub fn unstarted_replica_on(&self, database_url: &str) -> TestApp {
        let data_dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(
            self.data_dir.path().join("admin-dev-key.pem"),
            data_dir.path().join("admin-dev-key.pem"),
        )
        .expect("copy dev key");
        let mut options = self.options.clone();
        options.storage.database_url = Some(database_url.into());
        options.storage.data.data_dir = data_dir.path().to_owned();
        if options.http_listen.is_some() {
            options.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
        }
        TestApp::new(data_dir, TestDatabase::shared(database_url), options)
    }

    /// Starts the server without waiting for it to answer plaintext health checks.
    pub async fn start_without_probe(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        self.addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let options = self.options.clone();
        self.server = Some(tokio::spawn(server::serve(options, listener, async move {
            let _ = stopped.await;
        })));
        self.stop = Some(stop);
    }

    /// (Re)starts the server on a fresh ephemeral port with the same data.
    pub async fn start(&mut self) {
        self.start_without_probe().await;
        // Migrations run before the server listens for RPCs.
        let addr = self.addr;
        let server = &mut self.server;
        Wait::new("the server is SERVING")
            .every(Duration::from_millis(25))
            .until(async || {
                if server.as_ref().is_some_and(|s| s.is_finished()) {
                    let result = server.take().unwrap().await;
                    panic!("server exited during start: {result:?}");
                }
                serving(addr).await
            })
            .await;
    }

    /// Graceful shutdown, as on SIGTERM; returns the server's result.
    pub async fn stop(&mut self) -> Result<(), server::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// Turns the HTTP listener on, on a port that is free now; call before `start()`. Restarts
    /// keep the port; replicas get their own.
    pub fn enable_http(&mut self) {
        self.options.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    }

    /// The HTTP listener's address (after [`TestApp::enable_http`]).
    pub fn http_addr(&self) -> SocketAddr {
        self.options
            .http_listen
            .expect("enable_http() before using the HTTP listener")
    }

    /// `http://127.0.0.1:<port><path>` on the HTTP listener.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr())
    }

    pub async fn channel(&self) -> Channel {
        connect(self.addr).await.expect("connect")
    }

    pub async fn admin(&self) -> ServiceAccountAdminClient<Channel> {
        ServiceAccountAdminClient::new(self.channel().await)
    }

    pub async fn introspection(&self) -> TokenIntrospectionClient<Channel> {
        TokenIntrospectionClient::new(self.channel().await)
    }

    pub async fn health_client(
        &self,
    ) -> Result<tonic_health::pb::health_client::HealthClient<Channel>, tonic::transport::Error>
    {
        let channel = connect(self.addr).await?;
        Ok(tonic_health::pb::health_client::HealthClient::new(channel))
    }

    /// An admin JWT for `user` in `org` signed by the server's development key.
    pub fn jwt(&self, org: &str, user: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        self.dev_key
            .mint(org, user, &roles, Duration::from_secs(300))
            .expect("mint")
    }

    /// An org admin of `org`.
    pub fn admin_jwt(&self, org: &str) -> String {
        self.jwt(org, &format!("admin-of-{org}"), &["org_admin"])
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
