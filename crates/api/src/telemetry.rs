//! Logs, traces and metrics. Logs go to stderr (text or JSON, level by `RUST_LOG`). Traces,
//! metrics and audit events (as log records) are exported over OTLP/gRPC only when an endpoint
//! is configured; without one no exporter, span or per-RPC layer exists, so the hot path pays
//! nothing for them.

use std::io::IsTerminal;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The installed telemetry; flush it with [`Telemetry::shutdown`] before exiting.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    logger: Option<SdkLoggerProvider>,
}

/// The tracing target of the audit events (one per committed admin change); only its events
/// are exported as OTLP log records, so ordinary log lines never reach a SIEM.
pub const AUDIT_TARGET: &str = "audit";

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Colour only for a person at a terminal: a file or a log collector would keep the escape codes.
/// `NO_COLOR` (https://no-color.org) turns it off there too.
fn colour_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The log lines on stderr, in `format`.
fn stderr_logs<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(colour_stderr())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

/// Installs the global subscriber and, with an OTLP endpoint, the exporters. Call inside the
/// Tokio runtime: the tonic exporters spawn their connection tasks on it.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry()
            .with(env_filter())
            .with(stderr_logs(format))
            .init();
        return Ok(Telemetry {
            tracer: None,
            meter: None,
            logger: None,
        });
    };
    let resource = Resource::builder()
        .with_service_name("service-accounts")
        .build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("cannot set up OTLP trace export to {endpoint}: {e}"))?;
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("cannot set up OTLP metric export to {endpoint}: {e}"))?;
    let meter = SdkMeterProvider::builder()
        .with_periodic_exporter(metrics)
        .with_resource(resource.clone())
        .build();
    global::set_meter_provider(meter.clone());
    let records = opentelemetry_otlp::LogExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("cannot set up OTLP log export to {endpoint}: {e}"))?;
    let logger = SdkLoggerProvider::builder()
        .with_batch_exporter(records)
        .with_resource(resource)
        .build();
    let traces = tracing_opentelemetry::layer().with_tracer(tracer.tracer("service-accounts"));
    // Each layer filters for itself: `RUST_LOG` sets what is logged and traced, but cannot
    // silence the audit export, which takes the audit target's events and nothing else.
    // The exact target: `Targets` would also take any target that merely starts with "audit".
    let audit_only = filter_fn(|m| {
        m.is_event() && m.target() == AUDIT_TARGET && *m.level() <= tracing::Level::INFO
    })
    .with_max_level_hint(LevelFilter::INFO);
    let audit = OpenTelemetryTracingBridge::new(&logger).with_filter(audit_only);
    tracing_subscriber::registry()
        .with(stderr_logs(format).with_filter(env_filter()))
        .with(traces.with_filter(env_filter()))
        .with(audit)
        .init();
    tracing::info!(
        endpoint,
        "exporting traces, metrics and audit events over OTLP"
    );
    Ok(Telemetry {
        tracer: Some(tracer),
        meter: Some(meter),
        logger: Some(logger),
    })
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// Exports what is buffered, then stops the exporters.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(error) = tracer.shutdown()
        {
            eprintln!("warning: flushing traces failed: {error}");
        }
        if let Some(meter) = self.meter
            && let Err(error) = meter.shutdown()
        {
            eprintln!("warning: flushing metrics failed: {error}");
        }
        if let Some(logger) = self.logger
            && let Err(error) = logger.shutdown()
        {
            eprintln!("warning: flushing audit log records failed: {error}");
        }
    }
}

/// The service's meter (a no-op until an OTLP endpoint installs a provider).
pub fn meter() -> Meter {
    global::meter("service-accounts")
}

/// A tower layer giving every RPC a server span (parented on the caller's W3C `traceparent`)
/// and a duration measurement by method and status code.
#[derive(Clone)]
pub struct RpcLayer {
    duration: Histogram<f64>,
}

impl RpcLayer {
    pub fn new() -> Self {
        Self {
            duration: meter()
                .f64_histogram("rpc.server.duration")
                .with_unit("ms")
                .with_description("Duration of each RPC, by method and gRPC status code")
                .build(),
        }
    }
}

impl Default for RpcLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            duration: self.duration.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    duration: Histogram<f64>,
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = crate::methods::label(request.uri().path());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            org_id = tracing::field::Empty,
            service_account_id = tracing::field::Empty,
        );
        let parent =
            global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
        let _ = span.set_parent(parent);
        // The clone that was made ready is the one to call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let duration = self.duration.clone();
        let started = Instant::now();
        Box::pin(
            async move {
                let response = inner.call(request).await?;
                // Errors are "trailers-only" responses with the status in the headers; a
                // unary success carries status 0 in its trailers.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0);
                tracing::Span::current().record("rpc.grpc.status_code", code);
                duration.record(
                    started.elapsed().as_secs_f64() * 1000.0,
                    &[
                        KeyValue::new("rpc.method", method),
                        KeyValue::new("rpc.grpc.status_code", code),
                    ],
                );
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// Counters the services record into.
#[derive(Clone)]
pub struct ServiceMetrics {
    /// An OTLP exporter is installed. Without one the instruments are no-ops, and the hot path
    /// skips even building their attributes.
    pub enabled: bool,
    pub introspections: Counter<u64>,
    pub last_used_flushes: Counter<u64>,
    pub last_used_tokens: Counter<u64>,
}

impl ServiceMetrics {
    pub fn new(enabled: bool) -> Self {
        let meter = meter();
        Self {
            enabled,
            introspections: meter
                .u64_counter("service_accounts.introspections")
                .with_description(
                    "Introspect outcomes: outcome (active or the inactive reason) and allowed",
                )
                .build(),
            last_used_flushes: meter
                .u64_counter("service_accounts.last_used.flushes")
                .with_description("Last-used flush batches, by result (ok, error)")
                .build(),
            last_used_tokens: meter
                .u64_counter("service_accounts.last_used.tokens_written")
                .with_description("Tokens whose last-used time was written")
                .build(),
        }
    }
}
