use std::process::ExitCode;

use clap::Parser;
use service_accounts_api::apply;
use service_accounts_api::config::{AdminTokenArgs, Cli, Command, ServeConfig, StorageConfig};
use service_accounts_api::dev_key::DevKey;
use service_accounts_api::introspection_clients;
use service_accounts_api::server;
use service_accounts_api::telemetry;

/// jemalloc: the cache holds many small, long-lived allocations made among short-lived ones
/// (requests, storage rows); glibc's allocator leaves them fragmented across its arenas.
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (log_format, otlp_endpoint) = match &cli.command {
        Some(Command::Serve(args)) => (args.log_format, args.otlp_endpoint.clone()),
        None => (cli.serve.log_format, cli.serve.otlp_endpoint.clone()),
        _ => (cli.serve.log_format, None),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Inside the runtime: the OTLP exporters spawn their connections on it.
        let telemetry = telemetry::init(log_format, otlp_endpoint.as_deref())?;
        let result = match cli.command {
            Some(Command::Apply(args)) => {
                let outcome = apply::run(&args, &mut std::io::stdout()).await;
                telemetry.shutdown();
                return match outcome {
                    Ok(apply::Outcome::Done) => Ok(ExitCode::SUCCESS),
                    Ok(apply::Outcome::Changes) => Ok(ExitCode::from(2)),
                    Err(message) => Err(message),
                };
            }
            None => serve(cli.serve).await,
            Some(Command::Serve(args)) => serve(*args).await,
            Some(Command::Migrate(args)) => migrate(args).await,
            Some(Command::AdminToken(args)) => admin_token(args),
            Some(Command::IntrospectionClient(args)) => introspection_client(&args.client_id),
        };
        telemetry.shutdown();
        result.map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServeConfig) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    create_data_dir(&config.storage)?;
    server::serve(config, listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn migrate(storage: StorageConfig) -> Result<(), String> {
    create_data_dir(&storage)?;
    let db = server::open_database(&storage, 1)
        .await
        .map_err(|e| e.to_string())?;
    db.close().await.map_err(|e| e.to_string())?;
    println!("database is up to date");
    Ok(())
}

/// The embedded database lives in the data dir; create it on first run.
fn create_data_dir(storage: &StorageConfig) -> Result<(), String> {
    if !storage.is_embedded() {
        return Ok(());
    }
    let dir = storage.data_dir();
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))
}

fn admin_token(args: AdminTokenArgs) -> Result<(), String> {
    let key = DevKey::load_existing(&args.data.data_dir).map_err(|e| e.to_string())?;
    let token = key
        .mint(&args.org_id, &args.user_id, &args.roles, args.ttl)
        .map_err(|e| format!("cannot sign the token: {e}"))?;
    println!("{token}");
    Ok(())
}

/// The secret goes to stdout once, for the operator to hand to the client; the file gets only
/// its hash.
fn introspection_client(client_id: &str) -> Result<(), String> {
    let (secret, line) = introspection_clients::new_client(client_id)?;
    println!("client_id:     {client_id}");
    println!("client_secret: {secret}");
    println!("# Add this line to the --introspection-clients file (the server reloads it):");
    println!("{line}");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
