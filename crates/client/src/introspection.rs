//! `Introspect` as one typed call.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::pb::token_introspection_client::TokenIntrospectionClient;
use crate::pb::{DenialReason, InactiveReason, IntrospectRequest, IntrospectResponse};

/// How long one `Introspect` call may take unless [`IntrospectionClient::with_deadline`] says
/// otherwise. A cache hit answers in well under a millisecond and a miss in a few; a call still
/// waiting after this is treated as the control plane being unavailable.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// What a route needs of a token: the org it acts in, and optionally the app it acts on and the
/// scopes it needs. An org is always required: an app id means nothing outside its org.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    org_id: String,
    app_id: Option<String>,
    scopes: Vec<String>,
}

impl Requirement {
    /// A token of an account of `org_id`, with no app and no scope required.
    pub fn org(org_id: impl Into<String>) -> Self {
        Self {
            org_id: org_id.into(),
            app_id: None,
            scopes: Vec::new(),
        }
    }

    /// The account must have access to this app of the org.
    pub fn app(mut self, app_id: impl Into<String>) -> Self {
        self.app_id = Some(app_id.into());
        self
    }

    /// The token must carry this scope (as well as any required before).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    pub fn org_id(&self) -> &str {
        &self.org_id
    }

    /// The app the request acts on, if any.
    pub fn app_id(&self) -> Option<&str> {
        self.app_id.as_deref()
    }

    /// The scopes the request needs.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Names an org, and an app if any: an empty one would check nothing.
    pub fn is_complete(&self) -> bool {
        !self.org_id.is_empty() && self.app_id.as_ref().is_none_or(|app| !app.is_empty())
    }

    fn request(&self, token: &str, client_ip: Option<IpAddr>) -> IntrospectRequest {
        IntrospectRequest {
            token: token.to_owned(),
            org_id: self.org_id.clone(),
            app_id: self.app_id.clone().unwrap_or_default(),
            required_scopes: self.scopes.clone(),
            client_ip: client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        }
    }
}

/// The verified identity behind a token: what a handler uses instead of the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub org_id: String,
    pub service_account_id: String,
    pub service_account_display_name: String,
    pub token_id: String,
    pub scopes: Vec<String>,
    /// The apps of the org that the account may act on.
    pub app_access: AppAccess,
    /// `None`: the token does not expire.
    pub expire_time: Option<SystemTime>,
}

/// The apps of its org that a service account may act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppAccess {
    /// Every app of the org, now and in the future.
    AllApps,
    /// These apps only (sorted).
    AppIds(Vec<String>),
}

impl AppAccess {
    pub fn includes(&self, app_id: &str) -> bool {
        match self {
            Self::AllApps => true,
            Self::AppIds(app_ids) => app_ids.iter().any(|id| id == app_id),
        }
    }
}

impl Identity {
    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    fn of(response: IntrospectResponse) -> Self {
        Self {
            org_id: response.org_id,
            service_account_id: response.service_account_id,
            service_account_display_name: response.service_account_display_name,
            token_id: response.token_id,
            scopes: response.scopes,
            app_access: match response.app_access {
                Some(access) if access.all_apps => AppAccess::AllApps,
                Some(access) => AppAccess::AppIds(access.app_ids),
                None => AppAccess::AppIds(Vec::new()),
            },
            expire_time: response
                .expire_time
                .and_then(|t| SystemTime::try_from(t).ok()),
        }
    }
}

/// The control plane's answer for one token and one requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the request as this identity.
    Allowed(Identity),
    /// Not a working token (malformed, unknown, revoked, expired, or its account is disabled).
    Inactive(InactiveReason),
    /// A working token that may not do this. `reasons` is never empty; the first is the one to
    /// report.
    Denied {
        identity: Identity,
        reasons: Vec<DenialReason>,
        missing_scopes: Vec<String>,
    },
}

/// `Introspect` did not give a verdict. Every variant means "refuse the request".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not a valid URI.
    #[error("invalid control-plane endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    /// The control plane refused the requirement itself (`INVALID_ARGUMENT`): a bad org id, app
    /// id or scope in the service's configuration.
    #[error("the control plane refused the route's requirement: {}", .0.message())]
    Requirement(Status),
    /// The control plane could not be asked, or could not ask its storage, in time.
    #[error("introspection unavailable: {} {}", .0.code(), .0.message())]
    Unavailable(Status),
}

/// A client of `TokenIntrospection` for services. Cheap to clone: clones share one HTTP/2
/// connection, which carries concurrent calls and is re-established when it drops.
#[derive(Clone, Debug)]
pub struct IntrospectionClient {
    inner: TokenIntrospectionClient<Channel>,
    deadline: Duration,
}

impl IntrospectionClient {
    /// A client of the control plane at `endpoint` (such as `http://127.0.0.1:50051`). It
    /// connects on first use, so a service can start before the control plane does.
    pub fn connect_lazy(endpoint: impl Into<String>) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(endpoint.into())?
            .connect_timeout(DEFAULT_DEADLINE)
            .tcp_nodelay(true);
        Ok(Self::new(endpoint.connect_lazy()))
    }

    /// A client over a channel built elsewhere, for example with TLS.
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: TokenIntrospectionClient::new(channel),
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// Sets how long each call may take; see [`DEFAULT_DEADLINE`].
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Asks whether `token` (without `Bearer `) may act under `requirement`, from `client_ip`
    /// when it is known (tokens restricted to networks need it).
    pub async fn check(
        &self,
        token: &str,
        requirement: &Requirement,
        client_ip: Option<IpAddr>,
    ) -> Result<Verdict, Error> {
        let mut request = tonic::Request::new(requirement.request(token, client_ip));
        // Sent as `grpc-timeout`, and enforced here as well, so that neither side waits longer.
        request.set_timeout(self.deadline);
        let mut client = self.inner.clone();
        let response = match tokio::time::timeout(self.deadline, client.introspect(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if status.code() == Code::InvalidArgument => {
                return Err(Error::Requirement(status));
            }
            Ok(Err(status)) => return Err(Error::Unavailable(status)),
            Err(_) => {
                return Err(Error::Unavailable(Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    self.deadline
                ))));
            }
        };
        Ok(verdict(response))
    }
}

fn verdict(mut response: IntrospectResponse) -> Verdict {
    if !response.active {
        return Verdict::Inactive(response.inactive_reason());
    }
    if response.allowed {
        return Verdict::Allowed(Identity::of(response));
    }
    let mut reasons: Vec<DenialReason> = response.denial_reasons().collect();
    if reasons.is_empty() {
        reasons.push(response.denial_reason());
    }
    let missing_scopes = std::mem::take(&mut response.missing_scopes);
    Verdict::Denied {
        identity: Identity::of(response),
        reasons,
        missing_scopes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(allowed: bool) -> IntrospectResponse {
        IntrospectResponse {
            active: true,
            allowed,
            org_id: "acme".into(),
            service_account_id: "sa".into(),
            token_id: "tok".into(),
            scopes: vec!["mcp:read".into()],
            app_access: Some(crate::pb::AppAccess {
                all_apps: false,
                app_ids: vec!["checkout-ios".into()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_inactive_token_is_inactive_with_its_reason() {
        let response = IntrospectResponse {
            active: false,
            inactive_reason: InactiveReason::Revoked.into(),
            ..Default::default()
        };
        assert_eq!(
            verdict(response),
            Verdict::Inactive(InactiveReason::Revoked)
        );
    }

    #[test]
    fn an_allowed_token_gives_its_identity() {
        let Verdict::Allowed(identity) = verdict(active(true)) else {
            panic!("not allowed");
        };
        assert_eq!(identity.service_account_id, "sa");
        assert_eq!(identity.scopes, ["mcp:read"]);
        assert!(identity.has_scope("mcp:read") && !identity.has_scope("mcp:write"));
        assert_eq!(
            identity.app_access,
            AppAccess::AppIds(vec!["checkout-ios".into()])
        );
        assert!(identity.app_access.includes("checkout-ios"));
        assert!(!identity.app_access.includes("checkout-android"));

        let mut response = active(true);
        response.app_access = Some(crate::pb::AppAccess {
            all_apps: true,
            app_ids: vec![],
        });
        let Verdict::Allowed(identity) = verdict(response) else {
            panic!("not allowed");
        };
        assert!(identity.app_access.includes("anything"));
    }

    #[test]
    fn a_denied_token_lists_every_reason_and_the_missing_scopes() {
        let mut response = active(false);
        response.denial_reason = DenialReason::AppNotGranted.into();
        response.denial_reasons = vec![
            DenialReason::AppNotGranted.into(),
            DenialReason::ScopeMissing.into(),
        ];
        response.missing_scopes = vec!["mcp:tools:call".into()];
        let Verdict::Denied {
            reasons,
            missing_scopes,
            ..
        } = verdict(response)
        else {
            panic!("not denied");
        };
        assert_eq!(
            reasons,
            [DenialReason::AppNotGranted, DenialReason::ScopeMissing]
        );
        assert_eq!(missing_scopes, ["mcp:tools:call"]);
    }

    #[test]
    fn a_denial_from_a_server_without_the_reasons_list_still_has_its_reason() {
        let mut response = active(false);
        response.denial_reason = DenialReason::OrgMismatch.into();
        let Verdict::Denied { reasons, .. } = verdict(response) else {
            panic!("not denied");
        };
        assert_eq!(reasons, [DenialReason::OrgMismatch]);
    }

    #[test]
    fn a_requirement_becomes_the_request_fields() {
        let requirement = Requirement::org("acme")
            .app("checkout-ios")
            .scope("mcp:read")
            .scope("mcp:tools:call");
        let request = requirement.request("emb_sa_x", Some("10.1.2.3".parse().unwrap()));
        assert_eq!(request.org_id, "acme");
        assert_eq!(request.app_id, "checkout-ios");
        assert_eq!(request.required_scopes, ["mcp:read", "mcp:tools:call"]);
        assert_eq!(request.client_ip, "10.1.2.3");
        assert_eq!(Requirement::org("acme").request("t", None).app_id, "");
    }
}
