//! `POST /oauth2/introspect`: OAuth 2.0 token introspection (RFC 7662), so that any resource
//! server that speaks it can use service-account tokens with no code of its own. The decision
//! is `Introspect`'s; the check parameters `org_id`, `app_id`, `required_scopes` (space
//! separated) and `client_ip` mean what they mean there.
//!
//! | case | status | body |
//! |---|---|---|
//! | active | 200 | `active`, `scope`, `client_id`, `sub`, `username`, `token_type`, `jti`, `iat`, `exp`, `iss`, `org_id`, `app_access`; `allowed` and `denial_reasons` when a check parameter was given |
//! | not active, for any reason; or refused with no check parameter given (a token restricted to networks, without `client_ip`) | 200 | `{"active":false}` |
//! | bad parameters | 400 | `{"error":"invalid_request",…}` |
//! | caller not authenticated (`--introspection-clients`) | 401 | `{"error":"invalid_client"}`, `WWW-Authenticate: Basic` |
//! | mTLS configured, no client certificate | 403 | `{"error":"invalid_client",…}` |
//! | body over 16 KiB | 413 | |
//! | storage not ready or unavailable | 503 | `{"error":"temporarily_unavailable"}`, never `active: false` |
//! | another method | 405 | `Allow: POST` |
//!
//! Every answer carries `Cache-Control: no-store`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue, PRAGMA,
    WWW_AUTHENTICATE,
};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use service_accounts_domain::Error;
use service_accounts_domain::introspection::{Checks, Introspection};
use service_accounts_domain::service_account::AppAccess;
use service_accounts_domain::store::{AdminStore, TokenStore};

use super::{BodyError, HttpApi, Peer, Response, read_body};
use crate::error::{ApiError, ErrorCode};
use crate::gateway::denial_name;

pub const PATH: &str = "/oauth2/introspect";
/// As for `Introspect`: a token and a few short parameters.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// No message quotes more of a caller's input than this.
const MAX_QUOTED: usize = 64;

pub async fn handle<S: AdminStore + TokenStore>(
    api: &HttpApi<S>,
    method: &Method,
    headers: &HeaderMap,
    body: Incoming,
    peer: Peer,
) -> Response {
    if method != Method::POST {
        let mut response = oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            Some("token introspection takes POST"),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if let Err(error) = api.client_cert.check(peer.client_cert) {
        return api_error(error);
    }
    let form_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return invalid_request("the body must be application/x-www-form-urlencoded");
    }
    let body = match read_body(headers, body, MAX_BODY_BYTES, api.timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::TooSlow) => {
            return oauth_error(StatusCode::REQUEST_TIMEOUT, "invalid_request", None);
        }
    };
    let params = match Params::parse(&body) {
        Ok(params) => params,
        Err(description) => return invalid_request(&description),
    };
    if let Some(clients) = &api.introspection_clients {
        match client_credentials(headers, &params) {
            Err(description) => return invalid_request(description),
            Ok(Some((id, secret))) if clients.current().verify(&id, &secret) => {}
            Ok(_) => return invalid_client(),
        }
    }
    // After the caller is known: storage's state is nobody else's business.
    if !api.is_ready() {
        return temporarily_unavailable();
    }
    let Some(token) = params.token.as_deref().filter(|t| !t.is_empty()) else {
        return invalid_request("the token parameter is required");
    };
    let scopes: Vec<String> = params
        .required_scopes
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let field = |value: &Option<String>| value.as_deref().unwrap_or("").trim().to_owned();
    let (org_id, app_id, client_ip) = (
        field(&params.org_id),
        field(&params.app_id),
        field(&params.client_ip),
    );
    // A decision is part of the answer when the caller asked for one.
    let checked =
        !org_id.is_empty() || !app_id.is_empty() || !scopes.is_empty() || !client_ip.is_empty();
    let checks = match Checks::parse(&org_id, &app_id, &scopes, &client_ip) {
        Ok(checks) => checks,
        Err(Error::InvalidArgument(violations)) => {
            let description = violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ");
            return invalid_request(&description);
        }
        Err(error) => return api_error(ApiError::Domain(error)),
    };
    let result = match tokio::time::timeout(
        api.timeout,
        api.introspector.introspect(token, &checks),
    )
    .await
    {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => return api_error(ApiError::Domain(error)),
        Err(_) => {
            tracing::warn!(timeout = ?api.timeout, "token introspection timed out");
            return temporarily_unavailable();
        }
    };
    let Introspection::Active { token, denials } = result else {
        return json(StatusCode::OK, &Inactive { active: false });
    };
    // A token restricted to networks is refused without a client_ip. A caller that sent no check
    // parameter reads `active` alone (RFC 7662 knows no `allowed`): for it the token is not
    // active here, or it would be accepted from anywhere.
    if !checked && !denials.allowed() {
        return json(StatusCode::OK, &Inactive { active: false });
    }
    let scope: Vec<&str> = token.scopes.names().collect();
    let account = &token.account;
    let (token_id, account_id) = (
        token.token_id.to_string(),
        account.service_account_id.to_string(),
    );
    let answer = Active {
        active: true,
        scope: scope.join(" "),
        client_id: &account_id,
        sub: &account_id,
        username: &account.display_name,
        token_type: "Bearer",
        jti: &token_id,
        iat: token.create_time.timestamp(),
        exp: token.expire_time.map(|t| t.timestamp()),
        iss: api.issuer.as_deref(),
        org_id: account.org_id.as_str(),
        app_access: match &account.app_access {
            AppAccess::AllApps => AppAccessJson {
                all_apps: Some(true),
                app_ids: None,
            },
            AppAccess::Apps(apps) => AppAccessJson {
                all_apps: None,
                app_ids: Some(apps.iter().map(|a| a.as_str()).collect()),
            },
        },
        allowed: checked.then(|| denials.allowed()),
        denial_reasons: checked.then(|| denials.reasons.iter().map(|d| denial_name(*d)).collect()),
    };
    json(StatusCode::OK, &answer)
}

#[derive(Serialize)]
struct Inactive {
    active: bool,
}

#[derive(Serialize)]
struct Active<'a> {
    active: bool,
    scope: String,
    client_id: &'a str,
    sub: &'a str,
    username: &'a str,
    token_type: &'static str,
    jti: &'a str,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    org_id: &'a str,
    app_access: AppAccessJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    denial_reasons: Option<Vec<&'static str>>,
}

#[derive(Serialize)]
struct AppAccessJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    all_apps: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_ids: Option<Vec<&'a str>>,
}

#[derive(Serialize)]
struct OauthError<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
}

/// The form's parameters this endpoint reads; any other is ignored (RFC 7662 §2.1 allows
/// extensions). Each may appear once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub token: Option<String>,
    pub token_type_hint: Option<String>,
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    pub required_scopes: Option<String>,
    pub client_ip: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

impl Params {
    /// `application/x-www-form-urlencoded`, strictly: names and values must decode to UTF-8,
    /// and a parameter given twice is refused (which copy would count?).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let mut params = Self::default();
        for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &b""[..]),
            };
            let name = decode(name)?;
            let slot = match name.as_str() {
                "token" => &mut params.token,
                "token_type_hint" => &mut params.token_type_hint,
                "org_id" => &mut params.org_id,
                "app_id" => &mut params.app_id,
                "required_scopes" => &mut params.required_scopes,
                "client_ip" => &mut params.client_ip,
                "client_id" => &mut params.client_id,
                "client_secret" => &mut params.client_secret,
                _ => continue,
            };
            if slot.is_some() {
                return Err(format!("the {name} parameter is given more than once"));
            }
            *slot = Some(decode(value)?);
        }
        Ok(params)
    }
}

/// One form-encoded name or value: `+` is a space, `%XX` a byte, and the bytes must be UTF-8.
fn decode(raw: &[u8]) -> Result<String, String> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_encoding::percent_decode(&spaced)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "the body is not UTF-8 once decoded".to_owned())
}

/// The caller's client credentials (RFC 6749 §2.3.1): HTTP Basic, whose id and secret are
/// form-encoded, or the `client_id` and `client_secret` parameters, but not both.
pub fn client_credentials(
    headers: &HeaderMap,
    params: &Params,
) -> Result<Option<(String, String)>, &'static str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(value), None) => Some(value),
        (Some(_), Some(_)) => return Err("more than one Authorization header"),
    };
    let basic = header
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, credentials)| credentials.trim());
    let in_form = params.client_id.is_some() || params.client_secret.is_some();
    match (basic, in_form) {
        (Some(_), true) => Err("client credentials in both the Authorization header and the body"),
        (Some(credentials), false) => Ok(basic_credentials(credentials)),
        (None, true) => Ok(params.client_id.clone().zip(params.client_secret.clone())),
        (None, false) => Ok(None),
    }
}

fn basic_credentials(credentials: &str) -> Option<(String, String)> {
    let decoded = STANDARD.decode(credentials).ok()?;
    let at = decoded.iter().position(|b| *b == b':')?;
    let id = decode(&decoded[..at]).ok()?;
    let secret = decode(&decoded[at + 1..]).ok()?;
    Some((id, secret))
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes =
        serde_json::to_vec(body).unwrap_or_else(|_| b"{\"error\":\"server_error\"}".to_vec());
    let mut response = http::Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn oauth_error(status: StatusCode, error: &str, description: Option<&str>) -> Response {
    json(
        status,
        &OauthError {
            error,
            error_description: description,
        },
    )
}

fn invalid_request(description: &str) -> Response {
    // Descriptions are ours, but a violation may quote a little of the caller's input.
    let mut end = description.len().min(4 * MAX_QUOTED);
    while !description.is_char_boundary(end) {
        end -= 1;
    }
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some(&description[..end]),
    )
}

fn invalid_client() -> Response {
    let mut response = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", None);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
    response
}

fn too_large() -> Response {
    oauth_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
        Some("the body must be at most 16384 bytes"),
    )
}

fn temporarily_unavailable() -> Response {
    oauth_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        None,
    )
}

/// Errors in RFC 6749's terms, with the status their [`ErrorCode`] says.
fn api_error(error: ApiError) -> Response {
    let code = error.code();
    let name = match code {
        ErrorCode::InvalidArgument => "invalid_request",
        ErrorCode::Unauthenticated | ErrorCode::NoClientCertificate => "invalid_client",
        ErrorCode::Unavailable => "temporarily_unavailable",
        _ => "server_error",
    };
    let message = error.message();
    let description = match code {
        ErrorCode::NoClientCertificate => Some(message.as_str()),
        _ => None,
    };
    oauth_error(code.http_status_code(), name, description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_is_decoded_strictly() {
        let params =
            Params::parse(b"token=emb_sa_a%2Bb+c&required_scopes=mcp%3Aread+mcp%3Awrite&x=1&x=2")
                .unwrap();
        assert_eq!(params.token.as_deref(), Some("emb_sa_a+b c"));
        assert_eq!(
            params.required_scopes.as_deref(),
            Some("mcp:read mcp:write")
        );
        assert!(
            Params::parse(b"token=a&token=b")
                .unwrap_err()
                .contains("token parameter is given more than once")
        );
        assert!(
            Params::parse(b"token=%FF%FE")
                .unwrap_err()
                .contains("not UTF-8")
        );
        assert!(Params::parse(b"tok%FFen=a").is_err());
        assert_eq!(Params::parse(b"").unwrap(), Params::default());
        assert_eq!(Params::parse(b"token").unwrap().token.as_deref(), Some(""));
    }

    #[test]
    fn client_credentials_come_from_one_place() {
        let mut headers = HeaderMap::new();
        let params = Params::parse(b"client_id=gw&client_secret=s%3Ds").unwrap();
        assert_eq!(
            client_credentials(&headers, &params).unwrap(),
            Some(("gw".into(), "s=s".into()))
        );
        // Basic: id and secret are form-encoded before base64 (RFC 6749 §2.3.1).
        let basic = format!("Basic {}", STANDARD.encode("g%3Aw:s%25"));
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&basic).unwrap());
        assert_eq!(
            client_credentials(&headers, &Params::default()).unwrap(),
            Some(("g:w".into(), "s%".into()))
        );
        assert!(client_credentials(&headers, &params).is_err());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic not-base64!"));
        assert_eq!(
            client_credentials(&headers, &Params::default()).unwrap(),
            None
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            client_credentials(&headers, &Params::default()).unwrap(),
            None
        );
    }
}
