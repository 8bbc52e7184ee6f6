//! The admin side of storage, one file per resource: accounts and their app grants, tokens as
//! admins see them, the org's token policy, and the audit trail. Every mutation ends in
//! [`Database::commit`].

mod accounts;
mod audit;
mod policy;
mod query;
mod tokens;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, DatabaseTransaction, DbErr, EntityTrait, QueryFilter};
use service_accounts_domain::token::Revocation;

use crate::entity::{service_account, token};

/// Accounts that are not deleted.
fn live_accounts() -> sea_orm::Select<service_account::Entity> {
    service_account::Entity::find().filter(service_account::Column::DeletedAt.is_null())
}

/// Revokes the tokens matching `which` that are not revoked yet; returns how many.
async fn revoke(
    txn: &DatabaseTransaction,
    which: Condition,
    revocation: &Revocation,
) -> Result<u64, DbErr> {
    let updated = token::Entity::update_many()
        .col_expr(token::Column::RevokedAt, Expr::value(revocation.at))
        .col_expr(
            token::Column::RevokedBy,
            Expr::value(revocation.by.to_string()),
        )
        .col_expr(
            token::Column::RevokeReason,
            Expr::value(revocation.reason.as_str()),
        )
        .filter(which)
        .filter(token::Column::RevokedAt.is_null())
        .exec(txn)
        .await?;
    Ok(updated.rows_affected)
}
