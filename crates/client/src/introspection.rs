//! `Introspect` as one typed call.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use service_accounts_domain::introspection::{self as rules, Checks, Denial, Ended, Introspection};
use service_accounts_domain::token::{TokenHash, TokenRecord, TokenSecret};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::cache::{Answer, CacheOptions, CallerCache};
use crate::identity::Identity;
use crate::pb::token_introspection_client::TokenIntrospectionClient;
use crate::pb::{DenialReason, InactiveReason, IntrospectRequest, IntrospectResponse};

/// How long one `Introspect` call may take unless [`IntrospectionClient::with_deadline`] says
/// otherwise. A cache hit answers in well under a millisecond and a miss in a few; a call still
/// waiting after this is treated as the control plane being unavailable.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// What a route needs of a token: the org it acts in, and optionally the app it acts on and the
/// scopes it needs. An org is always required: an app id means nothing outside its org.
#[derive(Clone, Debug)]
pub struct Requirement {
    org_id: String,
    app_id: Option<String>,
    scopes: Vec<String>,
    /// The same, as the control plane's rules read it, made at the first cached decision.
    checks: Arc<OnceLock<Option<Checks>>>,
}

impl PartialEq for Requirement {
    fn eq(&self, other: &Self) -> bool {
        (&self.org_id, &self.app_id, &self.scopes) == (&other.org_id, &other.app_id, &other.scopes)
    }
}

impl Eq for Requirement {}

impl Requirement {
    /// A token of an account of `org_id`, with no app and no scope required.
    pub fn org(org_id: impl Into<String>) -> Self {
        Self {
            org_id: org_id.into(),
            app_id: None,
            scopes: Vec::new(),
            checks: Arc::default(),
        }
    }

    /// The account must have access to this app of the org.
    pub fn app(mut self, app_id: impl Into<String>) -> Self {
        self.app_id = Some(app_id.into());
        self.checks = Arc::default();
        self
    }

    /// The token must carry this scope (as well as any required before).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self.checks = Arc::default();
        self
    }

    /// `None` when the control plane would refuse it (it is then asked, and says why).
    fn checks(&self) -> Option<&Checks> {
        self.checks
            .get_or_init(|| {
                Checks::parse(
                    &self.org_id,
                    self.app_id.as_deref().unwrap_or_default(),
                    &self.scopes,
                    "",
                )
                .ok()
            })
            .as_ref()
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
#[derive(Clone)]
pub struct IntrospectionClient {
    channel: Channel,
    inner: TokenIntrospectionClient<Channel>,
    deadline: Duration,
    cache: Option<Arc<CallerCache>>,
}

impl std::fmt::Debug for IntrospectionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionClient")
            .field("deadline", &self.deadline)
            .field("cached", &self.cache.as_ref().map(|c| c.len()))
            .finish_non_exhaustive()
    }
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
            inner: TokenIntrospectionClient::new(channel.clone()),
            channel,
            deadline: DEFAULT_DEADLINE,
            cache: None,
        }
    }

    /// Caches answers, kept coherent by `WatchChanges` on this client's channel (so the channel
    /// must lead to one replica at a time, as one from [`Self::connect_lazy`] does). Clones
    /// share the cache. Must be called within a Tokio runtime: the feed runs as a task, until
    /// the last clone is dropped. See `docs/caching.md`.
    pub fn with_cache(mut self, options: CacheOptions) -> Self {
        let cache = Arc::new(CallerCache::new(options));
        tokio::spawn(crate::cache::follow(
            Arc::downgrade(&cache),
            self.channel.clone(),
            options.max_staleness_bound(),
        ));
        self.cache = Some(cache);
        self
    }

    /// Tokens held by the cache (0 without one).
    pub fn cached_tokens(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
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
        // As the control plane reads it: an IPv4-mapped IPv6 address is the IPv4 address (a
        // dual-stack listener reports IPv4 peers that way).
        let client_ip = client_ip.map(|ip| ip.to_canonical());
        // Boxed: the call's future is kilobytes, which every cached decision would otherwise
        // carry and move.
        let Some(cache) = &self.cache else {
            let response = Box::pin(self.call(token, requirement, client_ip)).await?;
            return verdict(response, None);
        };
        let hash = match from_cache(cache, token, requirement, client_ip) {
            Ok(verdict) => return Ok(verdict),
            Err(hash) => hash,
        };
        let ticket = cache.begin();
        let response = Box::pin(self.call(token, requirement, client_ip)).await?;
        let record = match ticket.and_then(|ticket| cache.insert(hash, &response, ticket)) {
            Some(Answer::Active(record)) => Some(record),
            _ => None,
        };
        verdict(response, record)
    }

    /// The verdict the cache gives now, without a call; `None` when the control plane must be
    /// asked (no cache, a miss, a requirement it must judge). Client addresses as in
    /// [`IntrospectionClient::check`].
    pub fn check_cached(
        &self,
        token: &str,
        requirement: &Requirement,
        client_ip: Option<IpAddr>,
    ) -> Option<Verdict> {
        let cache = self.cache.as_ref()?;
        let client_ip = client_ip.map(|ip| ip.to_canonical());
        from_cache(cache, token, requirement, client_ip).ok()
    }

    async fn call(
        &self,
        token: &str,
        requirement: &Requirement,
        client_ip: Option<IpAddr>,
    ) -> Result<IntrospectResponse, Error> {
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
        Ok(response)
    }
}

/// The cache's verdict, or the token's hash when the control plane must be asked.
fn from_cache(
    cache: &CallerCache,
    token: &str,
    requirement: &Requirement,
    client_ip: Option<IpAddr>,
) -> Result<Verdict, TokenHash> {
    let Ok(hash) = TokenSecret::hash_for_lookup(token) else {
        return Ok(Verdict::Inactive(InactiveReason::Malformed));
    };
    // Only well-formed tokens are cached, so a hit is one, and its alphabet and checksum need no
    // checking.
    if let Some(verdict) = cache
        .get(&hash)
        .and_then(|answer| decide(&answer, requirement, client_ip))
    {
        return Ok(verdict);
    }
    // Decided here as the control plane does: by prefix, length, alphabet and checksum.
    if !TokenSecret::is_well_formed(token) {
        return Ok(Verdict::Inactive(InactiveReason::Malformed));
    }
    Err(hash)
}

/// A cached answer applied to `requirement`, by the control plane's own rules; `None` when the
/// requirement is one the control plane must judge (it refuses it, and says why).
fn decide(
    answer: &Answer,
    requirement: &Requirement,
    client_ip: Option<IpAddr>,
) -> Option<Verdict> {
    let record = match answer {
        Answer::Final(reason) | Answer::Brief { reason, .. } => {
            return Some(Verdict::Inactive(*reason));
        }
        Answer::Active(record) => record,
    };
    let checks = requirement.checks()?;
    let now = service_accounts_domain::time::now();
    let result = rules::evaluate_from(record.clone(), checks, client_ip, now);
    Some(match result {
        Introspection::Unrecognised(_) => return None,
        Introspection::Ended { reason, .. } => Verdict::Inactive(match reason {
            Ended::Revoked => InactiveReason::Revoked,
            Ended::Expired => InactiveReason::Expired,
            Ended::AccountDisabled => InactiveReason::AccountDisabled,
        }),
        Introspection::Active { token, denials } if denials.allowed() => {
            Verdict::Allowed(Identity::of_record(token))
        }
        Introspection::Active { token, denials } => Verdict::Denied {
            identity: Identity::of_record(token),
            reasons: denials
                .reasons
                .iter()
                .map(|denial| match denial {
                    Denial::OrgMismatch => DenialReason::OrgMismatch,
                    Denial::ClientIpNotAllowed => DenialReason::ClientIpNotAllowed,
                    Denial::AppNotGranted => DenialReason::AppNotGranted,
                    Denial::ScopeMissing => DenialReason::ScopeMissing,
                })
                .collect(),
            missing_scopes: denials
                .missing_scopes
                .iter()
                .map(|scope| scope.as_str().to_owned())
                .collect(),
        },
    })
}

/// The control plane's answer as a verdict; `record` is the answer already read (by the cache).
fn verdict(
    mut response: IntrospectResponse,
    record: Option<Arc<TokenRecord>>,
) -> Result<Verdict, Error> {
    if !response.active {
        return Ok(Verdict::Inactive(response.inactive_reason()));
    }
    let identity = match record {
        Some(record) => Identity::of_record(record),
        None => Identity::from_answer(&response).ok_or_else(|| {
            Error::Unavailable(Status::internal(
                "the control plane's answer names an org, account or token id this client cannot read",
            ))
        })?,
    };
    if response.allowed {
        return Ok(Verdict::Allowed(identity));
    }
    let mut reasons: Vec<DenialReason> = response.denial_reasons().collect();
    if reasons.is_empty() {
        reasons.push(response.denial_reason());
    }
    Ok(Verdict::Denied {
        identity,
        reasons,
        missing_scopes: std::mem::take(&mut response.missing_scopes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "01a24bcf-88ad-74f0-a8a2-6f19606976a3";

    fn active(allowed: bool) -> IntrospectResponse {
        IntrospectResponse {
            active: true,
            allowed,
            org_id: "acme".into(),
            service_account_id: ACCOUNT.into(),
            token_id: "01a24bcf-88b9-75fd-8929-c0616e73f3e8".into(),
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
            verdict(response, None).unwrap(),
            Verdict::Inactive(InactiveReason::Revoked)
        );
    }

    #[test]
    fn an_allowed_token_gives_its_identity() {
        let Verdict::Allowed(identity) = verdict(active(true), None).unwrap() else {
            panic!("not allowed");
        };
        assert_eq!(identity.org_id(), "acme");
        assert_eq!(identity.service_account_id().to_string(), ACCOUNT);
        assert_eq!(identity.scopes().collect::<Vec<_>>(), ["mcp:read"]);
        assert!(identity.has_scope("mcp:read") && !identity.has_scope("mcp:write"));
        assert!(!identity.all_apps());
        assert_eq!(identity.app_ids().collect::<Vec<_>>(), ["checkout-ios"]);
        assert!(identity.may_use_app("checkout-ios"));
        assert!(!identity.may_use_app("checkout-android"));
        assert_eq!(identity.expire_time(), None);

        let mut response = active(true);
        response.app_access = Some(crate::pb::AppAccess {
            all_apps: true,
            app_ids: vec![],
        });
        let Verdict::Allowed(identity) = verdict(response, None).unwrap() else {
            panic!("not allowed");
        };
        assert!(identity.all_apps() && identity.may_use_app("anything"));
        assert_eq!(identity.app_ids().count(), 0);
    }

    #[test]
    fn a_scope_this_version_does_not_know_is_left_out_of_the_identity() {
        let mut response = active(true);
        response.scopes = vec!["mcp:read".into(), "mcp:admin:everything".into()];
        let Verdict::Allowed(identity) = verdict(response, None).unwrap() else {
            panic!("not allowed");
        };
        assert_eq!(identity.scopes().collect::<Vec<_>>(), ["mcp:read"]);
        assert!(!identity.has_scope("mcp:admin:everything"));
    }

    #[test]
    fn a_requirement_naming_a_scope_this_version_does_not_know_is_left_to_the_control_plane() {
        let mut response = active(true);
        response.scopes.push("scope:from-the-future".into());
        let record = Arc::new(crate::identity::record_of(TokenHash([0; 32]), &response).unwrap());
        let answer = Answer::Active(record);
        let known = Requirement::org("acme").scope("mcp:read");
        assert!(matches!(
            decide(&answer, &known, None),
            Some(Verdict::Allowed(_))
        ));
        let unknown = Requirement::org("acme").scope("scope:from-the-future");
        assert!(decide(&answer, &unknown, None).is_none());
    }

    #[test]
    fn with_a_cache_a_malformed_token_is_decided_without_a_call_and_a_miss_asks() {
        let cache = CallerCache::live(CacheOptions::new(10));
        let requirement = Requirement::org("acme");
        let token = TokenSecret::generate();
        let token = token.expose();
        // A wrong checksum (the last character changed), a wrong length, another prefix.
        let mut bad_checksum = token.to_owned();
        let last = if token.ends_with('A') { "B" } else { "A" };
        bad_checksum.replace_range(token.len() - 1.., last);
        for malformed in [bad_checksum.as_str(), &token[1..], "Bearer", ""] {
            assert!(
                matches!(
                    from_cache(&cache, malformed, &requirement, None),
                    Ok(Verdict::Inactive(InactiveReason::Malformed))
                ),
                "{malformed:?}"
            );
        }
        let hash = from_cache(&cache, token, &requirement, None).unwrap_err();
        assert!(hash.ct_eq(&TokenSecret::parse_hash(token).unwrap()));
        let ticket = cache.begin().unwrap();
        cache.insert(hash, &active(true), ticket);
        assert!(matches!(
            from_cache(&cache, token, &requirement, None),
            Ok(Verdict::Allowed(_))
        ));
    }

    #[test]
    fn apps_and_networks_of_a_form_this_version_does_not_read_are_left_out_of_the_identity() {
        let mut response = active(true);
        response.app_access = Some(crate::pb::AppAccess {
            all_apps: false,
            app_ids: vec!["checkout-ios".into(), "app.of.the.future".into()],
        });
        response.allowed_cidrs = vec!["10.0.0.0/8".into(), "10.0.0.0/99".into()];
        assert!(crate::identity::record_of(TokenHash([0; 32]), &response).is_none());
        let Verdict::Allowed(identity) = verdict(response, None).unwrap() else {
            panic!("not allowed");
        };
        assert_eq!(identity.app_ids().collect::<Vec<_>>(), ["checkout-ios"]);
        assert!(!identity.may_use_app("app.of.the.future"));
    }

    #[test]
    fn an_identity_debugs_as_what_it_says_and_no_more() {
        let Verdict::Allowed(identity) = verdict(active(true), None).unwrap() else {
            panic!("not allowed");
        };
        let debug = format!("{identity:?}");
        assert!(
            debug.contains(ACCOUNT) && debug.contains("checkout-ios"),
            "{debug}"
        );
        assert!(
            !debug.contains("revoke_time") && !debug.contains("TokenHash"),
            "{debug}"
        );
    }

    #[test]
    fn an_answer_whose_ids_cannot_be_read_is_an_error_not_an_identity() {
        let mut response = active(true);
        response.service_account_id = "sa".into();
        assert!(matches!(
            verdict(response, None),
            Err(Error::Unavailable(status)) if status.code() == Code::Internal
        ));
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
        } = verdict(response, None).unwrap()
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
        let Verdict::Denied { reasons, .. } = verdict(response, None).unwrap() else {
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
