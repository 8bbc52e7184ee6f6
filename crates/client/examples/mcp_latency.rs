//! `tools/call` latency of the `mcp_server` example with and without `IntrospectLayer`, measured
//! in one run with rmcp's own client over loopback.
//!
//! ```sh
//! cargo run --release                     # the control plane, in another terminal
//! export SERVICE_ACCOUNTS_ADMIN_JWT=$(cargo run -q --release -- admin-token --data-dir ./data \
//!   --org-id acme --user-id alice)
//! cargo run --release -p service-accounts-client --features rmcp --example mcp_latency
//! ```
//!
//! It creates a service account and a token in org `acme` (`ORG_ID`), serves the example twice
//! on ephemeral ports (once behind the layer; once with a fixed identity and no layer), then
//! makes `CALLS` (default 500) sequential `get_crash_summary` calls each way, alternating in
//! blocks of 50, after a warm-up. Environment: `SERVICE_ACCOUNTS_ADDR` (default
//! `http://127.0.0.1:50051`), `SERVICE_ACCOUNTS_ADMIN_JWT` (an org admin's JWT), `ORG_ID`,
//! `CALLS`.

#[path = "mcp_server.rs"]
#[allow(dead_code)] // its `main` is the server's, not ours
mod mcp_server;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use service_accounts_client::pb::service_account_admin_client::ServiceAccountAdminClient;
use service_accounts_client::pb::{
    AppAccess, CreateServiceAccountRequest, CreateTokenRequest, IntrospectResponse,
};
use service_accounts_client::{Identity, IntrospectionClient};

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let control_plane = env("SERVICE_ACCOUNTS_ADDR", "http://127.0.0.1:50051");
    let jwt = std::env::var("SERVICE_ACCOUNTS_ADMIN_JWT")
        .map_err(|_| "set SERVICE_ACCOUNTS_ADMIN_JWT to an org admin's JWT")?;
    let org = env("ORG_ID", "acme");
    let calls: usize = env("CALLS", "500").parse()?;

    let secret = create_token(&control_plane, &jwt).await?;
    let client = IntrospectionClient::connect_lazy(control_plane)?;

    let protected =
        serve(|url| mcp_server::router(mcp_server::protection(client, &org, url), url)).await?;
    // The same MCP server with the identity the layer would have given, and no layer.
    let fixed = Identity::from_answer(&IntrospectResponse {
        active: true,
        allowed: true,
        org_id: org.clone(),
        service_account_id: "01a24bcf-88ad-74f0-a8a2-6f19606976a3".into(),
        service_account_display_name: "Latency bench".into(),
        token_id: "01a24bcf-88b9-75fd-8929-c0616e73f3e8".into(),
        scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
        app_access: Some(AppAccess {
            all_apps: true,
            app_ids: vec![],
        }),
        ..Default::default()
    })
    .ok_or("the fixed identity")?;
    let open = serve(move |_| {
        axum::Router::new()
            .route_service(mcp_server::MCP_PATH, mcp_server::mcp_service())
            .layer(axum::Extension(fixed))
    })
    .await?;

    let with_layer = connect(&protected, &secret).await?;
    let without_layer = connect(&open, &secret).await?;
    for _ in 0..50 {
        call(&with_layer).await?;
        call(&without_layer).await?;
    }
    let mut with = Histogram::<u64>::new(3)?;
    let mut without = Histogram::<u64>::new(3)?;
    let block = 50;
    for _ in 0..calls.div_ceil(block) {
        for _ in 0..block {
            with.record(call(&with_layer).await?.as_micros() as u64)?;
        }
        for _ in 0..block {
            without.record(call(&without_layer).await?.as_micros() as u64)?;
        }
    }
    println!(
        "tools/call latency, {} sequential calls each way",
        with.len()
    );
    for (name, h) in [("with the layer", &with), ("without the layer", &without)] {
        println!(
            "  {name:<18} p50 {:>6} µs   p99 {:>6} µs   max {:>6} µs",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    println!(
        "  the layer adds      p50 {:>6} µs   p99 {:>6} µs",
        with.value_at_quantile(0.5) as i64 - without.value_at_quantile(0.5) as i64,
        with.value_at_quantile(0.99) as i64 - without.value_at_quantile(0.99) as i64,
    );
    with_layer.cancel().await?;
    without_layer.cancel().await?;
    Ok(())
}

/// A fresh account with access to `checkout-ios` and a `mcp:tools:call mcp:read` token.
async fn create_token(control_plane: &str, jwt: &str) -> Result<String, Error> {
    let mut admin = ServiceAccountAdminClient::connect(control_plane.to_owned()).await?;
    fn authed<T>(message: T, jwt: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let bearer = format!("Bearer {jwt}")
            .parse()
            .expect("a JWT is a header value");
        request.metadata_mut().insert("authorization", bearer);
        request
    }
    let account = admin
        .create_service_account(authed(
            CreateServiceAccountRequest {
                labels: Default::default(),
                validate_only: false,
                display_name: format!("Latency bench {}", std::process::id()),
                description: "mcp_latency example".into(),
                app_access: Some(AppAccess {
                    all_apps: false,
                    app_ids: vec!["checkout-ios".into()],
                }),
            },
            jwt,
        ))
        .await?
        .into_inner()
        .service_account
        .ok_or("no account in the answer")?;
    let created = admin
        .create_token(authed(
            CreateTokenRequest {
                validate_only: false,
                service_account_id: account.service_account_id,
                display_name: "bench".into(),
                scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
                allowed_cidrs: vec![],
                expire_time: None,
            },
            jwt,
        ))
        .await?
        .into_inner();
    Ok(created.secret)
}

/// Serves `router(url)` on an ephemeral loopback port; answers the MCP endpoint's URL.
async fn serve(router: impl FnOnce(&str) -> axum::Router) -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let service = router(&url).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    Ok(format!("{url}{}", mcp_server::MCP_PATH))
}

async fn connect(url: &str, secret: &str) -> Result<RunningService<RoleClient, ()>, Error> {
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(secret);
    Ok(
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await?,
    )
}

async fn call(client: &RunningService<RoleClient, ()>) -> Result<Duration, Error> {
    let arguments = serde_json::json!({"app_id": "checkout-ios"});
    let request = CallToolRequestParams::new("get_crash_summary")
        .with_arguments(arguments.as_object().cloned().unwrap_or_default());
    let started = Instant::now();
    let result = client.call_tool(request).await?;
    let took = started.elapsed();
    if result.is_error == Some(true) {
        return Err(format!("the tool failed: {result:?}").into());
    }
    Ok(took)
}
