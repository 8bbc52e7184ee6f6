//! Traces and metrics reach an OTLP collector, joined to the caller's trace; audit events reach
//! it as log records, one per event; and none of them nor the logs carry a token secret or an
//! admin JWT.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as Checked,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
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
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use prost::Message as _;
use service_accounts_api::pb;
use tonic::{Request, Response, Status};

use crate::support::*;

/// A minimal OTLP collector that keeps everything it receives.
#[derive(Clone, Default)]
struct Collector {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
}

impl Collector {
    /// Serves OTLP/gRPC on an ephemeral port; returns its address.
    async fn start(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(self.clone()))
                .add_service(MetricsServiceServer::new(self.clone()))
                .add_service(LogsServiceServer::new(self.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// Every log record received, with the name of its instrumentation scope.
    fn log_records(&self) -> Vec<(String, LogRecord)> {
        let logs = self.logs.lock().unwrap();
        let mut records = Vec::new();
        for resource in logs.iter().flat_map(|r| r.resource_logs.iter()) {
            for scope in &resource.scope_logs {
                let name = scope
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for record in &scope.log_records {
                    records.push((name.clone(), record.clone()));
                }
            }
        }
        records
    }

    /// Everything received, as the protobuf bytes it arrived in.
    fn received_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for request in self.traces.lock().unwrap().iter() {
            bytes.extend(request.encode_to_vec());
        }
        for request in self.metrics.lock().unwrap().iter() {
            bytes.extend(request.encode_to_vec());
        }
        for request in self.logs.lock().unwrap().iter() {
            bytes.extend(request.encode_to_vec());
        }
        bytes
    }
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

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.logs.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse {
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
    let collector_addr = collector.start().await;

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
                validate_only: false,
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
        "{:?}{:?}{:?}",
        collector.traces.lock().unwrap(),
        collector.metrics.lock().unwrap(),
        collector.logs.lock().unwrap()
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

/// Audit events as a SIEM receives them: one OTLP log record per event, under the `audit`
/// scope, with the event's fields as attributes. `RUST_LOG` here hides the audit lines from
/// stderr and lets through ordinary debug events, none of which may become a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_reach_the_collector_as_one_log_record_each_without_secrets() {
    let collector = Collector::default();
    let collector_addr = collector.start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(|command| {
        command
            .args(["--shutdown-grace", "2s", "--data-dir"])
            .arg(data_dir.path())
            .args(["--otlp-endpoint", &format!("http://{collector_addr}")])
            // The batch processors export every 100 ms instead of every second.
            .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("RUST_LOG", "warn,service_accounts_api=debug");
    });
    let channel = server.connect_when_serving().await;
    let jwt = admin_token(data_dir.path(), "org-siem", "alice");
    let mut admin = pb::service_account_admin_client::ServiceAccountAdminClient::new(channel);

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let account = admin
        .create_service_account(with_traceparent(
            authed(
                pb::CreateServiceAccountRequest {
                    display_name: "Exported".into(),
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
    let account_id = account.service_account_id;
    admin
        .grant_app_access(authed(
            pb::GrantAppAccessRequest {
                validate_only: false,
                service_account_id: account_id.clone(),
                app_ids: vec!["app-1".into()],
            },
            &jwt,
        ))
        .await
        .unwrap();
    let created = admin
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                allowed_cidrs: Vec::new(),
                service_account_id: account_id.clone(),
                display_name: "t".into(),
                scopes: vec!["mcp:tools:call".into()],
                expire_time: None,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let token_id = created.token.unwrap().token_id;
    let rotated = admin
        .rotate_token(authed(
            pb::RotateTokenRequest {
                service_account_id: account_id.clone(),
                token_id,
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let secrets = [created.secret, rotated.secret];
    admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                validate_only: false,
                service_account_id: account_id.clone(),
                token_id: rotated.token.unwrap().token_id,
            },
            &jwt,
        ))
        .await
        .unwrap();
    let events = admin
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                page_size: 1000,
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "service_account.create",
            "service_account.app_access.grant",
            "token.create",
            "token.rotate",
            "token.revoke",
        ]
    );

    Wait::new("a log record for every audit event arrives")
        .every(Duration::from_millis(100))
        .until(async || {
            let exported = audit_record_ids(&collector);
            match events.iter().all(|e| exported.contains(&e.audit_event_id)) {
                true => Ok(()),
                false => Err(exported),
            }
        })
        .await;
    drop(admin);
    let exited = server.terminate().await;
    assert!(exited.status.success(), "{exited:?}");

    // After the flush at shutdown: one record per event, and no other record at all.
    let records = collector.log_records();
    let mut exported = audit_record_ids(&collector);
    exported.sort();
    let mut listed: Vec<String> = events.iter().map(|e| e.audit_event_id.clone()).collect();
    listed.sort();
    assert_eq!(exported, listed, "one record per audit event");
    assert_eq!(
        records.len(),
        events.len(),
        "only audit events are exported"
    );
    for event in &events {
        let (scope, record) = records
            .iter()
            .find(|(_, r)| attribute(r, "event_id").as_deref() == Some(&event.audit_event_id))
            .unwrap();
        assert_eq!(scope, "audit");
        assert_eq!(record.event_name, "service_accounts.audit");
        assert_eq!(record.severity_number, SeverityNumber::Info as i32);
        assert_eq!(record.severity_text, "INFO");
        assert_eq!(
            record.body.as_ref().and_then(|b| b.value.clone()),
            Some(Value::StringValue("admin change committed".into()))
        );
        assert_eq!(record.span_id.len(), 8, "the record names the RPC's span");
        if event.action == "service_account.create" {
            assert_eq!(hex(&record.trace_id), trace_id, "joined the caller's trace");
        }
        let create_time = event.create_time.unwrap();
        let expected = [
            ("event_id", event.audit_event_id.clone()),
            ("action", event.action.clone()),
            ("org_id", event.org_id.clone()),
            ("actor", event.actor.clone()),
            ("target_type", event.target_type.clone()),
            ("target_id", event.target_id.clone()),
            ("request_id", event.request_id.clone()),
            ("details", event.details.clone()),
            (
                "create_time",
                chrono::DateTime::from_timestamp(create_time.seconds, create_time.nanos as u32)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
        ];
        let mut keys: Vec<&str> = record.attributes.iter().map(|a| a.key.as_str()).collect();
        keys.sort();
        let mut expected_keys: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
        expected_keys.sort();
        assert_eq!(keys, expected_keys, "{}", event.action);
        for (key, value) in expected {
            assert_eq!(
                attribute(record, key),
                Some(value),
                "{key} of {}",
                event.action
            );
        }
    }
    let resource = collector.logs.lock().unwrap()[0].resource_logs[0]
        .resource
        .clone()
        .unwrap();
    assert!(
        resource
            .attributes
            .iter()
            .any(|a| a.key == "service.name" && a.value == Some(string("service-accounts"))),
        "{resource:?}"
    );

    // RUST_LOG decided what reached stderr, not what was exported.
    assert!(
        exited
            .stderr
            .contains("exporting traces, metrics and audit events over OTLP"),
        "{}",
        exited.stderr
    );
    assert!(!exited.stderr.contains("admin change committed"));

    let received = collector.received_bytes();
    let signature = jwt.rsplit('.').next().unwrap();
    for secret in &secrets {
        assert!(
            !contains(&received, secret.as_bytes()),
            "a token secret was exported"
        );
        assert!(
            !contains(&received, &secret.as_bytes()[7..44]),
            "a token secret's random part was exported"
        );
    }
    assert!(
        !contains(&received, jwt.as_bytes()),
        "an admin JWT was exported"
    );
    assert!(
        !contains(&received, signature.as_bytes()),
        "an admin JWT's signature was exported"
    );
}

/// The `event_id` of each log record received, in order of arrival.
fn audit_record_ids(collector: &Collector) -> Vec<String> {
    collector
        .log_records()
        .iter()
        .filter_map(|(_, r)| attribute(r, "event_id"))
        .collect()
}

fn attribute(record: &LogRecord, key: &str) -> Option<String> {
    record
        .attributes
        .iter()
        .find(|a: &&KeyValue| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

fn string(s: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s.into())),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
