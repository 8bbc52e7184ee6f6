//! Test harness: a real server on an ephemeral port, over real SQLite or PostgreSQL, called with
//! the generated tonic clients.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};
use service_accounts_api::config::ServeConfig;
use service_accounts_api::dev_key::DevKey;
use service_accounts_api::pb;
use service_accounts_api::pb::service_account_admin_client::ServiceAccountAdminClient;
use service_accounts_api::pb::token_introspection_client::TokenIntrospectionClient;
use service_accounts_api::server::{self, AdminTrust, JwksSource};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server to create test databases on, or `None` to skip (never under `CI`).
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but TEST_DATABASE_URL is not: PostgreSQL tests must run in CI")
        }
        _ => {
            eprintln!("skipping PostgreSQL test: TEST_DATABASE_URL is not set");
            None
        }
    }
}

/// A database created for one test and dropped when the test ends, even if it panics.
pub struct TestDatabase {
    pub url: String,
    postgres: Option<(String, String)>, // (admin url, database name)
}

impl TestDatabase {
    /// Another handle on a database some other test app owns (it is not dropped through this one).
    pub fn shared(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            postgres: None,
        }
    }

    pub async fn create(backend: Backend, dir: &TempDir) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self {
                url: service_accounts_api::config::sqlite_url(&dir.path().join("test.db")),
                postgres: None,
            }),
            Backend::Postgres => {
                let admin_url = postgres_admin_url()?;
                let name = format!("sa_test_{}", uuid::Uuid::now_v7().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect to TEST_DATABASE_URL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let url = replace_database(&admin_url, &name);
                Some(Self {
                    url,
                    postgres: Some((admin_url, name)),
                })
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside async context; use a private runtime on its own thread.
        let result = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = Database::connect(&admin_url)
                    .await
                    .map_err(std::io::Error::other)?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(std::io::Error::other)?;
                admin.close().await.map_err(std::io::Error::other)
            })
        })
        .join();
        if !matches!(result, Ok(Ok(()))) {
            eprintln!("warning: could not drop a test database: {result:?}");
        }
    }
}

pub fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// Every log line the test binary emits, so tests can prove what never reaches logs.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = BufferWriter(buffer.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
}

#[derive(Clone)]
struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
    let dev_key = DevKey::load_or_create(data_dir.path()).expect("dev key");
    let app = TestApp {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        database,
        options,
        dev_key,
        stop: None,
        server: None,
    };
    Some(app)
}

impl TestApp {
    /// A second replica: another server on the same database (and development key).
    pub async fn replica(&self) -> TestApp {
        self.replica_on(&self.database.url).await
    }

    /// A replica that reaches the database through `database_url` (for example a proxy).
    pub async fn replica_on(&self, database_url: &str) -> TestApp {
        let data_dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(
            self.data_dir.path().join("admin-dev-key.pem"),
            data_dir.path().join("admin-dev-key.pem"),
        )
        .expect("copy dev key");
        let mut options = self.options.clone();
        options.storage.database_url = Some(database_url.into());
        options.storage.data.data_dir = data_dir.path().to_owned();
        let dev_key = DevKey::load_or_create(data_dir.path()).expect("dev key");
        let mut replica = TestApp {
            addr: self.addr,
            data_dir,
            database: TestDatabase::shared(database_url),
            options,
            dev_key,
            stop: None,
            server: None,
        };
        replica.start().await;
        replica
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
        // Wait until the server answers (migrations run before it listens for RPCs).
        for _ in 0..600 {
            if let Ok(mut client) = self.health_client().await {
                let check = client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                let serving = tonic_health::pb::health_check_response::ServingStatus::Serving;
                if check.is_ok_and(|r| r.into_inner().status() == serving) {
                    return;
                }
            }
            if self.server.as_ref().is_some_and(|s| s.is_finished()) {
                let result = self.server.take().unwrap().await;
                panic!("server exited during start: {result:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not become ready");
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

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
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
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await?;
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

/// A request carrying `authorization: Bearer <jwt>`.
pub fn authed<T>(message: T, jwt: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
    request
}

/// The field paths of a status's `BadRequest` details.
pub fn violated_fields(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[track_caller]
pub fn assert_invalid(result: Result<impl std::fmt::Debug, Status>, fields: &[&str]) {
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), fields, "{status:?}");
}

#[track_caller]
pub fn assert_code(result: Result<impl std::fmt::Debug, Status>, code: Code) -> Status {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// Creates an account with explicit apps (`None` = all apps) and returns it.
pub async fn create_account(
    app: &TestApp,
    jwt: &str,
    name: &str,
    apps: Option<&[&str]>,
) -> pb::ServiceAccount {
    let access = match apps {
        None => pb::AppAccess {
            all_apps: true,
            app_ids: vec![],
        },
        Some(apps) => pb::AppAccess {
            all_apps: false,
            app_ids: apps.iter().map(|a| a.to_string()).collect(),
        },
    };
    app.admin()
        .await
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: name.into(),
                description: format!("{name} description"),
                app_access: Some(access),
            },
            jwt,
        ))
        .await
        .expect("create account")
        .into_inner()
        .service_account
        .expect("account")
}

/// Issues a token with `scopes` and returns (metadata, secret).
pub async fn create_token(
    app: &TestApp,
    jwt: &str,
    account_id: &str,
    scopes: &[&str],
) -> (pb::Token, String) {
    let response = app
        .admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                service_account_id: account_id.into(),
                display_name: "test token".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expire_time: None,
            },
            jwt,
        ))
        .await
        .expect("create token")
        .into_inner();
    (response.token.expect("token"), response.secret)
}

/// Introspects `token`, checking `org_id`, `app_id` and `scopes` where non-empty.
pub async fn introspect(
    app: &TestApp,
    token: &str,
    org_id: &str,
    app_id: &str,
    scopes: &[&str],
) -> pb::IntrospectResponse {
    app.introspection()
        .await
        .introspect(pb::IntrospectRequest {
            token: token.into(),
            org_id: org_id.into(),
            app_id: app_id.into(),
            required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .expect("introspect")
        .into_inner()
}

pub async fn audit_actions(app: &TestApp, jwt: &str) -> Vec<String> {
    app.admin()
        .await
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                page_size: 1000,
                page_token: String::new(),
            },
            jwt,
        ))
        .await
        .expect("list audit events")
        .into_inner()
        .audit_events
        .into_iter()
        .map(|e| e.action)
        .collect()
}

pub fn data_path(app: &TestApp) -> PathBuf {
    app.data_dir.path().to_owned()
}

/// Runs a test body against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::helpers::postgres_admin_url().is_some() {
                        super::$name($crate::helpers::Backend::Postgres).await;
                    }
                }
            }
        )*
    };
}

/// A timestamp as a comparable (seconds, nanos) pair; panics if unset.
#[track_caller]
pub fn instant(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("timestamp set");
    (t.seconds, t.nanos)
}

/// A TCP proxy in front of PostgreSQL that a test can slow down, cut and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the server of `admin_url`, and `database_url` rewritten to go through it.
    /// `delay` holds back every chunk the client sends.
    pub async fn in_front_of(
        admin_url: &str,
        database_url: &str,
        delay: Duration,
    ) -> (Self, String) {
        let authority = admin_url.split("://").nth(1).unwrap();
        let host_port = authority.split('/').next().unwrap();
        let host_port = host_port.rsplit('@').next().unwrap();
        let upstream = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        let proxy = Self::start(upstream.clone(), delay).await;
        let proxied = database_url.replacen(&upstream, &proxy.addr.to_string(), 1);
        assert_ne!(
            proxied, database_url,
            "TEST_DATABASE_URL must name host:port"
        );
        (proxy, proxied)
    }

    async fn start(upstream: String, delay: Duration) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let cut = cut.clone();
            let frozen = frozen.clone();
            let connections = connections.clone();
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let frozen = frozen.clone();
                    connections.lock().unwrap().push(tokio::spawn(async move {
                        let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        pipe(inbound, outbound, delay, frozen).await;
                    }));
                }
            }
        });
        Self {
            addr,
            cut,
            frozen,
            connections,
            accept,
        }
    }

    /// Stops moving bytes on every connection without closing any.
    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn pipe(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    delay: Duration,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) {
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = outbound.into_split();
    tokio::join!(
        forward(client_read, server_write, delay, frozen.clone()),
        forward(server_read, client_write, Duration::ZERO, frozen),
    );
}

/// Copies one direction; `delay` holds back each chunk, and while `frozen` nothing moves (the
/// connection stays open: a half-open link, as a network partition leaves it).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Connects to a server started as a separate process, once its health says SERVING.
pub async fn connect_when_serving(port: u16) -> Channel {
    use tonic_health::pb::health_check_response::ServingStatus;
    let started = std::time::Instant::now();
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            let status = tonic_health::pb::health_client::HealthClient::new(channel.clone())
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status());
            if matches!(status, Ok(ServingStatus::Serving)) {
                return channel;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Revokes a token through the admin API and returns the revoked token.
pub async fn revoke(app: &TestApp, jwt: &str, account_id: &str, token_id: &str) -> pb::Token {
    app.admin()
        .await
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                service_account_id: account_id.into(),
                token_id: token_id.into(),
            },
            jwt,
        ))
        .await
        .expect("revoke token")
        .into_inner()
        .token
        .expect("token")
}
