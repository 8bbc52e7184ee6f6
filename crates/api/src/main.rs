use std::process::ExitCode;

use clap::Parser;
use service_accounts_api::config::{AdminTokenArgs, Cli, Command, ServeArgs, StorageArgs};
use service_accounts_api::dev_key::DevKey;
use service_accounts_api::server::{self, AdminTrust, JwksTrust, ServeOptions, TlsFiles};
use service_accounts_api::telemetry;

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
            None => serve(cli.serve).await,
            Some(Command::Serve(args)) => serve(*args).await,
            Some(Command::Migrate(args)) => migrate(args).await,
            Some(Command::AdminToken(args)) => admin_token(args),
        };
        telemetry.shutdown();
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let options = ServeOptions {
        database_url: args.storage.database_url(),
        db_max_connections: args.storage.db_max_connections,
        data_dir: args.storage.data_dir.clone(),
        admin_trust: AdminTrust {
            jwks: args.admin_jwks.map(|path| JwksTrust {
                path,
                issuer: args.admin_jwt_issuer.unwrap_or_default(),
                audience: args.admin_jwt_audience.unwrap_or_default(),
            }),
            trust_dev_key: args.admin_trust_dev_key,
        },
        cache_capacity: args.introspection_cache_capacity,
        cache_max_age: args.introspection_cache_max_age,
        last_used_flush_interval: args.last_used_flush_interval,
        shutdown_grace: args.shutdown_grace,
        readiness_interval: args.readiness_interval,
        rpc_telemetry: args.otlp_endpoint.is_some(),
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
            _ => None,
        },
    };
    if args.storage.is_embedded() {
        std::fs::create_dir_all(&args.storage.data_dir).map_err(|e| {
            format!(
                "cannot create data dir {}: {e}",
                args.storage.data_dir.display()
            )
        })?;
    }
    server::serve(options, listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn migrate(args: StorageArgs) -> Result<(), String> {
    if args.is_embedded() {
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", args.data_dir.display()))?;
    }
    let db = server::open_database(&args.database_url(), 1)
        .await
        .map_err(|e| e.to_string())?;
    db.close().await.map_err(|e| e.to_string())?;
    println!("database is up to date");
    Ok(())
}

fn admin_token(args: AdminTokenArgs) -> Result<(), String> {
    let key = DevKey::load_or_create(&args.data_dir).map_err(|e| e.to_string())?;
    let token = key
        .mint(&args.org_id, &args.user_id, &args.roles, args.ttl)
        .map_err(|e| format!("cannot sign the token: {e}"))?;
    println!("{token}");
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
