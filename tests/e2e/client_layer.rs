//! `service-accounts-client`'s tower layer in front of real services: the crate's axum example
//! (its very router) and a tonic service, both calling this server over TCP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use service_accounts_api::pb;
use service_accounts_client::{
    Identity, IntrospectLayer, IntrospectionClient, Requirement, Routes, policy_fn,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::coherence::CONVERGENCE_BOUND;
use crate::on_both_backends;
use crate::support::*;

#[path = "../../crates/client/examples/axum_service.rs"]
#[allow(dead_code)] // its `main` is the example's, not ours
mod axum_service;

on_both_backends!(
    the_example_service_serves_only_the_tokens_its_routes_allow,
    challenges_carry_the_configured_realm_and_resource_metadata,
    the_example_service_checks_the_callers_address_against_the_tokens_networks,
    a_tonic_service_behind_the_layer_answers_grpc_statuses,
);

const CRASHES: &str = "/v1/apps/checkout-ios/crashes";

/// The example's router on an ephemeral port, calling the control plane at `control_plane`.
async fn serve_example(control_plane: SocketAddr, org: &str) -> String {
    let client = IntrospectionClient::connect_lazy(format!("http://{control_plane}")).unwrap();
    serve_router(axum_service::router(client, org)).await
}

async fn serve_router(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    url
}

async fn get(url: &str, secret: Option<&str>) -> Answer {
    call(Method::GET, url, secret).await
}

async fn call(method: Method, url: &str, secret: Option<&str>) -> Answer {
    let bearer = secret.map(|s| format!("Bearer {s}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    send(&http_client(), method, url, &headers).await
}

async fn the_example_service_serves_only_the_tokens_its_routes_allow(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "Crash triage bot", Some(&["checkout-ios"])).await;
    let id = &account.service_account_id;
    let (reader, reader_secret) =
        create_token(&app, &jwt, id, &["mcp:tools:call", "mcp:read"]).await;
    let (_, caller_secret) = create_token(&app, &jwt, id, &["mcp:tools:call"]).await;
    let globex = app.admin_jwt("globex");
    let stranger = create_account(&app, &globex, "Crash triage bot", None).await;
    let (_, stranger_secret) = create_token(
        &app,
        &globex,
        &stranger.service_account_id,
        &["mcp:tools:call", "mcp:read"],
    )
    .await;
    let service = serve_example(app.addr, "acme").await;
    let crashes = format!("{service}{CRASHES}");

    // RFC 6750: no token, no error code; a bad one is an invalid token.
    let answer = get(&crashes, None).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    assert_unauthenticated(&get(&crashes, Some("emb_sa_not-a-token")).await);

    let answer = get(&crashes, Some(&reader_secret)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        body["requested_by"],
        id.as_str(),
        "the handler saw the identity"
    );

    let answer = get(&crashes, Some(&caller_secret)).await;
    assert_forbidden(&answer, "DENIAL_REASON_SCOPE_MISSING");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope", scope="mcp:read""#),
        "the missing scope, and only it"
    );
    let answer = get(&crashes, Some(&stranger_secret)).await;
    assert_forbidden(&answer, "DENIAL_REASON_ORG_MISMATCH");
    assert_eq!(answer.header("www-authenticate"), None);
    let tool = format!("{service}/v1/tools/call");
    let answer = call(Method::POST, &tool, Some(&caller_secret)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "tool called by Crash triage bot\n");
    let open = get(&format!("{service}/healthz"), None).await;
    assert_eq!(open.status, 200, "routes outside the layer stay open");

    // An org read from the request that comes out empty is no requirement, not "any org".
    let client = IntrospectionClient::connect_lazy(format!("http://{}", app.addr)).unwrap();
    let by_path = policy_fn(|request| {
        let org = request
            .uri
            .path()
            .strip_prefix("/orgs/")?
            .split('/')
            .next()?;
        Some(Requirement::org(org).scope("mcp:read"))
    });
    let per_org = serve_router(
        axum::Router::new().route(
            "/orgs/{org}/crashes",
            axum::routing::get(|| async { "crashes" })
                .route_layer(IntrospectLayer::new(client, by_path)),
        ),
    )
    .await;
    let answer = get(
        &format!("{per_org}/orgs/acme/crashes"),
        Some(&reader_secret),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_forbidden(
        &get(
            &format!("{per_org}/orgs/globex/crashes"),
            Some(&reader_secret),
        )
        .await,
        "DENIAL_REASON_ORG_MISMATCH",
    );
    let empty = get(&format!("{per_org}/orgs//crashes"), Some(&reader_secret)).await;
    assert_eq!(empty.status, 403, "{empty:?}");

    // No cache in the layer: the request right after the revoke returns is refused.
    revoke(&app, &jwt, id, &reader.token_id).await;
    assert_unauthenticated(&get(&crashes, Some(&reader_secret)).await);
}

async fn challenges_carry_the_configured_realm_and_resource_metadata(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "Crash triage bot", None).await;
    let id = &account.service_account_id;
    let (_, caller) = create_token(&app, &jwt, id, &["mcp:tools:call"]).await;
    let client = IntrospectionClient::connect_lazy(format!("http://{}", app.addr)).unwrap();
    let metadata = "https://crashes.example.com/.well-known/oauth-protected-resource";
    let layer = IntrospectLayer::new(
        client,
        Requirement::org("acme")
            .scope("mcp:read")
            .scope("mcp:write"),
    )
    .realm(r#"the "crash" API"#)
    .resource_metadata(metadata);
    let service = serve_router(axum::Router::new().route(
        "/crashes",
        axum::routing::get(|| async { "crashes" }).route_layer(layer),
    ))
    .await;
    let crashes = format!("{service}/crashes");

    let answer = get(&crashes, None).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(
            format!(r#"Bearer realm="the \"crash\" API", resource_metadata="{metadata}""#).as_str()
        )
    );
    let answer = get(&crashes, Some("emb_sa_not-a-token")).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(
            format!(
                r#"Bearer realm="the \"crash\" API", error="invalid_token", resource_metadata="{metadata}""#
            )
            .as_str()
        )
    );
    let answer = get(&crashes, Some(&caller)).await;
    assert_forbidden(&answer, "DENIAL_REASON_SCOPE_MISSING");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(
            r#"Bearer realm="the \"crash\" API", error="insufficient_scope", scope="mcp:read mcp:write""#
        )
    );
}

async fn the_example_service_checks_the_callers_address_against_the_tokens_networks(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "Office-only bot", None).await;
    let restricted = |cidr: &str| pb::CreateTokenRequest {
        validate_only: false,
        service_account_id: account.service_account_id.clone(),
        display_name: format!("from {cidr}"),
        scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
        allowed_cidrs: vec![cidr.into()],
        expire_time: None,
    };
    let mut admin = app.admin().await;
    let elsewhere = admin
        .create_token(authed(restricted("10.0.0.0/8"), &jwt))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let loopback = admin
        .create_token(authed(restricted("127.0.0.0/8"), &jwt))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let crashes = format!("{}{CRASHES}", serve_example(app.addr, "acme").await);

    assert_forbidden(
        &get(&crashes, Some(&elsewhere)).await,
        "DENIAL_REASON_CLIENT_IP_NOT_ALLOWED",
    );
    assert_eq!(get(&crashes, Some(&loopback)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_refuses_a_revoked_token_through_the_layer_within_the_bound_of_introspect()
{
    let Some(a) = spawn(Backend::Postgres).await else {
        return;
    };
    let b = a.replica().await;
    let jwt = a.admin_jwt("acme");
    let account = create_account(&a, &jwt, "Replica bot", None).await;
    let id = &account.service_account_id;
    let (token, secret) = create_token(&a, &jwt, id, &["mcp:tools:call", "mcp:read"]).await;
    let crashes = format!("{}{CRASHES}", serve_example(b.addr, "acme").await);
    // Twice, so that B answers the second from its cache.
    assert_eq!(get(&crashes, Some(&secret)).await.status, 200);
    assert_eq!(get(&crashes, Some(&secret)).await.status, 200);

    revoke(&a, &jwt, id, &token.token_id).await;
    let (_, took) = Wait::new("the service behind B refuses the revoked token")
        .within(CONVERGENCE_BOUND)
        .every(Duration::from_millis(2))
        .timed(async || get(&crashes, Some(&secret)).await.status == 401)
        .await;
    println!("refused through replica B {took:?} after the revoke returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_share_one_connection_to_the_control_plane() {
    let Some(app) = spawn(Backend::Sqlite).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "Busy bot", None).await;
    let (_, secret) = create_token(
        &app,
        &jwt,
        &account.service_account_id,
        &["mcp:tools:call", "mcp:read"],
    )
    .await;
    let proxy = Proxy::to(app.addr).await;
    let crashes = format!("{}{CRASHES}", serve_example(proxy.addr, "acme").await);

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (url, secret) = (crashes.clone(), secret.clone());
        calls.spawn(async move { get(&url, Some(&secret)).await });
    }
    while let Some(answer) = calls.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    assert_eq!(proxy.connections_opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_answer_in_time_the_layer_refuses() {
    // Accepts connections and never answers: a hung control plane.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let deadline = Duration::from_millis(200);
    let client = IntrospectionClient::connect_lazy(format!("http://{silent_addr}"))
        .unwrap()
        .with_deadline(deadline);
    let crashes = format!(
        "{}{CRASHES}",
        serve_router(axum_service::router(client, "acme")).await
    );
    let started = Instant::now();
    let answer = get(&crashes, Some("emb_sa_anything")).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        None,
        "never a 401's challenge"
    );
    assert!(
        started.elapsed() < deadline + Duration::from_secs(2),
        "refused after {:?}",
        started.elapsed()
    );

    // Nothing listening at all.
    let client =
        IntrospectionClient::connect_lazy(format!("http://127.0.0.1:{}", free_port())).unwrap();
    let crashes = format!(
        "{}{CRASHES}",
        serve_router(axum_service::router(client, "acme")).await
    );
    assert_eq!(get(&crashes, Some("emb_sa_anything")).await.status, 503);
}

/// A health service that reports `SERVING` only to a caller whose identity the layer verified.
struct ServingToVerifiedCallers {
    expected_account: String,
}

#[tonic::async_trait]
impl Health for ServingToVerifiedCallers {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let identity = request.extensions().get::<Identity>();
        let verified =
            identity.is_some_and(|i| i.service_account_id().to_string() == self.expected_account);
        let status = if verified {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status.into(),
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }
}

async fn a_tonic_service_behind_the_layer_answers_grpc_statuses(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "Health prober", None).await;
    let id = account.service_account_id.clone();
    let (_, reader) = create_token(&app, &jwt, &id, &["mcp:tools:call", "mcp:read"]).await;
    let (_, caller) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;

    let client = IntrospectionClient::connect_lazy(format!("http://{}", app.addr)).unwrap();
    // Only `Check` is configured: `Watch` is closed.
    let routes = Routes::new().route(
        "/grpc.health.v1.Health/Check",
        Requirement::org("acme").scope("mcp:read"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = HealthServer::new(ServingToVerifiedCallers {
        expected_account: id,
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(IntrospectLayer::new(client, routes))
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut health = HealthClient::new(connect(addr).await.unwrap());
    let check = |secret: Option<&str>| {
        let mut request = Request::new(HealthCheckRequest::default());
        if let Some(secret) = secret {
            let bearer = format!("Bearer {secret}").parse().unwrap();
            request.metadata_mut().insert("authorization", bearer);
        }
        request
    };
    let status = health.check(check(None)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let response = health.check(check(Some(&reader))).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    let status = health.check(check(Some(&caller))).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "DENIAL_REASON_SCOPE_MISSING");
    let status = health.watch(check(Some(&reader))).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}
