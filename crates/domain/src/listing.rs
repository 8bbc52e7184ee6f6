//! The filtered listings' requests, read field by field so that every bad field is reported at
//! once, with page tokens bound to what they were issued for.

use crate::Invalid;
use crate::filter::FilterError;
use crate::ids::ServiceAccountId;
use crate::page::{self, Listing, QueryPage};
use crate::query::{
    self, AccountPredicate, AuditPredicate, Cond, CreateTime, Order, TokenPredicate, TokenTime,
};

/// Longest filter accepted, in characters.
pub const MAX_FILTER_CHARS: usize = 2048;

/// `ListTokens`: one account's tokens or (`account: None`, asked as `-`) the whole org's.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenListing {
    pub account: Option<ServiceAccountId>,
    pub filter: Option<Cond<TokenPredicate>>,
    pub order: Order<TokenTime>,
    pub page: QueryPage,
}

/// The raw fields of a token listing request.
#[derive(Debug, Clone, Copy)]
pub struct TokenListingRequest<'a> {
    pub service_account_id: &'a str,
    pub filter: &'a str,
    pub order_by: &'a str,
    pub page_size: i32,
    pub page_token: &'a str,
}

impl TokenListing {
    pub fn parse(request: TokenListingRequest<'_>) -> Result<Self, Vec<(&'static str, Invalid)>> {
        let mut bad = Vec::new();
        let account = match request.service_account_id {
            "-" => Ok(None),
            id => ServiceAccountId::parse(id).map(Some),
        };
        let filter = token_filter(request.filter);
        let order = Order::parse_tokens(request.order_by);
        let page = match (&filter, &order) {
            (Ok(_), Ok(order)) => Some(QueryPage::parse(
                Listing::Tokens,
                request.page_size,
                request.page_token,
                page::binding(&[
                    request.service_account_id,
                    &query::canonical(request.filter),
                    &order_text(order.by_name(), order.descending),
                ]),
            )),
            // The token cannot be checked against a query that could not be read.
            _ => None,
        };
        let account = account
            .map_err(|e| bad.push(("service_account_id", e)))
            .ok();
        let filter = filter.map_err(|e| bad.push(("filter", e))).ok();
        let order = order.map_err(|e| bad.push(("order_by", e))).ok();
        let page = page.and_then(|p| p.map_err(|mut e| bad.append(&mut e)).ok());
        match (account, filter, order, page) {
            (Some(account), Some(filter), Some(order), Some(page)) if bad.is_empty() => Ok(Self {
                account,
                filter,
                order,
                page,
            }),
            _ => Err(bad),
        }
    }
}

/// `ListAuditEvents`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditListing {
    pub filter: Option<Cond<AuditPredicate>>,
    pub order: Order<CreateTime>,
    pub page: QueryPage,
}

impl AuditListing {
    pub fn parse(
        filter: &str,
        order_by: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Self, Vec<(&'static str, Invalid)>> {
        let mut bad = Vec::new();
        let parsed = within_limit(filter).and_then(|f| query::audit_filter(f).map_err(invalid));
        let order = Order::parse_audit(order_by);
        let page = match (&parsed, &order) {
            (Ok(_), Ok(order)) => Some(QueryPage::parse(
                Listing::AuditEvents,
                page_size,
                page_token,
                page::binding(&[
                    &query::canonical(filter),
                    &order_text("create_time", order.descending),
                ]),
            )),
            _ => None,
        };
        let filter = parsed.map_err(|e| bad.push(("filter", e))).ok();
        let order = order.map_err(|e| bad.push(("order_by", e))).ok();
        let page = page.and_then(|p| p.map_err(|mut e| bad.append(&mut e)).ok());
        match (filter, order, page) {
            (Some(filter), Some(order), Some(page)) if bad.is_empty() => Ok(Self {
                filter,
                order,
                page,
            }),
            _ => Err(bad),
        }
    }
}

/// `ListServiceAccounts`, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountListing {
    pub filter: Option<Cond<AccountPredicate>>,
    pub page: QueryPage,
}

impl AccountListing {
    pub fn parse(
        filter: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Self, Vec<(&'static str, Invalid)>> {
        let mut bad = Vec::new();
        let parsed = within_limit(filter).and_then(|f| query::account_filter(f).map_err(invalid));
        let page = parsed.is_ok().then(|| {
            QueryPage::parse(
                Listing::ServiceAccounts,
                page_size,
                page_token,
                page::binding(&[&query::canonical(filter)]),
            )
            .and_then(|page| match page.after {
                // Ordered by id alone: a position with a time was not written by this listing.
                Some(after) if after.time.is_some() => Err(vec![(
                    "page_token",
                    Invalid::new("is not a page token returned by this listing"),
                )]),
                _ => Ok(page),
            })
        });
        let filter = parsed.map_err(|e| bad.push(("filter", e))).ok();
        let page = page.and_then(|p| p.map_err(|mut e| bad.append(&mut e)).ok());
        match (filter, page) {
            (Some(filter), Some(page)) if bad.is_empty() => Ok(Self { filter, page }),
            _ => Err(bad),
        }
    }
}

/// A token filter as a request field (`ListTokens`, `ExportCredentialReport`).
pub fn token_filter(text: &str) -> Result<Option<Cond<TokenPredicate>>, Invalid> {
    within_limit(text).and_then(|f| query::token_filter(f).map_err(invalid))
}

fn within_limit(text: &str) -> Result<&str, Invalid> {
    if text.chars().count() > MAX_FILTER_CHARS {
        return Err(Invalid::new(format!(
            "must be at most {MAX_FILTER_CHARS} characters"
        )));
    }
    Ok(text)
}

fn invalid(error: FilterError) -> Invalid {
    Invalid::new(error.to_string())
}

fn order_text(field: &str, descending: bool) -> String {
    if descending {
        format!("{field} desc")
    } else {
        field.to_owned()
    }
}
