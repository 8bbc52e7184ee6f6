//! What a gateway in front of another service (nginx `auth_request`, Caddy `forward_auth`,
//! Traefik `ForwardAuth`, Envoy `ext_authz`) is told about a request: one decision, shared by
//! `/v1/forward-auth` and Envoy's `Check`, so both always agree with `Introspect`.

use service_accounts_domain::Error;
use service_accounts_domain::introspection::{Checks, Denial, Introspection, Introspector};
use service_accounts_domain::store::TokenStore;
use service_accounts_domain::token::TokenRecord;

/// Request headers the gateway sets (from its configuration or the connection), and response
/// headers carrying the verified identity. A client-sent copy of any of them must never reach
/// an upstream unverified: the documented configurations overwrite or strip them.
pub const ORG_ID: &str = "x-embrace-org-id";
pub const APP_ID: &str = "x-embrace-app-id";
pub const REQUIRED_SCOPES: &str = "x-embrace-required-scopes";
pub const CLIENT_IP: &str = "x-embrace-client-ip";
pub const SERVICE_ACCOUNT_ID: &str = "x-embrace-service-account-id";
pub const SERVICE_ACCOUNT_NAME: &str = "x-embrace-service-account-name";
pub const TOKEN_ID: &str = "x-embrace-token-id";
pub const SCOPES: &str = "x-embrace-scopes";
pub const DENIAL_REASON: &str = "x-embrace-denial-reason";

/// What the `WWW-Authenticate` challenges of HTTP answers say besides the error (RFC 6750 §3):
/// the protection space, and where MCP clients find the resource's metadata (RFC 9728).
#[derive(Debug, Clone, Default)]
pub struct Challenge {
    pub realm: Option<String>,
    pub resource_metadata: Option<String>,
}

/// What the gateway asks about one request. Empty strings mean "not given".
#[derive(Debug, Default, Clone, Copy)]
pub struct GatewayRequest<'a> {
    /// The `Authorization` header's value.
    pub authorization: Option<&'a str>,
    pub org_id: &'a str,
    pub app_id: &'a str,
    /// Space or comma separated.
    pub required_scopes: &'a str,
    pub client_ip: &'a str,
}

/// The answer, in the terms every gateway understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 200: let the request through with these identity headers (names lower-case).
    Allow(Vec<(&'static str, String)>),
    /// 401: no bearer token at all (`presented: false`), or one that is not active.
    Unauthenticated { presented: bool },
    /// 403: an active token that may not do this: the headline denial reason's enum name, and
    /// the missing scopes (space separated) when that reason is a missing scope.
    Forbidden {
        reason: &'static str,
        missing_scopes: Option<String>,
    },
}

impl Decision {
    /// The `WWW-Authenticate` value of the answer (RFC 6750 §3, RFC 9728 §5.1), if it has one:
    /// no `error` without a token, `invalid_token` for one that is not active,
    /// `insufficient_scope` with the missing scopes; other refusals carry none.
    pub fn challenge(&self, challenge: &Challenge) -> Option<String> {
        let mut params: Vec<(&str, &str)> = Vec::new();
        if let Some(realm) = &challenge.realm {
            params.push(("realm", realm));
        }
        match self {
            Decision::Allow(_) => return None,
            Decision::Unauthenticated { presented } => {
                if *presented {
                    params.push(("error", "invalid_token"));
                }
                if let Some(url) = &challenge.resource_metadata {
                    params.push(("resource_metadata", url));
                }
            }
            Decision::Forbidden {
                missing_scopes: Some(scopes),
                ..
            } => {
                params.push(("error", "insufficient_scope"));
                params.push(("scope", scopes));
            }
            Decision::Forbidden { .. } => return None,
        }
        // Values are checked when configured, and scope names are from the catalogue: none
        // holds a quote or a backslash, so quoting them is enough.
        let params: Vec<String> = params
            .iter()
            .map(|(name, value)| format!("{name}=\"{value}\""))
            .collect();
        Some(if params.is_empty() {
            "Bearer".to_owned()
        } else {
            format!("Bearer {}", params.join(", "))
        })
    }
}

/// The token in an `Authorization: Bearer <token>` header: the rule the client crate's layer
/// applies too.
pub use service_accounts_client::bearer;

/// Decides like `Introspect` would. A bad org, app, scope or address is the gateway's
/// configuration error (`InvalidArgument`), and storage trouble is an error too: the caller
/// answers 400 or 503, never "allowed".
pub async fn decide<S: TokenStore>(
    introspector: &Introspector<S>,
    request: GatewayRequest<'_>,
) -> Result<Decision, Error> {
    let scopes: Vec<String> = request
        .required_scopes
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let checks = Checks::parse(
        request.org_id,
        request.app_id,
        &scopes,
        request.client_ip.trim(),
    )?;
    // No `Authorization: Bearer <token>` (none, or another scheme): no bearer token at all.
    let Some(token) = request.authorization.and_then(bearer) else {
        return Ok(Decision::Unauthenticated { presented: false });
    };
    Ok(match introspector.introspect(token, &checks).await? {
        Introspection::Unrecognised(_) | Introspection::Ended { .. } => {
            Decision::Unauthenticated { presented: true }
        }
        Introspection::Active { token, denials } => match denials.first() {
            None => Decision::Allow(identity_headers(&token)),
            Some(denial) => Decision::Forbidden {
                reason: denial_name(denial),
                missing_scopes: (denial == Denial::ScopeMissing).then(|| {
                    let names: Vec<&str> =
                        denials.missing_scopes.iter().map(|s| s.as_str()).collect();
                    names.join(" ")
                }),
            },
        },
    })
}

/// The verified identity, as header values: visible ASCII only, so the display name has its
/// other bytes (and `%`) percent-encoded as UTF-8.
fn identity_headers(token: &TokenRecord) -> Vec<(&'static str, String)> {
    vec![
        (ORG_ID, token.account.org_id.to_string()),
        (
            SERVICE_ACCOUNT_ID,
            token.account.service_account_id.to_string(),
        ),
        (
            SERVICE_ACCOUNT_NAME,
            header_text(&token.account.display_name),
        ),
        (TOKEN_ID, token.token_id.to_string()),
        (SCOPES, token.scopes.names().collect::<Vec<_>>().join(" ")),
    ]
}

fn header_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The `DenialReason` enum value's name, as `Introspect` reports it.
pub fn denial_name(denial: Denial) -> &'static str {
    match denial {
        Denial::OrgMismatch => "DENIAL_REASON_ORG_MISMATCH",
        Denial::ClientIpNotAllowed => "DENIAL_REASON_CLIENT_IP_NOT_ALLOWED",
        Denial::AppNotGranted => "DENIAL_REASON_APP_NOT_GRANTED",
        Denial::ScopeMissing => "DENIAL_REASON_SCOPE_MISSING",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc_6750_and_name_the_resource_metadata() {
        let bare = Challenge::default();
        let configured = Challenge {
            realm: Some("acme-mcp".into()),
            resource_metadata: Some(
                "https://mcp.example/.well-known/oauth-protected-resource".into(),
            ),
        };
        let none = Decision::Unauthenticated { presented: false };
        let invalid = Decision::Unauthenticated { presented: true };
        let scope = Decision::Forbidden {
            reason: "DENIAL_REASON_SCOPE_MISSING",
            missing_scopes: Some("mcp:read mcp:write".into()),
        };
        let app = Decision::Forbidden {
            reason: "DENIAL_REASON_APP_NOT_GRANTED",
            missing_scopes: None,
        };
        assert_eq!(none.challenge(&bare).as_deref(), Some("Bearer"));
        assert_eq!(
            invalid.challenge(&bare).as_deref(),
            Some(r#"Bearer error="invalid_token""#)
        );
        assert_eq!(
            none.challenge(&configured).as_deref(),
            Some(
                r#"Bearer realm="acme-mcp", resource_metadata="https://mcp.example/.well-known/oauth-protected-resource""#
            )
        );
        assert_eq!(
            invalid.challenge(&configured).as_deref(),
            Some(
                r#"Bearer realm="acme-mcp", error="invalid_token", resource_metadata="https://mcp.example/.well-known/oauth-protected-resource""#
            )
        );
        assert_eq!(
            scope.challenge(&configured).as_deref(),
            Some(
                r#"Bearer realm="acme-mcp", error="insufficient_scope", scope="mcp:read mcp:write""#
            )
        );
        assert_eq!(app.challenge(&configured), None);
        assert_eq!(Decision::Allow(Vec::new()).challenge(&configured), None);
    }

    #[test]
    fn names_become_visible_ascii_header_values() {
        assert_eq!(header_text("CI Pipeline"), "CI Pipeline");
        assert_eq!(header_text("Déploiement 100%"), "D%C3%A9ploiement 100%25");
    }

    #[test]
    fn denial_names_are_the_enum_value_names() {
        use crate::pb::DenialReason;
        for denial in [
            Denial::OrgMismatch,
            Denial::ClientIpNotAllowed,
            Denial::AppNotGranted,
            Denial::ScopeMissing,
        ] {
            assert!(DenialReason::from_str_name(denial_name(denial)).is_some());
        }
    }
}
