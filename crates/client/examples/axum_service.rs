//! An axum service whose routes are guarded by `IntrospectLayer`: each route says which org, app
//! and scopes its callers' tokens need, and its handler reads the verified identity from the
//! request's extensions.
//!
//! ```sh
//! cargo run -p service-accounts-client --example axum_service
//! curl -H "authorization: Bearer $TOKEN" localhost:8080/v1/apps/checkout-ios/crashes
//! ```
//!
//! Environment: `SERVICE_ACCOUNTS_ADDR` (the control plane, default `http://127.0.0.1:50051`),
//! `LISTEN` (default `127.0.0.1:8080`), `ORG_ID` (the org this service acts in, default `acme`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Extension};
use axum::routing::{get, post};
use axum::{Json, Router};
use service_accounts_client::{Identity, IntrospectLayer, IntrospectionClient, Requirement};

/// The service's routes, each with the requirement its callers must meet.
pub fn router(client: IntrospectionClient, org_id: &str) -> Router {
    let require = |requirement: Requirement| {
        IntrospectLayer::new(client.clone(), requirement).client_ip(|request| {
            let peer = request.extensions.get::<ConnectInfo<SocketAddr>>()?;
            Some(peer.0.ip())
        })
    };
    Router::new()
        .route(
            "/v1/apps/checkout-ios/crashes",
            get(crashes).route_layer(require(
                Requirement::org(org_id)
                    .app("checkout-ios")
                    .scope("mcp:read"),
            )),
        )
        .route(
            "/v1/tools/call",
            post(call_tool).route_layer(require(Requirement::org(org_id).scope("mcp:tools:call"))),
        )
        // Not behind the layer: open to anyone.
        .route("/healthz", get(|| async { "ok" }))
}

async fn crashes(Extension(caller): Extension<Identity>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "app_id": "checkout-ios",
        "crashes": [],
        "requested_by": caller.service_account_id().to_string(),
    }))
}

async fn call_tool(Extension(caller): Extension<Identity>) -> String {
    format!("tool called by {}\n", caller.service_account_display_name())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let client =
        IntrospectionClient::connect_lazy(env("SERVICE_ACCOUNTS_ADDR", "http://127.0.0.1:50051"))?;
    let listener = tokio::net::TcpListener::bind(env("LISTEN", "127.0.0.1:8080")).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = router(client, &env("ORG_ID", "acme"));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
