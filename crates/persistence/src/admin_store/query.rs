//! A listing's query value as sea-orm conditions: filters become conditions on columns with
//! bound values, orders become keyset ranges on an index. Nothing of the request's text is
//! spliced into SQL.

use sea_orm::sea_query::{Expr, ExprTrait, LikeExpr, Query, SimpleExpr};
use sea_orm::{ColumnTrait, Condition, Order, QueryFilter, QueryOrder, QuerySelect};
use service_accounts_domain::query::{
    AccountPredicate, After, AuditPredicate, Cmp, Cond, TokenOptional, TokenPredicate, TokenTime,
};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::TokenState;

use crate::entity::{audit_event, service_account, service_account_label, token};

/// A typed filter as a condition; `leaf` turns one comparison, negated or not, into one.
pub(super) fn condition<P>(cond: &Cond<P>, leaf: &impl Fn(&P, bool) -> Condition) -> Condition {
    match cond {
        Cond::All(parts) => parts
            .iter()
            .fold(Condition::all(), |all, p| all.add(condition(p, leaf))),
        Cond::Any(parts) => parts
            .iter()
            .fold(Condition::any(), |any, p| any.add(condition(p, leaf))),
        Cond::Not(inner) => match inner.as_ref() {
            Cond::Is(p) => leaf(p, true),
            inner => condition(inner, leaf).not(),
        },
        Cond::Is(p) => leaf(p, false),
    }
}

/// One token comparison. A comparison with an unset column is false, never SQL's unknown, so
/// that `NOT` negates it (`NOT expire_time < t` keeps the tokens that never expire).
pub(super) fn token_predicate(p: &TokenPredicate, negated: bool, now: Timestamp) -> Condition {
    use token::Column as C;
    let condition = match p {
        TokenPredicate::Account(id) => Condition::all().add(C::ServiceAccountId.eq(id.to_string())),
        TokenPredicate::State(TokenState::Revoked) => {
            Condition::all().add(C::RevokedAt.is_not_null())
        }
        TokenPredicate::State(TokenState::Expired) => Condition::all()
            .add(C::RevokedAt.is_null())
            .add(C::ExpireAt.is_not_null())
            .add(C::ExpireAt.lte(now)),
        TokenPredicate::State(TokenState::Active) => {
            Condition::all().add(C::RevokedAt.is_null()).add(
                Condition::any()
                    .add(C::ExpireAt.is_null())
                    .add(C::ExpireAt.gt(now)),
            )
        }
        TokenPredicate::HasScope(scope) => {
            // Scopes are stored as names separated by single spaces.
            let name = escape_like(scope.as_str());
            Condition::any()
                .add(C::Scopes.eq(scope.as_str()))
                .add(C::Scopes.like(like(format!("{name} %"))))
                .add(C::Scopes.like(like(format!("% {name}"))))
                .add(C::Scopes.like(like(format!("% {name} %"))))
        }
        TokenPredicate::Time(field, cmp, at) => {
            let column = time_column(*field);
            let compared = compare(column, *cmp, *at);
            match field {
                TokenTime::Create => Condition::all().add(compared),
                _ => Condition::all().add(column.is_not_null()).add(compared),
            }
        }
        TokenPredicate::IsSet(optional) => {
            // `x IS NULL`, not `NOT (x IS NOT NULL)`: the form a partial index's predicate
            // matches.
            let column = optional_column(*optional);
            return Condition::all().add(if negated {
                column.is_null()
            } else {
                column.is_not_null()
            });
        }
        TokenPredicate::RevokeReason(reason) => Condition::all()
            .add(C::RevokeReason.is_not_null())
            .add(C::RevokeReason.eq(reason.as_str())),
        TokenPredicate::CreatedBy(user) => Condition::all().add(C::CreatedBy.eq(user.as_str())),
    };
    if negated { condition.not() } else { condition }
}

/// One account comparison. A label comparison is an `EXISTS` on the account's labels, so
/// `NOT` of it holds for an account without the label.
pub(super) fn account_predicate(p: &AccountPredicate, negated: bool) -> Condition {
    use service_account::Column as C;
    let condition = Condition::all().add(match p {
        // The column uniqueness is checked on, so the name's index answers it.
        AccountPredicate::DisplayName(name) => C::DisplayNameKey.eq(name.uniqueness_key()),
        AccountPredicate::State(state) => C::State.eq(state.as_str()),
        AccountPredicate::Label { key, value } => has_label(key, Some(value)),
        AccountPredicate::HasLabel(key) => has_label(key, None),
    });
    if negated { condition.not() } else { condition }
}

/// Whether the account of the outer query has the label `key` (with `value`, if given).
fn has_label(key: &str, value: Option<&str>) -> SimpleExpr {
    use service_account_label::{Column as L, Entity as Labels};
    let mut labels = Query::select();
    labels
        .expr(Expr::val(1))
        .from(Labels)
        .and_where(
            Expr::col((Labels, L::ServiceAccountId))
                .equals((service_account::Entity, service_account::Column::Id)),
        )
        .and_where(Expr::col((Labels, L::Key)).eq(key));
    if let Some(value) = value {
        labels.and_where(Expr::col((Labels, L::Value)).eq(value));
    }
    Expr::exists(labels.take())
}

fn optional_column(optional: TokenOptional) -> token::Column {
    match optional {
        TokenOptional::ExpireTime => token::Column::ExpireAt,
        TokenOptional::LastUsedTime => token::Column::LastUsedAt,
        TokenOptional::RevokeReason => token::Column::RevokeReason,
    }
}

pub(super) fn audit_predicate(p: &AuditPredicate, negated: bool) -> Condition {
    use audit_event::Column as C;
    let condition = Condition::all().add(match p {
        AuditPredicate::Actor(actor) => C::Actor.eq(actor.as_str()),
        AuditPredicate::Action(action) => C::Action.eq(action.as_str()),
        AuditPredicate::TargetType(kind) => C::TargetType.eq(kind.as_str()),
        AuditPredicate::TargetId(id) => C::TargetId.eq(id.as_str()),
        AuditPredicate::CreateTime(cmp, at) => compare(C::CreatedAt, *cmp, *at),
    });
    if negated { condition.not() } else { condition }
}

pub(super) fn time_column(field: TokenTime) -> token::Column {
    match field {
        TokenTime::Create => token::Column::CreatedAt,
        TokenTime::Expire => token::Column::ExpireAt,
        TokenTime::LastUsed => token::Column::LastUsedAt,
    }
}

fn compare(column: impl ColumnTrait, cmp: Cmp, at: Timestamp) -> SimpleExpr {
    match cmp {
        Cmp::Eq => column.eq(at),
        Cmp::Lt => column.lt(at),
        Cmp::Le => column.lte(at),
        Cmp::Gt => column.gt(at),
        Cmp::Ge => column.gte(at),
    }
}

fn like(pattern: String) -> LikeExpr {
    LikeExpr::new(pattern).escape('\\')
}

fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The part of an ordered listing whose order key is set, or unset (`NULL`). Each is one range
/// of the index on `(org_id, key, id)`, on every backend; a page may span the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Segment {
    Set,
    Unset,
}

/// The segments a page still reads, in order, given where it starts.
pub(super) fn segments(
    nullable: bool,
    unset_first: bool,
    after: Option<Option<Timestamp>>,
) -> Vec<Segment> {
    let order = match (nullable, unset_first) {
        (false, _) => vec![Segment::Set],
        (true, false) => vec![Segment::Set, Segment::Unset],
        (true, true) => vec![Segment::Unset, Segment::Set],
    };
    let Some(time) = after else {
        return order;
    };
    let current = if time.is_some() {
        Segment::Set
    } else {
        Segment::Unset
    };
    order.into_iter().skip_while(|s| *s != current).collect()
}

/// Restricts `select` to one segment after the cursor (when the cursor is in it), in order.
pub(super) fn keyset<Q, K, I>(
    select: Q,
    key: K,
    id: I,
    descending: bool,
    segment: Segment,
    after: Option<After<String>>,
    limit: u64,
) -> Q
where
    Q: QueryFilter + QueryOrder + QuerySelect,
    K: ColumnTrait,
    I: ColumnTrait,
{
    let order = if descending { Order::Desc } else { Order::Asc };
    let beyond = |column: I, value: String| {
        if descending {
            column.lt(value)
        } else {
            column.gt(value)
        }
    };
    let select = match segment {
        Segment::Set => {
            let mut select = select.filter(key.is_not_null());
            if let Some(After {
                time: Some(time),
                id: after_id,
            }) = after
            {
                let (bound, past) = if descending {
                    (key.lte(time), key.lt(time))
                } else {
                    (key.gte(time), key.gt(time))
                };
                // The redundant bound lets the planner start the index range at the cursor.
                select = select.filter(bound).filter(
                    Condition::any()
                        .add(past)
                        .add(Condition::all().add(key.eq(time)).add(beyond(id, after_id))),
                );
            }
            select.order_by(key, order.clone())
        }
        Segment::Unset => {
            let mut select = select.filter(key.is_null());
            if let Some(After {
                time: None,
                id: after_id,
            }) = after
            {
                select = select.filter(beyond(id, after_id));
            }
            // The key is NULL throughout, but ordering by it too lets PostgreSQL read the
            // segment in the order of the `(org_id, key, id)` index instead of sorting it.
            select.order_by(key, order.clone())
        }
    };
    select.order_by(id, order).limit(limit)
}

#[cfg(test)]
mod tests;
