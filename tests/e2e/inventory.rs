//! The org's token inventory (SPEC §22): `ListTokens` across every account (`-`), filtered with
//! AIP-160 expressions, ordered with `order_by`, paged with cursors bound to their query, and
//! never reaching past the caller's org.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{FixedOffset, TimeDelta, Utc};
use service_accounts_api::pb;
use service_accounts_api::pb::leak_reporting_client::LeakReportingClient;
use service_accounts_api::pb::token::{RevokeReason, State};

use crate::on_both_backends;
use crate::rotation::rotate;
use crate::support::*;

on_both_backends!(
    every_filter_field_and_operator_selects_exactly_the_matching_tokens_of_the_org,
    each_order_sorts_both_ways_with_ties_by_token_id_and_unset_times_at_the_documented_end,
    paging_a_filtered_list_while_tokens_are_created_and_revoked_returns_each_match_once,
    bad_filters_and_orders_are_refused_naming_the_field_and_the_position,
    a_page_token_works_only_with_the_account_filter_and_order_that_returned_it,
);

const CALL: &[&str] = &["mcp:tools:call"];
const READ: &[&str] = &["mcp:tools:call", "mcp:read"];
const WRITE: &[&str] = &["mcp:tools:call", "mcp:read", "mcp:write"];
const CALL_WRITE: &[&str] = &["mcp:tools:call", "mcp:write"];

/// Org A's tokens, oldest first (the default order), by the labels the tests use:
///
/// | label         | account | scopes          | expires      | used | by     | ends as          |
/// |---------------|---------|-----------------|--------------|------|--------|------------------|
/// | short         | deploy  | call            | soon (a tie) |      | admin  | EXPIRED          |
/// | short-revoked | deploy  | call            | soon (a tie) |      | admin  | REVOKED, ADMIN   |
/// | reader        | build   | call read       | never        | 1st  | admin  | ACTIVE           |
/// | writer        | build   | call read write | in 2 days    | 2nd  | admin  | ACTIVE           |
/// | ops           | deploy  | call write      | in 1 day     |      | second | ACTIVE           |
/// | revoked       | build   | call            | in 3 days    |      | admin  | REVOKED, ADMIN   |
/// | rotated       | deploy  | call read       | never        |      | admin  | REVOKED, ROTATED |
/// | rotated-new   | deploy  | call read       | never        |      | admin  | ACTIVE           |
/// | leaked        | build   | call            | never        | 3rd  | admin  | REVOKED, LEAKED  |
///
/// (`admin` is `admin-of-org-a`, `second` is `second-admin`.) Never listed to org A: `doomed`
/// (its account was deleted: ACCOUNT_DELETED) and `other-org` (org B's; active, used, every
/// scope).
const ALL: [&str; 9] = [
    "short",
    "short-revoked",
    "reader",
    "writer",
    "ops",
    "revoked",
    "rotated",
    "rotated-new",
    "leaked",
];

struct Inventory {
    app: TestApp,
    jwt: String,
    other_jwt: String,
    build: String,
    deploy: String,
    deleted: String,
    other_account: String,
    /// Token id → label, for every token made (org B's and the deleted account's too).
    labels: HashMap<String, &'static str>,
    /// Label → the token as its account's (pre-existing, unfiltered) listing shows it at the end.
    tokens: HashMap<&'static str, pb::Token>,
}

impl Inventory {
    async fn build(backend: Backend) -> Option<Inventory> {
        let app = Setup::new(backend)
            .last_used_flush_interval(Duration::from_millis(100))
            .start()
            .await?;
        let jwt = app.admin_jwt("org-a");
        let second = app.jwt("org-a", "second-admin", &["org_admin"]);
        let other_jwt = app.admin_jwt("org-b");
        let build = create_account(&app, &jwt, "Build bot", None)
            .await
            .service_account_id;
        let deploy = create_account(&app, &jwt, "Deploy bot", None)
            .await
            .service_account_id;
        let mut labels = HashMap::new();
        let mut secrets = HashMap::new();
        let mut made = |label: &'static str, (token, secret): (pb::Token, String)| {
            labels.insert(token.token_id.clone(), label);
            secrets.insert(label, secret);
            token
        };

        // The very same expiry, a few seconds away: `short` will expire; `short-revoked` is
        // revoked first, and stays REVOKED once past its expiry.
        let soon = Utc::now() + TimeDelta::seconds(3);
        let now = Utc::now();
        made(
            "short",
            issue_token(&app, &jwt, &deploy, "short", CALL, Some(soon)).await,
        );
        let short_revoked = made(
            "short-revoked",
            issue_token(&app, &jwt, &deploy, "short-revoked", CALL, Some(soon)).await,
        );
        revoke(&app, &jwt, &deploy, &short_revoked.token_id).await;
        made(
            "reader",
            issue_token(&app, &jwt, &build, "reader", READ, None).await,
        );
        made(
            "writer",
            issue_token(
                &app,
                &jwt,
                &build,
                "writer",
                WRITE,
                Some(now + TimeDelta::days(2)),
            )
            .await,
        );
        made(
            "ops",
            issue_token(
                &app,
                &second,
                &deploy,
                "ops",
                CALL_WRITE,
                Some(now + TimeDelta::days(1)),
            )
            .await,
        );
        let revoked = made(
            "revoked",
            issue_token(
                &app,
                &jwt,
                &build,
                "revoked",
                CALL,
                Some(now + TimeDelta::days(3)),
            )
            .await,
        );
        revoke(&app, &jwt, &build, &revoked.token_id).await;
        let rotated = made(
            "rotated",
            issue_token(&app, &jwt, &deploy, "rotated", READ, None).await,
        );
        let rotation = rotate(&app, &jwt, &deploy, &rotated.token_id, None)
            .await
            .expect("rotate without a grace period");
        made("rotated-new", (rotation.token.unwrap(), rotation.secret));
        made(
            "leaked",
            issue_token(&app, &jwt, &build, "leaked", CALL, None).await,
        );

        // A deleted account's token, and org B's, which must never be listed to org A.
        let deleted = create_account(&app, &jwt, "Doomed bot", None)
            .await
            .service_account_id;
        made(
            "doomed",
            issue_token(&app, &jwt, &deleted, "doomed", READ, None).await,
        );
        app.admin()
            .await
            .delete_service_account(authed(
                pb::DeleteServiceAccountRequest {
                    validate_only: false,
                    service_account_id: deleted.clone(),
                },
                &jwt,
            ))
            .await
            .expect("delete account");
        let other_account = create_account(&app, &other_jwt, "Org B bot", None)
            .await
            .service_account_id;
        let other = made(
            "other-org",
            issue_token(&app, &other_jwt, &other_account, "other-org", WRITE, None).await,
        );

        // Used in this order, far enough apart that the last-used times differ.
        for label in ["reader", "writer", "leaked"] {
            assert!(introspect(&app, &secrets[label], "", "", &[]).await.active);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            introspect(&app, &secrets["other-org"], "", "", &[])
                .await
                .active
        );
        Wait::new("the last uses are flushed")
            .until(async || {
                let tokens = tokens_of(&app, &jwt, &build).await;
                let used = tokens.iter().filter(|t| t.last_used_time.is_some()).count();
                let other = tokens_of(&app, &other_jwt, &other_account).await;
                used == 3 && other[0].last_used_time.is_some()
            })
            .await;
        let outcome = LeakReportingClient::new(app.channel().await)
            .report_leaked_tokens(pb::ReportLeakedTokensRequest {
                tokens: vec![secrets["leaked"].clone()],
                source: "https://example.com/paste".into(),
            })
            .await
            .expect("report a leak")
            .into_inner()
            .results[0]
            .outcome();
        assert_eq!(outcome, pb::LeakOutcome::Revoked);

        Wait::new("`short` is past its expiry")
            .until(async || {
                tokens_of(&app, &jwt, &deploy)
                    .await
                    .iter()
                    .any(|t| labels[&t.token_id] == "short" && t.state() == State::Expired)
            })
            .await;

        let mut tokens = HashMap::new();
        for token in [
            tokens_of(&app, &jwt, &build).await,
            tokens_of(&app, &jwt, &deploy).await,
            tokens_of(&app, &other_jwt, &other_account).await,
        ]
        .into_iter()
        .flatten()
        {
            tokens.insert(labels[&token.token_id], token);
        }
        // The scene is as the table says, read through the unfiltered per-account listing.
        let ends_as = |label: &str| {
            let token = &tokens[label];
            (token.state(), token.revoke_reason())
        };
        for (label, state, reason) in [
            ("short", State::Expired, RevokeReason::Unspecified),
            ("short-revoked", State::Revoked, RevokeReason::Admin),
            ("reader", State::Active, RevokeReason::Unspecified),
            ("writer", State::Active, RevokeReason::Unspecified),
            ("ops", State::Active, RevokeReason::Unspecified),
            ("revoked", State::Revoked, RevokeReason::Admin),
            ("rotated", State::Revoked, RevokeReason::Rotated),
            ("rotated-new", State::Active, RevokeReason::Unspecified),
            ("leaked", State::Revoked, RevokeReason::Leaked),
            ("other-org", State::Active, RevokeReason::Unspecified),
        ] {
            assert_eq!(ends_as(label), (state, reason), "{label}");
        }
        let expiring: Vec<&str> = ALL
            .into_iter()
            .filter(|label| tokens[label].expire_time.is_some())
            .collect();
        assert_eq!(
            expiring,
            ["short", "short-revoked", "writer", "ops", "revoked"]
        );
        assert_eq!(
            tokens["short"].expire_time,
            tokens["short-revoked"].expire_time
        );
        assert_eq!(tokens["ops"].created_by, "second-admin");
        assert_eq!(tokens["rotated-new"].created_by, "admin-of-org-a");
        assert_eq!(tokens.len(), 10);
        assert_eq!(other.created_by, "admin-of-org-b");

        Some(Inventory {
            app,
            jwt,
            other_jwt,
            build,
            deploy,
            deleted,
            other_account,
            labels,
            tokens,
        })
    }

    /// The labels of `tokens`, in order; a token this scene did not make shows as its id.
    fn label(&self, tokens: &[pb::Token]) -> Vec<String> {
        tokens
            .iter()
            .map(|t| match self.labels.get(&t.token_id) {
                Some(label) => label.to_string(),
                None => format!("unknown token {}", t.token_id),
            })
            .collect()
    }

    /// What org A's `-` listing returns for `filter` (default order, one page).
    async fn matching(&self, filter: &str) -> Vec<String> {
        self.listed(&self.jwt, "-", filter, "", 1000).await
    }

    async fn listed(
        &self,
        jwt: &str,
        account: &str,
        filter: &str,
        order_by: &str,
        page_size: i32,
    ) -> Vec<String> {
        let tokens = list_all_tokens(&self.app, jwt, account, filter, order_by, page_size)
            .await
            .unwrap_or_else(|status| {
                panic!("filter {filter:?} order_by {order_by:?} refused: {status:?}")
            });
        self.label(&tokens)
    }

    /// The labels sorted by token id (how ties are broken, ascending).
    fn by_id(&self, labels: &[&'static str]) -> Vec<&'static str> {
        let mut sorted = labels.to_vec();
        sorted.sort_by_key(|label| self.tokens[label].token_id.clone());
        sorted
    }

    fn time(&self, label: &str, field: &str) -> String {
        let token = &self.tokens[label];
        rfc3339(match field {
            "create_time" => &token.create_time,
            "expire_time" => &token.expire_time,
            "last_used_time" => &token.last_used_time,
            _ => unreachable!(),
        })
    }
}

fn all_but(excluded: &[&str]) -> Vec<&'static str> {
    ALL.into_iter().filter(|l| !excluded.contains(l)).collect()
}

async fn every_filter_field_and_operator_selects_exactly_the_matching_tokens_of_the_org(
    backend: Backend,
) {
    let Some(inv) = Inventory::build(backend).await else {
        return;
    };
    let audit_before = audit_actions(&inv.app, &inv.jwt).await;

    // `-`: every account of the org; not the deleted account's tokens, not org B's.
    assert_eq!(inv.matching("").await, ALL);
    assert_eq!(
        inv.listed(&inv.other_jwt, "-", "", "", 1000).await,
        ["other-org"]
    );

    let created = inv.time("reader", "create_time");
    let expires = inv.time("ops", "expire_time");
    let used = inv.time("writer", "last_used_time");
    // The same instant written with another offset.
    let created_elsewhere = chrono::DateTime::parse_from_rfc3339(&created)
        .unwrap()
        .with_timezone(&FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    let (build, deploy) = (&inv.build, &inv.deploy);
    let cases: Vec<(String, Vec<&str>)> = vec![
        // state: ACTIVE is neither revoked nor expired; revoked wins over expired.
        (
            "state = ACTIVE".into(),
            vec!["reader", "writer", "ops", "rotated-new"],
        ),
        ("state = EXPIRED".into(), vec!["short"]),
        (
            "state = REVOKED".into(),
            vec!["short-revoked", "revoked", "rotated", "leaked"],
        ),
        (
            "state != ACTIVE".into(),
            vec!["short", "short-revoked", "revoked", "rotated", "leaked"],
        ),
        // service_account_id, bare or quoted.
        (
            format!("service_account_id = {build}"),
            vec!["reader", "writer", "revoked", "leaked"],
        ),
        (
            format!("service_account_id = \"{deploy}\""),
            vec!["short", "short-revoked", "ops", "rotated", "rotated-new"],
        ),
        (
            format!("service_account_id != \"{build}\""),
            vec!["short", "short-revoked", "ops", "rotated", "rotated-new"],
        ),
        (format!("service_account_id = \"{}\"", inv.deleted), vec![]),
        (
            format!("service_account_id = \"{}\"", inv.other_account),
            vec![],
        ),
        // scopes: `:` asks whether the list holds the scope.
        ("scopes:\"mcp:write\"".into(), vec!["writer", "ops"]),
        (
            "scopes:\"mcp:read\"".into(),
            vec!["reader", "writer", "rotated", "rotated-new"],
        ),
        ("scopes:\"mcp:tools:call\"".into(), ALL.to_vec()),
        (
            "NOT scopes:\"mcp:read\"".into(),
            vec!["short", "short-revoked", "ops", "revoked", "leaked"],
        ),
        // revoke_reason: `!=` is the negation of `=`, so it matches tokens not revoked.
        (
            "revoke_reason = ADMIN".into(),
            vec!["short-revoked", "revoked"],
        ),
        ("revoke_reason = ROTATED".into(), vec!["rotated"]),
        ("revoke_reason = LEAKED".into(), vec!["leaked"]),
        ("revoke_reason = ACCOUNT_DELETED".into(), vec![]),
        (
            "revoke_reason != ADMIN".into(),
            all_but(&["short-revoked", "revoked"]),
        ),
        (
            "revoke_reason:*".into(),
            vec!["short-revoked", "revoked", "rotated", "leaked"],
        ),
        (
            "NOT revoke_reason:*".into(),
            vec!["short", "reader", "writer", "ops", "rotated-new"],
        ),
        // created_by: the admin's user id, quoted or bare.
        ("created_by = \"second-admin\"".into(), vec!["ops"]),
        ("created_by != \"second-admin\"".into(), all_but(&["ops"])),
        ("created_by = admin-of-org-a".into(), all_but(&["ops"])),
        ("created_by = \"admin-of-org-b\"".into(), vec![]),
        // create_time: every comparison.
        (format!("create_time = \"{created}\""), vec!["reader"]),
        (
            format!("create_time != \"{created}\""),
            all_but(&["reader"]),
        ),
        (
            format!("create_time < \"{created}\""),
            vec!["short", "short-revoked"],
        ),
        (
            format!("create_time <= \"{created}\""),
            vec!["short", "short-revoked", "reader"],
        ),
        (
            format!("create_time > \"{created}\""),
            all_but(&["short", "short-revoked", "reader"]),
        ),
        (
            format!("create_time >= \"{created}\""),
            all_but(&["short", "short-revoked"]),
        ),
        (
            format!("create_time > \"{created_elsewhere}\""),
            all_but(&["short", "short-revoked", "reader"]),
        ),
        // expire_time: a token that never expires is not before or after anything, but it is
        // "not equal" to every time.
        (format!("expire_time = \"{expires}\""), vec!["ops"]),
        (format!("expire_time != \"{expires}\""), all_but(&["ops"])),
        (
            format!("expire_time < \"{expires}\""),
            vec!["short", "short-revoked"],
        ),
        (
            format!("expire_time <= \"{expires}\""),
            vec!["short", "short-revoked", "ops"],
        ),
        (
            format!("expire_time > \"{expires}\""),
            vec!["writer", "revoked"],
        ),
        (
            format!("expire_time >= \"{expires}\""),
            vec!["writer", "ops", "revoked"],
        ),
        (
            "expire_time:*".into(),
            vec!["short", "short-revoked", "writer", "ops", "revoked"],
        ),
        (
            "NOT expire_time:*".into(),
            vec!["reader", "rotated", "rotated-new", "leaked"],
        ),
        // last_used_time: likewise for a token never used.
        (format!("last_used_time = \"{used}\""), vec!["writer"]),
        (
            format!("last_used_time != \"{used}\""),
            all_but(&["writer"]),
        ),
        (format!("last_used_time < \"{used}\""), vec!["reader"]),
        (
            format!("last_used_time <= \"{used}\""),
            vec!["reader", "writer"],
        ),
        (format!("last_used_time > \"{used}\""), vec!["leaked"]),
        (
            format!("last_used_time >= \"{used}\""),
            vec!["writer", "leaked"],
        ),
        (
            "last_used_time:*".into(),
            vec!["reader", "writer", "leaked"],
        ),
        (
            "NOT last_used_time:*".into(),
            all_but(&["reader", "writer", "leaked"]),
        ),
        // AND, juxtaposition, OR, NOT and parentheses.
        (
            "state = ACTIVE AND scopes:\"mcp:read\"".into(),
            vec!["reader", "writer", "rotated-new"],
        ),
        (
            "state = ACTIVE scopes:\"mcp:read\"".into(),
            vec!["reader", "writer", "rotated-new"],
        ),
        (
            "state = ACTIVE AND NOT last_used_time:*".into(),
            vec!["ops", "rotated-new"],
        ),
        (
            "state = EXPIRED OR revoke_reason = LEAKED".into(),
            vec!["short", "leaked"],
        ),
        // OR binds tighter than AND: ACTIVE AND (write OR never expires).
        (
            "state = ACTIVE AND scopes:\"mcp:write\" OR NOT expire_time:*".into(),
            vec!["reader", "writer", "ops", "rotated-new"],
        ),
        (
            "scopes:\"mcp:write\" OR NOT expire_time:* AND state = ACTIVE".into(),
            vec!["reader", "writer", "ops", "rotated-new"],
        ),
        (
            "(state = ACTIVE AND scopes:\"mcp:write\") OR NOT expire_time:*".into(),
            vec![
                "reader",
                "writer",
                "ops",
                "rotated",
                "rotated-new",
                "leaked",
            ],
        ),
        (
            "NOT (state = REVOKED OR state = EXPIRED)".into(),
            vec!["reader", "writer", "ops", "rotated-new"],
        ),
        (
            "NOT state = ACTIVE AND NOT revoke_reason:*".into(),
            vec!["short"],
        ),
        (
            format!(
                "service_account_id = {deploy} AND (scopes:\"mcp:read\" OR expire_time < \"{expires}\")"
            ),
            vec!["short", "short-revoked", "rotated", "rotated-new"],
        ),
        (
            format!("((created_by = \"second-admin\") OR (last_used_time > \"{used}\"))"),
            vec!["ops", "leaked"],
        ),
    ];
    for (filter, expected) in &cases {
        assert_eq!(&inv.matching(filter).await, expected, "filter {filter:?}");
    }

    // The filter narrows one account's listing too.
    assert_eq!(
        inv.listed(&inv.jwt, build, "state = ACTIVE", "", 1000)
            .await,
        ["reader", "writer"]
    );
    assert_eq!(
        inv.listed(&inv.jwt, deploy, "created_by = \"second-admin\"", "", 1000)
            .await,
        ["ops"]
    );

    // Org B's listing, whatever the filter, holds only its own token.
    for filter in [
        "state = ACTIVE",
        "created_by = \"admin-of-org-a\"",
        "scopes:\"mcp:read\"",
        "NOT last_used_time:*",
        "revoke_reason:*",
    ] {
        let expected: &[&str] = match filter {
            "state = ACTIVE" | "scopes:\"mcp:read\"" => &["other-org"],
            _ => &[],
        };
        assert_eq!(
            inv.listed(&inv.other_jwt, "-", filter, "", 1000).await,
            expected,
            "org B, filter {filter:?}"
        );
    }
    let by_account = format!("service_account_id = \"{build}\"");
    assert_eq!(
        inv.listed(&inv.other_jwt, "-", &by_account, "", 1000).await,
        Vec::<String>::new()
    );

    // Listed tokens carry what they were selected by.
    let expired = list_all_tokens(&inv.app, &inv.jwt, "-", "state = EXPIRED", "", 10)
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].state(), State::Expired);
    assert_eq!(expired[0], inv.tokens["short"]);

    assert_eq!(audit_actions(&inv.app, &inv.jwt).await, audit_before);
}

async fn each_order_sorts_both_ways_with_ties_by_token_id_and_unset_times_at_the_documented_end(
    backend: Backend,
) {
    let Some(inv) = Inventory::build(backend).await else {
        return;
    };
    let by_expiry: Vec<&str> = [
        // The same expiry: a tie, broken by token id.
        inv.by_id(&["short", "short-revoked"]),
        vec!["ops", "writer", "revoked"],
        // Never expires: after every expiry.
        inv.by_id(&["reader", "rotated", "rotated-new", "leaked"]),
    ]
    .concat();
    let by_use: Vec<&str> = [
        // Never used: before every use.
        inv.by_id(&[
            "short",
            "short-revoked",
            "ops",
            "revoked",
            "rotated",
            "rotated-new",
        ]),
        vec!["reader", "writer", "leaked"],
    ]
    .concat();
    for (field, ascending) in [
        ("create_time", ALL.to_vec()),
        ("expire_time", by_expiry),
        ("last_used_time", by_use),
    ] {
        let descending: Vec<&str> = ascending.iter().rev().copied().collect();
        // Small pages put the cursor on every kind of row, unset times included.
        for page_size in [1000, 1, 2, 3] {
            for (order_by, expected) in [
                (field.to_string(), &ascending),
                (format!("{field} asc"), &ascending),
                (format!("{field} desc"), &descending),
            ] {
                assert_eq!(
                    &inv.listed(&inv.jwt, "-", "", &order_by, page_size).await,
                    expected,
                    "order_by {order_by:?}, pages of {page_size}"
                );
            }
        }
    }

    // No order_by: oldest first.
    assert_eq!(inv.listed(&inv.jwt, "-", "", "", 2).await, ALL);

    // Ordered and filtered, in one account and across the org.
    let active_by_expiry: Vec<&str> =
        [vec!["ops", "writer"], inv.by_id(&["reader", "rotated-new"])].concat();
    let reversed: Vec<&str> = active_by_expiry.iter().rev().copied().collect();
    assert_eq!(
        inv.listed(&inv.jwt, "-", "state = ACTIVE", "expire_time", 1)
            .await,
        active_by_expiry
    );
    assert_eq!(
        inv.listed(&inv.jwt, "-", "state = ACTIVE", "expire_time desc", 3)
            .await,
        reversed
    );
    assert_eq!(
        inv.listed(
            &inv.jwt,
            &inv.build,
            "NOT state = EXPIRED",
            "last_used_time desc",
            2
        )
        .await,
        ["leaked", "writer", "reader", "revoked"]
    );
    assert_eq!(
        inv.listed(&inv.jwt, &inv.deploy, "", "create_time desc", 2)
            .await,
        ["rotated-new", "rotated", "ops", "short-revoked", "short"]
    );
}

/// How a listing orders tokens: (unset-last rank, time, id) compared ascending.
type SortKey = (bool, (i64, i32), String);

fn expire_key(t: &pb::Token) -> SortKey {
    let time = t.expire_time.as_ref().map(|e| (e.seconds, e.nanos));
    (time.is_none(), time.unwrap_or_default(), t.token_id.clone())
}

fn create_key(t: &pb::Token) -> SortKey {
    (false, instant(&t.create_time), t.token_id.clone())
}

async fn paging_a_filtered_list_while_tokens_are_created_and_revoked_returns_each_match_once(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut accounts = Vec::new();
    for name in ["Alpha", "Beta", "Gamma"] {
        accounts.push(
            create_account(&app, &jwt, name, None)
                .await
                .service_account_id,
        );
    }
    let gamma = accounts[2].clone();
    let now = Utc::now();
    for i in 0..24i64 {
        let scopes = if i % 2 == 0 { READ } else { CALL };
        let expiry = match i % 4 {
            0 | 3 => None,
            1 => Some(now + TimeDelta::days(10 + i)),
            _ => Some(now + TimeDelta::days(40 - i)),
        };
        let account = &accounts[(i % 3) as usize];
        issue_token(&app, &jwt, account, &format!("t{i}"), scopes, expiry).await;
    }
    // Tokens that mention `mcp:read`, outside Gamma: revoking one does not change that.
    let filter = format!("scopes:\"mcp:read\" AND service_account_id != \"{gamma}\"");
    let matches =
        |t: &pb::Token| t.scopes.iter().any(|s| s == "mcp:read") && t.service_account_id != gamma;

    let mut made = 0;
    for (order_by, key) in [
        ("create_time", create_key as fn(&pb::Token) -> SortKey),
        ("create_time desc", create_key),
        ("expire_time", expire_key),
        ("expire_time desc", expire_key),
    ] {
        let descending = order_by.ends_with(" desc");
        // What matches at the start, in order: read through the plain per-account listings.
        let mut initial = Vec::new();
        for account in &accounts {
            initial.extend(tokens_of(&app, &jwt, account).await);
        }
        initial.retain(|t| matches(t));
        initial.sort_by_key(key);
        if descending {
            initial.reverse();
        }
        let initial_ids: Vec<String> = initial.iter().map(|t| t.token_id.clone()).collect();
        assert!(initial_ids.len() >= 8, "{}", initial_ids.len());

        let mut admin = app.admin().await;
        let mut listed: Vec<pb::Token> = Vec::new();
        let mut page_token = String::new();
        let mut pages = 0;
        let mut revoked = HashSet::new();
        loop {
            let page = admin
                .list_tokens(authed(
                    pb::ListTokensRequest {
                        service_account_id: "-".into(),
                        page_size: 3,
                        page_token: page_token.clone(),
                        filter: filter.clone(),
                        order_by: order_by.into(),
                    },
                    &jwt,
                ))
                .await
                .unwrap_or_else(|s| panic!("{order_by}: page {pages}: {s:?}"))
                .into_inner();
            assert!(page.tokens.len() <= 3);
            listed.extend(page.tokens);
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            assert!(pages < 100, "{order_by}: the pages never end");
            page_token = page.next_page_token;
            // Between pages: new tokens, matching and not, expiring before and after the
            // cursor or never; and a token that matches and is not listed yet is revoked.
            made += 1;
            let expiry = match made % 3 {
                0 => None,
                1 => Some(now + TimeDelta::days(1)),
                _ => Some(now + TimeDelta::days(60)),
            };
            let alpha = &accounts[0];
            issue_token(&app, &jwt, alpha, &format!("new{made}"), READ, expiry).await;
            issue_token(&app, &jwt, &gamma, &format!("new{made}-g"), READ, expiry).await;
            issue_token(&app, &jwt, alpha, &format!("new{made}-c"), CALL, expiry).await;
            let seen: HashSet<&String> = listed.iter().map(|t| &t.token_id).collect();
            if let Some(ahead) = initial.iter().rev().find(|t| {
                !seen.contains(&t.token_id)
                    && t.revoke_time.is_none()
                    && !revoked.contains(&t.token_id)
            }) {
                revoke(&app, &jwt, &ahead.service_account_id, &ahead.token_id).await;
                revoked.insert(ahead.token_id.clone());
            }
        }

        let ids: Vec<&String> = listed.iter().map(|t| &t.token_id).collect();
        let unique: HashSet<&String> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{order_by}: a token came twice");
        for token in &listed {
            assert!(matches(token), "{order_by}: {token:?} does not match");
        }
        let from_the_start: Vec<String> = ids
            .iter()
            .filter(|id| initial_ids.contains(id))
            .map(|id| id.to_string())
            .collect();
        assert_eq!(
            from_the_start, initial_ids,
            "{order_by}: every token that matched at the start, once, in order"
        );
        // Tokens made while paging appear only where they sort after the cursor: the whole
        // listing stays in order.
        let keys: Vec<SortKey> = listed.iter().map(key).collect();
        for pair in keys.windows(2) {
            let in_order = if descending {
                pair[0] > pair[1]
            } else {
                pair[0] < pair[1]
            };
            assert!(in_order, "{order_by}: out of order: {pair:?}");
        }
    }
}

async fn bad_filters_and_orders_are_refused_naming_the_field_and_the_position(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    create_token(&app, &jwt, &account, READ).await;
    let audit_before = audit_actions(&app, &jwt).await;
    let list = async |account: &str, filter: &str, order_by: &str| {
        list_all_tokens(&app, &jwt, account, filter, order_by, 10).await
    };

    // (filter, where the refusal points: the first character of this text, or the end).
    const END: &str = "<end>";
    let cases: Vec<(String, &str)> = vec![
        // Unknown fields: the name.
        ("colour = \"red\"".into(), "colour"),
        ("state = ACTIVE AND colour = \"red\"".into(), "colour"),
        ("display_name = \"Bot\"".into(), "display_name"),
        ("revoke_time:*".into(), "revoke_time"),
        // Positions count characters, not bytes.
        (
            "created_by = \"Zoë Ünal\" AND colour = \"red\"".into(),
            "colour",
        ),
        // An operator the field does not take: the field.
        ("state < ACTIVE".into(), "state"),
        ("scopes = \"mcp:read\"".into(), "scopes"),
        ("created_by > \"a\"".into(), "created_by"),
        ("NOT revoke_reason >= ADMIN".into(), "revoke_reason"),
        (
            "state = ACTIVE AND service_account_id:\"x\"".into(),
            "service_account_id",
        ),
        // Bad values: the value.
        ("state = DORMANT".into(), "DORMANT"),
        ("revoke_reason = EXPIRED".into(), "EXPIRED"),
        ("create_time > \"yesterday\"".into(), "\"yesterday"),
        ("expire_time < \"2026-01-31\"".into(), "\"2026"),
        ("last_used_time >= 2026".into(), "2026"),
        ("scopes:\"mcp:admin\"".into(), "\"mcp:admin"),
        (
            "service_account_id = \"not-an-account\"".into(),
            "\"not-an-account",
        ),
        ("state:*".into(), "*"),
        ("expire_time = *".into(), "*"),
        // Broken syntax.
        ("(state = ACTIVE".into(), END),
        ("state = ACTIVE AND".into(), END),
        ("state = ACTIVE OR".into(), END),
        ("NOT".into(), END),
        ("state =".into(), END),
        ("created_by = \"admin".into(), "\"admin"),
        ("state = ACTIVE)".into(), ")"),
        ("state ! ACTIVE".into(), "!"),
        ("AND state = ACTIVE".into(), "AND"),
        ("state = ACTIVE OR OR state = EXPIRED".into(), "OR state"),
        ("state == ACTIVE".into(), "= ACTIVE"),
        ("state = ACTIVE; DROP TABLE tokens".into(), ";"),
    ];
    for (filter, at) in &cases {
        let position = if *at == END {
            filter.chars().count() + 1
        } else {
            position_of(filter, at)
        };
        let result = list("-", filter, "").await;
        assert!(result.is_err(), "filter {filter:?} was accepted");
        assert_invalid_at(result, "filter", position);
    }
    // One account's listing refuses the same way.
    assert_invalid_at(list(&account, "colour = \"red\"", "").await, "filter", 1);

    // At most 2048 characters (spaces count).
    let longest = format!("created_by = \"nobody\"{}", " ".repeat(2048 - 21));
    assert_eq!(longest.len(), 2048);
    assert!(list("-", &longest, "").await.unwrap().is_empty());
    let too_long = format!("{longest} ");
    assert_invalid(list("-", &too_long, "").await, &["filter"]);

    for order_by in [
        "display_name",
        "revoke_time",
        "create_time descending",
        "expire_time desc desc",
        "create_time, expire_time",
        "desc",
        "-create_time",
    ] {
        let result = list("-", "", order_by).await;
        assert!(result.is_err(), "order_by {order_by:?} was accepted");
        assert_invalid(result, &["order_by"]);
    }

    assert_eq!(audit_actions(&app, &jwt).await, audit_before);
}

async fn a_page_token_works_only_with_the_account_filter_and_order_that_returned_it(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let alpha = create_account(&app, &jwt, "Alpha", None)
        .await
        .service_account_id;
    let beta = create_account(&app, &jwt, "Beta", None)
        .await
        .service_account_id;
    for account in [&alpha, &beta, &alpha, &beta, &alpha] {
        create_token(&app, &jwt, account, READ).await;
        create_token(&app, &jwt, account, CALL).await;
    }
    let mut admin = app.admin().await;
    let mut page = async |account: &str, filter: &str, order_by: &str, page_token: &str| {
        admin
            .list_tokens(authed(
                pb::ListTokensRequest {
                    service_account_id: account.into(),
                    page_size: 2,
                    page_token: page_token.into(),
                    filter: filter.into(),
                    order_by: order_by.into(),
                },
                &jwt,
            ))
            .await
            .map(|r| r.into_inner())
    };
    let filter = "scopes:\"mcp:read\"";
    let order = "create_time desc";
    let first = page("-", filter, order, "").await.unwrap();
    assert_eq!(first.tokens.len(), 2);
    let cursor = first.next_page_token.clone();
    assert!(!cursor.is_empty());

    // The same query goes on.
    let second = page("-", filter, order, &cursor).await.unwrap();
    assert_eq!(second.tokens.len(), 2);
    assert!(
        second
            .tokens
            .iter()
            .all(|t| !first.tokens.iter().any(|f| f.token_id == t.token_id))
    );

    // Any other query refuses the cursor.
    for (account, filter, order_by) in [
        ("-", "scopes:\"mcp:write\"", order),
        ("-", "", order),
        ("-", "scopes:\"mcp:read\" AND state = ACTIVE", order),
        ("-", filter, "create_time"),
        ("-", filter, "expire_time desc"),
        ("-", filter, ""),
        (alpha.as_str(), filter, order),
    ] {
        let result = page(account, filter, order_by, &cursor).await;
        assert!(
            result.is_err(),
            "account {account:?}, filter {filter:?}, order_by {order_by:?} took the cursor"
        );
        assert_invalid(result, &["page_token"]);
    }

    // A cursor from one account's listing is not one for the org's, nor another account's.
    let of_alpha = page(&alpha, "", "", "").await.unwrap().next_page_token;
    assert!(!of_alpha.is_empty());
    assert!(page(&alpha, "", "", &of_alpha).await.is_ok());
    assert_invalid(page("-", "", "", &of_alpha).await, &["page_token"]);
    assert_invalid(page(&beta, "", "", &of_alpha).await, &["page_token"]);
}
