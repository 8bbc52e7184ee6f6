//! Protobuf requests to domain commands: one [`Parse`] impl per RPC request, each collecting
//! every field violation before answering.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta};
use service_accounts_domain::Violations;
use service_accounts_domain::admin::{
    MAX_EXPIRING_WITHIN_SECONDS, MAX_GRACE_SECONDS, NewServiceAccount, NewToken, Rotation,
    ServiceAccountPatch, TokenPatch,
};
use service_accounts_domain::error::{Error, Invalid, quote};
use service_accounts_domain::ids::{ServiceAccountId, TokenId};
use service_accounts_domain::introspection::Checks;
use service_accounts_domain::labels::{LabelProblem, Labels};
use service_accounts_domain::listing::{
    self, AccountListing, AuditListing, TokenListing, TokenListingRequest,
};
use service_accounts_domain::network::AllowedCidrs;
use service_accounts_domain::page::{Listing, TimedPageRequest};
use service_accounts_domain::policy::{self, TokenPolicyPatch};
use service_accounts_domain::query::{Cond, TokenPredicate};
use service_accounts_domain::scope::Scopes;
use service_accounts_domain::service_account::{AppAccess, AppId, Description, DisplayName};
use service_accounts_domain::time::{self, Timestamp};

use crate::pb;

/// A request turned into what its use case takes.
pub trait Parse {
    type Command;
    fn parse(&self) -> Result<Self::Command, Error>;
}

impl Parse for pb::CreateServiceAccountRequest {
    type Command = NewServiceAccount;

    fn parse(&self) -> Result<NewServiceAccount, Error> {
        let mut v = Violations::new();
        let display_name = v.check("display_name", DisplayName::parse(&self.display_name));
        let description = v.check("description", Description::parse(&self.description));
        let app_access = match &self.app_access {
            Some(access) => app_access(&mut v, "app_access", access),
            None => Some(AppAccess::none()),
        };
        let labels = labels(&mut v, "labels", &self.labels);
        v.finish_with(|| {
            Some(NewServiceAccount {
                display_name: display_name?,
                description: description?,
                app_access: app_access?,
                labels: labels?,
            })
        })
    }
}

impl Parse for pb::GetServiceAccountRequest {
    type Command = ServiceAccountId;

    fn parse(&self) -> Result<ServiceAccountId, Error> {
        only_account_id(&self.service_account_id)
    }
}

impl Parse for pb::DeleteServiceAccountRequest {
    type Command = ServiceAccountId;

    fn parse(&self) -> Result<ServiceAccountId, Error> {
        only_account_id(&self.service_account_id)
    }
}

impl Parse for pb::DisableServiceAccountRequest {
    type Command = ServiceAccountId;

    fn parse(&self) -> Result<ServiceAccountId, Error> {
        only_account_id(&self.service_account_id)
    }
}

impl Parse for pb::EnableServiceAccountRequest {
    type Command = ServiceAccountId;

    fn parse(&self) -> Result<ServiceAccountId, Error> {
        only_account_id(&self.service_account_id)
    }
}

impl Parse for pb::ListServiceAccountsRequest {
    type Command = AccountListing;

    fn parse(&self) -> Result<AccountListing, Error> {
        let mut v = Violations::new();
        let listing = all_of(
            &mut v,
            AccountListing::parse(&self.filter, self.page_size, &self.page_token),
        );
        v.finish_with(|| listing)
    }
}

impl Parse for pb::UpdateServiceAccountRequest {
    type Command = (ServiceAccountId, ServiceAccountPatch);

    fn parse(&self) -> Result<Self::Command, Error> {
        let Some(account) = &self.service_account else {
            return Err(Error::invalid("service_account", "is required"));
        };
        let mut v = Violations::new();
        let id = v.check(
            "service_account.service_account_id",
            ServiceAccountId::parse(&account.service_account_id),
        );
        // AIP-134: without a mask, the populated fields are the ones to change.
        let paths: Vec<&str> = match &self.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths.iter().map(String::as_str).collect(),
            _ => [
                ("display_name", !account.display_name.is_empty()),
                ("description", !account.description.is_empty()),
                ("labels", !account.labels.is_empty()),
            ]
            .into_iter()
            .filter_map(|(path, populated)| populated.then_some(path))
            .collect(),
        };
        if paths.is_empty() {
            v.add(
                "update_mask",
                "nothing to update: name the fields in update_mask or populate them",
            );
        }
        let (mut name, mut description, mut labelled) = (false, false, false);
        for (i, path) in paths.iter().enumerate() {
            match *path {
                "display_name" => name = true,
                "description" => description = true,
                "labels" => labelled = true,
                "*" => (name, description, labelled) = (true, true, true),
                other => v.add(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{} cannot be updated: only display_name, description and labels can \
                         (app access and state have their own RPCs)",
                        quote(other)
                    ),
                ),
            }
        }
        // Each `Option<Option<_>>`: outer None = failed to parse, inner None = leave as is.
        let display_name = if name {
            v.check(
                "service_account.display_name",
                DisplayName::parse(&account.display_name),
            )
            .map(Some)
        } else {
            Some(None)
        };
        let description = if description {
            v.check(
                "service_account.description",
                Description::parse(&account.description),
            )
            .map(Some)
        } else {
            Some(None)
        };
        let labels = if labelled {
            labels(&mut v, "service_account.labels", &account.labels).map(Some)
        } else {
            Some(None)
        };
        let etag = (!account.etag.is_empty()).then(|| account.etag.clone());
        v.finish_with(|| {
            Some((
                id?,
                ServiceAccountPatch {
                    display_name: display_name?,
                    description: description?,
                    labels: labels?,
                    etag,
                },
            ))
        })
    }
}

impl Parse for pb::SetAppAccessRequest {
    type Command = (ServiceAccountId, AppAccess);

    fn parse(&self) -> Result<Self::Command, Error> {
        let mut v = Violations::new();
        let id = account_id(&mut v, &self.service_account_id);
        let access = match &self.app_access {
            Some(access) => app_access(&mut v, "app_access", access),
            None => {
                v.add("app_access", "is required");
                None
            }
        };
        v.finish_with(|| Some((id?, access?)))
    }
}

impl Parse for pb::GrantAppAccessRequest {
    type Command = (ServiceAccountId, BTreeSet<AppId>);

    fn parse(&self) -> Result<Self::Command, Error> {
        account_and_apps(&self.service_account_id, &self.app_ids)
    }
}

impl Parse for pb::RevokeAppAccessRequest {
    type Command = (ServiceAccountId, BTreeSet<AppId>);

    fn parse(&self) -> Result<Self::Command, Error> {
        account_and_apps(&self.service_account_id, &self.app_ids)
    }
}

impl Parse for pb::CreateTokenRequest {
    type Command = (ServiceAccountId, NewToken);

    fn parse(&self) -> Result<Self::Command, Error> {
        let mut v = Violations::new();
        let id = account_id(&mut v, &self.service_account_id);
        let display_name = v.check("display_name", DisplayName::parse(&self.display_name));
        let scopes = v.check(
            "scopes",
            Scopes::parse(self.scopes.iter().map(String::as_str)),
        );
        let expire_time = expire_time(&mut v, self.expire_time.as_ref());
        let allowed_cidrs = allowed_cidrs(&mut v, "allowed_cidrs", &self.allowed_cidrs);
        v.finish_with(|| {
            Some((
                id?,
                NewToken {
                    display_name: display_name?,
                    scopes: scopes?,
                    expire_time: expire_time?,
                    allowed_cidrs: allowed_cidrs?,
                },
            ))
        })
    }
}

impl Parse for pb::ListTokensRequest {
    type Command = TokenListing;

    fn parse(&self) -> Result<TokenListing, Error> {
        let mut v = Violations::new();
        let listing = all_of(
            &mut v,
            TokenListing::parse(TokenListingRequest {
                service_account_id: &self.service_account_id,
                filter: &self.filter,
                order_by: &self.order_by,
                page_size: self.page_size,
                page_token: &self.page_token,
            }),
        );
        v.finish_with(|| listing)
    }
}

impl Parse for pb::ExportCredentialReportRequest {
    type Command = Option<Cond<TokenPredicate>>;

    fn parse(&self) -> Result<Self::Command, Error> {
        let mut v = Violations::new();
        let filter = v.check("filter", listing::token_filter(&self.filter));
        v.finish_with(|| filter)
    }
}

impl Parse for pb::RevokeTokenRequest {
    type Command = (ServiceAccountId, TokenId);

    fn parse(&self) -> Result<Self::Command, Error> {
        let mut v = Violations::new();
        let id = account_id(&mut v, &self.service_account_id);
        let token_id = v.check("token_id", TokenId::parse(&self.token_id));
        v.finish_with(|| Some((id?, token_id?)))
    }
}

impl Parse for pb::RotateTokenRequest {
    type Command = (ServiceAccountId, TokenId, Rotation);

    fn parse(&self) -> Result<Self::Command, Error> {
        let mut v = Violations::new();
        let id = account_id(&mut v, &self.service_account_id);
        let token_id = v.check("token_id", TokenId::parse(&self.token_id));
        let grace_period = match &self.grace_period {
            Some(d) => v.check(
                "grace_period",
                time::whole_seconds(d.seconds, d.nanos, 0, MAX_GRACE_SECONDS),
            ),
            None => Some(TimeDelta::zero()),
        };
        let expire_time = expire_time(&mut v, self.expire_time.as_ref());
        v.finish_with(|| {
            Some((
                id?,
                token_id?,
                Rotation {
                    grace_period: grace_period?,
                    expire_time: expire_time?,
                },
            ))
        })
    }
}

impl Parse for pb::UpdateTokenRequest {
    type Command = (ServiceAccountId, TokenId, TokenPatch);

    fn parse(&self) -> Result<Self::Command, Error> {
        let Some(token) = &self.token else {
            return Err(Error::invalid("token", "is required"));
        };
        let mut v = Violations::new();
        let id = v.check(
            "token.service_account_id",
            ServiceAccountId::parse(&token.service_account_id),
        );
        let token_id = v.check("token.token_id", TokenId::parse(&token.token_id));
        let paths = self.update_mask.as_ref().map_or(&[][..], |m| &m.paths[..]);
        if paths.is_empty() {
            v.add(
                "update_mask",
                "is required: name the fields to change (display_name, allowed_cidrs)",
            );
        }
        let (mut name, mut cidrs) = (false, false);
        for (i, path) in paths.iter().enumerate() {
            match path.as_str() {
                "display_name" => name = true,
                "allowed_cidrs" => cidrs = true,
                "*" => (name, cidrs) = (true, true),
                other => v.add(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{} cannot be updated: only display_name and allowed_cidrs can",
                        quote(other)
                    ),
                ),
            }
        }
        let display_name = if name {
            v.check(
                "token.display_name",
                DisplayName::parse(&token.display_name),
            )
            .map(Some)
        } else {
            Some(None)
        };
        let allowed_cidrs = if cidrs {
            allowed_cidrs(&mut v, "token.allowed_cidrs", &token.allowed_cidrs).map(Some)
        } else {
            Some(None)
        };
        v.finish_with(|| {
            Some((
                id?,
                token_id?,
                TokenPatch {
                    display_name: display_name?,
                    allowed_cidrs: allowed_cidrs?,
                },
            ))
        })
    }
}

impl Parse for pb::ListExpiringTokensRequest {
    type Command = (TimeDelta, TimedPageRequest);

    fn parse(&self) -> Result<Self::Command, Error> {
        let mut v = Violations::new();
        let within = match &self.within {
            Some(d) => v.check(
                "within",
                time::whole_seconds(d.seconds, d.nanos, 1, MAX_EXPIRING_WITHIN_SECONDS),
            ),
            None => {
                v.add(
                    "within",
                    "is required: how far ahead to look, such as 604800s",
                );
                None
            }
        };
        let page = match TimedPageRequest::parse(
            Listing::ExpiringTokens,
            self.page_size,
            &self.page_token,
        ) {
            Ok(page) => Some(page),
            Err(problems) => {
                for (field, invalid) in problems {
                    v.add(field, invalid.0);
                }
                None
            }
        };
        v.finish_with(|| Some((within?, page?)))
    }
}

impl Parse for pb::GetTokenPolicyRequest {
    type Command = ();

    fn parse(&self) -> Result<(), Error> {
        Ok(())
    }
}

impl Parse for pb::UpdateTokenPolicyRequest {
    type Command = TokenPolicyPatch;

    fn parse(&self) -> Result<TokenPolicyPatch, Error> {
        let given = self.token_policy.unwrap_or_default();
        let mut v = Violations::new();
        // AIP-134: without a mask, the set fields are the ones to change.
        let paths: Vec<&str> = match &self.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths.iter().map(String::as_str).collect(),
            _ => [
                ("max_lifetime", given.max_lifetime.is_some()),
                ("default_lifetime", given.default_lifetime.is_some()),
            ]
            .into_iter()
            .filter_map(|(path, set)| set.then_some(path))
            .collect(),
        };
        if paths.is_empty() {
            v.add(
                "update_mask",
                "nothing to update: name the fields in update_mask (an unset field named there \
                 removes that limit) or set them",
            );
        }
        let (mut max, mut default) = (false, false);
        for (i, path) in paths.iter().enumerate() {
            match *path {
                "max_lifetime" => max = true,
                "default_lifetime" => default = true,
                "*" => (max, default) = (true, true),
                other => v.add(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{} is not a token policy field: max_lifetime or default_lifetime",
                        quote(other)
                    ),
                ),
            }
        }
        let mut lifetime = |named: bool, field: &str, value: &Option<prost_types::Duration>| {
            if !named {
                return Some(None);
            }
            match value {
                None => Some(Some(None)),
                Some(d) => v
                    .check(
                        format!("token_policy.{field}"),
                        policy::lifetime(d.seconds, d.nanos),
                    )
                    .map(|d| Some(Some(d))),
            }
        };
        let max_lifetime = lifetime(max, "max_lifetime", &given.max_lifetime);
        let default_lifetime = lifetime(default, "default_lifetime", &given.default_lifetime);
        v.finish_with(|| {
            Some(TokenPolicyPatch {
                max_lifetime: max_lifetime?,
                default_lifetime: default_lifetime?,
            })
        })
    }
}

impl Parse for pb::ListScopesRequest {
    type Command = ();

    fn parse(&self) -> Result<(), Error> {
        Ok(())
    }
}

impl Parse for pb::ListAuditEventsRequest {
    type Command = AuditListing;

    fn parse(&self) -> Result<AuditListing, Error> {
        let mut v = Violations::new();
        let listing = all_of(
            &mut v,
            AuditListing::parse(
                &self.filter,
                &self.order_by,
                self.page_size,
                &self.page_token,
            ),
        );
        v.finish_with(|| listing)
    }
}

impl Parse for pb::IntrospectRequest {
    type Command = Checks;

    /// The token itself is not parsed here: a malformed token is an answer, not an error.
    fn parse(&self) -> Result<Checks, Error> {
        Checks::parse(
            &self.org_id,
            &self.app_id,
            &self.required_scopes,
            &self.client_ip,
        )
    }
}

fn account_id(v: &mut Violations, raw: &str) -> Option<ServiceAccountId> {
    v.check("service_account_id", ServiceAccountId::parse(raw))
}

fn only_account_id(raw: &str) -> Result<ServiceAccountId, Error> {
    let mut v = Violations::new();
    let id = account_id(&mut v, raw);
    v.finish_with(|| id)
}

fn account_and_apps(
    raw_id: &str,
    raw_apps: &[String],
) -> Result<(ServiceAccountId, BTreeSet<AppId>), Error> {
    let mut v = Violations::new();
    let id = account_id(&mut v, raw_id);
    let apps = if raw_apps.is_empty() {
        v.add("app_ids", "at least one app id is required");
        None
    } else {
        app_ids(&mut v, "app_ids", raw_apps)
    };
    v.finish_with(|| Some((id?, apps?)))
}

/// Parses an `AppAccess` message; `field` is its path in the request.
fn app_access(v: &mut Violations, field: &str, access: &pb::AppAccess) -> Option<AppAccess> {
    if access.all_apps {
        if !access.app_ids.is_empty() {
            v.add(
                format!("{field}.app_ids"),
                "must be empty when all_apps is true",
            );
            return None;
        }
        return Some(AppAccess::AllApps);
    }
    let apps = app_ids(v, &format!("{field}.app_ids"), &access.app_ids)?;
    v.check(format!("{field}.app_ids"), AppAccess::explicit(apps))
}

fn app_ids(v: &mut Violations, field: &str, ids: &[String]) -> Option<BTreeSet<AppId>> {
    let mut apps = BTreeSet::new();
    let mut all_valid = true;
    for (i, id) in ids.iter().enumerate() {
        match AppId::parse(id) {
            Ok(app) => {
                apps.insert(app);
            }
            Err(invalid) => {
                all_valid = false;
                v.add(format!("{field}[{i}]"), invalid.0);
            }
        }
    }
    all_valid.then_some(apps)
}

/// Parses a labels map; `field` is its path in the request, and a bad entry is named by its
/// key (`labels["bad key"]`, the key quoted as errors quote input).
fn labels(v: &mut Violations, field: &str, entries: &HashMap<String, String>) -> Option<Labels> {
    match Labels::parse(
        entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str())),
    ) {
        Ok(labels) => Some(labels),
        Err(problems) => {
            for problem in problems {
                match problem {
                    LabelProblem::TooMany(invalid) => v.add(field, invalid.0),
                    LabelProblem::Entry { key, invalid } => {
                        v.add(format!("{field}[{}]", quote(&key)), invalid.0)
                    }
                }
            }
            None
        }
    }
}

/// A value read from several fields, each bad one a violation.
fn all_of<T>(v: &mut Violations, parsed: Result<T, Vec<(&'static str, Invalid)>>) -> Option<T> {
    match parsed {
        Ok(value) => Some(value),
        Err(problems) => {
            for (field, invalid) in problems {
                v.add(field, invalid.0);
            }
            None
        }
    }
}

fn expire_time(
    v: &mut Violations,
    t: Option<&prost_types::Timestamp>,
) -> Option<Option<Timestamp>> {
    match t {
        Some(t) => v
            .check("expire_time", timestamp(t).and_then(in_the_future))
            .map(Some),
        None => Some(None),
    }
}

fn allowed_cidrs(v: &mut Violations, field: &str, entries: &[String]) -> Option<AllowedCidrs> {
    match AllowedCidrs::parse(entries.iter().map(String::as_str)) {
        Ok(cidrs) => Some(cidrs),
        Err(problems) => {
            for (i, invalid) in problems {
                if i == usize::MAX {
                    v.add(field, invalid.0);
                } else {
                    v.add(format!("{field}[{i}]"), invalid.0);
                }
            }
            None
        }
    }
}

fn timestamp(t: &prost_types::Timestamp) -> Result<Timestamp, Invalid> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .map(time::truncate)
        .ok_or_else(|| Invalid::new("is not a valid timestamp"))
}

/// An expiry must lie ahead (the use case checks again against its own clock).
fn in_the_future(t: Timestamp) -> Result<Timestamp, Invalid> {
    if t > time::now() {
        Ok(t)
    } else {
        Err(Invalid::new("must be in the future"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_of_a_request_is_reported_at_once() {
        let request = pb::CreateTokenRequest {
            service_account_id: "nope".into(),
            display_name: String::new(),
            scopes: vec!["mcp:unknown".into()],
            expire_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            allowed_cidrs: vec!["10.0.0.0/8".into(), "10.0.0.0/40".into()],
            validate_only: false,
        };
        let Err(Error::InvalidArgument(violations)) = request.parse() else {
            panic!("expected invalid argument");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "service_account_id",
                "display_name",
                "scopes",
                "expire_time",
                "allowed_cidrs[1]"
            ]
        );
    }

    #[test]
    fn an_update_without_a_mask_changes_the_populated_fields_only() {
        let id = ServiceAccountId::generate();
        let request = pb::UpdateServiceAccountRequest {
            service_account: Some(pb::ServiceAccount {
                service_account_id: id.to_string(),
                description: "new".into(),
                ..Default::default()
            }),
            update_mask: None,
            validate_only: false,
        };
        let (parsed, patch) = request.parse().unwrap();
        assert_eq!(parsed, id);
        assert!(patch.display_name.is_none());
        assert!(patch.labels.is_none());
        assert_eq!(patch.description.unwrap().as_str(), "new");
    }

    #[test]
    fn a_bad_label_is_named_by_its_key_under_its_map() {
        let labels = HashMap::from([
            ("bad key".to_string(), "ok".to_string()),
            ("team".to_string(), "two words".to_string()),
            ("good".to_string(), "ok".to_string()),
        ]);
        let create = pb::CreateServiceAccountRequest {
            display_name: "Bot".into(),
            labels: labels.clone(),
            ..Default::default()
        };
        let Err(Error::InvalidArgument(violations)) = create.parse() else {
            panic!("expected invalid argument");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, [r#"labels["bad key"]"#, r#"labels["team"]"#]);
        let update = pb::UpdateServiceAccountRequest {
            service_account: Some(pb::ServiceAccount {
                service_account_id: ServiceAccountId::generate().to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: None,
            validate_only: false,
        };
        let Err(Error::InvalidArgument(violations)) = update.parse() else {
            panic!("expected invalid argument");
        };
        assert_eq!(violations[0].field, r#"service_account.labels["bad key"]"#);
    }
}
