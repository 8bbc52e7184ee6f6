//! Load generator for `bench/introspect.sh`: drives `Introspect` or `Health/Check` over a few
//! HTTP/2 connections with many concurrent streams, closed-loop (as fast as the server answers)
//! or open-loop at a constant rate (latency measured from each request's scheduled start, so a
//! stalled server is charged for the requests it delayed: no coordinated omission), and reports
//! HdrHistogram percentiles.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
struct AdminWritesArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    #[arg(long, env = "ADMIN_JWT", hide_env_values = true)]
    jwt: String,
    #[arg(long)]
    service_account_id: String,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between the starts of two writes (one write at a time).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    every: Duration,
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
        Command::GrpcBody(args) => grpc_body(args),
        Command::Seed(args) => seed(args).await,
        Command::AdminWrites(args) => admin_writes(args).await,
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
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let line = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .ok_or("no VmRSS")?;
            println!("{}", line.split_whitespace().nth(1).ok_or("bad VmRSS")?);
            Ok(())
        }
    }
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
    let interval = (args.rate > 0).then(|| Duration::from_nanos(1_000_000_000 / args.rate));
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));

    let checks = Arc::new(pb::IntrospectRequest {
        token: String::new(),
        org_id: args.org_id.clone(),
        app_id: args.app_id.clone(),
        required_scopes: args.scopes.clone(),
        client_ip: args.client_ip.clone(),
    });
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let channel = channels[worker % channels.len()].clone();
        let tokens = tokens.clone();
        let checks = checks.clone();
        let next = next.clone();
        let errors = errors.clone();
        let rpc = args.rpc;
        workers.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut introspection = TokenIntrospectionClient::new(channel.clone());
            let mut health = HealthClient::new(channel.clone());
            let mut envoy = AuthorizationClient::new(channel);
            let mut measured = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if limit > 0 && i >= limit {
                    break;
                }
                let scheduled = match interval {
                    Some(interval) => start + interval * i as u32,
                    None => Instant::now(),
                };
                if scheduled >= end {
                    break;
                }
                // A worker that is early waits for the slot and is timed from its actual send.
                // tokio's timer has millisecond granularity: it sleeps to within a millisecond
                // and then yields until the slot, so that requests leave at their slots and not
                // in one burst per millisecond (at 50,000/s, bursts of 50 that the server would
                // be charged for). A worker that is late because a response was slow is timed
                // from the slot it missed, so a stalled server is charged for it (no coordinated
                // omission).
                let sent = if interval.is_some() && Instant::now() < scheduled {
                    let near = scheduled - Duration::from_millis(1);
                    if Instant::now() < near {
                        tokio::time::sleep_until(near.into()).await;
                    }
                    while Instant::now() < scheduled {
                        tokio::task::yield_now().await;
                    }
                    Instant::now()
                } else if interval.is_some() {
                    scheduled
                } else {
                    Instant::now()
                };
                let ok = match rpc {
                    Rpc::Introspect => introspection
                        .introspect(pb::IntrospectRequest {
                            token: tokens[i as usize % tokens.len()].clone(),
                            ..(*checks).clone()
                        })
                        .await
                        .is_ok(),
                    Rpc::Health => health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok(),
                    Rpc::Check => envoy
                        .check(check_request(&tokens[i as usize % tokens.len()]))
                        .await
                        .is_ok(),
                };
                let done = Instant::now();
                if sent >= measure_from && done <= end {
                    if ok {
                        histogram.saturating_record(done.duration_since(sent).as_micros() as u64);
                        measured += 1;
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (histogram, measured)
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut total = 0;
    for worker in workers {
        let (h, n) = worker.await?;
        histogram.add(&h)?;
        total += n;
    }
    let seconds = if limit > 0 {
        Instant::now().duration_since(start).as_secs_f64().max(1e-9)
    } else {
        args.duration.as_secs_f64()
    };
    let mut line = String::new();
    write!(
        line,
        "{{\"label\":\"{}\",\"rpc\":\"{}\",\"mode\":\"{}\",\"connections\":{},\"concurrency\":{},\"requests\":{},\"errors\":{},\"rps\":{:.0},\"mean_us\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
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
        errors.load(Ordering::Relaxed),
        total as f64 / seconds,
        histogram.mean(),
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.90),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
    )?;
    println!("{line}");
    Ok(())
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

async fn seed(args: SeedArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut admin =
        ServiceAccountAdminClient::new(Channel::from_shared(args.target)?.connect().await?);
    let jwt = args.jwt.clone();
    let account = admin
        .create_service_account(authed(
            &jwt,
            pb::CreateServiceAccountRequest {
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
    let mut pace = tokio::time::interval(args.every);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut worst_at = Duration::ZERO;
    for n in 0u64.. {
        pace.tick().await;
        if started.elapsed() >= args.duration {
            break;
        }
        let write = Instant::now();
        admin
            .update_service_account(authed(
                &args.jwt,
                pb::UpdateServiceAccountRequest {
                    service_account: Some(pb::ServiceAccount {
                        service_account_id: args.service_account_id.clone(),
                        display_name: format!("writer {n}"),
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
        histogram.record(took.max(1))?;
    }
    println!(
        "{{\"writes\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"max_at_ms\":{}}}",
        histogram.len(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.max(),
        worst_at.as_millis()
    );
    Ok(())
}

fn grpc_body(args: GrpcBodyArgs) -> Result<(), Box<dyn std::error::Error>> {
    let message = match args.rpc {
        Rpc::Introspect => pb::IntrospectRequest {
            token: args.token,
            ..Default::default()
        }
        .encode_to_vec(),
        Rpc::Health => HealthCheckRequest {
            service: String::new(),
        }
        .encode_to_vec(),
        Rpc::Check => check_request(&args.token).encode_to_vec(),
    };
    let mut body = vec![0u8];
    body.extend((message.len() as u32).to_be_bytes());
    body.extend(message);
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
