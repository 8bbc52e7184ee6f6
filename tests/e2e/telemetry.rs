//! Traces and metrics reach an OTLP collector, joined to the caller's trace, and neither they
//! nor the logs carry a token secret or an admin JWT.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as Checked,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use service_accounts_api::pb;
use tonic::{Request, Response, Status};

use crate::support::*;

/// A minimal OTLP collector that keeps everything it receives.
#[derive(Clone, Default)]
struct Collector {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

fn with_traceparent<T>(mut request: Request<T>, trace_id: &str) -> Request<T> {
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_the_collector_without_secrets() {
    let collector = Collector::default();
    let collector_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = collector_listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                collector_listener,
            )),
    );

    let data_dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(|command| {
        command
            .args(["--shutdown-grace", "2s", "--data-dir"])
            .arg(data_dir.path())
            .args(["--otlp-endpoint", &format!("http://{collector_addr}")])
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
            .env("RUST_LOG", "debug");
    });
    let channel = server.connect_when_serving().await;
    let jwt = String::from_utf8(
        Command::new(BINARY)
            .args([
                "admin-token",
                "--org-id",
                "org-otel",
                "--user-id",
                "alice",
                "--data-dir",
            ])
            .arg(data_dir.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();

    let mut admin =
        pb::service_account_admin_client::ServiceAccountAdminClient::new(channel.clone());
    let mut introspection =
        pb::token_introspection_client::TokenIntrospectionClient::new(channel.clone());
    let mut envoy = AuthorizationClient::new(channel);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let account = admin
        .create_service_account(with_traceparent(
            authed(
                pb::CreateServiceAccountRequest {
                    display_name: "Traced".into(),
                    ..Default::default()
                },
                &jwt,
            ),
            trace_id,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    let created = admin
        .create_token(authed(
            pb::CreateTokenRequest {
                allowed_cidrs: Vec::new(),
                service_account_id: account.service_account_id.clone(),
                display_name: "t".into(),
                scopes: vec!["mcp:tools:call".into()],
                expire_time: None,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret.clone();
    let introspected = introspection
        .introspect(with_traceparent(
            Request::new(pb::IntrospectRequest {
                token: secret.clone(),
                ..Default::default()
            }),
            trace_id,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(introspected.active);
    // Error paths with secret material in the request.
    let _ = introspection
        .introspect(pb::IntrospectRequest {
            token: format!("{secret}x"),
            app_id: "not an app".into(),
            ..Default::default()
        })
        .await;
    // Envoy's `Check` carries the token in the checked request's headers.
    let check = |authorization: String, app_id: &str| CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Checked {
                http: Some(HttpRequest {
                    headers: [("authorization".to_owned(), authorization)].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [
                ("org_id".to_owned(), "org-otel".to_owned()),
                ("app_id".to_owned(), app_id.to_owned()),
            ]
            .into(),
            ..Default::default()
        }),
    };
    let checked = envoy
        .check(with_traceparent(
            Request::new(check(format!("Bearer {secret}"), "")),
            trace_id,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.status.map(|s| s.code), Some(0));
    let _ = envoy
        .check(check(format!("Bearer {secret}x"), "not an app"))
        .await;
    let _ = admin
        .get_service_account(authed(
            pb::GetServiceAccountRequest {
                service_account_id: secret.clone(),
            },
            &jwt,
        ))
        .await;

    // Wait for the introspection span and the metrics, then stop (which flushes the rest).
    let introspect_span = Wait::new("the introspection span arrives")
        .every(Duration::from_millis(100))
        .until(async || {
            collector
                .traces
                .lock()
                .unwrap()
                .iter()
                .flat_map(|r| r.resource_spans.iter())
                .flat_map(|r| r.scope_spans.iter())
                .flat_map(|s| s.spans.iter())
                .find(|s| {
                    s.name.ends_with("TokenIntrospection/Introspect")
                        && hex(&s.trace_id) == trace_id
                })
                .cloned()
        })
        .await;
    let attribute = |key: &str| {
        introspect_span
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.clone())
    };
    assert_eq!(attribute("rpc.grpc.status_code"), Some(Value::IntValue(0)));
    assert_eq!(
        attribute("service_account_id"),
        Some(Value::StringValue(account.service_account_id.clone()))
    );
    assert_eq!(
        attribute("org_id"),
        Some(Value::StringValue("org-otel".into()))
    );
    assert_eq!(
        hex(&introspect_span.parent_span_id),
        "00f067aa0ba902b7",
        "joined the caller's span"
    );

    // Envoy's `Check` is labelled by its own method name, with the identity it let through.
    let check_span = Wait::new("the Envoy check span arrives")
        .every(Duration::from_millis(100))
        .until(async || {
            collector
                .traces
                .lock()
                .unwrap()
                .iter()
                .flat_map(|r| r.resource_spans.iter())
                .flat_map(|r| r.scope_spans.iter())
                .flat_map(|s| s.spans.iter())
                .find(|s| {
                    s.name
                        .ends_with("/envoy.service.auth.v3.Authorization/Check")
                        && hex(&s.trace_id) == trace_id
                })
                .cloned()
        })
        .await;
    assert!(
        check_span
            .attributes
            .iter()
            .any(|a| a.key == "service_account_id"
                && a.value.as_ref().and_then(|v| v.value.clone())
                    == Some(Value::StringValue(account.service_account_id.clone()))),
        "{check_span:?}"
    );

    let wanted = [
        "rpc.server.duration",
        "service_accounts.introspections",
        "service_accounts.introspection.cache.lookups",
        "service_accounts.db.pool.connections",
    ];
    Wait::new(format!("the metrics {wanted:?} arrive"))
        .every(Duration::from_millis(100))
        .until(async || {
            let names: Vec<String> = collector
                .metrics
                .lock()
                .unwrap()
                .iter()
                .flat_map(|r| r.resource_metrics.iter())
                .flat_map(|r| r.scope_metrics.iter())
                .flat_map(|s| s.metrics.iter())
                .map(|m| m.name.clone())
                .collect();
            match wanted.iter().all(|w| names.iter().any(|n| n == w)) {
                true => Ok(()),
                false => Err(names),
            }
        })
        .await;

    drop(admin);
    drop(introspection);
    drop(envoy);
    let exited = server.terminate().await;
    assert!(exited.status.success(), "{exited:?}");

    let logs = exited.stderr.as_str();
    let exported = format!(
        "{:?}{:?}",
        collector.traces.lock().unwrap(),
        collector.metrics.lock().unwrap()
    );
    assert!(logs.contains("rpc"), "debug logs were captured");
    let random_part = &secret[7..44];
    let signature = jwt.rsplit('.').next().unwrap();
    for (what, text) in [("logs", logs), ("exported telemetry", exported.as_str())] {
        assert!(
            !text.contains(random_part),
            "a token secret reached the {what}"
        );
        assert!(!text.contains(signature), "an admin JWT reached the {what}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
