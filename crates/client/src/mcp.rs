//! For the tool handlers of an `rmcp` (official MCP Rust SDK) streamable-HTTP server behind
//! [`IntrospectLayer`](crate::IntrospectLayer) (cargo feature `rmcp`).
//!
//! The layer checks the server-level requirement (the org, and `mcp:tools:call`) before the MCP
//! server sees the request, and puts the verified [`Identity`] into the request's extensions;
//! rmcp hands a tool the request's [`http::request::Parts`]. A tool takes `identity: Identity`
//! as an argument (or calls [`identity`]), then asks for what it needs with [`require_scopes`]
//! and [`require_app`], which refuse with an MCP error naming only what is missing.

use http::request::Parts;
use rmcp::ErrorData;
use rmcp::handler::server::common::{AsRequestContext, FromContextPart};
use rmcp::model::ErrorCode;
use rmcp::service::{RequestContext, RoleServer};
use serde_json::json;

use crate::Identity;

/// The identity the layer verified for the request `context` serves; `None` when the request
/// came with a token of the layer's fallback verifier, or without the layer.
pub fn identity(context: &RequestContext<RoleServer>) -> Option<&Identity> {
    context
        .extensions
        .get::<Parts>()?
        .extensions
        .get::<Identity>()
}

/// A tool or prompt argument `identity: Identity` is the verified identity; the call is refused
/// when there is none (a token of the fallback verifier, or no layer in front of the server).
impl<C: AsRequestContext> FromContextPart<C> for Identity {
    fn from_context_part(context: &mut C) -> Result<Self, ErrorData> {
        identity(context.as_request_context())
            .cloned()
            .ok_or_else(|| {
                ErrorData::new(
                    ErrorCode::INVALID_REQUEST,
                    "this tool needs a service-account token",
                    None,
                )
            })
    }
}

/// Refuses unless the token carries every one of `scopes`. The error names exactly the missing
/// ones (`missing scope: mcp:write`, with `{"missing_scopes": […]}` as its data).
pub fn require_scopes(identity: &Identity, scopes: &[&str]) -> Result<(), ErrorData> {
    let missing: Vec<&str> = scopes
        .iter()
        .copied()
        .filter(|scope| !identity.has_scope(scope))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let noun = if missing.len() == 1 {
        "scope"
    } else {
        "scopes"
    };
    Err(ErrorData::new(
        ErrorCode::INVALID_REQUEST,
        format!("missing {noun}: {}", missing.join(" ")),
        Some(json!({ "missing_scopes": missing })),
    ))
}

/// Refuses unless the service account may act on `app_id` of its org. The error names the app
/// (`app not granted: checkout-ios`, with `{"app_id": …}` as its data).
pub fn require_app(identity: &Identity, app_id: &str) -> Result<(), ErrorData> {
    if identity.may_use_app(app_id) {
        return Ok(());
    }
    Err(ErrorData::new(
        ErrorCode::INVALID_REQUEST,
        format!("app not granted: {app_id}"),
        Some(json!({ "app_id": app_id })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{AppAccess, IntrospectResponse};

    fn reader(all_apps: bool) -> Identity {
        Identity::from_answer(&IntrospectResponse {
            active: true,
            allowed: true,
            org_id: "acme".into(),
            service_account_id: "01a24bcf-88ad-74f0-a8a2-6f19606976a3".into(),
            service_account_display_name: "Crash triage bot".into(),
            token_id: "01a24bcf-88b9-75fd-8929-c0616e73f3e8".into(),
            scopes: vec!["mcp:read".into(), "mcp:tools:call".into()],
            app_access: Some(AppAccess {
                all_apps,
                app_ids: if all_apps {
                    vec![]
                } else {
                    vec!["checkout-ios".into()]
                },
            }),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn require_scopes_names_exactly_the_missing_ones() {
        let identity = reader(false);
        assert_eq!(require_scopes(&identity, &["mcp:read"]), Ok(()));
        assert_eq!(require_scopes(&identity, &[]), Ok(()));
        let error = require_scopes(&identity, &["mcp:read", "mcp:write"]).unwrap_err();
        assert_eq!(error.code, ErrorCode::INVALID_REQUEST);
        assert_eq!(error.message, "missing scope: mcp:write");
        assert_eq!(error.data, Some(json!({"missing_scopes": ["mcp:write"]})));
        let error = require_scopes(&identity, &["mcp:write", "mcp:admin"]).unwrap_err();
        assert_eq!(error.message, "missing scopes: mcp:write mcp:admin");
    }

    #[test]
    fn require_app_names_the_app_and_nothing_else() {
        let identity = reader(false);
        assert_eq!(require_app(&identity, "checkout-ios"), Ok(()));
        let error = require_app(&identity, "checkout-android").unwrap_err();
        assert_eq!(error.message, "app not granted: checkout-android");
        assert_eq!(error.data, Some(json!({"app_id": "checkout-android"})));
        assert_eq!(require_app(&reader(true), "checkout-android"), Ok(()));
    }
}
