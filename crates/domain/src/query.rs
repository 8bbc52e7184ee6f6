//! What a listing asks the store for, as one value: which rows (a filter, checked against the
//! listing's fields and made typed), in which order, from where and how many. The store turns
//! it into conditions of its query builder; nothing of the request's text reaches SQL.

use crate::filter::{self, Comparison, Expr, FilterError, Op, Value};
use crate::ids::{AuditEventId, OrgId, ServiceAccountId, TokenId, UserId};
use crate::scope::Scope;
use crate::service_account::{AccountState, DisplayName, ServiceAccount};
use crate::time::Timestamp;
use crate::token::{RevokeReason, Token, TokenState};

/// A filter made typed: `P` is what one comparison asks of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond<P> {
    All(Vec<Cond<P>>),
    Any(Vec<Cond<P>>),
    Not(Box<Cond<P>>),
    Is(P),
}

impl<P> Cond<P> {
    fn not(self) -> Self {
        Cond::Not(Box::new(self))
    }

    /// Builds the typed filter from a parsed one; `leaf` reads one comparison (`!=` has already
    /// become `NOT =`).
    fn from_expr(
        expr: &Expr,
        leaf: &impl Fn(&Comparison) -> Result<P, FilterError>,
    ) -> Result<Self, FilterError> {
        let all = |parts: &[Expr]| -> Result<Vec<Self>, FilterError> {
            parts.iter().map(|p| Self::from_expr(p, leaf)).collect()
        };
        Ok(match expr {
            Expr::And(parts) => Cond::All(all(parts)?),
            Expr::Or(parts) => Cond::Any(all(parts)?),
            Expr::Not(inner) => Self::from_expr(inner, leaf)?.not(),
            Expr::Compare(c) if c.op == Op::Ne => Cond::Is(leaf(&Comparison {
                op: Op::Eq,
                ..c.clone()
            })?)
            .not(),
            Expr::Compare(c) => Cond::Is(leaf(c)?),
        })
    }
}

impl<P> Cond<P> {
    /// Whether a row satisfies the filter, `holds` saying whether it satisfies one comparison.
    pub fn holds(&self, holds: &impl Fn(&P) -> bool) -> bool {
        match self {
            Cond::All(parts) => parts.iter().all(|p| p.holds(holds)),
            Cond::Any(parts) => parts.iter().any(|p| p.holds(holds)),
            Cond::Not(inner) => !inner.holds(holds),
            Cond::Is(p) => holds(p),
        }
    }
}

/// `=`, `<`, `<=`, `>`, `>=` (`!=` is `NOT =`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A token's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTime {
    Create,
    /// Unset: never expires.
    Expire,
    /// Unset: never used.
    LastUsed,
}

/// A token's fields that may be unset (`field:*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOptional {
    ExpireTime,
    LastUsedTime,
    RevokeReason,
}

/// One comparison of a token filter. A comparison with an unset field is false.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenPredicate {
    Account(ServiceAccountId),
    /// As of the query's `now`.
    State(TokenState),
    HasScope(Scope),
    Time(TokenTime, Cmp, Timestamp),
    IsSet(TokenOptional),
    RevokeReason(RevokeReason),
    CreatedBy(UserId),
}

impl TokenPredicate {
    /// What the comparison means for one token at `now`: the definition the store's queries
    /// implement.
    pub fn holds(&self, token: &Token, now: Timestamp) -> bool {
        match self {
            TokenPredicate::Account(id) => token.service_account_id == *id,
            TokenPredicate::State(state) => token.state(now) == *state,
            TokenPredicate::HasScope(scope) => token.scopes.contains(*scope),
            TokenPredicate::Time(field, cmp, at) => {
                let time = match field {
                    TokenTime::Create => Some(token.create_time),
                    TokenTime::Expire => token.expire_time,
                    TokenTime::LastUsed => token.last_used_time,
                };
                time.is_some_and(|t| match cmp {
                    Cmp::Eq => t == *at,
                    Cmp::Lt => t < *at,
                    Cmp::Le => t <= *at,
                    Cmp::Gt => t > *at,
                    Cmp::Ge => t >= *at,
                })
            }
            TokenPredicate::IsSet(TokenOptional::ExpireTime) => token.expire_time.is_some(),
            TokenPredicate::IsSet(TokenOptional::LastUsedTime) => token.last_used_time.is_some(),
            TokenPredicate::IsSet(TokenOptional::RevokeReason) => token.revoke_reason.is_some(),
            TokenPredicate::RevokeReason(reason) => token.revoke_reason == Some(*reason),
            TokenPredicate::CreatedBy(user) => token.created_by == *user,
        }
    }
}

/// Reads a token listing's filter (SPEC §22); `Ok(None)` when it is empty.
pub fn token_filter(text: &str) -> Result<Option<Cond<TokenPredicate>>, FilterError> {
    let Some(expr) = filter::parse(text)? else {
        return Ok(None);
    };
    expr.check(filter::TOKEN_FIELDS)?;
    Cond::from_expr(&expr, &token_predicate).map(Some)
}

/// The canonical form of a filter (the empty string for none), so that two spellings of one
/// filter are one filter.
pub fn canonical(text: &str) -> String {
    match filter::parse(text) {
        Ok(Some(expr)) => expr.to_string(),
        _ => String::new(),
    }
}

fn token_predicate(c: &Comparison) -> Result<TokenPredicate, FilterError> {
    let text = match &c.value {
        Value::Any => {
            return Ok(TokenPredicate::IsSet(match c.name.as_str() {
                "expire_time" => TokenOptional::ExpireTime,
                "last_used_time" => TokenOptional::LastUsedTime,
                _ => TokenOptional::RevokeReason,
            }));
        }
        Value::Text(text) => text.as_str(),
    };
    let at_value = |message: String| FilterError {
        at: c.value_at,
        message,
    };
    Ok(match c.name.as_str() {
        "service_account_id" => TokenPredicate::Account(
            ServiceAccountId::parse(text).map_err(|e| at_value(e.to_string()))?,
        ),
        "state" => TokenPredicate::State(match text {
            "ACTIVE" => TokenState::Active,
            "EXPIRED" => TokenState::Expired,
            _ => TokenState::Revoked,
        }),
        "scopes" => TokenPredicate::HasScope(Scope::parse(text).map_err(|e| at_value(e.0))?),
        "revoke_reason" => TokenPredicate::RevokeReason(match text {
            "ADMIN" => RevokeReason::Admin,
            "ROTATED" => RevokeReason::Rotated,
            "LEAKED" => RevokeReason::Leaked,
            _ => RevokeReason::AccountDeleted,
        }),
        "created_by" => {
            TokenPredicate::CreatedBy(UserId::parse(text).map_err(|e| at_value(e.to_string()))?)
        }
        time => {
            let field = match time {
                "create_time" => TokenTime::Create,
                "expire_time" => TokenTime::Expire,
                _ => TokenTime::LastUsed,
            };
            TokenPredicate::Time(field, cmp(c.op), time_value(c, text)?)
        }
    })
}

fn cmp(op: Op) -> Cmp {
    match op {
        Op::Lt => Cmp::Lt,
        Op::Le => Cmp::Le,
        Op::Gt => Cmp::Gt,
        Op::Ge => Cmp::Ge,
        // `check` lets only comparisons reach here; `!=` became `NOT =`.
        Op::Eq | Op::Ne | Op::Has => Cmp::Eq,
    }
}

fn time_value(c: &Comparison, text: &str) -> Result<Timestamp, FilterError> {
    filter::time_of(text).ok_or_else(|| FilterError {
        at: c.value_at,
        message: "expected an RFC 3339 time".into(),
    })
}

/// How a listing is ordered: by a time, then by id, both ascending or both descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order<F> {
    pub by: F,
    pub descending: bool,
}

impl Order<TokenTime> {
    /// AIP-132: `create_time` (the default), `expire_time` or `last_used_time`, then
    /// optionally `asc` or `desc`.
    pub fn parse_tokens(text: &str) -> Result<Self, crate::Invalid> {
        parse_order(text, "create_time", |name| match name {
            "create_time" => Some(TokenTime::Create),
            "expire_time" => Some(TokenTime::Expire),
            "last_used_time" => Some(TokenTime::LastUsed),
            _ => None,
        })
        .ok_or_else(|| {
            crate::Invalid::new(
                "expected `create_time`, `expire_time` or `last_used_time`, optionally followed \
                 by `asc` or `desc`",
            )
        })
    }

    pub fn by_name(&self) -> &'static str {
        match self.by {
            TokenTime::Create => "create_time",
            TokenTime::Expire => "expire_time",
            TokenTime::LastUsed => "last_used_time",
        }
    }

    /// Where unset values go: a token that never expires after every expiry, a token never
    /// used before every use (in ascending order).
    pub fn unset_first(&self) -> bool {
        let unset_is_earliest = self.by == TokenTime::LastUsed;
        unset_is_earliest != self.descending
    }
}

/// The audit trail's only order key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateTime;

impl Order<CreateTime> {
    /// `create_time` (the default, oldest first) or `create_time desc`.
    pub fn parse_audit(text: &str) -> Result<Self, crate::Invalid> {
        parse_order(text, "create_time", |name| {
            (name == "create_time").then_some(CreateTime)
        })
        .ok_or_else(|| crate::Invalid::new("expected `create_time` or `create_time desc`"))
    }
}

fn parse_order<F>(
    text: &str,
    default: &str,
    field: impl Fn(&str) -> Option<F>,
) -> Option<Order<F>> {
    let mut words = text.split_whitespace();
    let name = words.next().unwrap_or(default);
    let descending = match words.next() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some(Order {
        by: field(name)?,
        descending,
    })
}

/// Where a page starts: after the row with this order key and id. `time` is `None` for a row
/// whose order key is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After<Id> {
    pub time: Option<Timestamp>,
    pub id: Id,
}

/// A page of an org's tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenQuery {
    pub org: OrgId,
    /// One account's tokens, or (`None`) every account's.
    pub account: Option<ServiceAccountId>,
    pub filter: Option<Cond<TokenPredicate>>,
    pub order: Order<TokenTime>,
    pub after: Option<After<TokenId>>,
    pub limit: u32,
    /// What `state` is evaluated at.
    pub now: Timestamp,
}

impl TokenQuery {
    /// How two tokens compare in this query's order: by the order key (unset values where
    /// [`Order::unset_first`] puts them), then by id, in the query's direction.
    pub fn compare(&self, a: &Token, b: &Token) -> std::cmp::Ordering {
        let (ka, kb) = (self.key(a), self.key(b));
        // Unset first in ascending terms, then flipped as a whole for descending.
        let unset_low = self.order.unset_first() != self.order.descending;
        let rank = |time: Option<Timestamp>| (time.is_some() == unset_low, time);
        let ascending = rank(ka.time)
            .cmp(&rank(kb.time))
            .then_with(|| ka.id.as_uuid().cmp(&kb.id.as_uuid()));
        if self.order.descending {
            ascending.reverse()
        } else {
            ascending
        }
    }

    /// The order key of a token under this query's order.
    pub fn key(&self, token: &Token) -> After<TokenId> {
        After {
            time: match self.order.by {
                TokenTime::Create => Some(token.create_time),
                TokenTime::Expire => token.expire_time,
                TokenTime::LastUsed => token.last_used_time,
            },
            id: token.id,
        }
    }
}

/// A token as a listing returns it, with what a report says of its account.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedToken {
    pub token: Token,
    pub account_name: crate::service_account::DisplayName,
    pub account_state: crate::service_account::AccountState,
}

/// One comparison of an audit filter.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditPredicate {
    Actor(String),
    Action(String),
    TargetType(String),
    TargetId(String),
    CreateTime(Cmp, Timestamp),
}

/// Reads an audit listing's filter (SPEC §22); `Ok(None)` when it is empty.
pub fn audit_filter(text: &str) -> Result<Option<Cond<AuditPredicate>>, FilterError> {
    let Some(expr) = filter::parse(text)? else {
        return Ok(None);
    };
    expr.check(filter::AUDIT_FIELDS)?;
    Cond::from_expr(&expr, &audit_predicate).map(Some)
}

fn audit_predicate(c: &Comparison) -> Result<AuditPredicate, FilterError> {
    let Value::Text(text) = &c.value else {
        // `check` refuses `:*` on fields that are always set.
        return Err(FilterError {
            at: c.value_at,
            message: "`*` goes only with fields that may be unset".into(),
        });
    };
    let text = text.clone();
    Ok(match c.name.as_str() {
        "actor" => AuditPredicate::Actor(text),
        "action" => AuditPredicate::Action(text),
        "target_type" => AuditPredicate::TargetType(text),
        "target_id" => AuditPredicate::TargetId(text),
        _ => AuditPredicate::CreateTime(cmp(c.op), time_value(c, &text)?),
    })
}

/// One comparison of an account filter.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountPredicate {
    /// The name, compared as uniqueness compares names (trimmed, ignoring case): the account
    /// a create with this name would collide with.
    DisplayName(DisplayName),
    State(AccountState),
    /// `labels.<key> = value` (false when the account has no such label).
    Label {
        key: String,
        value: String,
    },
    /// `labels.<key>:*`.
    HasLabel(String),
}

impl AccountPredicate {
    /// What the comparison means for one account: the definition the store's queries
    /// implement.
    pub fn holds(&self, account: &ServiceAccount) -> bool {
        match self {
            AccountPredicate::DisplayName(name) => {
                account.display_name.uniqueness_key() == name.uniqueness_key()
            }
            AccountPredicate::State(state) => account.state == *state,
            AccountPredicate::Label { key, value } => account.labels.get(key) == Some(value),
            AccountPredicate::HasLabel(key) => account.labels.get(key).is_some(),
        }
    }
}

/// Reads an account listing's filter (SPEC §23); `Ok(None)` when it is empty.
pub fn account_filter(text: &str) -> Result<Option<Cond<AccountPredicate>>, FilterError> {
    let Some(expr) = filter::parse(text)? else {
        return Ok(None);
    };
    expr.check(filter::ACCOUNT_FIELDS)?;
    Cond::from_expr(&expr, &account_predicate).map(Some)
}

fn account_predicate(c: &Comparison) -> Result<AccountPredicate, FilterError> {
    // `check` let through only `labels.<key>` with `:*`, and values of the field's kind.
    let label = c.name.strip_prefix("labels.").map(str::to_owned);
    let text = match (&c.value, label) {
        (Value::Any, Some(key)) => return Ok(AccountPredicate::HasLabel(key)),
        (Value::Text(value), Some(key)) => {
            return Ok(AccountPredicate::Label {
                key,
                value: value.clone(),
            });
        }
        (Value::Text(text), None) => text.as_str(),
        (Value::Any, None) => {
            return Err(FilterError {
                at: c.value_at,
                message: "`*` goes only with `labels.<key>:`".into(),
            });
        }
    };
    Ok(match c.name.as_str() {
        "display_name" => {
            AccountPredicate::DisplayName(DisplayName::parse(text).map_err(|e| FilterError {
                at: c.value_at,
                message: format!("not a display name: {e}"),
            })?)
        }
        _ => AccountPredicate::State(match text {
            "ACTIVE" => AccountState::Active,
            _ => AccountState::Disabled,
        }),
    })
}

/// A page of an org's accounts, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountQuery {
    pub org: OrgId,
    pub filter: Option<Cond<AccountPredicate>>,
    pub after: Option<ServiceAccountId>,
    pub limit: u32,
}

/// A page of an org's audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditQuery {
    pub org: OrgId,
    pub filter: Option<Cond<AuditPredicate>>,
    pub order: Order<CreateTime>,
    pub after: Option<After<AuditEventId>>,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_equal_is_the_negation_of_equal() {
        let ne = token_filter("revoke_reason != ADMIN").unwrap().unwrap();
        assert_eq!(
            ne,
            Cond::Is(TokenPredicate::RevokeReason(RevokeReason::Admin)).not()
        );
    }

    #[test]
    fn values_are_read_as_their_field_with_the_position_of_a_bad_one() {
        let e = token_filter(r#"scopes:"mcp:writ""#).unwrap_err();
        assert_eq!(e.at, 8);
        assert!(e.message.contains("unknown scope"), "{e}");
        let e = token_filter("service_account_id = nope").unwrap_err();
        assert_eq!(e.at, 22);
        assert_eq!(
            token_filter(r#"NOT last_used_time:* scopes:"mcp:write""#).unwrap(),
            Some(Cond::All(vec![
                Cond::Is(TokenPredicate::IsSet(TokenOptional::LastUsedTime)).not(),
                Cond::Is(TokenPredicate::HasScope(Scope::parse("mcp:write").unwrap())),
            ]))
        );
    }

    #[test]
    fn account_filters_read_names_states_and_labels() {
        let label = |key: &str, value: &str| {
            Cond::Is(AccountPredicate::Label {
                key: key.into(),
                value: value.into(),
            })
        };
        assert_eq!(
            account_filter(
                r#"labels.team = platform labels."app.embrace.io/managed-by" != apply NOT labels.x:*"#
            )
            .unwrap(),
            Some(Cond::All(vec![
                label("team", "platform"),
                label("app.embrace.io/managed-by", "apply").not(),
                Cond::Is(AccountPredicate::HasLabel("x".into())).not(),
            ]))
        );
        assert_eq!(
            account_filter(r#"display_name = " CI Pipeline " OR state = DISABLED"#).unwrap(),
            Some(Cond::Any(vec![
                Cond::Is(AccountPredicate::DisplayName(
                    DisplayName::parse("CI Pipeline").unwrap()
                )),
                Cond::Is(AccountPredicate::State(AccountState::Disabled)),
            ]))
        );
        // A name no account can have is refused where it was written.
        let e = account_filter(r#"state = ACTIVE display_name = "  ""#).unwrap_err();
        assert_eq!(e.at, 31);
        assert!(e.message.contains("not a display name"), "{e}");
        assert_eq!(account_filter("").unwrap(), None);
    }

    #[test]
    fn an_account_name_matches_as_uniqueness_compares_names_and_a_label_only_when_set() {
        let account = crate::fixtures::account_named("CI Pipeline");
        let name = |n: &str| AccountPredicate::DisplayName(DisplayName::parse(n).unwrap());
        assert!(name("ci pipeline").holds(&account));
        assert!(!name("CI").holds(&account));
        let mut labelled = account.clone();
        labelled.labels =
            crate::labels::Labels::parse([("team", "platform"), ("empty", "")]).unwrap();
        let label = |key: &str, value: &str| AccountPredicate::Label {
            key: key.into(),
            value: value.into(),
        };
        assert!(label("team", "platform").holds(&labelled));
        assert!(label("empty", "").holds(&labelled));
        assert!(!label("empty", "").holds(&account));
        assert!(AccountPredicate::HasLabel("empty".into()).holds(&labelled));
        assert!(!AccountPredicate::HasLabel("team".into()).holds(&account));
        assert!(AccountPredicate::State(AccountState::Active).holds(&account));
    }

    #[test]
    fn orders_read_as_aip_132_and_nothing_else() {
        let parse = Order::parse_tokens;
        assert_eq!(
            parse("").unwrap(),
            Order {
                by: TokenTime::Create,
                descending: false
            }
        );
        assert_eq!(
            parse(" last_used_time  desc ").unwrap(),
            Order {
                by: TokenTime::LastUsed,
                descending: true
            }
        );
        assert!(parse("expire_time asc").is_ok());
        for bad in [
            "display_name",
            "create_time up",
            "create_time desc desc",
            "desc",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(Order::parse_audit("create_time desc").unwrap().descending);
        assert!(Order::parse_audit("expire_time").is_err());
    }

    #[test]
    fn never_used_sorts_first_and_never_expiring_last_in_ascending_order() {
        let order = |by, descending| Order { by, descending };
        assert!(order(TokenTime::LastUsed, false).unset_first());
        assert!(!order(TokenTime::LastUsed, true).unset_first());
        assert!(!order(TokenTime::Expire, false).unset_first());
        assert!(order(TokenTime::Expire, true).unset_first());
    }
}
