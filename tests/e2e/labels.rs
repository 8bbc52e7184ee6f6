//! Account labels and the account filter (SPEC §23): labels set on create, replaced by an
//! update naming them, checked as Kubernetes checks them; `ListServiceAccounts.filter` on
//! `display_name`, `state` and `labels.<key>`, paged with tokens bound to the filter.

use std::collections::HashMap;

use service_accounts_api::pb;
use service_accounts_api::pb::service_account_admin_client::ServiceAccountAdminClient;
use service_accounts_domain::error::quote;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    labels_set_on_create_are_shown_by_get_and_list_and_audited,
    an_update_naming_labels_replaces_them_and_one_without_a_mask_changes_them_only_when_given,
    an_account_has_at_most_thirty_two_labels,
    every_bad_label_is_refused_with_its_field_path_and_nothing_is_written,
    accounts_are_found_by_label_name_and_state,
    a_filtered_listing_pages_with_tokens_bound_to_its_filter,
    another_orgs_accounts_are_never_listed_whatever_the_filter,
    bad_account_filters_are_refused_at_their_position,
);

const MANAGED_BY: &str = "app.embrace.io/managed-by";

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn create(
    admin: &mut ServiceAccountAdminClient<Channel>,
    jwt: &str,
    name: &str,
    pairs: &[(&str, &str)],
) -> Result<pb::ServiceAccount, Status> {
    Ok(admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: name.into(),
                labels: labels(pairs),
                ..Default::default()
            },
            jwt,
        ))
        .await?
        .into_inner()
        .service_account
        .expect("account"))
}

async fn update(
    admin: &mut ServiceAccountAdminClient<Channel>,
    jwt: &str,
    account: pb::ServiceAccount,
    mask: Option<&[&str]>,
) -> Result<pb::ServiceAccount, Status> {
    Ok(admin
        .update_service_account(authed(
            pb::UpdateServiceAccountRequest {
                service_account: Some(account),
                update_mask: mask.map(|paths| prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
                validate_only: false,
            },
            jwt,
        ))
        .await?
        .into_inner()
        .service_account
        .expect("account"))
}

async fn get(
    admin: &mut ServiceAccountAdminClient<Channel>,
    jwt: &str,
    id: &str,
) -> pb::ServiceAccount {
    admin
        .get_service_account(authed(
            pb::GetServiceAccountRequest {
                service_account_id: id.into(),
            },
            jwt,
        ))
        .await
        .expect("get account")
        .into_inner()
        .service_account
        .expect("account")
}

/// Every account `filter` lists, following pages of `page_size`.
async fn list(
    admin: &mut ServiceAccountAdminClient<Channel>,
    jwt: &str,
    filter: &str,
    page_size: i32,
) -> Result<Vec<pb::ServiceAccount>, Status> {
    let mut accounts = Vec::new();
    let mut page_token = String::new();
    for _ in 0..1000 {
        let page = admin
            .list_service_accounts(authed(
                pb::ListServiceAccountsRequest {
                    page_size,
                    page_token: page_token.clone(),
                    filter: filter.into(),
                },
                jwt,
            ))
            .await?
            .into_inner();
        assert!(page_size <= 0 || page.service_accounts.len() <= page_size as usize);
        accounts.extend(page.service_accounts);
        if page.next_page_token.is_empty() {
            return Ok(accounts);
        }
        page_token = page.next_page_token;
    }
    panic!("ListServiceAccounts kept returning pages");
}

/// The display names `filter` lists, in listing order.
async fn names(
    admin: &mut ServiceAccountAdminClient<Channel>,
    jwt: &str,
    filter: &str,
) -> Vec<String> {
    list(admin, jwt, filter, 1000)
        .await
        .unwrap_or_else(|e| panic!("{filter}: {e:?}"))
        .into_iter()
        .map(|a| a.display_name)
        .collect()
}

/// The descriptions of a status's `BadRequest` violations.
fn descriptions(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| v.description)
                .collect()
        })
        .unwrap_or_default()
}

/// The `details` of the org's audit events, parsed, by action.
async fn audited(app: &TestApp, jwt: &str) -> Vec<(String, serde_json::Value)> {
    audit_events(app, jwt)
        .await
        .into_iter()
        .map(|e| (e.action, serde_json::from_str(&e.details).expect("JSON")))
        .collect()
}

async fn labels_set_on_create_are_shown_by_get_and_list_and_audited(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let given = [("team", "platform"), (MANAGED_BY, "apply"), ("empty", "")];
    let created = create(&mut admin, &jwt, "CI Pipeline", &given)
        .await
        .unwrap();
    assert_eq!(created.labels, labels(&given));
    let plain = create(&mut admin, &jwt, "Plain", &[]).await.unwrap();
    assert!(plain.labels.is_empty());

    assert_eq!(
        get(&mut admin, &jwt, &created.service_account_id).await,
        created
    );
    assert_eq!(
        list(&mut admin, &jwt, "", 0).await.unwrap(),
        [created.clone(), plain]
    );
    let events = audited(&app, &jwt).await;
    assert_eq!(events[0].0, "service_account.create");
    assert_eq!(
        events[0].1["labels"],
        serde_json::json!({"team": "platform", MANAGED_BY: "apply", "empty": ""})
    );
    assert_eq!(events[1].1["labels"], serde_json::json!({}));
}

async fn an_update_naming_labels_replaces_them_and_one_without_a_mask_changes_them_only_when_given(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let account = create(
        &mut admin,
        &jwt,
        "Bot",
        &[("team", "platform"), ("tier", "1")],
    )
    .await
    .unwrap();
    let id = account.service_account_id.clone();
    let patch = |pairs: &[(&str, &str)], description: &str| pb::ServiceAccount {
        service_account_id: id.clone(),
        description: description.into(),
        labels: labels(pairs),
        ..Default::default()
    };

    // The mask `labels` replaces the whole map: `tier` is gone, `owner` is new.
    let replaced = update(
        &mut admin,
        &jwt,
        patch(&[("team", "web"), ("owner", "ana")], "ignored"),
        Some(&["labels"]),
    )
    .await
    .unwrap();
    assert_eq!(
        replaced.labels,
        labels(&[("team", "web"), ("owner", "ana")])
    );
    assert_eq!(replaced.description, account.description, "not in the mask");
    assert_ne!(
        replaced.etag, account.etag,
        "labels are part of the version"
    );
    assert_eq!(get(&mut admin, &jwt, &id).await, replaced);

    // Without a mask, labels left empty are left as they are…
    let described = update(&mut admin, &jwt, patch(&[], "Deploys"), None)
        .await
        .unwrap();
    assert_eq!(described.labels, replaced.labels);
    assert_eq!(described.description, "Deploys");
    // …and given ones replace them.
    let relabelled = update(&mut admin, &jwt, patch(&[("team", "ops")], ""), None)
        .await
        .unwrap();
    assert_eq!(relabelled.labels, labels(&[("team", "ops")]));
    assert_eq!(relabelled.description, "Deploys");

    // The same labels again change nothing: no write, no event, the same etag.
    let before = audit_events(&app, &jwt).await.len();
    let same = update(
        &mut admin,
        &jwt,
        patch(&[("team", "ops")], ""),
        Some(&["labels"]),
    )
    .await
    .unwrap();
    assert_eq!(same, relabelled);
    assert_eq!(audit_events(&app, &jwt).await.len(), before);

    // `*` covers labels too, and an empty map named in the mask clears them.
    let cleared = update(
        &mut admin,
        &jwt,
        pb::ServiceAccount {
            display_name: "Bot".into(),
            ..patch(&[], "Deploys")
        },
        Some(&["*"]),
    )
    .await
    .unwrap();
    assert!(cleared.labels.is_empty(), "{cleared:?}");
    assert!(get(&mut admin, &jwt, &id).await.labels.is_empty());

    let events = audited(&app, &jwt).await;
    let updates: Vec<&serde_json::Value> = events
        .iter()
        .filter(|(action, _)| action == "service_account.update")
        .map(|(_, details)| &details["labels"])
        .collect();
    assert_eq!(
        updates,
        [
            &serde_json::json!({"team": "web", "owner": "ana"}),
            &serde_json::Value::Null,
            &serde_json::json!({"team": "ops"}),
            &serde_json::json!({}),
        ]
    );
}

async fn an_account_has_at_most_thirty_two_labels(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let keys: Vec<String> = (0..33).map(|i| format!("key-{i}")).collect();
    let pairs =
        |n: usize| -> Vec<(&str, &str)> { keys[..n].iter().map(|k| (k.as_str(), "v")).collect() };
    let full = create(&mut admin, &jwt, "Full", &pairs(32)).await.unwrap();
    assert_eq!(full.labels.len(), 32);
    assert_invalid(
        create(&mut admin, &jwt, "Over", &pairs(33)).await,
        &["labels"],
    );
    let over = update(
        &mut admin,
        &jwt,
        pb::ServiceAccount {
            service_account_id: full.service_account_id.clone(),
            labels: labels(&pairs(33)),
            ..Default::default()
        },
        Some(&["labels"]),
    )
    .await;
    let status = assert_code(over, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["service_account.labels"]);
    assert!(
        descriptions(&status)[0].contains("at most 32"),
        "{status:?}"
    );
    assert_eq!(
        get(&mut admin, &jwt, &full.service_account_id).await,
        full,
        "nothing was written"
    );
}

async fn every_bad_label_is_refused_with_its_field_path_and_nothing_is_written(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let account = create(&mut admin, &jwt, "Bot", &[("team", "platform")])
        .await
        .unwrap();
    let long_name = "n".repeat(64);
    let long_prefix = format!("{}.io/x", "p".repeat(251));
    let long_value = "v".repeat(64);
    // Each bad shape of a key and of a value, beside a good label.
    let bad: Vec<(&str, &str)> = vec![
        ("bad key", "ok"),
        ("", "ok"),
        ("-team", "ok"),
        ("team.", "ok"),
        (&long_name, "ok"),
        ("prefix/", "ok"),
        ("/name", "ok"),
        ("a/b/c", "ok"),
        ("Upper.io/x", "ok"),
        ("a..io/x", "ok"),
        ("under_score.io/x", "ok"),
        (&long_prefix, "ok"),
        ("équipe", "ok"),
        ("value-space", "two words"),
        ("value-start", "_x"),
        ("value-end", "x-"),
        ("value-slash", "a/b"),
        ("value-long", &long_value),
    ];
    // A key is named as errors quote input: at most 64 bytes of it.
    let mut expected: Vec<String> = bad
        .iter()
        .map(|(key, _)| format!("labels[{}]", quote(key)))
        .collect();
    expected.sort();
    let mut given = bad.clone();
    given.push(("good", "label"));
    let before = audit_events(&app, &jwt).await;

    let refused = create(&mut admin, &jwt, "Other", &given).await;
    let status = assert_code(refused, Code::InvalidArgument);
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, expected);
    assert!(
        fields.iter().any(|f| f.ends_with("…]")),
        "the long prefix is cut: {fields:?}"
    );
    for description in descriptions(&status) {
        for value in ["two words", &long_value] {
            assert!(
                !description.contains(value),
                "a value is quoted back: {description}"
            );
        }
    }

    // The same on update, under `service_account.`.
    let refused = update(
        &mut admin,
        &jwt,
        pb::ServiceAccount {
            service_account_id: account.service_account_id.clone(),
            labels: labels(&[("bad key", "ok"), ("team", "two words"), ("good", "ok")]),
            ..Default::default()
        },
        Some(&["labels"]),
    )
    .await;
    assert_invalid(
        refused,
        &[
            r#"service_account.labels["bad key"]"#,
            r#"service_account.labels["team"]"#,
        ],
    );

    assert_eq!(
        names(&mut admin, &jwt, "").await,
        ["Bot"],
        "no account was created"
    );
    assert_eq!(
        get(&mut admin, &jwt, &account.service_account_id).await,
        account
    );
    assert_eq!(
        audit_events(&app, &jwt).await,
        before,
        "nothing was audited"
    );
}

/// Org A's accounts for the filter tests, in creation (listing) order.
async fn labelled_org(admin: &mut ServiceAccountAdminClient<Channel>, jwt: &str) {
    for (name, pairs) in [
        (
            "Platform CI",
            &[("team", "platform"), (MANAGED_BY, "apply")][..],
        ),
        ("Platform Ops", &[("team", "platform")][..]),
        ("Web Deploy", &[("team", "web"), (MANAGED_BY, "apply")][..]),
        ("Unowned", &[][..]),
        ("Empty Team", &[("team", "")][..]),
    ] {
        create(admin, jwt, name, pairs).await.unwrap();
    }
    let ops = list(admin, jwt, r#"display_name = "Platform Ops""#, 0)
        .await
        .unwrap();
    admin
        .disable_service_account(authed(
            pb::DisableServiceAccountRequest {
                service_account_id: ops[0].service_account_id.clone(),
                validate_only: false,
            },
            jwt,
        ))
        .await
        .unwrap();
}

async fn accounts_are_found_by_label_name_and_state(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    labelled_org(&mut admin, &jwt).await;

    let cases: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "Platform CI",
                "Platform Ops",
                "Web Deploy",
                "Unowned",
                "Empty Team",
            ],
        ),
        ("labels.team = platform", &["Platform CI", "Platform Ops"]),
        (
            r#"labels."team" = "platform""#,
            &["Platform CI", "Platform Ops"],
        ),
        (
            r#"labels."app.embrace.io/managed-by" = apply"#,
            &["Platform CI", "Web Deploy"],
        ),
        ("NOT labels.team:*", &["Unowned"]),
        (
            "labels.team:*",
            &["Platform CI", "Platform Ops", "Web Deploy", "Empty Team"],
        ),
        (r#"labels.team = """#, &["Empty Team"]),
        // `!=` is `NOT =`: accounts without the label are included.
        (
            "labels.team != platform",
            &["Web Deploy", "Unowned", "Empty Team"],
        ),
        // Names compare as uniqueness does: trimmed, ignoring case.
        (r#"display_name = "  web deploy ""#, &["Web Deploy"]),
        (
            r#"display_name != "Unowned""#,
            &["Platform CI", "Platform Ops", "Web Deploy", "Empty Team"],
        ),
        ("state = DISABLED", &["Platform Ops"]),
        (
            "state = ACTIVE",
            &["Platform CI", "Web Deploy", "Unowned", "Empty Team"],
        ),
        // Combinations.
        (
            r#"labels.team = platform AND state = ACTIVE"#,
            &["Platform CI"],
        ),
        (
            r#"labels."app.embrace.io/managed-by" = apply AND NOT labels.team = web"#,
            &["Platform CI"],
        ),
        (
            r#"labels.team = web OR state = DISABLED OR NOT labels.team:*"#,
            &["Platform Ops", "Web Deploy", "Unowned"],
        ),
        (
            r#"(labels.team = platform OR labels.team = web) labels."app.embrace.io/managed-by":*"#,
            &["Platform CI", "Web Deploy"],
        ),
        ("labels.nobody = here", &[]),
    ];
    for (filter, expected) in cases {
        assert_eq!(names(&mut admin, &jwt, filter).await, *expected, "{filter}");
    }
}

async fn a_filtered_listing_pages_with_tokens_bound_to_its_filter(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let mut platform = Vec::new();
    for i in 0..7 {
        let team = if i % 3 == 2 { "web" } else { "platform" };
        let account = create(&mut admin, &jwt, &format!("Account {i}"), &[("team", team)])
            .await
            .unwrap();
        if team == "platform" {
            platform.push(account.display_name);
        }
    }
    let filter = "labels.team = platform";
    for page_size in [1, 2, 4] {
        let paged: Vec<String> = list(&mut admin, &jwt, filter, page_size)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.display_name)
            .collect();
        assert_eq!(paged, platform, "pages of {page_size}");
    }

    let first = admin
        .list_service_accounts(authed(
            pb::ListServiceAccountsRequest {
                page_size: 2,
                page_token: String::new(),
                filter: filter.into(),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.service_accounts.len(), 2);
    let next = |filter: &str| {
        authed(
            pb::ListServiceAccountsRequest {
                page_size: 2,
                page_token: first.next_page_token.clone(),
                filter: filter.into(),
            },
            &jwt,
        )
    };
    // Another spelling of the same filter is the same filter.
    let second = admin
        .list_service_accounts(next(r#"labels."team"="platform""#))
        .await
        .unwrap()
        .into_inner();
    let second: Vec<String> = second
        .service_accounts
        .into_iter()
        .map(|a| a.display_name)
        .collect();
    assert_eq!(second, platform[2..4]);
    // Another filter, or none, refuses the token.
    for other in ["labels.team = web", ""] {
        let refused = admin.list_service_accounts(next(other)).await;
        let status = assert_code(refused, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["page_token"], "{other:?}");
    }
}

async fn another_orgs_accounts_are_never_listed_whatever_the_filter(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let other = app.admin_jwt("org-b");
    let mut admin = app.admin().await;
    create(&mut admin, &jwt, "Ours", &[("team", "platform")])
        .await
        .unwrap();
    // The same name and labels in org B.
    create(&mut admin, &other, "Ours", &[("team", "platform")])
        .await
        .unwrap();
    create(&mut admin, &other, "Theirs", &[(MANAGED_BY, "apply")])
        .await
        .unwrap();
    for filter in [
        "",
        "labels.team = platform",
        r#"display_name = "Ours""#,
        r#"NOT labels.team:* OR labels."app.embrace.io/managed-by" = apply"#,
        "state = ACTIVE",
    ] {
        let listed = list(&mut admin, &jwt, filter, 1).await.unwrap();
        assert!(
            listed.iter().all(|a| a.org_id == "org-a"),
            "{filter}: {listed:?}"
        );
    }
    assert_eq!(names(&mut admin, &jwt, "").await, ["Ours"]);
    assert_eq!(
        names(&mut admin, &other, "labels.team:*").await,
        ["Ours"],
        "org B sees its own"
    );
}

async fn bad_account_filters_are_refused_at_their_position(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    create(&mut admin, &jwt, "Bot", &[("team", "platform")])
        .await
        .unwrap();
    let at = |filter: &'static str, needle: &str| (filter, position_of(filter, needle));
    let cases = [
        at("state = ACTIVE AND owner = me", "owner"),
        at("labels.team < b", "labels"),
        at(r#"labels."bad key" = x"#, "\"bad key\""),
        at(r#"labels.team = "two words""#, "\"two"),
        at("state = EXPIRED", "EXPIRED"),
        // Where the key stops being one that may be written bare.
        at("labels.app.embrace.io/managed-by = apply", ".embrace"),
        at("labels = platform", "labels"),
        at(r#"state = ACTIVE display_name = " ""#, "\" \""),
        // The filter ends where a value was expected: one past its end.
        ("labels.team = ", 15),
    ];
    for (filter, position) in cases {
        let refused = list(&mut admin, &jwt, filter, 0).await;
        assert_invalid_at(refused, "filter", position);
    }
    let long = "x".repeat(2049);
    assert_invalid(list(&mut admin, &jwt, &long, 0).await, &["filter"]);

    // Labels are the accounts' own: the token and audit listings refuse them.
    let filter = "labels.team = platform";
    let tokens = list_all_tokens(&app, &jwt, "-", filter, "", 0).await;
    assert_invalid_at(tokens, "filter", 1);
    let events = list_all_audit_events(&app, &jwt, filter, "", 0).await;
    assert_invalid_at(events, "filter", 1);
}
