//! A `tower` layer that lets a request through only with a token the control plane allows for
//! the request's route.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Extensions, Request, Response, StatusCode};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::identity::Identity;
use crate::introspection::{IntrospectionClient, Requirement, Verdict};
use crate::pb::DenialReason;

/// Says which [`Requirement`] a request must meet. `None` refuses the request (403): a route
/// nobody configured is closed, not open.
pub trait Policy: Send + Sync + 'static {
    fn requirement(&self, request: &Parts) -> Option<Cow<'_, Requirement>>;
}

/// One requirement for every request: for an axum `route_layer`, or a tonic service that needs
/// the same of all its methods.
impl Policy for Requirement {
    fn requirement(&self, _: &Parts) -> Option<Cow<'_, Requirement>> {
        Some(Cow::Borrowed(self))
    }
}

/// Requirements by exact request path (for tonic, `/package.Service/Method`), with an optional
/// requirement for every other path; without one, other paths are refused.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    by_path: HashMap<String, Requirement>,
    otherwise: Option<Requirement>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn route(mut self, path: impl Into<String>, requirement: Requirement) -> Self {
        self.by_path.insert(path.into(), requirement);
        self
    }

    pub fn otherwise(mut self, requirement: Requirement) -> Self {
        self.otherwise = Some(requirement);
        self
    }
}

impl Policy for Routes {
    fn requirement(&self, request: &Parts) -> Option<Cow<'_, Requirement>> {
        self.by_path
            .get(request.uri.path())
            .or(self.otherwise.as_ref())
            .map(Cow::Borrowed)
    }
}

/// A requirement computed from each request, for services that learn the org or app from the
/// request itself (a path segment, say).
pub fn policy_fn<F>(f: F) -> impl Policy
where
    F: Fn(&Parts) -> Option<Requirement> + Send + Sync + 'static,
{
    struct FnPolicy<F>(F);
    impl<F> Policy for FnPolicy<F>
    where
        F: Fn(&Parts) -> Option<Requirement> + Send + Sync + 'static,
    {
        fn requirement(&self, request: &Parts) -> Option<Cow<'_, Requirement>> {
            (self.0)(request).map(Cow::Owned)
        }
    }
    FnPolicy(f)
}

/// Where the caller's address comes from; see [`IntrospectLayer::client_ip`].
type ClientIp = fn(&Parts) -> Option<IpAddr>;

/// The prefix of every service-account token.
pub const TOKEN_PREFIX: &str = "emb_sa_";

/// Another verifier for bearer tokens that are not service-account tokens (not
/// [`TOKEN_PREFIX`]), such as the server's own OAuth verifier; see
/// [`IntrospectLayer::fallback`]. It only decides: the layer turns its answer into the HTTP or
/// gRPC response.
pub trait Fallback: Send + Sync + 'static {
    /// Decides `token` (without `Bearer `) for `request`, which the route's `requirement`
    /// (org, app, scopes) applies to: the fallback must enforce it in its own terms. `Ok` lets
    /// the request through with these extensions added to it (the verifier's own identity
    /// type, say).
    fn verify(
        &self,
        token: &str,
        requirement: &Requirement,
        request: &Parts,
    ) -> Pin<Box<dyn Future<Output = Result<Extensions, FallbackRefusal>> + Send + 'static>>;
}

/// Why a [`Fallback`] refused a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FallbackRefusal {
    /// Not a token it accepts: 401 `invalid_token` / `UNAUTHENTICATED`.
    InvalidToken,
    /// A good token without these scopes: 403 `insufficient_scope` / `PERMISSION_DENIED`.
    InsufficientScope(Vec<String>),
    /// It could not decide: 503 / `UNAVAILABLE`, never let through.
    Unavailable,
}

/// A [`Fallback`] from an async function of the token, the route's requirement and the
/// request's parts.
pub fn fallback_fn<F, Fut>(f: F) -> impl Fallback
where
    F: Fn(String, Requirement, &Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Extensions, FallbackRefusal>> + Send + 'static,
{
    struct FnFallback<F>(F);
    impl<F, Fut> Fallback for FnFallback<F>
    where
        F: Fn(String, Requirement, &Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Extensions, FallbackRefusal>> + Send + 'static,
    {
        fn verify(
            &self,
            token: &str,
            requirement: &Requirement,
            request: &Parts,
        ) -> Pin<Box<dyn Future<Output = Result<Extensions, FallbackRefusal>> + Send + 'static>>
        {
            Box::pin((self.0)(token.to_owned(), requirement.clone(), request))
        }
    }
    FnFallback(f)
}

/// Authenticates every request with `Introspect`; see the crate documentation.
pub struct IntrospectLayer<P> {
    /// Shared: a request clones the layer, and a client holds channels that are not free to clone.
    client: Arc<IntrospectionClient>,
    policy: Arc<P>,
    client_ip: ClientIp,
    challenges: Arc<Challenges>,
    fallback: Option<Arc<dyn Fallback>>,
}

impl<P> Clone for IntrospectLayer<P> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            policy: self.policy.clone(),
            client_ip: self.client_ip,
            challenges: self.challenges.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<P: Policy> IntrospectLayer<P> {
    pub fn new(client: IntrospectionClient, policy: P) -> Self {
        Self {
            client: Arc::new(client),
            policy: Arc::new(policy),
            client_ip: tonic_peer_ip,
            challenges: Arc::default(),
            fallback: None,
        }
    }

    /// Names the protection space in every `WWW-Authenticate: Bearer` challenge (RFC 6750
    /// `realm`). HTTP answers only.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.challenges).realm = Some(realm.into());
        self
    }

    /// Adds `resource_metadata="<url>"` (RFC 9728) to the 401 challenges: the URL of this
    /// server's protected-resource metadata, which MCP clients read to learn how to get a token.
    /// HTTP answers only.
    pub fn resource_metadata(mut self, url: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.challenges).resource_metadata = Some(url.into());
        self
    }

    /// Sends bearer tokens that are not service-account tokens (not [`TOKEN_PREFIX`]) to
    /// `fallback` instead of the control plane, for a server that also accepts other tokens (its
    /// own OAuth tokens, say). The route must still have a requirement.
    pub fn fallback(mut self, fallback: impl Fallback) -> Self {
        self.fallback = Some(Arc::new(fallback));
        self
    }

    /// Sets how to find the caller's address, which tokens restricted to networks are checked
    /// against. The default reads the peer address that tonic's server records; behind a proxy,
    /// or in axum (`ConnectInfo`), say where it is.
    pub fn client_ip(mut self, client_ip: ClientIp) -> Self {
        self.client_ip = client_ip;
        self
    }
}

fn tonic_peer_ip(request: &Parts) -> Option<IpAddr> {
    let extensions = &request.extensions;
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    });
    tcp.and_then(|info| info.remote_addr).map(|addr| addr.ip())
}

impl<S, P> Layer<S> for IntrospectLayer<P> {
    type Service = Introspect<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Introspect {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// The service [`IntrospectLayer`] wraps around another.
pub struct Introspect<S, P> {
    inner: S,
    /// One reference count to clone: routers clone the service for every request.
    layer: Arc<IntrospectLayer<P>>,
}

impl<S: Clone, P> Clone for Introspect<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for Introspect<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    P: Policy,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    /// The inner service's own future when the client's cache allowed the request at once, else
    /// the whole decision and then the inner call.
    type Future =
        Either<S::Future, Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        if let Some(identity) = allowed_from_cache(&self.layer, &parts) {
            // The handler gets the identity; the token goes no further. The inner service was
            // polled ready and is called now, so it needs no clone.
            parts.headers.remove(AUTHORIZATION);
            parts.extensions.insert(identity);
            return Either::Left(self.inner.call(Request::from_parts(parts, body)));
        }
        // Called later: the clone that was not polled ready stays behind (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Either::Right(Box::pin(async move {
            let grpc = parts
                .headers
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            match decide(&layer, &parts).await {
                Ok(verified) => {
                    // The handler gets the identity; the token goes no further.
                    parts.headers.remove(AUTHORIZATION);
                    match verified {
                        Verified::Identity(identity) => {
                            parts.extensions.insert(identity);
                        }
                        Verified::Fallback(extensions) => parts.extensions.extend(extensions),
                    }
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(refusal) => Ok(refusal.response(grpc, &layer.challenges)),
            }
        }))
    }
}

/// The identity of a request that the client's cache allows now, with no call to make; `None`
/// for anything else (a refusal, a fallback token, a miss), which takes the full path.
fn allowed_from_cache<P: Policy>(layer: &IntrospectLayer<P>, request: &Parts) -> Option<Identity> {
    let token = request
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)?;
    if layer.fallback.is_some() && !token.starts_with(TOKEN_PREFIX) {
        return None;
    }
    let requirement = layer
        .policy
        .requirement(request)
        .filter(|r| r.is_complete())?;
    let client_ip = (layer.client_ip)(request);
    match layer.client.check_cached(token, &requirement, client_ip)? {
        Verdict::Allowed(identity) if identity.org_id() == requirement.org_id() => Some(identity),
        _ => None,
    }
}

/// What an allowed request gets.
enum Verified {
    Identity(Identity),
    /// What the fallback verifier gave.
    Fallback(Extensions),
}

/// What to add to an allowed request, or why it is refused.
async fn decide<P: Policy>(
    layer: &IntrospectLayer<P>,
    request: &Parts,
) -> Result<Verified, Refusal> {
    let token = request
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)
        .ok_or(Refusal::NoToken)?;
    // An empty org or app would ask the control plane to check nothing (a policy_fn reading
    // `/orgs//…`, say): such a requirement is no requirement.
    let Some(requirement) = layer
        .policy
        .requirement(request)
        .filter(|r| r.is_complete())
    else {
        tracing::warn!(
            path = request.uri.path(),
            "no requirement for this route; refused"
        );
        return Err(Refusal::NoRequirement);
    };
    if let Some(fallback) = layer
        .fallback
        .as_ref()
        .filter(|_| !token.starts_with(TOKEN_PREFIX))
    {
        return match fallback.verify(token, &requirement, request).await {
            Ok(extensions) => Ok(Verified::Fallback(extensions)),
            Err(FallbackRefusal::InvalidToken) => Err(Refusal::InvalidToken),
            Err(FallbackRefusal::InsufficientScope(missing_scopes)) => Err(Refusal::Denied {
                reason: DenialReason::ScopeMissing,
                missing_scopes,
            }),
            Err(FallbackRefusal::Unavailable) => Err(Refusal::Unavailable),
        };
    }
    let client_ip = (layer.client_ip)(request);
    match layer.client.check(token, &requirement, client_ip).await {
        // The control plane checked the org; checking it here as well costs nothing.
        Ok(Verdict::Allowed(identity)) if identity.org_id() == requirement.org_id() => {
            Ok(Verified::Identity(identity))
        }
        Ok(Verdict::Allowed(_)) => Err(Refusal::Denied {
            reason: DenialReason::OrgMismatch,
            missing_scopes: Vec::new(),
        }),
        Ok(Verdict::Inactive(_)) => Err(Refusal::InvalidToken),
        Ok(Verdict::Denied {
            reasons,
            missing_scopes,
            ..
        }) => Err(Refusal::Denied {
            reason: reasons[0],
            missing_scopes,
        }),
        Err(error) => {
            // Fail closed: no answer is never a yes.
            tracing::warn!(%error, "introspection failed; request refused");
            Err(Refusal::Unavailable)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

enum Refusal {
    /// No bearer token at all.
    NoToken,
    /// A token that is not active (malformed, unknown, revoked, expired, its account disabled).
    InvalidToken,
    /// An active token that may not do this; `reason` is the headline one.
    Denied {
        reason: DenialReason,
        missing_scopes: Vec<String>,
    },
    NoRequirement,
    Unavailable,
}

/// What the HTTP answers' `WWW-Authenticate` challenges say besides the error (RFC 6750 §3,
/// RFC 9728 §5.1).
#[derive(Clone, Debug, Default)]
struct Challenges {
    realm: Option<String>,
    resource_metadata: Option<String>,
}

impl Challenges {
    /// `Bearer` with the realm, then `attributes`, then (on a 401) the resource metadata.
    fn bearer(&self, attributes: &[(&str, &str)], unauthorized: bool) -> HeaderValue {
        let mut all: Vec<(&str, &str)> = Vec::new();
        if let Some(realm) = &self.realm {
            all.push(("realm", realm));
        }
        all.extend_from_slice(attributes);
        if let Some(url) = self.resource_metadata.as_deref().filter(|_| unauthorized) {
            all.push(("resource_metadata", url));
        }
        let mut challenge = String::from("Bearer");
        for (i, (name, value)) in all.iter().enumerate() {
            challenge.push_str(if i == 0 { " " } else { ", " });
            challenge.push_str(name);
            challenge.push('=');
            quote_into(&mut challenge, value);
        }
        HeaderValue::try_from(challenge).expect("control characters are left out")
    }
}

/// Appends `value` as an HTTP quoted-string (RFC 9110 §5.6.4): `"` and `\` escaped, control
/// characters (which no header may carry) left out.
fn quote_into(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Refusal {
    /// The answer of the control plane's gateways (SPEC §17, §20), in gRPC or plain HTTP.
    fn response<B: Default>(self, grpc: bool, challenges: &Challenges) -> Response<B> {
        if grpc {
            let status = match self {
                Self::NoToken | Self::InvalidToken => {
                    Status::unauthenticated("no active service-account token")
                }
                Self::Denied { reason, .. } => Status::permission_denied(reason.as_str_name()),
                Self::NoRequirement => Status::permission_denied("no requirement for this method"),
                Self::Unavailable => Status::unavailable("token introspection unavailable"),
            };
            return status.into_http();
        }
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        *response.status_mut() = match self {
            Self::NoToken => {
                headers.insert(WWW_AUTHENTICATE, challenges.bearer(&[], true));
                StatusCode::UNAUTHORIZED
            }
            Self::InvalidToken => {
                let challenge = challenges.bearer(&[("error", "invalid_token")], true);
                headers.insert(WWW_AUTHENTICATE, challenge);
                StatusCode::UNAUTHORIZED
            }
            Self::Denied {
                reason,
                missing_scopes,
            } => {
                headers.insert(
                    "x-embrace-denial-reason",
                    HeaderValue::from_static(reason.as_str_name()),
                );
                if reason == DenialReason::ScopeMissing && !missing_scopes.is_empty() {
                    let scope = missing_scopes.join(" ");
                    let attributes = [("error", "insufficient_scope"), ("scope", scope.as_str())];
                    headers.insert(WWW_AUTHENTICATE, challenges.bearer(&attributes, false));
                }
                StatusCode::FORBIDDEN
            }
            Self::NoRequirement => StatusCode::FORBIDDEN,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(path: &str) -> Parts {
        Request::get(path).body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_takes_the_token_of_a_bearer_header_only() {
        assert_eq!(bearer("Bearer emb_sa_x"), Some("emb_sa_x"));
        assert_eq!(bearer("bearer   emb_sa_x "), Some("emb_sa_x"));
        assert_eq!(bearer("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("emb_sa_x"), None);
    }

    #[test]
    fn routes_pick_the_exact_path_then_the_fallback_then_nothing() {
        let read = Requirement::org("acme").scope("mcp:read");
        let call = Requirement::org("acme").scope("mcp:tools:call");
        let routes = Routes::new().route("/pkg.Tools/Call", call.clone());
        assert_eq!(
            routes.requirement(&parts("/pkg.Tools/Call")).as_deref(),
            Some(&call)
        );
        assert_eq!(routes.requirement(&parts("/pkg.Tools/List")), None);
        let routes = routes.otherwise(read.clone());
        assert_eq!(
            routes.requirement(&parts("/pkg.Tools/List")).as_deref(),
            Some(&read)
        );
    }

    /// The org of `/orgs/{org}/…`.
    fn org_from_path() -> impl Policy {
        policy_fn(|request| {
            let org = request
                .uri
                .path()
                .strip_prefix("/orgs/")?
                .split('/')
                .next()?;
            Some(Requirement::org(org))
        })
    }

    #[test]
    fn a_policy_fn_computes_the_requirement_from_the_request() {
        let policy = org_from_path();
        assert_eq!(
            policy.requirement(&parts("/orgs/acme/apps")).as_deref(),
            Some(&Requirement::org("acme"))
        );
        assert_eq!(policy.requirement(&parts("/healthz")), None);
    }

    #[test]
    fn a_policy_that_yields_an_empty_org_or_app_has_no_requirement() {
        let policy = org_from_path();
        let requirement = policy.requirement(&parts("/orgs//apps")).unwrap();
        assert!(!requirement.is_complete());
        assert!(!Requirement::org("acme").app("").is_complete());
        assert!(Requirement::org("acme").app("ios").is_complete());
    }

    fn http(refusal: Refusal, challenges: &Challenges) -> Response<()> {
        refusal.response(false, challenges)
    }

    fn challenge(response: &Response<()>) -> Option<&str> {
        response
            .headers()
            .get(WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap())
    }

    fn scope_missing(scopes: &[&str]) -> Refusal {
        Refusal::Denied {
            reason: DenialReason::ScopeMissing,
            missing_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn refusals_answer_like_the_gateways() {
        let plain = Challenges::default();
        let response = http(Refusal::NoToken, &plain);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(challenge(&response), Some("Bearer"));
        let response = http(Refusal::InvalidToken, &plain);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge(&response),
            Some(r#"Bearer error="invalid_token""#)
        );
        let response = http(scope_missing(&["mcp:read", "mcp:write"]), &plain);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            challenge(&response),
            Some(r#"Bearer error="insufficient_scope", scope="mcp:read mcp:write""#)
        );
        assert_eq!(
            response.headers()["x-embrace-denial-reason"],
            "DENIAL_REASON_SCOPE_MISSING"
        );
        let response = http(
            Refusal::Denied {
                reason: DenialReason::AppNotGranted,
                missing_scopes: vec!["mcp:write".into()],
            },
            &plain,
        );
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            challenge(&response),
            None,
            "only a missing scope as the headline"
        );
        assert_eq!(
            response.headers()["x-embrace-denial-reason"],
            "DENIAL_REASON_APP_NOT_GRANTED"
        );
        let response = http(Refusal::NoRequirement, &plain);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(challenge(&response), None);
        let response = http(Refusal::Unavailable, &plain);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(challenge(&response), None);
    }

    #[test]
    fn the_realm_goes_into_every_challenge_and_the_resource_metadata_into_the_401_ones() {
        let configured = Challenges {
            realm: Some("crash tools".into()),
            resource_metadata: Some(
                "https://mcp.example.com/.well-known/oauth-protected-resource/mcp".into(),
            ),
        };
        let response = http(Refusal::NoToken, &configured);
        assert_eq!(
            challenge(&response),
            Some(
                r#"Bearer realm="crash tools", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#
            )
        );
        let response = http(Refusal::InvalidToken, &configured);
        assert_eq!(
            challenge(&response),
            Some(
                r#"Bearer realm="crash tools", error="invalid_token", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#
            )
        );
        let response = http(scope_missing(&["mcp:write"]), &configured);
        assert_eq!(
            challenge(&response),
            Some(r#"Bearer realm="crash tools", error="insufficient_scope", scope="mcp:write""#)
        );
    }

    #[test]
    fn attribute_values_are_quoted_strings() {
        let odd = Challenges {
            realm: Some("say \"hi\" \\ bye\r\n".into()),
            resource_metadata: None,
        };
        let response = http(Refusal::NoToken, &odd);
        assert_eq!(
            challenge(&response),
            Some(r#"Bearer realm="say \"hi\" \\ bye""#)
        );
    }

    #[test]
    fn grpc_answers_carry_no_challenge() {
        let configured = Challenges {
            realm: Some("tools".into()),
            resource_metadata: Some("https://x/meta".into()),
        };
        for (refusal, code) in [
            (Refusal::NoToken, "16"),
            (Refusal::InvalidToken, "16"),
            (scope_missing(&["mcp:read"]), "7"),
            (Refusal::Unavailable, "14"),
        ] {
            let response: Response<()> = refusal.response(true, &configured);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["grpc-status"], code);
            assert_eq!(challenge(&response), None);
        }
        let response: Response<()> = scope_missing(&["mcp:read"]).response(true, &configured);
        assert_eq!(
            response.headers()["grpc-message"],
            "DENIAL_REASON_SCOPE_MISSING"
        );
    }

    /// The layer around a handler that answers who the request came from.
    fn with_fallback() -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone {
        // Nothing listens there: a service-account token can only be refused (503).
        let nowhere = IntrospectionClient::connect_lazy("http://127.0.0.1:9")
            .unwrap()
            .with_deadline(std::time::Duration::from_millis(300));
        let layer = IntrospectLayer::new(nowhere, Requirement::org("acme")).fallback(fallback_fn(
            |token, requirement, _| async move {
                assert_eq!(requirement.org_id(), "acme");
                match token.as_str() {
                    "oauth-alice" => {
                        let mut verified = Extensions::new();
                        verified.insert("alice");
                        Ok(verified)
                    }
                    "oauth-reader" => Err(FallbackRefusal::InsufficientScope(vec![
                        "mcp:tools:call".into(),
                    ])),
                    "oauth-down" => Err(FallbackRefusal::Unavailable),
                    _ => Err(FallbackRefusal::InvalidToken),
                }
            },
        ));
        layer.layer(tower::service_fn(|request: Request<()>| async move {
            assert!(!request.headers().contains_key(AUTHORIZATION));
            let who = request.extensions().get::<&str>().copied();
            Ok(Response::new(who.unwrap_or("nobody").to_owned()))
        }))
    }

    async fn answer(authorization: Option<&str>) -> Response<String> {
        let mut request = Request::get("/mcp");
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        use tower::ServiceExt;
        let service = with_fallback();
        service.oneshot(request.body(()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn other_bearer_tokens_go_to_the_fallback_and_service_account_tokens_never_do() {
        let response = answer(Some("Bearer oauth-alice")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "alice");
        let response = answer(Some("Bearer oauth-mallory")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        let response = answer(Some("Bearer oauth-reader")).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope", scope="mcp:tools:call""#
        );
        let response = answer(Some("Bearer oauth-down")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        // A service-account token is the control plane's to decide, and it cannot be asked.
        let response = answer(Some("Bearer emb_sa_oauth-alice")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = answer(None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    }
}
