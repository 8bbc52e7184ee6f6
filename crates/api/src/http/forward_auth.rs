//! `/v1/forward-auth`: the answer nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `ForwardAuth` and Envoy's HTTP `ext_authz` expect, from [`crate::gateway::decide`] (the
//! decision `Introspect` and Envoy's `Check` make too). Any method; the body is never read.
//!
//! | decision | status | headers |
//! |---|---|---|
//! | allowed | 200 | the verified identity (`X-Embrace-Org-Id`, `-Service-Account-Id`, …) |
//! | no bearer token | 401 | `WWW-Authenticate: Bearer` (RFC 6750; `realm`, `resource_metadata` when configured) |
//! | not active | 401 | `WWW-Authenticate: Bearer error="invalid_token"` |
//! | a scope missing | 403 | `X-Embrace-Denial-Reason`, `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` |
//! | active, not allowed otherwise | 403 | `X-Embrace-Denial-Reason` |
//! | a malformed `X-Embrace-*` request header (the gateway's configuration) | 400 | |
//! | storage not ready or unavailable | 503 | |
//! | mTLS configured, no client certificate | 403 | (no denial reason) |

use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use service_accounts_domain::store::{AdminStore, TokenStore};
use service_accounts_domain::{Error, FieldViolation};

use super::{HttpApi, Peer, Response, error_response, text, unavailable};
use crate::error::ApiError;
use crate::gateway::{self, Decision, GatewayRequest};

pub const PATH: &str = "/v1/forward-auth";

/// The path, and any path below it: Envoy's HTTP `ext_authz` appends the checked request's path
/// to the configured `path_prefix`.
pub fn serves(path: &str) -> bool {
    path.strip_prefix(PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub async fn handle<S: AdminStore + TokenStore>(
    api: &HttpApi<S>,
    headers: &HeaderMap,
    peer: Peer,
) -> Response {
    if let Err(error) = api.client_cert.check(peer.client_cert) {
        return error_response(error);
    }
    if !api.is_ready() {
        return unavailable();
    }
    let request = match gateway_request(headers) {
        Ok(request) => request,
        Err(error) => return refused(error),
    };
    let decision = match tokio::time::timeout(
        api.timeout,
        gateway::decide(&api.introspector, request),
    )
    .await
    {
        Ok(Ok(decision)) => decision,
        Ok(Err(error)) => return refused(in_header_terms(error)),
        Err(_) => {
            tracing::warn!(timeout = ?api.timeout, "forward-auth decision timed out");
            return unavailable();
        }
    };
    let challenge = decision.challenge(&api.challenge);
    let mut response = match decision {
        Decision::Allow(identity) => return allowed(identity),
        Decision::Unauthenticated { .. } => text(
            StatusCode::UNAUTHORIZED,
            "the bearer token is missing or not active\n",
        ),
        Decision::Forbidden { reason, .. } => {
            let mut response = text(
                StatusCode::FORBIDDEN,
                format!("the token may not make this request: {reason}\n"),
            );
            response.headers_mut().insert(
                HeaderName::from_static(gateway::DENIAL_REASON),
                HeaderValue::from_static(reason),
            );
            response
        }
    };
    if let Some(challenge) = challenge {
        match HeaderValue::try_from(challenge) {
            Ok(value) => {
                response.headers_mut().insert(WWW_AUTHENTICATE, value);
            }
            Err(_) => tracing::error!("a WWW-Authenticate challenge is not a header value"),
        }
    }
    response
}

/// The gateway's headers are set by its configuration, not by its clients: when they are
/// invalid, the configuration is wrong, and the operator is told so.
fn refused(error: Error) -> Response {
    if let Error::InvalidArgument(violations) = &error {
        let summary = violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::warn!(%summary, "HTTP request refused as invalid; check the gateway's configuration");
    }
    error_response(ApiError::Domain(error))
}

fn allowed(identity: Vec<(&'static str, String)>) -> Response {
    let mut response = text(StatusCode::OK, "");
    for (name, value) in identity {
        // Visible ASCII by construction (the display name is percent-encoded).
        let Ok(value) = HeaderValue::from_str(&value) else {
            tracing::error!(
                header = name,
                "an identity header value is not a header value"
            );
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        };
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
    response
}

/// The request headers the gateway sets. A gateway header sent twice or not as text is the
/// gateway's configuration error (400): which copy would be the gateway's? An `Authorization`
/// header that is not one bearer token is no token (401).
fn gateway_request(headers: &HeaderMap) -> Result<GatewayRequest<'_>, Error> {
    let mut violations = Vec::new();
    let mut gateway_header = |name: &'static str| match single(headers, name) {
        Ok(value) => value.unwrap_or(""),
        Err(description) => {
            violations.push(FieldViolation {
                field: header_title(name).to_owned(),
                description: description.to_owned(),
            });
            ""
        }
    };
    let request = GatewayRequest {
        authorization: single(headers, AUTHORIZATION.as_str()).ok().flatten(),
        org_id: gateway_header(gateway::ORG_ID),
        app_id: gateway_header(gateway::APP_ID),
        required_scopes: gateway_header(gateway::REQUIRED_SCOPES),
        client_ip: gateway_header(gateway::CLIENT_IP),
    };
    if violations.is_empty() {
        Ok(request)
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, &'static str> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("sent more than once");
    }
    value
        .to_str()
        .map(|value| Some(value.trim()))
        .map_err(|_| "not visible ASCII text")
}

/// `Introspect`'s field names in a violation become the request headers that carry them here.
fn in_header_terms(error: Error) -> Error {
    match error {
        Error::InvalidArgument(violations) => Error::InvalidArgument(
            violations
                .into_iter()
                .map(|violation| {
                    let header = match violation.field.as_str() {
                        "org_id" => Some(gateway::ORG_ID),
                        "app_id" => Some(gateway::APP_ID),
                        "client_ip" => Some(gateway::CLIENT_IP),
                        field if field.starts_with("required_scopes") => {
                            Some(gateway::REQUIRED_SCOPES)
                        }
                        _ => None,
                    };
                    FieldViolation {
                        field: header.map_or(violation.field, |h| header_title(h).to_owned()),
                        description: violation.description,
                    }
                })
                .collect(),
        ),
        other => other,
    }
}

/// The header's name as the documentation spells it.
fn header_title(name: &str) -> &'static str {
    match name {
        gateway::ORG_ID => "X-Embrace-Org-Id",
        gateway::APP_ID => "X-Embrace-App-Id",
        gateway::REQUIRED_SCOPES => "X-Embrace-Required-Scopes",
        gateway::CLIENT_IP => "X-Embrace-Client-Ip",
        _ => "a request header",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_and_paths_below_it_are_served() {
        assert!(serves("/v1/forward-auth"));
        assert!(serves("/v1/forward-auth/api/orders"));
        assert!(!serves("/v1/forward-authx"));
        assert!(!serves("/v1/forward"));
        assert!(!serves("/"));
    }

    #[test]
    fn a_gateway_header_sent_twice_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append(gateway::ORG_ID, HeaderValue::from_static("acme"));
        headers.append(gateway::ORG_ID, HeaderValue::from_static("globex"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        let Err(Error::InvalidArgument(violations)) = gateway_request(&headers) else {
            panic!("accepted");
        };
        assert_eq!(violations[0].field, "X-Embrace-Org-Id");
    }

    #[test]
    fn two_authorization_headers_are_no_token() {
        let mut headers = HeaderMap::new();
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(gateway_request(&headers).unwrap().authorization, None);
    }

    #[test]
    fn violations_name_the_request_headers() {
        let error = Error::InvalidArgument(vec![
            FieldViolation {
                field: "required_scopes[1]".into(),
                description: "unknown scope".into(),
            },
            FieldViolation {
                field: "org_id".into(),
                description: "required".into(),
            },
        ]);
        let Error::InvalidArgument(violations) = in_header_terms(error) else {
            unreachable!()
        };
        assert_eq!(violations[0].field, "X-Embrace-Required-Scopes");
        assert_eq!(violations[1].field, "X-Embrace-Org-Id");
    }
}
