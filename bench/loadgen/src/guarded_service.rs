//! The caller-cache throughput benchmark's service (bench/caller_cache.sh): one axum handler
//! served twice, behind `IntrospectLayer` with a caching `IntrospectionClient` on `GUARDED`
//! and with no authentication on `OPEN`, so that the two differ only by the layer: both answer
//! with an account id, the caller's behind the layer and a fixed one without it.
//!
//! Environment: `CONTROL_PLANE` (default `http://127.0.0.1:50051`), `GUARDED`
//! (default `127.0.0.1:8081`), `OPEN` (default `127.0.0.1:8082`), `ORG_ID` (default `bench`).

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use service_accounts_client::{
    CacheOptions, Identity, IntrospectLayer, IntrospectionClient, Requirement, ServiceAccountId,
};

fn hello(account: ServiceAccountId) -> String {
    format!("{{\"hello\":\"{account}\"}}")
}

async fn guarded(Extension(identity): Extension<Identity>) -> String {
    hello(identity.service_account_id())
}

async fn open() -> String {
    static ANYONE: LazyLock<ServiceAccountId> =
        LazyLock::new(|| ServiceAccountId::from_uuid(Default::default()));
    hello(*ANYONE)
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = IntrospectionClient::connect_lazy(env("CONTROL_PLANE", "http://127.0.0.1:50051"))?
        .with_cache(CacheOptions::new(10_000));
    let requirement = Requirement::org(env("ORG_ID", "bench")).scope("mcp:read");
    let guarded_app = Router::new()
        .route("/v1/hello", get(guarded))
        .route_layer(IntrospectLayer::new(client, requirement));
    let open_app = Router::new().route("/v1/hello", get(open));
    let serve = async |address: String, app: Router| -> Result<(), Box<dyn std::error::Error>> {
        let address: SocketAddr = address.parse()?;
        let listener = tokio::net::TcpListener::bind(address).await?;
        axum::serve(listener, app).await?;
        Ok(())
    };
    // Either failing (a bad address, a taken port) ends the process.
    tokio::try_join!(
        serve(env("GUARDED", "127.0.0.1:8081"), guarded_app),
        serve(env("OPEN", "127.0.0.1:8082"), open_app),
    )?;
    Ok(())
}
