//! The HTTP/1.1 listener (`--http-listen`, off by default): plain HTTP routes for gateways next
//! to the gRPC port, sharing its introspector, its TLS certificate (and client CA) and its
//! shutdown.
//!
//! Routes are one `match` on (method, path) in [`HttpApi::route`]: add an arm there. Unknown
//! paths are 404. `HEAD` is answered like `GET`, without the body, for every route.
//!
//! Limits, for every route: request headers at most [`MAX_HEADER_BYTES`] in at most
//! [`MAX_HEADERS`] fields (else 431); each answer within `--rpc-timeout` (else 503). A request
//! body is never read unless a route reads it, and a route that does bounds it. Connections:
//! see [`Limits`] (a cap, an idle timeout, and a deadline for each request head, the TLS
//! handshake included).

mod connection;
mod forward_auth;
mod github;
pub mod oauth2_introspect;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use service_accounts_domain::Error;
use service_accounts_domain::introspection::Introspector;
use service_accounts_domain::leaks::LeakReporter;
use service_accounts_domain::store::{AdminStore, TokenStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::connections::ConnectionCap;
use crate::error::{ApiError, ClientCertRule, ErrorCode};
use crate::gateway::Challenge;
use crate::introspection_clients::IntrospectionClients;
use crate::secret_scanning::GithubKeys;
use connection::{Tracker, watched};

pub use connection::Limits;

/// Request line and headers together. Generous, because nginx's `auth_request` forwards every
/// header the client sent (cookies included), and nginx itself accepts 32 KiB by default.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Header fields per request.
pub const MAX_HEADERS: usize = 128;
/// The answer to a connection over the cap when every connection is serving a request.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

pub type Response = http::Response<Full<Bytes>>;

/// The routes' shared state.
pub struct HttpApi<S> {
    introspector: Arc<Introspector<S>>,
    /// Storage answered and migrations ran: the gRPC health's first SERVING.
    ready: AtomicBool,
    /// mTLS is configured: forward-auth and RFC 7662 callers must present a client
    /// certificate, as `TokenIntrospection` callers must.
    client_cert: ClientCertRule,
    /// The longest a request may take, as `--rpc-timeout` bounds an RPC.
    timeout: Duration,
    /// GitHub's secret scanning, when its keys are configured.
    github: Option<github::Github<S>>,
    /// What forward-auth's `WWW-Authenticate` challenges name besides the error.
    challenge: Challenge,
    /// `/oauth2/introspect`'s callers, when `--introspection-clients` is set.
    introspection_clients: Option<Arc<IntrospectionClients>>,
    /// The `iss` of `/oauth2/introspect` answers.
    issuer: Option<String>,
}

/// What the listener knows about a request's connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client presented a certificate that chains to the configured client CA.
    pub client_cert: bool,
}

impl<S: AdminStore + TokenStore> HttpApi<S> {
    pub fn new(
        introspector: Arc<Introspector<S>>,
        client_cert: ClientCertRule,
        timeout: Duration,
    ) -> Self {
        Self {
            introspector,
            ready: AtomicBool::new(false),
            client_cert,
            timeout,
            github: None,
            challenge: Challenge::default(),
            introspection_clients: None,
            issuer: None,
        }
    }

    /// `/oauth2/introspect` authenticates its callers with these clients, and names `issuer`.
    pub fn with_oauth2(
        mut self,
        clients: Option<Arc<IntrospectionClients>>,
        issuer: Option<String>,
    ) -> Self {
        self.introspection_clients = clients;
        self.issuer = issuer;
        self
    }

    /// The clients file to watch for changes, if there is one.
    pub fn introspection_clients(&self) -> Option<Arc<IntrospectionClients>> {
        self.introspection_clients.clone()
    }

    /// The realm and resource metadata URL forward-auth's challenges name.
    pub fn with_challenge(mut self, challenge: Challenge) -> Self {
        self.challenge = challenge;
        self
    }

    /// Serves `POST /v1/secret-scanning/github`, verifying with `keys`.
    pub fn with_github(mut self, keys: GithubKeys, store: S) -> Self {
        self.github = Some(github::Github {
            keys,
            reporter: LeakReporter::new(store),
        });
        self
    }

    /// Storage is ready: until then, routes that need it answer 503.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Every route, by method and path.
    pub async fn route(&self, request: Request<Incoming>, peer: Peer) -> Response {
        let (parts, body) = request.into_parts();
        let mut response = match (&parts.method, parts.uri.path()) {
            (_, path) if forward_auth::serves(path) => {
                forward_auth::handle(self, &parts.headers, peer).await
            }
            (&Method::POST, github::PATH) if self.github.is_some() => {
                github::handle(self, &parts.headers, body).await
            }
            (method, oauth2_introspect::PATH) => {
                oauth2_introspect::handle(self, method, &parts.headers, body, peer).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        };
        if parts.method == Method::HEAD {
            without_body(&mut response);
        }
        response
    }
}

/// Accepts connections until `stop`, then closes each open connection that is not serving a
/// request at once, and asks the others to finish their request in flight and close. Dropping (aborting) the returned future drops every connection at once.
pub async fn serve<S: AdminStore + TokenStore>(
    api: Arc<HttpApi<S>>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    stop: CancellationToken,
) {
    let cap = ConnectionCap::new("HTTP", limits.max_connections);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match cap.admit() {
                    Some(slot) => {
                        let (api, tls, stop) = (api.clone(), tls.clone(), stop.clone());
                        let tracker = Tracker::new(slot, limits);
                        connections.spawn(connection(api, stream, tls, tracker, stop));
                    }
                    None if tls.is_none() => {
                        // Best effort, without waiting: the socket's buffer takes it.
                        let _ = stream.try_write(REFUSED);
                    }
                    None => {}
                },
                Err(error) => {
                    // Out of file descriptors, typically: do not spin.
                    tracing::warn!(%error, "HTTP listener cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stop.cancelled() => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection<S: AdminStore + TokenStore>(
    api: Arc<HttpApi<S>>,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    tracker: Arc<Tracker>,
    stop: CancellationToken,
) {
    // Small responses must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        let peer = Peer { client_cert: false };
        let io = watched(stream, tracker.clone());
        return http1_connection(api, TokioIo::new(io), peer, tracker, stop).await;
    };
    // The handshake counts against the first request head's deadline.
    let deadline = tracker.deadline().unwrap_or_else(tokio::time::Instant::now);
    let stream = tokio::select! {
        handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => {
            match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "HTTP TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
        () = tracker.evicted() => return,
        () = stop.cancelled() => return,
    };
    let client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|certs| !certs.is_empty());
    let io = watched(stream, tracker.clone());
    let peer = Peer { client_cert };
    http1_connection(api, TokioIo::new(io), peer, tracker, stop).await;
}

async fn http1_connection<S, I>(
    api: Arc<HttpApi<S>>,
    io: I,
    peer: Peer,
    tracker: Arc<Tracker>,
    stop: CancellationToken,
) where
    S: AdminStore + TokenStore,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let serving = tracker.clone();
    let service = service_fn(move |request| {
        let (api, serving) = (api.clone(), serving.clone());
        async move {
            serving.request_started();
            let response = api.route(request, peer).await;
            serving.request_finished();
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // Off: hyper's starts when a connection goes idle; the tracker's deadlines replace it.
        .header_read_timeout(None)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let reason = loop {
        let deadline = tracker.deadline();
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            () = until(deadline) => {
                if let Some(reason) = tracker.expired() {
                    break reason;
                }
            }
            () = tracker.changed() => {}
            () = tracker.evicted() => break "closed to make room for a new connection",
            () = stop.cancelled() => break "shutting down",
        }
    };
    tracing::debug!(reason, "HTTP connection closed");
    // No request, or an incomplete head: nothing to finish.
    if tracker.reading_head() {
        return;
    }
    // A request being served (only on shutdown: a busy connection is neither evicted nor timed
    // out) or an answer being written is finished first; an idle connection closes now.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Why a request body was not read.
pub enum BodyError {
    /// Over the route's limit, declared or found while reading.
    TooLarge,
    /// Not sent within the request timeout.
    TooSlow,
}

/// Reads a body of at most `max` bytes: one that declares more is refused before a byte is read,
/// and a sender that trickles its body is cut off like a slow RPC.
pub async fn read_body(
    headers: &http::HeaderMap,
    body: Incoming,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    use http_body_util::{BodyExt, Limited};
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return Err(BodyError::TooLarge);
    }
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::TooSlow),
    }
}

/// A short plain-text answer. Every answer of this listener is about one request: not cacheable.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = http::Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The answer to a `HEAD`: the `GET` answer's status and headers (its length included).
fn without_body(response: &mut Response) {
    use hyper::body::Body;
    let length = response.body().size_hint().exact().unwrap_or(0);
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(length));
    *response.body_mut() = Full::default();
}

pub fn unavailable() -> Response {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage is unavailable; retry later\n",
    )
}

/// An error as a plain-text HTTP answer, with the status its [`ErrorCode`] says (the same code
/// its gRPC status has). Invalid input lists every violation: HTTP has no error details.
///
/// [`ErrorCode`]: crate::error::ErrorCode
pub fn error_response(error: ApiError) -> Response {
    let code = error.code();
    // Routes here answer bad input, missing certificates and storage trouble; anything else is
    // a bug worth an operator's attention.
    if !matches!(
        code,
        ErrorCode::InvalidArgument | ErrorCode::NoClientCertificate | ErrorCode::Unavailable
    ) {
        tracing::error!(?code, "unexpected error answering an HTTP request");
    }
    let status = code.http_status_code();
    let body = match &error {
        ApiError::Domain(Error::InvalidArgument(violations)) => format!(
            "invalid request: {}\n",
            violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        _ => format!("{}\n", error.message()),
    };
    text(status, body)
}
