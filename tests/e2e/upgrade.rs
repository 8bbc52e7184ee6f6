//! Upgrading a database written by the previous release: the server migrates it on start and
//! everything the old release stored keeps working, read through the new API.

use chrono::TimeDelta;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, Value};
use service_accounts_api::pb;
use service_accounts_domain::time::{self, Timestamp};
use service_accounts_domain::token::TokenSecret;
use service_accounts_migrations::{Migrator, MigratorTrait};
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(a_database_of_the_previous_release_upgrades_without_losing_data);

const ORG: &str = "org-a";
const APP: &str = "checkout-ios";

/// What the previous release had written.
struct OldData {
    account_id: String,
    created_at: Timestamp,
    live_token_id: String,
    live_secret: TokenSecret,
    revoked_token_id: String,
    revoked_secret: TokenSecret,
    revoked_at: Timestamp,
    audit_event_id: String,
}

/// Inserts one row into `table`, with values bound as the previous release's sea-orm entities
/// bound them (so timestamps are stored in each backend's own format).
async fn insert(db: &DatabaseConnection, table: &str, row: Vec<(&str, Value)>) {
    let (columns, values): (Vec<_>, Vec<_>) = row
        .into_iter()
        .map(|(column, value)| (Alias::new(column), value))
        .unzip();
    let statement = Query::insert()
        .into_table(Alias::new(table))
        .columns(columns)
        .values_panic(values.into_iter().map(Into::into))
        .to_owned();
    db.execute(&statement)
        .await
        .unwrap_or_else(|e| panic!("insert into {table}: {e}"));
}

/// An org with one account granted one app, a live and a revoked token, and an audit event,
/// in the previous release's schema and formats.
async fn write_previous_release_data(db: &DatabaseConnection) -> OldData {
    let created_at = time::now() - TimeDelta::days(3);
    let revoked_at = created_at + TimeDelta::days(1);
    let last_used_at = created_at + TimeDelta::hours(5);
    let account_id = uuid::Uuid::now_v7().hyphenated().to_string();
    let live_token_id = uuid::Uuid::now_v7().hyphenated().to_string();
    let revoked_token_id = uuid::Uuid::now_v7().hyphenated().to_string();
    let audit_event_id = uuid::Uuid::now_v7().hyphenated().to_string();
    let live_secret = TokenSecret::generate();
    let revoked_secret = TokenSecret::generate();

    insert(
        db,
        "service_accounts",
        vec![
            ("id", account_id.clone().into()),
            ("org_id", ORG.into()),
            ("display_name", "CI Pipeline".into()),
            ("display_name_key", "ci pipeline".into()),
            ("description", "Builds and ships".into()),
            ("all_apps", false.into()),
            ("created_at", created_at.into()),
            ("updated_at", created_at.into()),
            ("created_by", "alice".into()),
            ("revision", 3i64.into()),
        ],
    )
    .await;
    insert(
        db,
        "service_account_apps",
        vec![
            ("service_account_id", account_id.clone().into()),
            ("app_id", APP.into()),
        ],
    )
    .await;
    for (id, secret, name, revoked, last_used) in [
        (
            &live_token_id,
            &live_secret,
            "GitHub Actions",
            None,
            Some(last_used_at),
        ),
        (
            &revoked_token_id,
            &revoked_secret,
            "Old laptop",
            Some(revoked_at),
            None,
        ),
    ] {
        insert(
            db,
            "tokens",
            vec![
                ("id", id.clone().into()),
                ("service_account_id", account_id.clone().into()),
                ("org_id", ORG.into()),
                ("display_name", name.into()),
                ("token_hash", secret.hash().as_bytes().to_vec().into()),
                ("scopes", "mcp:read mcp:tools:call".into()),
                ("hint", secret.hint().into()),
                ("created_at", created_at.into()),
                ("created_by", "alice".into()),
                ("expire_at", None::<Timestamp>.into()),
                ("revoked_at", revoked.into()),
                ("revoked_by", revoked.map(|_| "bob".to_owned()).into()),
                ("last_used_at", last_used.into()),
            ],
        )
        .await;
    }
    insert(
        db,
        "audit_events",
        vec![
            ("id", audit_event_id.clone().into()),
            ("org_id", ORG.into()),
            ("actor", "alice".into()),
            ("action", "service_account.create".into()),
            ("target_type", "service_account".into()),
            ("target_id", account_id.clone().into()),
            ("request_id", "req-before-upgrade".into()),
            ("created_at", created_at.into()),
            (
                "details",
                r#"{"app_access":{"all_apps":false,"app_ids":["checkout-ios"]},"display_name":"CI Pipeline"}"#
                    .into(),
            ),
        ],
    )
    .await;

    OldData {
        account_id,
        created_at,
        live_token_id,
        live_secret,
        revoked_token_id,
        revoked_secret,
        revoked_at,
        audit_event_id,
    }
}

/// (id, revoke_reason, allowed_cidrs) of the account's token rows, by id.
async fn stored_lifecycle_columns(
    db: &DatabaseConnection,
    account_id: &str,
) -> Vec<(String, Option<String>, String)> {
    let rows = db
        .query_all(
            Query::select()
                .columns([
                    Alias::new("id"),
                    Alias::new("revoke_reason"),
                    Alias::new("allowed_cidrs"),
                ])
                .from(Alias::new("tokens"))
                .and_where(Expr::col(Alias::new("service_account_id")).eq(account_id))
                .order_by(Alias::new("id"), Order::Asc),
        )
        .await
        .expect("read the token rows");
    rows.iter()
        .map(|row| {
            (
                row.try_get("", "id").unwrap(),
                row.try_get("", "revoke_reason").unwrap(),
                row.try_get("", "allowed_cidrs").unwrap(),
            )
        })
        .collect()
}

fn timestamp(t: Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

async fn a_database_of_the_previous_release_upgrades_without_losing_data(backend: Backend) {
    let Some(mut app) = unstarted(Setup::new(backend)).await else {
        return;
    };

    // The previous release's schema (its one migration) and the rows it wrote.
    let db = sea_orm::Database::connect(&app.database.url)
        .await
        .expect("connect to the test database");
    Migrator::up(&db, Some(1))
        .await
        .expect("apply the initial migration");
    let pending = Migrator::get_pending_migrations(&db).await.unwrap();
    assert_eq!(
        pending.len(),
        Migrator::migrations().len() - 1,
        "every later release's migration is left"
    );
    let old = write_previous_release_data(&db).await;
    db.close().await.unwrap();

    // The new release starts on it and migrates.
    app.start().await;
    let db = sea_orm::Database::connect(&app.database.url).await.unwrap();
    assert!(
        Migrator::get_pending_migrations(&db)
            .await
            .unwrap()
            .is_empty(),
        "the server applied the new migration on start"
    );
    // The new columns were filled in for the old rows, not left to the reader to guess.
    let stored = stored_lifecycle_columns(&db, &old.account_id).await;
    assert_eq!(
        stored,
        [
            (old.live_token_id.clone(), None, String::new()),
            (
                old.revoked_token_id.clone(),
                Some("admin".into()),
                String::new()
            ),
        ]
    );
    let state = db
        .query_one(
            Query::select()
                .column(Alias::new("state"))
                .column(Alias::new("deleted_at"))
                .from(Alias::new("service_accounts"))
                .and_where(Expr::col(Alias::new("id")).eq(old.account_id.as_str())),
        )
        .await
        .unwrap()
        .expect("the old account's row");
    assert_eq!(state.try_get::<String>("", "state").unwrap(), "active");
    assert_eq!(
        state
            .try_get::<Option<Timestamp>>("", "deleted_at")
            .unwrap(),
        None
    );
    db.close().await.unwrap();

    let jwt = app.admin_jwt(ORG);
    let mut admin = app.admin().await;

    // The live token still introspects, with the account's identity and app access.
    let live = introspect(
        &app,
        old.live_secret.expose(),
        ORG,
        APP,
        &["mcp:tools:call"],
    )
    .await;
    assert!(live.active && live.allowed, "{live:?}");
    assert_eq!(live.org_id, ORG);
    assert_eq!(live.service_account_id, old.account_id);
    assert_eq!(live.service_account_display_name, "CI Pipeline");
    assert_eq!(live.token_id, old.live_token_id);
    assert_eq!(live.scopes, ["mcp:read", "mcp:tools:call"]);
    assert_eq!(
        live.app_access,
        Some(pb::AppAccess {
            all_apps: false,
            app_ids: vec![APP.into()],
        })
    );
    assert_eq!(live.expire_time, None);
    let other_app = introspect(&app, old.live_secret.expose(), ORG, "other-app", &[]).await;
    assert!(other_app.active && !other_app.allowed, "{other_app:?}");
    assert_eq!(other_app.denial_reason(), pb::DenialReason::AppNotGranted);

    // The revoked token stays revoked.
    let revoked = introspect(&app, old.revoked_secret.expose(), "", "", &[]).await;
    assert!(!revoked.active && !revoked.allowed, "{revoked:?}");
    assert_eq!(revoked.inactive_reason(), pb::InactiveReason::Revoked);

    // Both tokens are listed with what the old release stored, and the new fields read as
    // "revoked by an admin" and "not restricted".
    let tokens = admin
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: old.account_id.clone(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .expect("list tokens")
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let listed = |id: &str| {
        tokens
            .iter()
            .find(|t| t.token_id == id)
            .unwrap_or_else(|| panic!("token {id} listed: {tokens:?}"))
    };
    let live_token = listed(&old.live_token_id);
    assert_eq!(live_token.display_name, "GitHub Actions");
    assert_eq!(live_token.service_account_id, old.account_id);
    assert_eq!(live_token.scopes, ["mcp:read", "mcp:tools:call"]);
    assert_eq!(live_token.hint, old.live_secret.hint());
    assert_eq!(live_token.created_by, "alice");
    assert_eq!(live_token.create_time, timestamp(old.created_at));
    assert!(live_token.last_used_time.is_some(), "{live_token:?}");
    assert_eq!(live_token.revoke_time, None);
    assert_eq!(live_token.revoked_by, "");
    assert_eq!(
        live_token.revoke_reason(),
        pb::token::RevokeReason::Unspecified
    );
    assert!(live_token.allowed_cidrs.is_empty(), "{live_token:?}");
    assert_eq!(live_token.previous_token_id, "");
    let revoked_token = listed(&old.revoked_token_id);
    assert_eq!(revoked_token.display_name, "Old laptop");
    assert_eq!(revoked_token.hint, old.revoked_secret.hint());
    assert_eq!(revoked_token.revoke_time, timestamp(old.revoked_at));
    assert_eq!(revoked_token.revoked_by, "bob");
    assert_eq!(
        revoked_token.revoke_reason(),
        pb::token::RevokeReason::Admin
    );
    assert!(revoked_token.allowed_cidrs.is_empty(), "{revoked_token:?}");

    // The account is active, with its stored fields and an etag.
    let account = admin
        .get_service_account(authed(
            pb::GetServiceAccountRequest {
                service_account_id: old.account_id.clone(),
            },
            &jwt,
        ))
        .await
        .expect("get the old account")
        .into_inner()
        .service_account
        .expect("account");
    assert_eq!(account.state(), pb::service_account::State::Active);
    assert!(!account.etag.is_empty(), "{account:?}");
    assert_eq!(account.org_id, ORG);
    assert_eq!(account.display_name, "CI Pipeline");
    assert_eq!(account.description, "Builds and ships");
    assert!(account.labels.is_empty(), "{account:?}");
    assert_eq!(account.created_by, "alice");
    assert_eq!(account.create_time, timestamp(old.created_at));
    assert_eq!(
        account.app_access,
        Some(pb::AppAccess {
            all_apps: false,
            app_ids: vec![APP.into()],
        })
    );

    // The old audit trail is still there.
    let events = admin
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                page_size: 1000,
                page_token: String::new(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .expect("list audit events")
        .into_inner()
        .audit_events;
    let event = events
        .iter()
        .find(|e| e.audit_event_id == old.audit_event_id)
        .unwrap_or_else(|| panic!("the old audit event is listed: {events:?}"));
    assert_eq!(event.action, "service_account.create");
    assert_eq!(event.actor, "alice");
    assert_eq!(event.target_id, old.account_id);
    assert_eq!(event.request_id, "req-before-upgrade");
    assert_eq!(event.create_time, timestamp(old.created_at));

    // Display names are still unique per org, in any case (the index was rebuilt, not lost).
    for name in ["CI Pipeline", "ci pipeline"] {
        let duplicate = admin
            .create_service_account(authed(
                pb::CreateServiceAccountRequest {
                    labels: Default::default(),
                    validate_only: false,
                    display_name: name.into(),
                    description: String::new(),
                    app_access: Some(pb::AppAccess {
                        all_apps: true,
                        app_ids: vec![],
                    }),
                },
                &jwt,
            ))
            .await;
        assert_code(duplicate, Code::AlreadyExists);
    }

    // The upgraded account takes new tokens, which work at once.
    let (new_token, new_secret) =
        create_token(&app, &jwt, &old.account_id, &["mcp:tools:call"]).await;
    let fresh = introspect(&app, &new_secret, ORG, APP, &["mcp:tools:call"]).await;
    assert!(fresh.active && fresh.allowed, "{fresh:?}");
    assert_eq!(fresh.token_id, new_token.token_id);
    assert_eq!(fresh.service_account_id, old.account_id);
    assert!(
        introspect(&app, old.live_secret.expose(), ORG, APP, &[])
            .await
            .active
    );
}
