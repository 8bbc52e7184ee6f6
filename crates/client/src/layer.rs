//! A `tower` layer that lets a request through only with a token the control plane allows for
//! the request's route.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

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

/// Authenticates every request with `Introspect`; see the crate documentation.
pub struct IntrospectLayer<P> {
    client: IntrospectionClient,
    policy: Arc<P>,
    client_ip: ClientIp,
}

impl<P> Clone for IntrospectLayer<P> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            policy: self.policy.clone(),
            client_ip: self.client_ip,
        }
    }
}

impl<P: Policy> IntrospectLayer<P> {
    pub fn new(client: IntrospectionClient, policy: P) -> Self {
        Self {
            client,
            policy: Arc::new(policy),
            client_ip: tonic_peer_ip,
        }
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
            layer: self.clone(),
        }
    }
}

/// The service [`IntrospectLayer`] wraps around another.
pub struct Introspect<S, P> {
    inner: S,
    layer: IntrospectLayer<P>,
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
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was not polled ready stays behind (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let grpc = parts
                .headers
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            match decide(&layer, &parts).await {
                Ok(identity) => {
                    // The handler gets the identity; the token goes no further.
                    parts.headers.remove(AUTHORIZATION);
                    parts.extensions.insert(identity);
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(refusal) => Ok(refusal.response(grpc)),
            }
        })
    }
}

async fn decide<P: Policy>(
    layer: &IntrospectLayer<P>,
    request: &Parts,
) -> Result<crate::Identity, Refusal> {
    let token = request
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)
        .ok_or(Refusal::Unauthenticated)?;
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
    let client_ip = (layer.client_ip)(request);
    match layer.client.check(token, &requirement, client_ip).await {
        // The control plane checked the org; checking it here as well costs nothing.
        Ok(Verdict::Allowed(identity)) if identity.org_id == requirement.org_id() => Ok(identity),
        Ok(Verdict::Allowed(_)) => Err(Refusal::Denied(DenialReason::OrgMismatch)),
        Ok(Verdict::Inactive(_)) => Err(Refusal::Unauthenticated),
        Ok(Verdict::Denied { reasons, .. }) => Err(Refusal::Denied(reasons[0])),
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
    Unauthenticated,
    Denied(DenialReason),
    NoRequirement,
    Unavailable,
}

impl Refusal {
    /// The answer of the control plane's gateways (SPEC §17), in gRPC or plain HTTP.
    fn response<B: Default>(self, grpc: bool) -> Response<B> {
        if grpc {
            let status = match self {
                Self::Unauthenticated => Status::unauthenticated("no active service-account token"),
                Self::Denied(reason) => Status::permission_denied(reason.as_str_name()),
                Self::NoRequirement => Status::permission_denied("no requirement for this method"),
                Self::Unavailable => Status::unavailable("token introspection unavailable"),
            };
            return status.into_http();
        }
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        *response.status_mut() = match self {
            Self::Unauthenticated => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
                StatusCode::UNAUTHORIZED
            }
            Self::Denied(reason) => {
                headers.insert(
                    "x-embrace-denial-reason",
                    HeaderValue::from_static(reason.as_str_name()),
                );
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

    #[test]
    fn refusals_answer_like_the_gateways() {
        let response: Response<()> = Refusal::Unauthenticated.response(false);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        let response: Response<()> = Refusal::Denied(DenialReason::ScopeMissing).response(false);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()["x-embrace-denial-reason"],
            "DENIAL_REASON_SCOPE_MISSING"
        );
        let response: Response<()> = Refusal::Unavailable.response(false);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response: Response<()> = Refusal::Unavailable.response(true);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
    }
}
