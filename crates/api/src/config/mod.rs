//! Command line and environment configuration. Every flag can also be set by the environment
//! variable named in `--help`. The parsed structs are what the server and the commands take:
//! there is no second copy of the options to keep in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use service_accounts_domain::admin::Quotas;
use service_accounts_persistence::QueryPath;

use crate::gateway::Challenge;
pub use trust::{AdminTrust, JwksSource, JwksTrust, TlsFiles};

mod connections;
pub use connections::ConnectionLimits;

#[derive(Debug, Parser)]
#[command(
    name = "service-accounts",
    version,
    about = "Service-accounts control plane: admin and token-introspection gRPC services.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve` (the default command).
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the default).
    Serve(Box<ServeConfig>),
    /// Apply pending database migrations and exit.
    Migrate(StorageConfig),
    /// Print an admin JWT signed with the local development key, for grpcurl.
    AdminToken(AdminTokenArgs),
    /// Create a caller of `/oauth2/introspect`: print its new secret (once) and the line to add
    /// to the --introspection-clients file.
    IntrospectionClient(IntrospectionClientArgs),
    /// Make the org's service accounts and tokens what a YAML file declares, through the admin
    /// API: print the plan, validate every step, then apply it. Exit code 0: applied or nothing
    /// to do; 2: `--dry-run` and the plan has changes; 1: an error.
    Apply(ApplyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// The file declaring the accounts (docs/provisioning.md).
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the accounts labelled app.embrace.io/managed-by=apply that the file does not
    /// declare, and revoke the live tokens of declared accounts that it does not declare.
    #[arg(long)]
    pub prune: bool,
    /// Where new tokens' secrets go: DIR/<account>/<token>, mode 0600.
    #[arg(long)]
    pub secrets_dir: Option<PathBuf>,
    /// Print new tokens' secrets to stdout instead.
    #[arg(long)]
    pub print_secrets: bool,
    /// The server's admin API.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// A file holding the admin JWT (else the environment variable SERVICE_ACCOUNTS_ADMIN_JWT).
    #[arg(long)]
    pub admin_jwt_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct IntrospectionClientArgs {
    /// The client's id: 1 to 128 letters, digits, '-', '.', '_' or '~'.
    #[arg(long)]
    pub client_id: String,
}

/// The data directory. Shared by every command.
#[derive(Debug, Clone, Args)]
pub struct DataDir {
    /// Directory for the embedded SQLite database and the development admin key.
    #[arg(long, env = "SERVICE_ACCOUNTS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    #[command(flatten)]
    pub data: DataDir,

    /// Database URL: `postgres://user@host/db` for production, `sqlite://path?mode=rwc` for
    /// embedded. Default: SQLite at `<data-dir>/service-accounts.db`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrl::parse)]
    pub database_url: Option<DatabaseUrl>,

    /// Maximum pooled database connections.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_DB_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub db_max_connections: u32,

    /// PostgreSQL URL for the change listener (LISTEN), when --database-url goes through a
    /// transaction pooler such as PgBouncer in `pool_mode = transaction`, where LISTEN does not
    /// work: PostgreSQL itself, or a session-pooling PgBouncer. When set, queries are made fit
    /// for a transaction pooler (each in a transaction, no prepared statement kept across
    /// transactions). Unset: the listener uses --database-url.
    #[arg(long, env = "DATABASE_LISTEN_URL", hide_env_values = true, value_parser = DatabaseUrl::parse)]
    pub database_listen_url: Option<DatabaseUrl>,
}

impl StorageConfig {
    pub fn data_dir(&self) -> &Path {
        &self.data.data_dir
    }

    pub fn database_url(&self) -> DatabaseUrl {
        self.database_url.clone().unwrap_or_else(|| {
            DatabaseUrl(sqlite_url(&self.data_dir().join("service-accounts.db")))
        })
    }

    pub fn is_embedded(&self) -> bool {
        self.database_url().is_sqlite()
    }

    /// Where the change listener connects: --database-listen-url, else --database-url.
    pub fn listen_url(&self) -> DatabaseUrl {
        self.database_listen_url
            .clone()
            .unwrap_or_else(|| self.database_url())
    }

    /// A separate listener URL says the query URL may be a transaction pooler.
    pub fn query_path(&self) -> QueryPath {
        match self.database_listen_url {
            Some(_) => QueryPath::Pooler,
            None => QueryPath::Direct,
        }
    }
}

/// A database URL. It may hold a password, so its `Debug` and `Display` never show one: only
/// [`DatabaseUrl::expose`] does, for connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Any text: an unsupported scheme is reported when connecting, as for every other
    /// connection failure.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(Self(text.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres")
    }
}

impl From<&str> for DatabaseUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return f.write_str("<unparsable database URL>");
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("REDACTED"));
        }
        // A password may also come as a query parameter (`?password=…`).
        if url
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("password"))
        {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") {
                        "REDACTED".to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        f.write_str(url.as_str())
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Everything `serve` takes.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub storage: StorageConfig,

    /// Address to listen on for gRPC.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// The public keys that sign admin JWTs (Ed25519, ES256 or RS256 keys): a JWKS file, or the
    /// identity side's `https://` JWKS URL, which is refreshed while the server runs. When set,
    /// the development key is not trusted (see --admin-trust-dev-key).
    #[arg(long, env = "SERVICE_ACCOUNTS_ADMIN_JWKS", requires_all = ["admin_jwt_issuer", "admin_jwt_audience"])]
    pub admin_jwks: Option<String>,

    /// How often a JWKS URL is fetched again. A JWT naming an unknown key id also triggers a
    /// fetch, at most once per this interval (and at least every 30 s).
    #[arg(long, env = "SERVICE_ACCOUNTS_ADMIN_JWKS_REFRESH_INTERVAL", default_value = "5m", value_parser = positive_duration)]
    pub admin_jwks_refresh_interval: Duration,

    /// PEM CA bundle trusted for a JWKS URL besides the system's roots (a private identity side).
    #[arg(long, env = "SERVICE_ACCOUNTS_ADMIN_JWKS_CA")]
    pub admin_jwks_ca: Option<PathBuf>,

    /// Required `iss` of admin JWTs (with --admin-jwks).
    #[arg(long, env = "SERVICE_ACCOUNTS_ADMIN_JWT_ISSUER")]
    pub admin_jwt_issuer: Option<String>,

    /// Required `aud` of admin JWTs (with --admin-jwks).
    #[arg(long, env = "SERVICE_ACCOUNTS_ADMIN_JWT_AUDIENCE")]
    pub admin_jwt_audience: Option<String>,

    /// Trust the development key in the data dir even where it is not trusted by default (with
    /// --admin-jwks, with PostgreSQL, or on a non-loopback address). Development stacks only.
    #[arg(long, env = "SERVICE_ACCOUNTS_ADMIN_TRUST_DEV_KEY")]
    pub admin_trust_dev_key: bool,

    /// Introspection cache size in entries (one per recently seen token); 0 disables it.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_INTROSPECTION_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    pub introspection_cache_capacity: u64,

    /// Memory for cached tokens, in MiB; their accounts' shared data (names, app lists) may take
    /// up to a quarter as much again.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_INTROSPECTION_CACHE_MAX_MIB",
        default_value_t = 64
    )]
    pub introspection_cache_max_mib: u64,

    /// Maximum age of an introspection cache entry, in whole seconds: a backstop; changes
    /// invalidate entries at once.
    #[arg(long, env = "SERVICE_ACCOUNTS_INTROSPECTION_CACHE_MAX_AGE", default_value = "60s", value_parser = whole_seconds)]
    pub introspection_cache_max_age: Duration,

    /// How often coalesced last-used times are written to storage.
    #[arg(long, env = "SERVICE_ACCOUNTS_LAST_USED_FLUSH_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub last_used_flush_interval: Duration,

    /// How long a deleted service account's tokens are kept (revoked, so introspecting one says
    /// REVOKED rather than UNKNOWN) before they and the account are purged. Audit events stay.
    #[arg(long, env = "SERVICE_ACCOUNTS_DELETED_RETENTION", default_value = "30days", value_parser = positive_duration)]
    pub deleted_retention: Duration,

    /// How long in-flight RPCs may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "SERVICE_ACCOUNTS_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Service accounts an org may have.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_MAX_SERVICE_ACCOUNTS_PER_ORG",
        default_value_t = Quotas::default().service_accounts_per_org
    )]
    pub max_service_accounts_per_org: u32,

    /// Tokens that are neither revoked nor expired that a service account may have.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_MAX_TOKENS_PER_SERVICE_ACCOUNT",
        default_value_t = Quotas::default().live_tokens_per_service_account
    )]
    pub max_tokens_per_service_account: u32,

    /// Leaked tokens one caller address may report per minute through `LeakReporting` (a
    /// report of up to 1,000 is always admitted when the allowance is full).
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_LEAK_REPORT_TOKENS_PER_MINUTE",
        default_value = "1000"
    )]
    pub leak_report_tokens_per_minute: std::num::NonZeroU32,

    /// GitHub's secret-scanning public keys, a JSON document shaped like the one GitHub
    /// publishes. Enables `POST /v1/secret-scanning/github` on the HTTP listener
    /// (`--http-listen`); without it that path is 404.
    #[arg(long, env = "SERVICE_ACCOUNTS_GITHUB_SECRET_SCANNING_KEYS")]
    pub github_secret_scanning_keys: Option<PathBuf>,

    /// Introspection storage lookups (cache misses) in flight at once per replica; further misses
    /// queue. Keep it below --db-max-connections so that admin changes keep connections while
    /// made-up tokens flood in.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_INTROSPECTION_MAX_LOOKUPS",
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub introspection_max_lookups: u32,

    /// HTTP/2 streams (concurrent RPCs) per client connection.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_MAX_CONCURRENT_STREAMS",
        default_value_t = 256
    )]
    pub max_concurrent_streams: u32,

    /// The longest an RPC may run; a shorter `grpc-timeout` from the caller wins.
    #[arg(long, env = "SERVICE_ACCOUNTS_RPC_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub rpc_timeout: Duration,

    /// The longest a `WatchChanges` stream goes without a message: a heartbeat is sent when
    /// nothing else was. Callers stop trusting their caches after their own staleness bound.
    #[arg(long, env = "SERVICE_ACCOUNTS_WATCH_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub watch_heartbeat_interval: Duration,

    /// Changes each replica keeps so that a `WatchChanges` caller can resume where it left off
    /// and a slow one can catch up; a caller further behind is sent `reset`.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_WATCH_HISTORY",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub watch_history: u32,

    /// `WatchChanges` streams a replica serves at once; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "SERVICE_ACCOUNTS_MAX_WATCHERS", default_value_t = 1000)]
    pub max_watchers: u32,

    /// How often storage is checked; health is NOT_SERVING while it does not answer.
    #[arg(long, env = "SERVICE_ACCOUNTS_READINESS_INTERVAL", default_value = "2s", value_parser = positive_duration)]
    pub readiness_interval: Duration,

    /// Address for the HTTP/1.1 listener (`/v1/forward-auth` for gateways). Unset: no HTTP
    /// listener. With --tls-cert it serves HTTPS with the same certificate.
    #[arg(long, env = "SERVICE_ACCOUNTS_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub connections: ConnectionLimits,

    /// Authenticate callers of the HTTP listener's `/oauth2/introspect` (RFC 7662) with the
    /// clients in this file: one `client_id:<hex SHA-256 of its secret>` per line, made by the
    /// `introspection-client` subcommand; re-read on SIGHUP and when it changes. Unset: the
    /// endpoint takes callers as `Introspect` does (the network, or mTLS).
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_INTROSPECTION_CLIENTS",
        requires = "http_listen"
    )]
    pub introspection_clients: Option<PathBuf>,

    /// The `iss` of `/oauth2/introspect` answers (for example this service's URL). Unset: none.
    #[arg(long, env = "SERVICE_ACCOUNTS_ISSUER", value_parser = challenge_value)]
    pub issuer: Option<String>,

    /// The `realm` of the `WWW-Authenticate: Bearer` challenges of forward-auth and Envoy's
    /// `Check` (RFC 6750). Unset: none.
    #[arg(long, env = "SERVICE_ACCOUNTS_BEARER_REALM", value_parser = challenge_value)]
    pub bearer_realm: Option<String>,

    /// The protected resource's metadata URL (RFC 9728), named as `resource_metadata` in the
    /// 401 challenges of forward-auth and Envoy's `Check`: MCP clients follow it to find how to
    /// get a token. Unset: not named.
    #[arg(long, env = "SERVICE_ACCOUNTS_RESOURCE_METADATA_URL", value_parser = challenge_value)]
    pub resource_metadata_url: Option<String>,

    /// PEM certificate chain to serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "SERVICE_ACCOUNTS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "SERVICE_ACCOUNTS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle (mTLS): callers of TokenIntrospection (Introspect, WatchChanges),
    /// LeakReporting, Envoy's Authorization/Check and the HTTP listener's /v1/forward-auth and
    /// /oauth2/introspect must present a client certificate issued by it. Admin callers may connect without one; they authenticate with
    /// their JWT.
    #[arg(long, env = "SERVICE_ACCOUNTS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// OTLP/gRPC endpoint (for example http://otel-collector:4317) to export traces and
    /// metrics to. Unset: nothing is exported. The standard OTEL_* variables tune the exporters.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Log format.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct AdminTokenArgs {
    /// The data dir whose development key signs the token.
    #[command(flatten)]
    pub data: DataDir,
    /// The org the admin acts in (the `org_id` claim).
    #[arg(long)]
    pub org_id: String,
    /// The admin's user id (the `sub` claim).
    #[arg(long)]
    pub user_id: String,
    /// How long the token is valid: at most 1h, the longest admin JWT the server accepts.
    #[arg(long, default_value = "1h", value_parser = admin_token_ttl)]
    pub ttl: Duration,
    /// Roles to put in the token.
    #[arg(long = "role", default_value = "org_admin")]
    pub roles: Vec<String>,
}

/// A duration that must not be zero (an interval of zero would spin or panic).
fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(duration)
}

/// A duration of at least one second and no fraction of one, for settings kept in whole seconds:
/// `500ms` or `1.5s` would otherwise be rounded without a word.
fn whole_seconds(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration < Duration::from_secs(1) || duration.subsec_nanos() != 0 {
        return Err("counts whole seconds: give 1s or more, with no fraction of a second".into());
    }
    Ok(duration)
}

/// A value that stands in a quoted string of a header or a JSON answer as it is: visible ASCII
/// without quotes or backslashes, at most 512 bytes.
fn challenge_value(text: &str) -> Result<String, String> {
    let fits = (1..=512).contains(&text.len())
        && text
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if !fits {
        return Err(
            "must be 1 to 512 printable ASCII characters, without quotes or backslashes".into(),
        );
    }
    Ok(text.to_owned())
}

fn admin_token_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    let max = Duration::from_secs(crate::auth::MAX_LIFETIME_SECONDS);
    if ttl > max || ttl.is_zero() {
        return Err(format!(
            "must be more than 0 and at most {}",
            humantime::format_duration(max)
        ));
    }
    Ok(ttl)
}

impl ServeConfig {
    /// Every flag at its default, on `database_url` with `data_dir`: where tests start before
    /// changing what they exercise.
    pub fn for_tests(data_dir: &Path, database_url: &str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: ServeConfig,
        }
        // The environment is not read: every flag is at its documented default.
        let matches = Defaults::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .try_get_matches_from(["service-accounts"])
            .expect("the defaults parse");
        let mut config = Defaults::from_arg_matches(&matches)
            .expect("the defaults parse")
            .config;
        config.storage.data.data_dir = data_dir.to_owned();
        config.storage.database_url = Some(database_url.into());
        config
    }

    /// Who may sign admin JWTs, as the flags say.
    pub fn admin_trust(&self) -> AdminTrust {
        AdminTrust {
            jwks: self.admin_jwks.as_deref().map(|source| JwksTrust {
                source: JwksSource::parse(source),
                issuer: self.admin_jwt_issuer.clone().unwrap_or_default(),
                audience: self.admin_jwt_audience.clone().unwrap_or_default(),
            }),
            trust_dev_key: self.admin_trust_dev_key,
        }
    }

    /// What the bearer challenges of HTTP answers name besides the error.
    pub fn challenge(&self) -> Challenge {
        Challenge {
            realm: self.bearer_realm.clone(),
            resource_metadata: self.resource_metadata_url.clone(),
        }
    }

    pub fn tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    pub fn quotas(&self) -> Quotas {
        Quotas {
            service_accounts_per_org: self.max_service_accounts_per_org,
            live_tokens_per_service_account: self.max_tokens_per_service_account,
        }
    }

    /// Per-RPC spans and duration metrics exist only when they are exported.
    pub fn rpc_telemetry(&self) -> bool {
        self.otlp_endpoint.is_some()
    }
}

mod trust;

#[cfg(test)]
mod tests;
