//! The verified identity behind a token, and how an `Introspect` answer is read into the
//! control plane's own record of a token (which the cache decides with).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use service_accounts_domain::ids::{OrgId, ServiceAccountId, TokenId};
use service_accounts_domain::network::AllowedCidrs;
use service_accounts_domain::scope::{Scope, Scopes};
use service_accounts_domain::service_account::{AppAccess, AppId};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::{AccountRecord, TokenHash, TokenRecord};

use crate::pb::IntrospectResponse;

/// The verified identity behind a token: what a handler uses instead of the token.
///
/// Cheap to clone, and free to make from a cached answer: it shares the answer's record (with
/// the cache, when the client has one) rather than copying its strings into each request.
#[derive(Clone)]
pub struct Identity(Arc<TokenRecord>);

impl Identity {
    pub(crate) fn of_record(record: Arc<TokenRecord>) -> Self {
        Self(record)
    }

    /// The identity in an active answer; `None` when the answer is not active or cannot be read
    /// (an id that is not one). Also for tests and for serving without the layer.
    pub fn from_answer(response: &IntrospectResponse) -> Option<Self> {
        if !response.active {
            return None;
        }
        // Not looked up by: an identity made outside the cache is never found by its hash.
        let unknown_hash = TokenHash([0; 32]);
        read(unknown_hash, response, Reading::ForIdentity).map(|record| Self(Arc::new(record)))
    }

    pub fn org_id(&self) -> &str {
        self.0.account.org_id.as_str()
    }

    pub fn service_account_id(&self) -> ServiceAccountId {
        self.0.account.service_account_id
    }

    pub fn service_account_display_name(&self) -> &str {
        &self.0.account.display_name
    }

    pub fn token_id(&self) -> TokenId {
        self.0.token_id
    }

    /// The token's scopes this client version knows (a scope added to the control plane later
    /// is left out until the client is upgraded: [`Identity::has_scope`] is false for it).
    pub fn scopes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.scopes.names()
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        Scope::parse(scope).is_ok_and(|scope| self.0.scopes.contains(scope))
    }

    /// Whether the account may act on every app of its org, including apps added later.
    pub fn all_apps(&self) -> bool {
        matches!(self.0.account.app_access, AppAccess::AllApps)
    }

    /// The apps the account may act on, sorted; none when [`Identity::all_apps`].
    pub fn app_ids(&self) -> impl Iterator<Item = &str> {
        let apps = match &self.0.account.app_access {
            AppAccess::AllApps => None,
            AppAccess::Apps(apps) => Some(apps.iter().map(AppId::as_str)),
        };
        apps.into_iter().flatten()
    }

    /// Whether the account may act on `app_id` of its org.
    pub fn may_use_app(&self, app_id: &str) -> bool {
        match &self.0.account.app_access {
            AppAccess::AllApps => true,
            AppAccess::Apps(apps) => apps.iter().any(|app| app.as_str() == app_id),
        }
    }

    /// `None`: the token does not expire.
    pub fn expire_time(&self) -> Option<SystemTime> {
        self.0.expire_time.map(SystemTime::from)
    }
}

/// What the accessors give (the record's other fields are not the answer's).
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("org_id", &self.org_id())
            .field("service_account_id", &self.service_account_id())
            .field(
                "service_account_display_name",
                &self.service_account_display_name(),
            )
            .field("token_id", &self.token_id())
            .field("scopes", &self.scopes().collect::<Vec<_>>())
            .field("all_apps", &self.all_apps())
            .field("app_ids", &self.app_ids().collect::<Vec<_>>())
            .field("expire_time", &self.expire_time())
            .finish()
    }
}

/// The same token, account and grants (the token hash, which no answer carries, is not compared).
impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        (
            a.token_id,
            a.scopes,
            a.expire_time,
            &a.allowed_cidrs,
            &a.account,
        ) == (
            b.token_id,
            b.scopes,
            b.expire_time,
            &b.allowed_cidrs,
            &b.account,
        )
    }
}

impl Eq for Identity {}

/// An active answer as the control plane's record of its token, to cache and decide with;
/// `None` when a field cannot be read (and then nothing is cached).
///
/// Scopes this version does not know are left out. That is safe for cached decisions too: a
/// requirement naming such a scope is never decided locally (the control plane is asked), so a
/// left-out scope could only be one no local decision looks for.
pub(crate) fn record_of(hash: TokenHash, response: &IntrospectResponse) -> Option<TokenRecord> {
    read(hash, response, Reading::ToDecide)
}

#[derive(Clone, Copy, PartialEq)]
enum Reading {
    /// Every field, for cached decisions.
    ToDecide,
    /// For an identity only: app ids and networks of a form this version does not read (from a
    /// newer control plane, which has already decided) are left out rather than failing the
    /// request. Leaving an app out only makes `may_use_app` refuse more.
    ForIdentity,
}

fn read(hash: TokenHash, response: &IntrospectResponse, reading: Reading) -> Option<TokenRecord> {
    let app_access = match &response.app_access {
        Some(access) if access.all_apps => AppAccess::AllApps,
        Some(access) if reading == Reading::ForIdentity => AppAccess::Apps(
            access
                .app_ids
                .iter()
                .filter_map(|id| AppId::parse(id).ok())
                .collect(),
        ),
        Some(access) => AppAccess::Apps(
            access
                .app_ids
                .iter()
                .map(|id| AppId::parse(id).ok())
                .collect::<Option<_>>()?,
        ),
        None => AppAccess::Apps(Default::default()),
    };
    let allowed_cidrs = match AllowedCidrs::parse(response.allowed_cidrs.iter().map(String::as_str))
    {
        Ok(cidrs) => cidrs,
        Err(_) if reading == Reading::ForIdentity => AllowedCidrs::none(),
        Err(_) => return None,
    };
    let account = AccountRecord {
        org_id: OrgId::parse(&response.org_id).ok()?,
        service_account_id: ServiceAccountId::parse(&response.service_account_id).ok()?,
        display_name: response.service_account_display_name.as_str().into(),
        app_access,
        disabled: false,
    };
    let expire_time = match &response.expire_time {
        None => None,
        Some(t) => Some(Timestamp::from_timestamp(
            t.seconds,
            u32::try_from(t.nanos).ok()?,
        )?),
    };
    Some(TokenRecord {
        token_id: TokenId::parse(&response.token_id).ok()?,
        token_hash: hash,
        scopes: Scopes::known(response.scopes.iter().map(String::as_str)),
        // Not part of a decision; the answer does not carry it.
        create_time: Timestamp::UNIX_EPOCH,
        expire_time,
        revoke_time: None,
        allowed_cidrs,
        account: Arc::new(account),
    })
}
