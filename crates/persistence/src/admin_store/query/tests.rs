//! The store's filters and orders against their definition in the domain
//! ([`TokenPredicate::holds`], [`TokenQuery::compare`], [`AccountPredicate::holds`]): random
//! tokens with many ties and unset fields, random accounts with random labels, random filters,
//! every order both ways, paged with random page sizes, on SQLite and on a fresh PostgreSQL
//! database.

use chrono::TimeDelta;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use service_accounts_domain::audit::{AuditAction, AuditEvent, Target};
use service_accounts_domain::ids::{AuditEventId, OrgId, ServiceAccountId, TokenId, UserId};
use service_accounts_domain::labels::Labels;
use service_accounts_domain::query::{
    AccountPredicate, AccountQuery, Cmp, Cond, Order, TokenOptional, TokenPredicate, TokenQuery,
    TokenTime,
};
use service_accounts_domain::scope::{CATALOGUE, Scope, Scopes};
use service_accounts_domain::service_account::{
    AccountState, AppAccess, Description, DisplayName, ServiceAccount,
};
use service_accounts_domain::store::{AccountStore, TokenAdminStore};
use service_accounts_domain::time::{self, Timestamp};
use service_accounts_domain::token::{RevokeReason, Token, TokenState};

use crate::Database;
use crate::entity::{service_account, token};

const TOKENS: usize = 160;
const FILTERS: usize = 40;

#[tokio::test]
async fn filters_orders_and_pages_on_sqlite_mean_what_the_domain_defines() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let db = crate::connect(&url, 2, crate::QueryPath::Direct)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    agree_with_the_domain(&db).await;
    accounts_agree_with_the_domain(&db).await;
}

#[tokio::test]
async fn filters_orders_and_pages_on_postgres_mean_what_the_domain_defines() {
    let admin_url = match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but TEST_DATABASE_URL is not: PostgreSQL tests must run in CI")
        }
        _ => return eprintln!("skipping PostgreSQL test: TEST_DATABASE_URL is not set"),
    };
    let name = format!("sa_query_{}", uuid::Uuid::now_v7().simple());
    let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let db = crate::connect(&url, 2, crate::QueryPath::Direct)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    agree_with_the_domain(&db).await;
    accounts_agree_with_the_domain(&db).await;
    db.close().await.unwrap();
    admin
        .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

async fn agree_with_the_domain(db: &Database) {
    let mut rng = StdRng::seed_from_u64(22);
    let now = time::now();
    // Few distinct times, so that keys tie and only the id decides.
    let times: Vec<Timestamp> = (-6..6).map(|d| now + TimeDelta::days(d * 5)).collect();
    let org = OrgId::parse("org").unwrap();
    let accounts = [account(db, &org, "a").await, account(db, &org, "b").await];
    let gone = account(db, &org, "deleted").await;
    let other = account(db, &OrgId::parse("other").unwrap(), "x").await;
    let mut visible = Vec::new();
    for n in 0..TOKENS {
        let owner = match n % 8 {
            0 => gone,
            1 => other,
            n => accounts[n % 2],
        };
        let token = random_token(&mut rng, owner, &times);
        insert(db, owner, &token, n).await;
        if accounts.contains(&owner) {
            visible.push(token);
        }
    }
    service_account::Entity::update_many()
        .col_expr(
            service_account::Column::DeletedAt,
            sea_orm::sea_query::Expr::value(now),
        )
        .filter(service_account::Column::Id.eq(gone.to_string()))
        .exec(&db.db)
        .await
        .unwrap();

    let orders: Vec<Order<TokenTime>> = [TokenTime::Create, TokenTime::Expire, TokenTime::LastUsed]
        .into_iter()
        .flat_map(|by| [false, true].map(|descending| Order { by, descending }))
        .collect();
    for case in 0..FILTERS {
        let filter = (case > 0).then(|| random_cond(&mut rng, &times, &accounts, 3));
        let account = (case % 5 == 4).then(|| accounts[case % 2]);
        for order in &orders {
            let query = TokenQuery {
                org: org.clone(),
                account,
                filter: filter.clone(),
                order: *order,
                after: None,
                limit: rng.random_range(1..=25),
                now,
            };
            let mut expected: Vec<&Token> = visible
                .iter()
                .filter(|t| account.is_none_or(|a| t.service_account_id == a))
                .filter(|t| {
                    filter
                        .as_ref()
                        .is_none_or(|f| f.holds(&|p: &TokenPredicate| p.holds(t, now)))
                })
                .collect();
            expected.sort_by(|a, b| query.compare(a, b));
            let listed = page_through(db, query.clone()).await;
            let expected: Vec<TokenId> = expected.iter().map(|t| t.id).collect();
            assert_eq!(listed, expected, "filter {filter:?}, order {order:?}");
        }
    }
}

/// Every page of `query`, each starting after the last row of the one before.
async fn page_through(db: &Database, mut query: TokenQuery) -> Vec<TokenId> {
    let mut ids = Vec::new();
    loop {
        let page = db.list_tokens(&query).await.unwrap();
        for listed in &page {
            ids.push(listed.token.id);
        }
        if page.len() < query.limit as usize {
            return ids;
        }
        query.after = Some(query.key(&page.last().unwrap().token));
        assert!(ids.len() <= TOKENS, "paging does not end");
    }
}

fn random_cond(
    rng: &mut StdRng,
    times: &[Timestamp],
    accounts: &[ServiceAccountId],
    depth: u32,
) -> Cond<TokenPredicate> {
    if depth == 0 || rng.random_bool(0.4) {
        return Cond::Is(random_predicate(rng, times, accounts));
    }
    let kind = rng.random_range(0..3);
    let mut parts: Vec<_> = (0..rng.random_range(2..=3))
        .map(|_| random_cond(rng, times, accounts, depth - 1))
        .collect();
    match kind {
        0 => Cond::All(parts),
        1 => Cond::Any(parts),
        _ => Cond::Not(Box::new(parts.remove(0))),
    }
}

fn random_predicate(
    rng: &mut StdRng,
    times: &[Timestamp],
    accounts: &[ServiceAccountId],
) -> TokenPredicate {
    let time = *times.choose(rng).unwrap();
    match rng.random_range(0..7) {
        0 => TokenPredicate::Account(*accounts.choose(rng).unwrap()),
        1 => TokenPredicate::State(
            *[TokenState::Active, TokenState::Expired, TokenState::Revoked]
                .choose(rng)
                .unwrap(),
        ),
        2 => TokenPredicate::HasScope(random_scope(rng)),
        3 => TokenPredicate::Time(
            *[TokenTime::Create, TokenTime::Expire, TokenTime::LastUsed]
                .choose(rng)
                .unwrap(),
            *[Cmp::Eq, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge]
                .choose(rng)
                .unwrap(),
            time,
        ),
        4 => TokenPredicate::IsSet(
            *[
                TokenOptional::ExpireTime,
                TokenOptional::LastUsedTime,
                TokenOptional::RevokeReason,
            ]
            .choose(rng)
            .unwrap(),
        ),
        5 => TokenPredicate::RevokeReason(random_reason(rng)),
        _ => {
            TokenPredicate::CreatedBy(UserId::parse(["alice", "bob"].choose(rng).unwrap()).unwrap())
        }
    }
}

fn random_scope(rng: &mut StdRng) -> Scope {
    Scope::parse(CATALOGUE.choose(rng).unwrap().name).unwrap()
}

fn random_reason(rng: &mut StdRng) -> RevokeReason {
    *[
        RevokeReason::Admin,
        RevokeReason::Rotated,
        RevokeReason::Leaked,
        RevokeReason::AccountDeleted,
    ]
    .choose(rng)
    .unwrap()
}

fn random_token(rng: &mut StdRng, account: ServiceAccountId, times: &[Timestamp]) -> Token {
    let mut time = |p: f64| rng.random_bool(p).then(|| *times.choose(rng).unwrap());
    let create_time = time(1.0).unwrap();
    let expire_time = time(0.7);
    let last_used_time = time(0.6);
    let revoke_time = time(0.25);
    let names = (0..rng.random_range(1..=CATALOGUE.len()))
        .map(|_| CATALOGUE.choose(rng).unwrap().name)
        .collect::<Vec<_>>();
    Token {
        id: TokenId::generate(),
        service_account_id: account,
        display_name: DisplayName::parse("token").unwrap(),
        scopes: Scopes::known(names),
        create_time,
        created_by: UserId::parse(["alice", "bob"].choose(rng).unwrap()).unwrap(),
        expire_time,
        revoke_time,
        revoked_by: revoke_time.map(|_| UserId::parse("alice").unwrap()),
        revoke_reason: revoke_time.map(|_| random_reason(rng)),
        last_used_time,
        last_used_app_id: None,
        last_used_client_ip: None,
        hint: "emb_sa_…".into(),
        previous_token_id: None,
        allowed_cidrs: Default::default(),
    }
}

async fn insert(db: &Database, account: ServiceAccountId, token: &Token, n: usize) {
    let org = if n % 8 == 1 { "other" } else { "org" };
    token::Entity::insert(token::ActiveModel {
        id: Set(token.id.to_string()),
        service_account_id: Set(account.to_string()),
        org_id: Set(org.into()),
        display_name: Set(token.display_name.as_str().into()),
        token_hash: Set((n as u64).to_be_bytes().to_vec()),
        scopes: Set(token.scopes.to_stored()),
        hint: Set(token.hint.clone()),
        created_at: Set(token.create_time),
        created_by: Set(token.created_by.to_string()),
        expire_at: Set(token.expire_time),
        revoked_at: Set(token.revoke_time),
        revoked_by: Set(token.revoked_by.as_ref().map(|u| u.to_string())),
        last_used_at: Set(token.last_used_time),
        revoke_reason: Set(token.revoke_reason.map(|r| r.as_str().into())),
        previous_token_id: Set(None),
        allowed_cidrs: Set(String::new()),
        last_used_app_id: Set(None),
        last_used_client_ip: Set(None),
    })
    .exec_without_returning(&db.db)
    .await
    .unwrap();
}

async fn account(db: &Database, org: &OrgId, name: &str) -> ServiceAccountId {
    let now = time::now();
    let admin = UserId::parse("alice").unwrap();
    let account = ServiceAccount {
        id: ServiceAccountId::generate(),
        org_id: org.clone(),
        display_name: DisplayName::parse(name).unwrap(),
        description: Description::parse("").unwrap(),
        app_access: AppAccess::AllApps,
        create_time: now,
        update_time: now,
        created_by: admin.clone(),
        state: AccountState::Active,
        labels: Default::default(),
        last_used_time: None,
        revision: 1,
    };
    let event = AuditEvent {
        id: AuditEventId::generate(),
        org_id: org.clone(),
        actor: admin,
        action: AuditAction::ServiceAccountCreate,
        target: Target::ServiceAccount(account.id),
        request_id: "request".into(),
        create_time: now,
        details: "{}".into(),
        validate_only: false,
    };
    db.create_service_account(&account, 10, &event)
        .await
        .unwrap();
    account.id
}

const ACCOUNTS: usize = 60;
const LABEL_KEYS: [&str; 3] = ["team", "tier", "app.embrace.io/managed-by"];
const LABEL_VALUES: [&str; 3] = ["platform", "", "apply"];

async fn accounts_agree_with_the_domain(db: &Database) {
    let mut rng = StdRng::seed_from_u64(23);
    let org = OrgId::parse("labelled").unwrap();
    let mut visible = Vec::new();
    for n in 0..ACCOUNTS {
        // Every fifth in another org, every seventh deleted.
        let owner = if n % 5 == 4 {
            OrgId::parse("labelled-other").unwrap()
        } else {
            org.clone()
        };
        let account = random_account(&mut rng, &owner, n);
        create(db, &account).await;
        if n % 7 == 6 {
            service_account::Entity::update_many()
                .col_expr(
                    service_account::Column::DeletedAt,
                    sea_orm::sea_query::Expr::value(time::now()),
                )
                .filter(service_account::Column::Id.eq(account.id.to_string()))
                .exec(&db.db)
                .await
                .unwrap();
        } else if owner == org {
            visible.push(account);
        }
    }
    let names: Vec<DisplayName> = visible.iter().map(|a| a.display_name.clone()).collect();
    for case in 0..FILTERS {
        let filter = (case > 0).then(|| random_account_cond(&mut rng, &names, 3));
        let mut query = AccountQuery {
            org: org.clone(),
            filter: filter.clone(),
            after: None,
            limit: rng.random_range(1..=12),
        };
        let expected: Vec<ServiceAccountId> = visible
            .iter()
            .filter(|a| {
                filter
                    .as_ref()
                    .is_none_or(|f| f.holds(&|p: &AccountPredicate| p.holds(a)))
            })
            .map(|a| a.id)
            .collect();
        let mut listed = Vec::new();
        loop {
            let page = db.list_service_accounts(&query).await.unwrap();
            listed.extend(page.iter().map(|a| a.id));
            // Read back with its labels as stored.
            for account in &page {
                let original = visible.iter().find(|a| a.id == account.id).unwrap();
                assert_eq!(account.labels, original.labels);
            }
            if page.len() < query.limit as usize {
                break;
            }
            query.after = page.last().map(|a| a.id);
            assert!(listed.len() <= ACCOUNTS, "paging does not end");
        }
        assert_eq!(listed, expected, "filter {filter:?}");
    }
}

fn random_account(rng: &mut StdRng, org: &OrgId, n: usize) -> ServiceAccount {
    let now = time::now();
    let mut labels: Vec<(&str, &str)> = Vec::new();
    for key in LABEL_KEYS {
        if rng.random_bool(0.5) {
            labels.push((key, LABEL_VALUES.choose(rng).unwrap()));
        }
    }
    ServiceAccount {
        id: ServiceAccountId::generate(),
        org_id: org.clone(),
        display_name: DisplayName::parse(&format!("Account {n}")).unwrap(),
        description: Description::parse("").unwrap(),
        app_access: AppAccess::AllApps,
        create_time: now,
        update_time: now,
        created_by: UserId::parse("alice").unwrap(),
        state: *[AccountState::Active, AccountState::Disabled]
            .choose(rng)
            .unwrap(),
        labels: Labels::parse(labels).unwrap(),
        last_used_time: None,
        revision: 1,
    }
}

fn random_account_cond(
    rng: &mut StdRng,
    names: &[DisplayName],
    depth: u32,
) -> Cond<AccountPredicate> {
    if depth == 0 || rng.random_bool(0.4) {
        let key = LABEL_KEYS.choose(rng).unwrap().to_string();
        return Cond::Is(match rng.random_range(0..4) {
            0 => {
                // In another case: names match as uniqueness compares them.
                let name = names.choose(rng).unwrap().as_str().to_uppercase();
                AccountPredicate::DisplayName(DisplayName::parse(&name).unwrap())
            }
            1 => AccountPredicate::State(
                *[AccountState::Active, AccountState::Disabled]
                    .choose(rng)
                    .unwrap(),
            ),
            2 => AccountPredicate::Label {
                key,
                value: LABEL_VALUES.choose(rng).unwrap().to_string(),
            },
            _ => AccountPredicate::HasLabel(key),
        });
    }
    let kind = rng.random_range(0..3);
    let mut parts: Vec<_> = (0..rng.random_range(2..=3))
        .map(|_| random_account_cond(rng, names, depth - 1))
        .collect();
    match kind {
        0 => Cond::All(parts),
        1 => Cond::Any(parts),
        _ => Cond::Not(Box::new(parts.remove(0))),
    }
}

async fn create(db: &Database, account: &ServiceAccount) {
    let event = AuditEvent {
        id: AuditEventId::generate(),
        org_id: account.org_id.clone(),
        actor: account.created_by.clone(),
        action: AuditAction::ServiceAccountCreate,
        target: Target::ServiceAccount(account.id),
        request_id: "request".into(),
        create_time: account.create_time,
        details: "{}".into(),
        validate_only: false,
    };
    db.create_service_account(account, 1000, &event)
        .await
        .unwrap();
}
