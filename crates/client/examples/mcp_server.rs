//! An MCP server (`rmcp`, streamable HTTP on axum) that accepts service-account tokens:
//! `IntrospectLayer` requires `mcp:tools:call` of every MCP request, and each tool requires what
//! it does (`mcp:read` or `mcp:write`) and the app it acts on.
//!
//! ```sh
//! cargo run -p service-accounts-client --features rmcp --example mcp_server
//! # MCP endpoint http://127.0.0.1:8080/mcp, with `Authorization: Bearer emb_sa_…`
//! ```
//!
//! Environment: `SERVICE_ACCOUNTS_ADDR` (the control plane, default `http://127.0.0.1:50051`),
//! `LISTEN` (default `127.0.0.1:8080`), `ORG_ID` (the org this server acts in, default `acme`),
//! `PUBLIC_URL` (how clients reach this server, default `http://$LISTEN`).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use service_accounts_client::mcp::{require_app, require_scopes};
use service_accounts_client::{Identity, IntrospectLayer, IntrospectionClient, Requirement};
use tower::Layer;

/// Where the MCP endpoint is served.
pub const MCP_PATH: &str = "/mcp";
/// Where its protected-resource metadata (RFC 9728) is served, open to anyone.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";

/// The tools. The org they act in is always the token's org.
#[derive(Clone)]
pub struct CrashTools {
    tool_router: ToolRouter<Self>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct AppRequest {
    /// The app, such as `checkout-ios`.
    pub app_id: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct Annotation {
    pub app_id: String,
    /// The release, such as `4.2.0`.
    pub version: String,
    pub note: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct CrashSummary {
    pub org_id: String,
    pub app_id: String,
    pub crash_free_sessions: f64,
    /// The service account that asked.
    pub requested_by: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Annotated {
    pub app_id: String,
    pub version: String,
    pub note: String,
    pub annotated_by: String,
}

#[tool_router]
impl CrashTools {
    pub fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Crash summary of one app. Needs mcp:read.")]
    async fn get_crash_summary(
        &self,
        identity: Identity,
        Parameters(AppRequest { app_id }): Parameters<AppRequest>,
    ) -> Result<Json<CrashSummary>, ErrorData> {
        require_scopes(&identity, &["mcp:read"])?;
        require_app(&identity, &app_id)?;
        Ok(Json(CrashSummary {
            org_id: identity.org_id().to_owned(),
            app_id,
            crash_free_sessions: 99.7,
            requested_by: identity.service_account_id().to_string(),
        }))
    }

    #[tool(description = "Adds a note to a release of one app. Needs mcp:write.")]
    async fn annotate_release(
        &self,
        identity: Identity,
        Parameters(Annotation {
            app_id,
            version,
            note,
        }): Parameters<Annotation>,
    ) -> Result<Json<Annotated>, ErrorData> {
        require_scopes(&identity, &["mcp:write"])?;
        require_app(&identity, &app_id)?;
        Ok(Json(Annotated {
            app_id,
            version,
            note,
            annotated_by: identity.service_account_id().to_string(),
        }))
    }
}

impl Default for CrashTools {
    fn default() -> Self {
        Self::new()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CrashTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("crash-tools", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// The MCP server itself, with no authentication.
pub fn mcp_service() -> StreamableHttpService<CrashTools, LocalSessionManager> {
    StreamableHttpService::new(
        || Ok(CrashTools::new()),
        Default::default(),
        // Accepts only loopback `Host`s; a public server lists its own with `with_allowed_hosts`.
        StreamableHttpServerConfig::default(),
    )
}

/// The server-level requirement: a token of `org_id` with `mcp:tools:call`, for every MCP
/// request. `public_url` is how clients reach this server (`http://127.0.0.1:8080`).
pub fn protection(
    client: IntrospectionClient,
    org_id: &str,
    public_url: &str,
) -> IntrospectLayer<Requirement> {
    IntrospectLayer::new(client, Requirement::org(org_id).scope("mcp:tools:call"))
        .realm("crash-tools")
        .resource_metadata(format!("{public_url}{METADATA_PATH}"))
        .client_ip(|request| {
            let peer = request.extensions.get::<ConnectInfo<SocketAddr>>()?;
            Some(peer.0.ip())
        })
}

/// The MCP endpoint behind `protection`, and its metadata. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(protection: IntrospectLayer<Requirement>, public_url: &str) -> Router {
    let metadata = serde_json::json!({
        "resource": format!("{public_url}{MCP_PATH}"),
        "resource_name": "Crash tools",
        "scopes_supported": ["mcp:tools:call", "mcp:read", "mcp:write"],
        "bearer_methods_supported": ["header"],
    });
    Router::new()
        .route_service(MCP_PATH, protection.layer(mcp_service()))
        .route(
            METADATA_PATH,
            get(move || async move { axum::Json(metadata) }),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let client =
        IntrospectionClient::connect_lazy(env("SERVICE_ACCOUNTS_ADDR", "http://127.0.0.1:50051"))?;
    let listener = tokio::net::TcpListener::bind(env("LISTEN", "127.0.0.1:8080")).await?;
    let public_url = env("PUBLIC_URL", &format!("http://{}", listener.local_addr()?));
    println!("MCP endpoint {public_url}{MCP_PATH}");
    let app = router(
        protection(client, &env("ORG_ID", "acme"), &public_url),
        &public_url,
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
