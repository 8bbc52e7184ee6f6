use service_accounts_api::pb;
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    account_lifecycle_is_audited,
    invalid_accounts_are_rejected_and_nothing_is_written,
    display_names_are_unique_per_org_case_insensitively,
    accounts_page_by_keyset_with_validated_tokens,
    update_mask_selects_fields,
);

async fn account_lifecycle_is_audited(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;

    let created = create_account(&app, &jwt, "CI Pipeline", Some(&["app-1", "app-2"])).await;
    assert_eq!(created.org_id, "org-a");
    assert_eq!(created.created_by, "admin-of-org-a");
    assert_eq!(
        created.app_access.as_ref().unwrap().app_ids,
        ["app-1", "app-2"]
    );
    assert!(created.create_time.is_some());
    assert_eq!(created.create_time, created.update_time);

    let got = admin
        .get_service_account(authed(
            pb::GetServiceAccountRequest {
                service_account_id: created.service_account_id.clone(),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(got, created);

    let updated = admin
        .update_service_account(authed(
            pb::UpdateServiceAccountRequest {
                validate_only: false,
                service_account: Some(pb::ServiceAccount {
                    service_account_id: created.service_account_id.clone(),
                    display_name: "CI Pipeline (prod)".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(updated.display_name, "CI Pipeline (prod)");
    assert_eq!(updated.description, created.description);
    assert!(instant(&updated.update_time) > instant(&created.update_time));

    admin
        .delete_service_account(authed(
            pb::DeleteServiceAccountRequest {
                validate_only: false,
                service_account_id: created.service_account_id.clone(),
            },
            &jwt,
        ))
        .await
        .unwrap();
    let gone = admin
        .get_service_account(authed(
            pb::GetServiceAccountRequest {
                service_account_id: created.service_account_id.clone(),
            },
            &jwt,
        ))
        .await;
    assert_code(gone, Code::NotFound);
    let again = admin
        .delete_service_account(authed(
            pb::DeleteServiceAccountRequest {
                validate_only: false,
                service_account_id: created.service_account_id.clone(),
            },
            &jwt,
        ))
        .await;
    assert_code(again, Code::NotFound);

    let events = admin
        .list_audit_events(authed(pb::ListAuditEventsRequest::default(), &jwt))
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "service_account.create",
            "service_account.update",
            "service_account.delete"
        ]
    );
    for event in &events {
        assert_eq!(event.org_id, "org-a");
        assert_eq!(event.actor, "admin-of-org-a");
        assert_eq!(event.target_type, "service_account");
        assert_eq!(event.target_id, created.service_account_id);
        assert!(!event.request_id.is_empty());
        assert!(event.create_time.is_some());
    }
    assert!(
        events[1].details.contains("CI Pipeline (prod)"),
        "{}",
        events[1].details
    );
}

async fn invalid_accounts_are_rejected_and_nothing_is_written(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let create = |name: &str, description: &str, access: Option<pb::AppAccess>| {
        authed(
            pb::CreateServiceAccountRequest {
                labels: Default::default(),
                validate_only: false,
                display_name: name.into(),
                description: description.into(),
                app_access: access,
            },
            &jwt,
        )
    };
    assert_invalid(
        admin.create_service_account(create("", "", None)).await,
        &["display_name"],
    );
    assert_invalid(
        admin.create_service_account(create("   ", "", None)).await,
        &["display_name"],
    );
    assert_invalid(
        admin
            .create_service_account(create(&"n".repeat(129), "", None))
            .await,
        &["display_name"],
    );
    assert_invalid(
        admin
            .create_service_account(create("ok", &"d".repeat(1025), None))
            .await,
        &["description"],
    );
    let bad_apps = pb::AppAccess {
        all_apps: false,
        app_ids: vec!["good".into(), "bad app".into(), "".into(), "x".repeat(65)],
    };
    assert_invalid(
        admin
            .create_service_account(create("ok", "", Some(bad_apps)))
            .await,
        &[
            "app_access.app_ids[1]",
            "app_access.app_ids[2]",
            "app_access.app_ids[3]",
        ],
    );
    let contradictory = pb::AppAccess {
        all_apps: true,
        app_ids: vec!["a".into()],
    };
    assert_invalid(
        admin
            .create_service_account(create("ok", "", Some(contradictory)))
            .await,
        &["app_access.app_ids"],
    );
    let too_many = pb::AppAccess {
        all_apps: false,
        app_ids: (0..1001).map(|i| format!("app-{i}")).collect(),
    };
    assert_invalid(
        admin
            .create_service_account(create("ok", "", Some(too_many)))
            .await,
        &["app_access.app_ids"],
    );
    // Every violation is reported at once.
    assert_invalid(
        admin
            .create_service_account(create("", &"d".repeat(1025), None))
            .await,
        &["display_name", "description"],
    );
    // Ids that are not ours are invalid arguments, not lookups.
    assert_invalid(
        admin
            .get_service_account(authed(
                pb::GetServiceAccountRequest {
                    service_account_id: "nope".into(),
                },
                &jwt,
            ))
            .await,
        &["service_account_id"],
    );
    // An oversized request is refused before it is decoded.
    let huge = admin
        .create_service_account(create("ok", &"d".repeat(300 * 1024), None))
        .await;
    assert!(huge.is_err());

    let listed = admin
        .list_service_accounts(authed(pb::ListServiceAccountsRequest::default(), &jwt))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.service_accounts.is_empty());
    assert!(audit_actions(&app, &jwt).await.is_empty());
}

async fn display_names_are_unique_per_org_case_insensitively(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    create_account(&app, &jwt, "Deploy Bot", None).await;
    let other = create_account(&app, &jwt, "Other", None).await;

    let duplicate = admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: "  deploy bot ".into(),
                ..Default::default()
            },
            &jwt,
        ))
        .await;
    let status = assert_code(duplicate, Code::AlreadyExists);
    assert_eq!(violated_fields(&status), ["display_name"]);

    let rename = admin
        .update_service_account(authed(
            pb::UpdateServiceAccountRequest {
                validate_only: false,
                service_account: Some(pb::ServiceAccount {
                    service_account_id: other.service_account_id.clone(),
                    display_name: "DEPLOY BOT".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &jwt,
        ))
        .await;
    assert_code(rename, Code::AlreadyExists);

    // Another org may use the same name.
    let jwt_b = app.admin_jwt("org-b");
    create_account(&app, &jwt_b, "Deploy Bot", None).await;
    assert_eq!(
        audit_actions(&app, &jwt).await,
        ["service_account.create", "service_account.create"]
    );
}

async fn accounts_page_by_keyset_with_validated_tokens(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            create_account(&app, &jwt, &format!("account {i}"), Some(&[]))
                .await
                .service_account_id,
        );
    }
    create_account(&app, &app.admin_jwt("org-b"), "elsewhere", None).await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_service_accounts(authed(
                pb::ListServiceAccountsRequest {
                    filter: String::new(),
                    page_size: 2,
                    page_token: token.clone(),
                },
                &jwt,
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.service_accounts.len() <= 2);
        seen.extend(
            page.service_accounts
                .into_iter()
                .map(|a| a.service_account_id),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);

    let all = admin
        .list_service_accounts(authed(
            pb::ListServiceAccountsRequest {
                filter: String::new(),
                page_size: 5000,
                page_token: String::new(),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.service_accounts.len(), 5);
    assert!(all.next_page_token.is_empty());

    let list = |size: i32, token: &str| {
        authed(
            pb::ListServiceAccountsRequest {
                filter: String::new(),
                page_size: size,
                page_token: token.into(),
            },
            &jwt,
        )
    };
    assert_invalid(
        admin.list_service_accounts(list(-1, "")).await,
        &["page_size"],
    );
    assert_invalid(
        admin.list_service_accounts(list(2, "not-a-token")).await,
        &["page_token"],
    );
    assert_invalid(
        admin.list_service_accounts(list(-5, "%%%")).await,
        &["page_size", "page_token"],
    );
    // A token from another listing is refused.
    let events = admin
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                page_size: 1,
                page_token: String::new(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!events.next_page_token.is_empty());
    assert_invalid(
        admin
            .list_service_accounts(list(2, &events.next_page_token))
            .await,
        &["page_token"],
    );
}

async fn update_mask_selects_fields(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let account = create_account(&app, &jwt, "Bot", None).await;
    let update = |name: &str, description: &str, paths: Option<Vec<&str>>| {
        authed(
            pb::UpdateServiceAccountRequest {
                validate_only: false,
                service_account: Some(pb::ServiceAccount {
                    service_account_id: account.service_account_id.clone(),
                    display_name: name.into(),
                    description: description.into(),
                    ..Default::default()
                }),
                update_mask: paths.map(|p| prost_types::FieldMask {
                    paths: p.into_iter().map(String::from).collect(),
                }),
            },
            &jwt,
        )
    };
    // Clearing the description needs the mask: an empty field alone means "leave it".
    let cleared = admin
        .update_service_account(update("", "", Some(vec!["description"])))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(cleared.description, "");
    assert_eq!(cleared.display_name, "Bot");

    let both = admin
        .update_service_account(update("Bot 2", "new", Some(vec!["*"])))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(
        (both.display_name.as_str(), both.description.as_str()),
        ("Bot 2", "new")
    );

    assert_invalid(
        admin
            .update_service_account(update("x", "", Some(vec!["app_access"])))
            .await,
        &["update_mask.paths[0]"],
    );
    assert_invalid(
        admin
            .update_service_account(update("", "", Some(vec!["display_name"])))
            .await,
        &["service_account.display_name"],
    );
    assert_invalid(
        admin.update_service_account(update("", "", None)).await,
        &["update_mask"],
    );
    let missing = admin
        .update_service_account(authed(pb::UpdateServiceAccountRequest::default(), &jwt))
        .await;
    assert_invalid(missing, &["service_account"]);
    let actions = audit_actions(&app, &jwt).await;
    assert_eq!(
        actions,
        [
            "service_account.create",
            "service_account.update",
            "service_account.update"
        ]
    );
}
