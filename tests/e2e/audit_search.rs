//! Audit search (SPEC §22): `ListAuditEvents` filtered by actor, action, target and time,
//! newest first on request, never showing another org's events, with cursors bound to their
//! query.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use service_accounts_api::pb;

use crate::on_both_backends;
use crate::rotation::seconds;
use crate::support::*;

on_both_backends!(
    audit_events_are_found_by_actor_action_target_and_time_oldest_or_newest_first,
    bad_audit_filters_orders_and_page_tokens_are_refused_and_change_nothing,
);

/// Org A's events, oldest first, as `"{action} {target}"`.
const ALL: [&str; 8] = [
    "service_account.create X",
    "service_account.create Y",
    "token.create t1",
    "token.create t2",
    "token.revoke t1",
    "service_account.disable X",
    "token_policy.update org-a",
    "token.revoke t2",
];

struct Scene {
    app: TestApp,
    jwt: String,
    other_jwt: String,
    /// Target id → label.
    targets: HashMap<String, &'static str>,
    /// Label → id.
    ids: HashMap<&'static str, String>,
    /// A time after the first four events and before the last four.
    mark: String,
}

impl Scene {
    async fn build(backend: Backend) -> Option<Scene> {
        let app = spawn(backend).await?;
        let jwt = app.admin_jwt("org-a");
        let second = app.jwt("org-a", "second-admin", &["org_admin"]);
        let other_jwt = app.admin_jwt("org-b");
        let mut ids = HashMap::new();
        ids.insert("org-a", "org-a".to_string());
        ids.insert("org-b", "org-b".to_string());

        let x = create_account(&app, &jwt, "Xavier bot", None)
            .await
            .service_account_id;
        let y = create_account(&app, &second, "Yara bot", Some(&["checkout-ios"]))
            .await
            .service_account_id;
        let t1 = create_token(&app, &jwt, &x, &["mcp:tools:call"]).await.0;
        let t2 = create_token(&app, &jwt, &y, &["mcp:tools:call"]).await.0;
        // The point is a time strictly between two events, on the server's clock (this one).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mark = rfc3339_of(Utc::now());
        tokio::time::sleep(Duration::from_millis(20)).await;
        revoke(&app, &second, &x, &t1.token_id).await;
        let mut admin = app.admin().await;
        admin
            .disable_service_account(authed(
                pb::DisableServiceAccountRequest {
                    validate_only: false,
                    service_account_id: x.clone(),
                },
                &jwt,
            ))
            .await
            .expect("disable");
        admin
            .update_token_policy(authed(
                pb::UpdateTokenPolicyRequest {
                    validate_only: false,
                    token_policy: Some(pb::TokenPolicy {
                        max_lifetime: Some(seconds(90 * 86_400)),
                        default_lifetime: None,
                    }),
                    update_mask: None,
                },
                &jwt,
            ))
            .await
            .expect("update token policy");
        revoke(&app, &jwt, &y, &t2.token_id).await;

        // Org B: the same kinds of events, by its own admin.
        let z = create_account(&app, &other_jwt, "Zed bot", None)
            .await
            .service_account_id;
        let tz = create_token(&app, &other_jwt, &z, &["mcp:tools:call"])
            .await
            .0;
        revoke(&app, &other_jwt, &z, &tz.token_id).await;

        for (label, id) in [
            ("X", x),
            ("Y", y),
            ("t1", t1.token_id),
            ("t2", t2.token_id),
            ("Z", z),
            ("tz", tz.token_id),
        ] {
            ids.insert(label, id);
        }
        let targets = ids.iter().map(|(l, id)| (id.clone(), *l)).collect();
        let scene = Scene {
            app,
            jwt,
            other_jwt,
            targets,
            ids,
            mark,
        };

        // The scene is as described, read through the unfiltered listing.
        let events = audit_events(&scene.app, &scene.jwt).await;
        assert_eq!(scene.label(&events), ALL);
        let actors: Vec<&str> = events.iter().map(|e| e.actor.as_str()).collect();
        assert_eq!(
            actors,
            [
                "admin-of-org-a",
                "second-admin",
                "admin-of-org-a",
                "admin-of-org-a",
                "second-admin",
                "admin-of-org-a",
                "admin-of-org-a",
                "admin-of-org-a",
            ]
        );
        assert_eq!(
            scene.label(&audit_events(&scene.app, &scene.other_jwt).await),
            [
                "service_account.create Z",
                "token.create tz",
                "token.revoke tz"
            ]
        );
        Some(scene)
    }

    fn label(&self, events: &[pb::AuditEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match self.targets.get(&e.target_id) {
                Some(target) => format!("{} {target}", e.action),
                None => format!("{} of unknown target {}", e.action, e.target_id),
            })
            .collect()
    }

    async fn found(&self, jwt: &str, filter: &str, order_by: &str, page_size: i32) -> Vec<String> {
        let events = list_all_audit_events(&self.app, jwt, filter, order_by, page_size)
            .await
            .unwrap_or_else(|status| {
                panic!("filter {filter:?} order_by {order_by:?} refused: {status:?}")
            });
        self.label(&events)
    }
}

fn all_but(excluded: &[&str]) -> Vec<&'static str> {
    ALL.into_iter().filter(|e| !excluded.contains(e)).collect()
}

async fn audit_events_are_found_by_actor_action_target_and_time_oldest_or_newest_first(
    backend: Backend,
) {
    let Some(scene) = Scene::build(backend).await else {
        return;
    };
    let jwt = &scene.jwt;
    let (x, t1, t2) = (&scene.ids["X"], &scene.ids["t1"], &scene.ids["t2"]);
    let mark = &scene.mark;
    let unfiltered = audit_events(&scene.app, jwt).await;
    let disabled_at = rfc3339(&unfiltered[5].create_time);
    let revokes = vec!["token.revoke t1", "token.revoke t2"];
    let token_events = vec![
        "token.create t1",
        "token.create t2",
        "token.revoke t1",
        "token.revoke t2",
    ];

    let cases: Vec<(String, Vec<&str>)> = vec![
        ("action = \"token.revoke\"".into(), revokes.clone()),
        (
            "action != \"token.revoke\"".into(),
            all_but(&["token.revoke t1", "token.revoke t2"]),
        ),
        (
            "actor = \"second-admin\"".into(),
            vec!["service_account.create Y", "token.revoke t1"],
        ),
        (
            "actor != \"admin-of-org-a\"".into(),
            vec!["service_account.create Y", "token.revoke t1"],
        ),
        ("target_type = \"token\"".into(), token_events.clone()),
        (
            "target_type = \"service_account\"".into(),
            vec![
                "service_account.create X",
                "service_account.create Y",
                "service_account.disable X",
            ],
        ),
        (
            "target_type = \"token_policy\"".into(),
            vec!["token_policy.update org-a"],
        ),
        (
            format!("target_id = \"{x}\""),
            vec!["service_account.create X", "service_account.disable X"],
        ),
        (
            format!("target_id = {t1}"),
            vec!["token.create t1", "token.revoke t1"],
        ),
        (
            "target_id = \"org-a\"".into(),
            vec!["token_policy.update org-a"],
        ),
        (
            format!("target_id = \"{t1}\" OR target_id = \"{t2}\""),
            token_events.clone(),
        ),
        (
            "action = \"token.revoke\" AND actor = \"admin-of-org-a\"".into(),
            vec!["token.revoke t2"],
        ),
        (
            "action = \"token.revoke\" actor = \"admin-of-org-a\"".into(),
            vec!["token.revoke t2"],
        ),
        (
            "NOT target_type = \"token\"".into(),
            vec![
                "service_account.create X",
                "service_account.create Y",
                "service_account.disable X",
                "token_policy.update org-a",
            ],
        ),
        // OR binds tighter than AND.
        (
            "action = \"service_account.create\" OR action = \"token.revoke\" AND actor = \"second-admin\""
                .into(),
            vec!["service_account.create Y", "token.revoke t1"],
        ),
        (
            "(action = \"service_account.create\" OR action = \"token.revoke\") AND NOT actor = \"second-admin\""
                .into(),
            vec!["service_account.create X", "token.revoke t2"],
        ),
        // Time: around a moment between events, and at an event's own time.
        (
            format!("create_time > \"{mark}\""),
            ALL[4..].to_vec(),
        ),
        (
            format!("create_time >= \"{mark}\""),
            ALL[4..].to_vec(),
        ),
        (
            format!("create_time < \"{mark}\""),
            ALL[..4].to_vec(),
        ),
        (
            format!("create_time <= \"{mark}\""),
            ALL[..4].to_vec(),
        ),
        (
            format!("create_time = \"{disabled_at}\""),
            vec!["service_account.disable X"],
        ),
        (
            format!("create_time != \"{disabled_at}\""),
            all_but(&["service_account.disable X"]),
        ),
        (
            format!("create_time < \"{disabled_at}\""),
            ALL[..5].to_vec(),
        ),
        (
            format!("create_time <= \"{disabled_at}\""),
            ALL[..6].to_vec(),
        ),
        (
            format!("create_time > \"{disabled_at}\""),
            ALL[6..].to_vec(),
        ),
        (
            format!("create_time >= \"{disabled_at}\""),
            ALL[5..].to_vec(),
        ),
        (
            format!("action = \"token.revoke\" AND create_time > \"{mark}\""),
            revokes.clone(),
        ),
        (
            format!("target_type = \"token\" AND create_time < \"{mark}\""),
            vec!["token.create t1", "token.create t2"],
        ),
    ];
    for (filter, expected) in &cases {
        assert_eq!(
            &scene.found(jwt, filter, "", 1000).await,
            expected,
            "filter {filter:?}"
        );
    }

    // Oldest first by default; newest first on request; through pages of any size.
    let newest_first: Vec<&str> = ALL.iter().rev().copied().collect();
    for page_size in [1000, 1, 3] {
        assert_eq!(scene.found(jwt, "", "", page_size).await, ALL);
        assert_eq!(scene.found(jwt, "", "create_time", page_size).await, ALL);
        assert_eq!(
            scene.found(jwt, "", "create_time desc", page_size).await,
            newest_first
        );
    }
    let tokens_newest_first: Vec<&str> = token_events.iter().rev().copied().collect();
    assert_eq!(
        scene
            .found(jwt, "target_type = \"token\"", "create_time desc", 3)
            .await,
        tokens_newest_first
    );
    assert_eq!(
        scene
            .found(
                jwt,
                &format!("create_time > \"{mark}\""),
                "create_time desc",
                1
            )
            .await,
        [
            "token.revoke t2",
            "token_policy.update org-a",
            "service_account.disable X",
            "token.revoke t1",
        ]
    );
    // Newest first really is by time: each event is no older than the next.
    let desc = list_all_audit_events(&scene.app, jwt, "", "create_time desc", 2)
        .await
        .unwrap();
    for pair in desc.windows(2) {
        assert!(instant(&pair[0].create_time) >= instant(&pair[1].create_time));
    }

    // Another org's events never appear, whatever the filter names.
    let other = &scene.other_jwt;
    assert_eq!(
        scene.found(other, "", "create_time desc", 2).await,
        [
            "token.revoke tz",
            "token.create tz",
            "service_account.create Z"
        ]
    );
    for filter in [
        "actor = \"admin-of-org-a\"".to_string(),
        "actor = \"second-admin\"".to_string(),
        format!("target_id = \"{x}\""),
        "target_id = \"org-a\"".to_string(),
        "target_type = \"token_policy\"".to_string(),
    ] {
        assert_eq!(
            scene.found(other, &filter, "", 1000).await,
            Vec::<String>::new(),
            "org B, filter {filter:?}"
        );
    }
    assert_eq!(
        scene
            .found(other, "action = \"token.revoke\"", "", 1000)
            .await,
        ["token.revoke tz"]
    );
    for filter in [
        format!("target_id = \"{}\"", scene.ids["Z"]),
        format!("target_id = \"{}\"", scene.ids["tz"]),
        "actor = \"admin-of-org-b\"".to_string(),
    ] {
        assert_eq!(
            scene.found(jwt, &filter, "", 1000).await,
            Vec::<String>::new(),
            "org A, filter {filter:?}"
        );
    }
}

async fn bad_audit_filters_orders_and_page_tokens_are_refused_and_change_nothing(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    for _ in 0..4 {
        create_token(&app, &jwt, &account, &["mcp:tools:call"]).await;
    }
    let before = audit_events(&app, &jwt).await;
    assert_eq!(before.len(), 5);

    const END: &str = "<end>";
    let cases = [
        // Unknown fields (the token listing's among them): the name.
        ("scopes:\"mcp:read\"", "scopes"),
        ("state = ACTIVE", "state"),
        ("action = \"token.revoke\" AND org_id = \"org-b\"", "org_id"),
        ("details = \"x\"", "details"),
        // An operator the field does not take: the field.
        ("action > \"token\"", "action"),
        ("actor:\"admin\"", "actor"),
        ("NOT target_id < \"x\"", "target_id"),
        // Bad values: the value.
        // A misspelt action or target type would match nothing: it is refused instead.
        ("action = \"token.explode\"", "\"token.explode"),
        ("target_type = tokens", "tokens"),
        ("create_time > \"last tuesday\"", "\"last"),
        ("create_time < 2026", "2026"),
        ("create_time:*", "*"),
        ("actor = *", "*"),
        // Broken syntax.
        ("(action = \"token.revoke\"", END),
        ("action = \"token.revoke\" AND", END),
        ("action = \"token.revoke\" OR", END),
        ("action = \"token.revoke", "\"token.revoke"),
        ("action = \"token.revoke\")", ")"),
        ("action = \"token.revoke\" & actor = \"x\"", "&"),
    ];
    for (filter, at) in cases {
        let position = if at == END {
            filter.chars().count() + 1
        } else {
            position_of(filter, at)
        };
        let result = list_all_audit_events(&app, &jwt, filter, "", 10).await;
        assert!(result.is_err(), "filter {filter:?} was accepted");
        assert_invalid_at(result, "filter", position);
    }

    // At most 2048 characters.
    let longest = format!("actor = \"{}\"", "x".repeat(2048 - 10));
    assert_eq!(longest.len(), 2048);
    assert!(
        list_all_audit_events(&app, &jwt, &longest, "", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let too_long = format!("actor = \"{}\"", "x".repeat(2048 - 9));
    assert_invalid(
        list_all_audit_events(&app, &jwt, &too_long, "", 10).await,
        &["filter"],
    );

    for order_by in [
        "actor",
        "action desc",
        "target_id",
        "expire_time",
        "create_time descending",
        "create_time desc desc",
        "create_time, actor",
    ] {
        let result = list_all_audit_events(&app, &jwt, "", order_by, 10).await;
        assert!(result.is_err(), "order_by {order_by:?} was accepted");
        assert_invalid(result, &["order_by"]);
    }

    // A cursor goes only with the filter and order that returned it.
    let mut admin = app.admin().await;
    let mut page = async |filter: &str, order_by: &str, page_token: &str| {
        admin
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
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
    let filter = "action = \"token.create\"";
    let first = page(filter, "create_time desc", "").await.unwrap();
    assert_eq!(first.audit_events.len(), 2);
    let cursor = first.next_page_token;
    assert!(!cursor.is_empty());
    let second = page(filter, "create_time desc", &cursor).await.unwrap();
    assert_eq!(second.audit_events.len(), 2);
    for (filter, order_by) in [
        ("", "create_time desc"),
        ("action = \"service_account.create\"", "create_time desc"),
        (filter, ""),
        (filter, "create_time"),
    ] {
        let result = page(filter, order_by, &cursor).await;
        assert!(
            result.is_err(),
            "filter {filter:?}, order_by {order_by:?} took the cursor"
        );
        assert_invalid(result, &["page_token"]);
    }
    let unfiltered = page("", "", "").await.unwrap().next_page_token;
    assert!(!unfiltered.is_empty());
    assert_invalid(page(filter, "", &unfiltered).await, &["page_token"]);

    assert_eq!(audit_events(&app, &jwt).await, before);
}
