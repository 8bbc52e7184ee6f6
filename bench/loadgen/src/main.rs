//! Load generator for `bench/introspect.sh`: drives `Introspect` or `Health/Check` over a few
//! HTTP/2 connections with many concurrent streams, closed-loop (as fast as the server answers)
//! or open-loop at a constant rate (latency measured from each request's scheduled start, so a
//! stalled server is charged for the requests it delayed: no coordinated omission), and reports
//! HdrHistogram percentiles.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hdrhistogram::Histogram;
use prost::Message;
use service_accounts_api::pb;
use service_accounts_api::pb::service_account_admin_client::ServiceAccountAdminClient;
use service_accounts_api::pb::token_introspection_client::TokenIntrospectionClient;
use service_accounts_domain::token::TokenSecret;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

mod inventory;
mod listeners;

#[derive(Parser)]
#[command(about = "Load generator for the service-accounts introspection benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive one RPC and print throughput and latency percentiles.
    Load(LoadArgs),
    /// Write fresh tokens: a CSV for PostgreSQL's COPY into `tokens`, and the plaintexts.
    GenTokens(GenTokensArgs),
    /// Measure how long a revoke on one replica takes to show on another.
    Propagation(PropagationArgs),
    /// Measure how long a revoke on one replica takes to reach the last of many `WatchChanges`
    /// streams on another.
    WatchPropagation(WatchPropagationArgs),
    /// Print a length-prefixed gRPC request body (for h2load's -d).
    GrpcBody(GrpcBodyArgs),
    /// Create a service account and tokens through the admin API; print the account id.
    Seed(SeedArgs),
    /// Rename a service account over and over at a steady pace and print how long each admin
    /// write took: what a flush or any other writer makes admins wait.
    AdminWrites(AdminWritesArgs),
    /// Wait until the server's health says SERVING (migrations done, storage answering).
    Ready {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
    },
    /// Time filtered inventory listings (`ListTokens`, `ListAuditEvents`) of a big org and
    /// stream its credential report while sampling the server's RSS (bench/inventory.sh).
    Inventory(inventory::InventoryArgs),
    /// Print SQLite's `EXPLAIN QUERY PLAN` of statements, through the server's SQLite build.
    SqlitePlans(inventory::SqlitePlansArgs),
    /// Open extra connections that `LISTEN` on the service's change channel and read every
    /// notification, as other replicas' listeners would (bench/capacity.sh).
    Listeners(listeners::ListenersArgs),
    /// Print the resident set size of a process, in KiB.
    Rss {
        #[arg(long)]
        pid: u32,
    },
}

#[derive(clap::Args)]
struct SeedArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    #[arg(long, env = "ADMIN_JWT", hide_env_values = true)]
    jwt: String,
    #[arg(long, default_value = "bench")]
    name: String,
    #[arg(long, default_value_t = 0)]
    tokens: usize,
    /// Where to write the plaintext tokens, one per line.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Rpc {
    Introspect,
    Health,
    /// Envoy's `envoy.service.auth.v3.Authorization/Check` with the token as a bearer header.
    Check,
}

#[derive(clap::Args)]
struct LoadArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    #[arg(long, value_enum)]
    rpc: Rpc,
    /// File with one token per line, used round-robin (for `introspect`).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// `Introspect`'s checks: the org, app, required scopes (comma-separated) and client
    /// address sent with every request; empty: not sent.
    #[arg(long, default_value = "")]
    org_id: String,
    #[arg(long, default_value = "")]
    app_id: String,
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    #[arg(long, default_value = "")]
    client_ip: String,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent in-flight requests (streams), spread over the connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Requests per second for open-loop mode; 0 = closed loop, as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Send exactly this many requests, then stop (no warm-up; `--duration` is ignored). For
    /// counting the server's instructions per request.
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Load-generator threads (1 = a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A label printed with the result.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(clap::Args)]
struct GenTokensArgs {
    #[arg(long)]
    count: usize,
    /// The tokens' accounts: one, or several separated by commas, given tokens in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    service_account_id: Vec<String>,
    #[arg(long)]
    org_id: String,
    /// CSV for `COPY tokens (id, service_account_id, org_id, display_name, token_hash, scopes,
    /// hint, created_at, created_by) FROM … WITH (FORMAT csv)`.
    #[arg(long)]
    csv: PathBuf,
    /// The plaintext tokens, one per line.
    #[arg(long)]
    plaintexts: PathBuf,
    /// Also write `<n>,<hash hex>` lines for pgbench's lookup table.
    #[arg(long)]
    hashes: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PropagatedChange {
    Revoke,
    Disable,
}

#[derive(clap::Args)]
struct PropagationArgs {
    /// The replica that makes the change.
    #[arg(long)]
    writer: String,
    /// The replica that is polled.
    #[arg(long)]
    reader: String,
    /// Admin JWT for the writer.
    #[arg(long, env = "ADMIN_JWT", hide_env_values = true)]
    jwt: String,
    #[arg(long)]
    service_account_id: String,
    #[arg(long, default_value_t = 200)]
    trials: usize,
    /// The change measured: revoking a fresh token, or disabling its account.
    #[arg(long, value_enum, default_value = "revoke")]
    change: PropagatedChange,
}

#[derive(clap::Args)]
struct WatchPropagationArgs {
    /// The replica that revokes.
    #[arg(long)]
    writer: String,
    /// The replica the watchers watch.
    #[arg(long)]
    watched: String,
    #[arg(long, env = "ADMIN_JWT", hide_env_values = true)]
    jwt: String,
    #[arg(long)]
    service_account_id: String,
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Connections the watchers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 200)]
    trials: usize,
}

#[derive(clap::Args)]
struct AdminWritesArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    #[arg(long, env = "ADMIN_JWT", hide_env_values = true)]
    jwt: String,
    #[arg(long)]
    service_account_id: String,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between the starts of two writes (one write at a time); `0s`: back to back, as
    /// fast as the server answers (closed loop).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Also write each write's start (microseconds since the Unix epoch) and duration
    /// (microseconds) to this file, a line each.
    #[arg(long)]
    log: Option<PathBuf>,
}

#[derive(clap::Args)]
struct GrpcBodyArgs {
    #[arg(long, value_enum)]
    rpc: Rpc,
    #[arg(long, default_value = "")]
    token: String,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    // The load generator shares the machine with the server: by default it keeps to one thread
    // so that the server gets the rest.
    let threads = match &cli.command {
        Command::Load(args) => args.threads,
        _ => 1,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Load(args) => load(args).await,
        Command::GenTokens(args) => gen_tokens(args),
        Command::Propagation(args) => propagation(args).await,
        Command::WatchPropagation(args) => watch_propagation(args).await,
        Command::GrpcBody(args) => grpc_body(args),
        Command::Seed(args) => seed(args).await,
        Command::AdminWrites(args) => admin_writes(args).await,
        Command::Inventory(args) => inventory::inventory(args).await,
        Command::SqlitePlans(args) => inventory::sqlite_plans(args).await,
        Command::Listeners(args) => listeners::listeners(args).await,
        Command::Ready { target } => {
            let serving = tonic_health::pb::health_check_response::ServingStatus::Serving;
            for _ in 0..600 {
                if let Ok(channel) = Channel::from_shared(target.clone())?.connect().await
                    && let Ok(response) = HealthClient::new(channel)
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                    && response.into_inner().status() == serving
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err("the server did not become ready within a minute".into())
        }
        Command::Rss { pid } => {
            println!("{}", rss_kib(pid)?);
            Ok(())
        }
    }
}

/// The resident set size of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?)
}

async fn load(args: LoadArgs) -> Result<(), Box<dyn std::error::Error>> {
    let tokens: Arc<Vec<String>> = Arc::new(match &args.tokens {
        Some(path) => std::fs::read_to_string(path)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    });
    if matches!(args.rpc, Rpc::Introspect | Rpc::Check) && tokens.is_empty() {
        return Err("--tokens is required for introspect and check".into());
    }
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Channel::from_shared(args.target.clone())?.connect().await?);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let (warmup, duration) = if args.requests > 0 {
        (Duration::ZERO, Duration::from_secs(24 * 3600))
    } else {
        (args.warmup, args.duration)
    };
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let limit = args.requests;
    let checks = Arc::new(pb::IntrospectRequest {
        token: String::new(),
        org_id: args.org_id.clone(),
        app_id: args.app_id.clone(),
        required_scopes: args.scopes.clone(),
        client_ip: args.client_ip.clone(),
    });
    let caller = Caller {
        rpc: args.rpc,
        tokens: tokens.clone(),
        checks,
    };
    let window = Window {
        measure_from,
        end,
        limit,
    };
    let (histogram, total, errors, lag) = match 1_000_000_000u64.checked_div(args.rate) {
        Some(nanos) => {
            let interval = Duration::from_nanos(nanos);
            let client = BareClient::connect(&args.target, args.connections, &caller).await?;
            open_loop(&client, args.concurrency, start, interval, window).await?
        }
        None => closed_loop(&caller, &channels, args.concurrency, window).await?,
    };
    let seconds = if limit > 0 {
        Instant::now().duration_since(start).as_secs_f64().max(1e-9)
    } else {
        args.duration.as_secs_f64()
    };
    let mut line = String::new();
    write!(
        line,
        "{{\"label\":\"{}\",\"rpc\":\"{}\",\"mode\":\"{}\",\"connections\":{},\"concurrency\":{},\"requests\":{},\"errors\":{},\"rps\":{:.0},\"mean_us\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"send_lag_p99_us\":{},\"send_lag_max_us\":{}}}",
        args.label,
        match args.rpc {
            Rpc::Introspect => "introspect",
            Rpc::Health => "health",
            Rpc::Check => "check",
        },
        if args.rate > 0 {
            format!("open-loop@{}", args.rate)
        } else {
            "closed-loop".into()
        },
        args.connections,
        args.concurrency,
        total,
        errors,
        total as f64 / seconds,
        histogram.mean(),
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.90),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
        lag.value_at_quantile(0.99),
        lag.max(),
    )?;
    println!("{line}");
    Ok(())
}

/// What each request of a run sends.
#[derive(Clone)]
struct Caller {
    rpc: Rpc,
    tokens: Arc<Vec<String>>,
    checks: Arc<pb::IntrospectRequest>,
}

impl Caller {
    /// Sends request number `i` with one worker's clients; true when it succeeded.
    async fn call(&self, clients: &mut Clients, i: u64) -> bool {
        let token = || self.tokens[i as usize % self.tokens.len()].clone();
        match self.rpc {
            Rpc::Introspect => clients
                .introspection
                .introspect(pb::IntrospectRequest {
                    token: token(),
                    ..(*self.checks).clone()
                })
                .await
                .is_ok(),
            Rpc::Health => clients
                .health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok(),
            Rpc::Check => clients.envoy.check(check_request(&token())).await.is_ok(),
        }
    }
}

/// One closed-loop worker's clients, kept across its requests.
struct Clients {
    introspection: TokenIntrospectionClient<Channel>,
    health: HealthClient<Channel>,
    envoy: AuthorizationClient<Channel>,
}

impl Clients {
    fn new(channel: Channel) -> Self {
        Self {
            introspection: TokenIntrospectionClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            envoy: AuthorizationClient::new(channel),
        }
    }
}

/// Which requests count: those sent from `measure_from` and answered by `end`, or the first
/// `limit` when it is set.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
    limit: u64,
}

/// Latencies in microseconds, requests measured, errors, and (open loop) how late the generator
/// itself sent each measured request, in microseconds: a generator that falls behind shows here,
/// not as the server's latency.
type Outcome = (Histogram<u64>, u64, u64, Histogram<u64>);

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// `concurrency` workers, each sending its next request as soon as the last is answered.
async fn closed_loop(
    caller: &Caller,
    channels: &[Channel],
    concurrency: usize,
    window: Window,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (caller, channel, next) = (
            caller.clone(),
            channels[worker % channels.len()].clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut measured, mut errors) = (histogram(), 0u64, 0u64);
            let mut clients = Clients::new(channel);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                if (window.limit > 0 && i >= window.limit) || sent >= window.end {
                    break;
                }
                let ok = caller.call(&mut clients, i).await;
                let done = Instant::now();
                if sent >= window.measure_from && done <= window.end {
                    if ok {
                        latencies.saturating_record(done.duration_since(sent).as_micros() as u64);
                        measured += 1;
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, measured, errors)
        }));
    }
    let (mut latencies, mut total, mut errors) = (histogram(), 0, 0);
    for worker in workers {
        let (h, n, e) = worker.await?;
        latencies.add(&h)?;
        total += n;
        errors += e;
    }
    Ok((latencies, total, errors, histogram()))
}

/// Request `i` is due at `start + i × interval` and goes out on a task of its own, with at most
/// `concurrency` in flight. Latency runs from the due time, so a request that left late because
/// the server held the earlier ones is charged for the wait (no coordinated omission).
///
/// The pacer waits for each due time on a timer with microsecond resolution that the runtime
/// polls with its sockets, so the generator's thread sleeps in between. tokio's own timer has
/// millisecond resolution (requests would leave in per-millisecond bursts), and spinning until
/// a due time makes the generator use its whole core: the kernel then lets any waking process
/// run first, and the generator's own lateness shows up as milliseconds in the tail.
async fn open_loop(
    client: &BareClient,
    concurrency: usize,
    start: Instant,
    interval: Duration,
    window: Window,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let mut timer = PreciseTimer::new()?;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let outcome = Arc::new(std::sync::Mutex::new((
        histogram(),
        0u64,
        0u64,
        histogram(),
    )));
    let mut requests = tokio::task::JoinSet::new();
    for i in 0u64.. {
        let scheduled = start + interval * i as u32;
        if (window.limit > 0 && i >= window.limit) || scheduled >= window.end {
            break;
        }
        timer.sleep_until(scheduled).await?;
        let permit = in_flight.clone().acquire_owned().await?;
        let (client, outcome) = (client.clone(), outcome.clone());
        requests.spawn(async move {
            let lag = Instant::now().saturating_duration_since(scheduled);
            let ok = client.call(i).await;
            let done = Instant::now();
            drop(permit);
            // Every request due in the window counts, however late its answer: dropping the
            // ones answered after the end would drop the slowest.
            if scheduled >= window.measure_from {
                let mut outcome = outcome.lock().expect("outcome lock");
                if ok {
                    let latency = done.duration_since(scheduled).as_micros() as u64;
                    outcome.0.saturating_record(latency);
                    outcome.1 += 1;
                    outcome.3.saturating_record(lag.as_micros() as u64);
                } else {
                    outcome.2 += 1;
                }
            }
        });
        // Reap finished requests as we go, so the set stays as small as what is in flight.
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    let outcome = std::mem::replace(
        &mut *outcome.lock().expect("outcome lock"),
        (histogram(), 0, 0, histogram()),
    );
    Ok(outcome)
}

/// A bare HTTP/2 gRPC client for the open loop: request bodies encoded up front, no tower stack
/// or codec per call, so that one core offers tens of thousands of requests a second without
/// the generator's own work adding to the latencies it measures.
#[derive(Clone)]
struct BareClient {
    senders: Vec<h2::client::SendRequest<bytes::Bytes>>,
    uri: http::Uri,
    bodies: Arc<Vec<bytes::Bytes>>,
}

impl BareClient {
    async fn connect(
        target: &str,
        connections: usize,
        caller: &Caller,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let path = match caller.rpc {
            Rpc::Introspect => "/embrace.serviceaccounts.v1.TokenIntrospection/Introspect",
            Rpc::Health => "/grpc.health.v1.Health/Check",
            Rpc::Check => "/envoy.service.auth.v3.Authorization/Check",
        };
        let uri: http::Uri = format!("{}{path}", target.trim_end_matches('/')).parse()?;
        let authority = uri
            .authority()
            .ok_or("--target needs host:port")?
            .to_string();
        let mut senders = Vec::new();
        for _ in 0..connections.max(1) {
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let (sender, connection) = h2::client::handshake(tcp).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            senders.push(sender);
        }
        let bodies = if caller.tokens.is_empty() {
            vec![grpc_frame(caller.rpc, "", &caller.checks)]
        } else {
            caller
                .tokens
                .iter()
                .map(|token| grpc_frame(caller.rpc, token, &caller.checks))
                .collect()
        };
        Ok(Self {
            senders,
            uri,
            bodies: Arc::new(bodies),
        })
    }

    /// Sends request number `i`; true when it was answered with gRPC status OK.
    async fn call(&self, i: u64) -> bool {
        let sender = self.senders[i as usize % self.senders.len()].clone();
        let Ok(mut sender) = sender.ready().await else {
            return false;
        };
        let request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .expect("a valid request");
        let Ok((response, mut stream)) = sender.send_request(request, false) else {
            return false;
        };
        let body = self.bodies[i as usize % self.bodies.len()].clone();
        if stream.send_data(body, true).is_err() {
            return false;
        }
        let Ok(response) = response.await else {
            return false;
        };
        let (parts, mut body) = response.into_parts();
        let ok = |headers: &http::HeaderMap| headers.get("grpc-status").is_some_and(|s| s == "0");
        if parts.status != http::StatusCode::OK {
            return false;
        }
        if parts.headers.contains_key("grpc-status") {
            return ok(&parts.headers); // trailers-only answer
        }
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else {
                return false;
            };
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        matches!(body.trailers().await, Ok(Some(trailers)) if ok(&trailers))
    }
}

/// A length-prefixed gRPC request body.
fn grpc_frame(rpc: Rpc, token: &str, checks: &pb::IntrospectRequest) -> bytes::Bytes {
    let message = match rpc {
        Rpc::Introspect => pb::IntrospectRequest {
            token: token.to_owned(),
            ..checks.clone()
        }
        .encode_to_vec(),
        Rpc::Health => HealthCheckRequest {
            service: String::new(),
        }
        .encode_to_vec(),
        Rpc::Check => check_request(token).encode_to_vec(),
    };
    let mut body = vec![0u8];
    body.extend((message.len() as u32).to_be_bytes());
    body.extend(message);
    body.into()
}

/// A one-shot timer with microsecond resolution (Linux `timerfd`), awaited like a socket.
struct PreciseTimer {
    fd: tokio::io::unix::AsyncFd<timerfd::TimerFd>,
}

impl PreciseTimer {
    fn new() -> std::io::Result<Self> {
        let timer = timerfd::TimerFd::new_custom(timerfd::ClockId::Monotonic, true, true)?;
        // SAFETY: the TimerFd owns its descriptor and is owned by the AsyncFd until it is
        // dropped, so the descriptor stays open and the same while registered.
        let fd =
            unsafe { tokio::io::unix::AsyncFd::register(timer) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Returns at `deadline` (at once if it has passed).
    async fn sleep_until(&mut self, deadline: Instant) -> std::io::Result<()> {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        self.fd.get_mut().set_state(
            timerfd::TimerState::Oneshot(wait),
            timerfd::SetTimeFlags::Default,
        );
        loop {
            let mut ready = self.fd.readable().await?;
            // Non-blocking: 0 when the timer has not fired yet.
            if ready.get_inner().read() > 0 {
                return Ok(());
            }
            ready.clear_ready();
        }
    }
}

fn gen_tokens(args: GenTokensArgs) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{BufWriter, Write};
    let mut csv = BufWriter::new(std::fs::File::create(&args.csv)?);
    let mut plaintexts = BufWriter::new(std::fs::File::create(&args.plaintexts)?);
    let mut hashes = args
        .hashes
        .as_ref()
        .map(std::fs::File::create)
        .transpose()?
        .map(BufWriter::new);
    let now = "2026-01-01 00:00:00+00";
    for n in 1..=args.count {
        let secret = TokenSecret::generate();
        let hash: String = secret
            .hash()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let id = service_accounts_domain::ids::TokenId::generate();
        writeln!(
            csv,
            "{id},{},{},bench {n},\\x{hash},mcp:tools:call,{},{now},bench",
            args.service_account_id[n % args.service_account_id.len()],
            args.org_id,
            secret.hint()
        )?;
        writeln!(plaintexts, "{}", secret.expose())?;
        if let Some(hashes) = hashes.as_mut() {
            writeln!(hashes, "{n},\\x{hash}")?;
        }
    }
    Ok(())
}

async fn propagation(args: PropagationArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut admin =
        ServiceAccountAdminClient::new(Channel::from_shared(args.writer)?.connect().await?);
    let mut reader =
        TokenIntrospectionClient::new(Channel::from_shared(args.reader)?.connect().await?);
    let jwt = args.jwt.clone();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..args.trials {
        let created = admin
            .create_token(authed(
                &jwt,
                pb::CreateTokenRequest {
                    validate_only: false,
                    allowed_cidrs: Vec::new(),
                    service_account_id: args.service_account_id.clone(),
                    display_name: "propagation".into(),
                    scopes: vec!["mcp:tools:call".into()],
                    expire_time: None,
                },
            ))
            .await?
            .into_inner();
        let token_id = created.token.ok_or("no token")?.token_id;
        let introspect = || pb::IntrospectRequest {
            token: created.secret.clone(),
            ..Default::default()
        };
        // Twice: the second answer comes from the reader's cache.
        for _ in 0..2 {
            if !reader.introspect(introspect()).await?.into_inner().active {
                return Err("a fresh token was not active on the reader".into());
            }
        }
        match args.change {
            PropagatedChange::Revoke => {
                admin
                    .revoke_token(authed(
                        &jwt,
                        pb::RevokeTokenRequest {
                            validate_only: false,
                            service_account_id: args.service_account_id.clone(),
                            token_id,
                        },
                    ))
                    .await?;
            }
            PropagatedChange::Disable => {
                admin
                    .disable_service_account(authed(
                        &jwt,
                        pb::DisableServiceAccountRequest {
                            validate_only: false,
                            service_account_id: args.service_account_id.clone(),
                        },
                    ))
                    .await?;
            }
        }
        let revoked = Instant::now();
        loop {
            if !reader.introspect(introspect()).await?.into_inner().active {
                histogram.saturating_record(revoked.elapsed().as_micros() as u64);
                break;
            }
            if revoked.elapsed() > Duration::from_secs(10) {
                return Err("the reader never saw the change".into());
            }
        }
        if let PropagatedChange::Disable = args.change {
            admin
                .enable_service_account(authed(
                    &jwt,
                    pb::EnableServiceAccountRequest {
                        validate_only: false,
                        service_account_id: args.service_account_id.clone(),
                    },
                ))
                .await?;
            // Enabled again before the next trial's fresh token is introspected.
            let enabled = Instant::now();
            while !reader.introspect(introspect()).await?.into_inner().active {
                if enabled.elapsed() > Duration::from_secs(10) {
                    return Err("the reader never saw the account enabled again".into());
                }
            }
        }
    }
    println!(
        "{{\"trials\":{},\"mean_us\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        histogram.len(),
        histogram.mean(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.9),
        histogram.value_at_quantile(0.99),
        histogram.max()
    );
    Ok(())
}

/// Each watcher stream reports (its index, the token id of an invalidation, when it arrived).
async fn watch_propagation(args: WatchPropagationArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut admin =
        ServiceAccountAdminClient::new(Channel::from_shared(args.writer)?.connect().await?);
    let (arrivals, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Channel::from_shared(args.watched.clone())?
                .connect()
                .await?,
        );
    }
    let mut ready = Vec::new();
    for watcher in 0..args.watchers {
        let mut client = TokenIntrospectionClient::new(channels[watcher % channels.len()].clone());
        let mut stream = client
            .watch_changes(pb::WatchChangesRequest::default())
            .await?
            .into_inner();
        let first = stream.message().await?.ok_or("a stream ended at once")?;
        if !matches!(
            first.event,
            Some(pb::watch_changes_response::Event::Reset(_))
        ) {
            return Err("a new stream did not start with a reset".into());
        }
        let arrivals = arrivals.clone();
        ready.push(tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                if let Some(pb::watch_changes_response::Event::Invalidation(i)) = message.event {
                    let _ = arrivals.send((watcher, i.token_id, Instant::now(), SystemTime::now()));
                }
            }
        }));
    }
    let jwt = args.jwt.clone();
    let mut from_send = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut from_return = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut from_stamp = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..args.trials {
        let token_id = admin
            .create_token(authed(
                &jwt,
                pb::CreateTokenRequest {
                    validate_only: false,
                    allowed_cidrs: Vec::new(),
                    service_account_id: args.service_account_id.clone(),
                    display_name: "watch propagation".into(),
                    scopes: vec!["mcp:tools:call".into()],
                    expire_time: None,
                },
            ))
            .await?
            .into_inner()
            .token
            .ok_or("no token")?
            .token_id;
        let sent = Instant::now();
        let revoked = admin
            .revoke_token(authed(
                &jwt,
                pb::RevokeTokenRequest {
                    validate_only: false,
                    service_account_id: args.service_account_id.clone(),
                    token_id: token_id.clone(),
                },
            ))
            .await?
            .into_inner();
        let returned = Instant::now();
        // The server's revocation time (its audit event's), taken just before the transaction
        // that commits it: time from it bounds the time from the commit.
        let stamped: SystemTime = revoked
            .token
            .and_then(|t| t.revoke_time)
            .ok_or("no revoke time")?
            .try_into()?;
        let mut seen = vec![false; args.watchers];
        let mut missing = args.watchers;
        let mut last = sent;
        let mut last_wall = stamped;
        while missing > 0 {
            let (watcher, token, at, wall) =
                tokio::time::timeout(Duration::from_secs(10), arrived.recv())
                    .await?
                    .ok_or("the watchers stopped")?;
            if token == token_id && !seen[watcher] {
                seen[watcher] = true;
                missing -= 1;
                last = last.max(at);
                last_wall = last_wall.max(wall);
            }
        }
        from_stamp.saturating_record(
            last_wall
                .duration_since(stamped)
                .unwrap_or_default()
                .as_micros() as u64,
        );
        from_send.saturating_record(last.duration_since(sent).as_micros() as u64);
        from_return.saturating_record(last.saturating_duration_since(returned).as_micros() as u64);
    }
    for task in ready {
        task.abort();
    }
    println!(
        "{{\"watchers\":{},\"trials\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"after_return_p50_us\":{},\"after_return_p99_us\":{},\"after_stamp_p50_us\":{},\"after_stamp_p99_us\":{},\"after_stamp_max_us\":{}}}",
        args.watchers,
        from_send.len(),
        from_send.value_at_quantile(0.5),
        from_send.value_at_quantile(0.99),
        from_send.max(),
        from_return.value_at_quantile(0.5),
        from_return.value_at_quantile(0.99),
        from_stamp.value_at_quantile(0.5),
        from_stamp.value_at_quantile(0.99),
        from_stamp.max(),
    );
    Ok(())
}

async fn seed(args: SeedArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut admin =
        ServiceAccountAdminClient::new(Channel::from_shared(args.target)?.connect().await?);
    let jwt = args.jwt.clone();
    let account = admin
        .create_service_account(authed(
            &jwt,
            pb::CreateServiceAccountRequest {
                labels: Default::default(),
                validate_only: false,
                display_name: args.name.clone(),
                description: "benchmark".into(),
                app_access: Some(pb::AppAccess {
                    all_apps: true,
                    app_ids: vec![],
                }),
            },
        ))
        .await?
        .into_inner()
        .service_account
        .ok_or("no account")?;
    let mut secrets = String::new();
    for n in 0..args.tokens {
        let created = admin
            .create_token(authed(
                &jwt,
                pb::CreateTokenRequest {
                    validate_only: false,
                    allowed_cidrs: Vec::new(),
                    service_account_id: account.service_account_id.clone(),
                    display_name: format!("bench {n}"),
                    scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
                    expire_time: None,
                },
            ))
            .await?
            .into_inner();
        secrets.push_str(&created.secret);
        secrets.push('\n');
    }
    if let Some(out) = args.out {
        std::fs::write(out, secrets)?;
    }
    println!("{}", account.service_account_id);
    Ok(())
}

async fn admin_writes(args: AdminWritesArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut admin =
        ServiceAccountAdminClient::new(Channel::from_shared(args.target)?.connect().await?);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut pace = (!args.every.is_zero()).then(|| tokio::time::interval(args.every));
    if let Some(pace) = &mut pace {
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let started = Instant::now();
    let mut worst_at = Duration::ZERO;
    let mut log = match &args.log {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => None,
    };
    for n in 0u64.. {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        if started.elapsed() >= args.duration {
            break;
        }
        let write = Instant::now();
        let write_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        admin
            .update_service_account(authed(
                &args.jwt,
                pb::UpdateServiceAccountRequest {
                    validate_only: false,
                    service_account: Some(pb::ServiceAccount {
                        service_account_id: args.service_account_id.clone(),
                        // Unique to this run: names are unique within an org.
                        display_name: format!("writer {} {n}", std::process::id()),
                        ..Default::default()
                    }),
                    update_mask: None,
                },
            ))
            .await?;
        let took = write.elapsed().as_micros() as u64;
        if took >= histogram.max() {
            worst_at = write - started;
        }
        if let Some(log) = &mut log {
            use std::io::Write;
            writeln!(log, "{} {took}", write_at.as_micros())?;
        }
        histogram.record(took.max(1))?;
    }
    if let Some(mut log) = log {
        use std::io::Write;
        log.flush()?;
    }
    println!(
        "{{\"writes\":{},\"per_s\":{:.1},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"max_at_ms\":{}}}",
        histogram.len(),
        histogram.len() as f64 / started.elapsed().as_secs_f64(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.max(),
        worst_at.as_millis()
    );
    Ok(())
}

fn grpc_body(args: GrpcBodyArgs) -> Result<(), Box<dyn std::error::Error>> {
    let body = grpc_frame(args.rpc, &args.token, &pb::IntrospectRequest::default());
    std::fs::write(args.out, body)?;
    Ok(())
}

fn authed<T>(jwt: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {jwt}").parse().expect("ascii JWT"),
    );
    request
}

/// What Envoy's ext_authz filter sends for a request carrying `token` as a bearer header.
fn check_request(token: &str) -> CheckRequest {
    let headers = [
        (":path".to_owned(), "/mcp".to_owned()),
        ("authorization".to_owned(), format!("Bearer {token}")),
    ]
    .into_iter()
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/mcp".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
