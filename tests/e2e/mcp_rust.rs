//! The client crate's layer in front of an `rmcp` streamable-HTTP server (the crate's
//! `mcp_server` example, its very router), called with rmcp's own client and this server as the
//! control plane.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{ClientInitializeError, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceError, ServiceExt};
use serde_json::{Value, json};
use service_accounts_client::{FallbackRefusal, IntrospectionClient, fallback_fn};

use crate::support::*;

#[path = "../../crates/client/examples/mcp_server.rs"]
#[allow(dead_code)] // its `main` is the example's, not ours
mod mcp_server;

/// The example on an ephemeral port; answers its base URL (`http://127.0.0.1:port`).
async fn serve(
    control_plane: SocketAddr,
    configure: impl FnOnce(
        service_accounts_client::IntrospectLayer<service_accounts_client::Requirement>,
    ) -> service_accounts_client::IntrospectLayer<
        service_accounts_client::Requirement,
    >,
) -> String {
    let client = IntrospectionClient::connect_lazy(format!("http://{control_plane}")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let protection = configure(mcp_server::protection(client, "acme", &base));
    let service =
        mcp_server::router(protection, &base).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    base
}

type Client = RunningService<RoleClient, ()>;

async fn connect(base: &str, secret: Option<&str>) -> Result<Client, ClientInitializeError> {
    // rmcp's reqwest client needs the process-wide rustls provider (ring, as the server uses),
    // which nothing else may have installed yet in this process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config =
        StreamableHttpClientTransportConfig::with_uri(format!("{base}{}", mcp_server::MCP_PATH));
    if let Some(secret) = secret {
        config = config.auth_header(secret);
    }
    let connecting = ().serve(StreamableHttpClientTransport::from_config(config));
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("the handshake ends")
}

async fn call(
    client: &Client,
    tool: &'static str,
    arguments: Value,
) -> Result<Value, ServiceError> {
    let request = CallToolRequestParams::new(tool)
        .with_arguments(arguments.as_object().cloned().expect("an object"));
    let result = tokio::time::timeout(Duration::from_secs(10), client.call_tool(request))
        .await
        .expect("the call ends")?;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    Ok(result.structured_content.expect("structured content"))
}

/// The MCP error a tool refused with.
#[track_caller]
fn mcp_error(result: Result<Value, ServiceError>) -> rmcp::ErrorData {
    match result {
        Err(ServiceError::McpError(error)) => error,
        other => panic!("expected an MCP error, got {other:?}"),
    }
}

fn challenges(base: &str) -> (String, String) {
    let metadata = format!("{base}{}", mcp_server::METADATA_PATH);
    (
        format!(r#"Bearer realm="crash-tools", resource_metadata="{metadata}""#),
        format!(
            r#"Bearer realm="crash-tools", error="invalid_token", resource_metadata="{metadata}""#
        ),
    )
}

const SUMMARY: &str = "get_crash_summary";
const ANNOTATE: &str = "annotate_release";

fn ios() -> Value {
    json!({"app_id": "checkout-ios"})
}

fn release(app_id: &str) -> Value {
    json!({"app_id": app_id, "version": "4.2.0", "note": "crash in checkout fixed"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_see_the_verified_identity_and_refuse_naming_only_what_is_missing() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "Crash triage bot", Some(&["checkout-ios"])).await;
    let id = &account.service_account_id;
    let (_, reader) = create_token(&app, &jwt, id, &["mcp:tools:call", "mcp:read"]).await;
    let (_, writer) = create_token(&app, &jwt, id, &["mcp:tools:call", "mcp:write"]).await;
    let base = serve(app.addr, |layer| layer).await;

    let client = connect(&base, Some(&reader)).await.unwrap();
    let summary = call(&client, SUMMARY, ios()).await.unwrap();
    assert_eq!(
        summary["requested_by"],
        id.as_str(),
        "the tool saw the identity"
    );
    assert_eq!(summary["org_id"], "acme");

    let error = mcp_error(call(&client, ANNOTATE, release("checkout-ios")).await);
    assert_eq!(error.message, "missing scope: mcp:write");
    assert_eq!(error.data, Some(json!({"missing_scopes": ["mcp:write"]})));
    let error = mcp_error(call(&client, SUMMARY, json!({"app_id": "checkout-android"})).await);
    assert_eq!(error.message, "app not granted: checkout-android");
    assert_eq!(error.data, Some(json!({"app_id": "checkout-android"})));

    let client = connect(&base, Some(&writer)).await.unwrap();
    let annotated = call(&client, ANNOTATE, release("checkout-ios"))
        .await
        .unwrap();
    assert_eq!(annotated["annotated_by"], id.as_str());
    let error = mcp_error(call(&client, SUMMARY, ios()).await);
    assert_eq!(error.message, "missing scope: mcp:read");
    let error = mcp_error(call(&client, ANNOTATE, release("checkout-android")).await);
    assert_eq!(error.message, "app not granted: checkout-android");

    // Another org's token is refused by the layer before the MCP server sees it.
    let globex = app.admin_jwt("globex");
    let stranger = create_account(&app, &globex, "Crash triage bot", None).await;
    let (_, stranger) = create_token(
        &app,
        &globex,
        &stranger.service_account_id,
        &["mcp:tools:call", "mcp:read"],
    )
    .await;
    let refused = connect(&base, Some(&stranger)).await.unwrap_err();
    assert_eq!(refused.auth_challenge(), None, "{refused:?}");
    let answer = post_initialize(&base, Some(&stranger)).await;
    assert_forbidden(&answer, "DENIAL_REASON_ORG_MISMATCH");
}

/// An `initialize` POST as an MCP client sends it, with `secret` as the bearer token.
async fn post_initialize(base: &str, secret: Option<&str>) -> Answer {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "curl", "version": "1"}}
    });
    let bearer = secret.map(|s| format!("Bearer {s}"));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    headers.extend(bearer.iter().map(|b| ("authorization", b.as_str())));
    let client = http_client();
    let url = format!("{base}{}", mcp_server::MCP_PATH);
    let request = client.request(Method::POST, url).body(body.to_string());
    let request = headers.iter().fold(request, |request, (name, value)| {
        request.header(*name, *value)
    });
    Answer::of(request.send().await.expect("HTTP request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bad_and_revoked_tokens_get_bearer_challenges() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "Crash triage bot", None).await;
    let id = &account.service_account_id;
    let (token, reader) = create_token(&app, &jwt, id, &["mcp:tools:call", "mcp:read"]).await;
    let base = serve(app.addr, |layer| layer).await;
    let (no_token, invalid_token) = challenges(&base);

    let answer = post_initialize(&base, None).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.header("www-authenticate"), Some(no_token.as_str()));
    let error = connect(&base, None).await.unwrap_err();
    assert_eq!(error.auth_challenge(), Some(no_token.as_str()), "{error:?}");

    // What the challenge points at is open, and names this resource.
    let metadata = get_json(&format!("{base}{}", mcp_server::METADATA_PATH)).await;
    assert_eq!(
        metadata["resource"],
        format!("{base}{}", mcp_server::MCP_PATH)
    );

    for malformed in ["emb_sa_not-a-token", "not-even-ours"] {
        let answer = post_initialize(&base, Some(malformed)).await;
        assert_eq!(answer.status, 401, "{answer:?}");
        assert_eq!(
            answer.header("www-authenticate"),
            Some(invalid_token.as_str())
        );
        let error = connect(&base, Some(malformed)).await.unwrap_err();
        assert_eq!(error.auth_challenge(), Some(invalid_token.as_str()));
    }

    // The very next request after the revoke returns is refused, inside a live session.
    let client = connect(&base, Some(&reader)).await.unwrap();
    call(&client, SUMMARY, ios()).await.unwrap();
    revoke(&app, &jwt, id, &token.token_id).await;
    let error = call(&client, SUMMARY, ios()).await.unwrap_err();
    assert_eq!(
        error.auth_challenge(),
        Some(invalid_token.as_str()),
        "{error:?}"
    );
}

async fn get_json(url: &str) -> Value {
    let answer = send(&http_client(), Method::GET, url, &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    serde_json::from_str(&answer.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_control_plane_the_server_errs_and_never_allows() {
    let Some(mut app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "Crash triage bot", None).await;
    let id = &account.service_account_id;
    let (_, reader) = create_token(&app, &jwt, id, &["mcp:tools:call", "mcp:read"]).await;
    let base = serve(app.addr, |layer| layer).await;
    let client = connect(&base, Some(&reader)).await.unwrap();
    call(&client, SUMMARY, ios()).await.unwrap();

    app.stop().await.unwrap();
    let error = call(&client, SUMMARY, ios()).await.unwrap_err();
    assert!(!error.is_authorization_required(), "{error:?}");
    assert_eq!(error.auth_challenge(), None, "{error:?}");
    let answer = post_initialize(&base, Some(&reader)).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("www-authenticate"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_bearer_tokens_go_to_the_fallback_verifier() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "Crash triage bot", None).await;
    let (_, reader) = create_token(
        &app,
        &jwt,
        &account.service_account_id,
        &["mcp:tools:call", "mcp:read"],
    )
    .await;
    /// The fallback verifier's own identity.
    #[derive(Clone)]
    struct OAuthSubject(#[allow(dead_code)] String);
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let base = serve(app.addr, move |layer| {
        layer.fallback(fallback_fn(move |token, requirement, _request| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                // The route's requirement, for the fallback to enforce in its own terms.
                if !requirement.scopes().iter().any(|s| s == "mcp:tools:call") {
                    return Err(FallbackRefusal::InsufficientScope(vec![
                        "mcp:tools:call".into(),
                    ]));
                }
                match token.as_str() {
                    "oauth-alice" => {
                        let mut verified = http::Extensions::new();
                        verified.insert(OAuthSubject("alice".into()));
                        Ok(verified)
                    }
                    "oauth-no-tools" => Err(FallbackRefusal::InsufficientScope(vec![
                        "mcp:tools:call".into(),
                    ])),
                    _ => Err(FallbackRefusal::InvalidToken),
                }
            }
        }))
    })
    .await;
    let (_, invalid_token) = challenges(&base);

    // Let through by the fallback: the MCP session works; the tools, which need a
    // service-account identity, say so.
    let client = connect(&base, Some("oauth-alice")).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 2);
    let error = mcp_error(call(&client, SUMMARY, ios()).await);
    assert_eq!(error.message, "this tool needs a service-account token");
    assert!(
        seen.load(Ordering::SeqCst) >= 3,
        "every request went to the fallback"
    );

    let answer = post_initialize(&base, Some("oauth-mallory")).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(invalid_token.as_str())
    );
    let answer = post_initialize(&base, Some("oauth-no-tools")).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(r#"Bearer realm="crash-tools", error="insufficient_scope", scope="mcp:tools:call""#)
    );

    // Service-account tokens still go to the control plane, and never to the fallback.
    let before = seen.load(Ordering::SeqCst);
    let client = connect(&base, Some(&reader)).await.unwrap();
    let summary = call(&client, SUMMARY, ios()).await.unwrap();
    assert_eq!(summary["requested_by"], account.service_account_id.as_str());
    let error = connect(&base, Some("emb_sa_not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(error.auth_challenge(), Some(invalid_token.as_str()));
    assert_eq!(seen.load(Ordering::SeqCst), before);
}
