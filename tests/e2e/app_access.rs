use service_accounts_api::pb;
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(app_grants_change_and_show_in_the_next_introspection);

async fn app_grants_change_and_show_in_the_next_introspection(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let account = create_account(&app, &jwt, "Bot", Some(&["app-1"])).await;
    let id = account.service_account_id.clone();
    let (_, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;

    let check = |app_id: &'static str| {
        let app = &app;
        let secret = secret.clone();
        async move { introspect(app, &secret, "org-a", app_id, &[]).await }
    };
    assert!(check("app-1").await.allowed);
    let denied = check("app-2").await;
    assert!(denied.active && !denied.allowed);
    assert_eq!(denied.denial_reason(), pb::DenialReason::AppNotGranted);

    let granted = admin
        .grant_app_access(authed(
            pb::GrantAppAccessRequest {
                validate_only: false,
                service_account_id: id.clone(),
                app_ids: vec!["app-2".into(), "app-1".into()],
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(granted.app_access.unwrap().app_ids, ["app-1", "app-2"]);
    assert!(check("app-2").await.allowed);

    admin
        .revoke_app_access(authed(
            pb::RevokeAppAccessRequest {
                validate_only: false,
                service_account_id: id.clone(),
                app_ids: vec!["app-1".into(), "never-granted".into()],
            },
            &jwt,
        ))
        .await
        .unwrap();
    assert_eq!(
        check("app-1").await.denial_reason(),
        pb::DenialReason::AppNotGranted
    );
    assert!(check("app-2").await.allowed);

    let all = admin
        .set_app_access(authed(
            pb::SetAppAccessRequest {
                validate_only: false,
                service_account_id: id.clone(),
                app_access: Some(pb::AppAccess {
                    all_apps: true,
                    app_ids: vec![],
                }),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert!(all.app_access.unwrap().all_apps);
    let any = check("brand-new-app").await;
    assert!(any.allowed);
    assert!(any.app_access.unwrap().all_apps);

    // Explicit grants on an all-apps account are a precondition failure, and change nothing.
    let grant_on_all = admin
        .grant_app_access(authed(
            pb::GrantAppAccessRequest {
                validate_only: false,
                service_account_id: id.clone(),
                app_ids: vec!["x".into()],
            },
            &jwt,
        ))
        .await;
    assert_code(grant_on_all, Code::FailedPrecondition);

    assert_invalid(
        admin
            .grant_app_access(authed(
                pb::GrantAppAccessRequest {
                    validate_only: false,
                    service_account_id: id.clone(),
                    app_ids: vec![],
                },
                &jwt,
            ))
            .await,
        &["app_ids"],
    );
    assert_invalid(
        admin
            .revoke_app_access(authed(
                pb::RevokeAppAccessRequest {
                    validate_only: false,
                    service_account_id: id.clone(),
                    app_ids: vec!["ok".into(), "not ok".into()],
                },
                &jwt,
            ))
            .await,
        &["app_ids[1]"],
    );
    assert_invalid(
        admin
            .set_app_access(authed(
                pb::SetAppAccessRequest {
                    validate_only: false,
                    service_account_id: id.clone(),
                    app_access: None,
                },
                &jwt,
            ))
            .await,
        &["app_access"],
    );

    // Back to an empty explicit list: no app at all.
    admin
        .set_app_access(authed(
            pb::SetAppAccessRequest {
                validate_only: false,
                service_account_id: id.clone(),
                app_access: Some(pb::AppAccess::default()),
            },
            &jwt,
        ))
        .await
        .unwrap();
    assert_eq!(
        check("app-2").await.denial_reason(),
        pb::DenialReason::AppNotGranted
    );

    assert_eq!(
        audit_actions(&app, &jwt).await,
        [
            "service_account.create",
            "token.create",
            "service_account.app_access.grant",
            "service_account.app_access.revoke",
            "service_account.app_access.set",
            "service_account.app_access.set",
        ]
    );
}
