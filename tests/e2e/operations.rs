use std::process::Command;

use service_accounts_api::pb;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::*;

#[tokio::test]
async fn health_and_reflection_are_served() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let mut health = app.health_client().await.unwrap();
    for service in [
        "",
        "embrace.serviceaccounts.v1.ServiceAccountAdmin",
        "embrace.serviceaccounts.v1.TokenIntrospection",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(app.channel().await);
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "embrace.serviceaccounts.v1.TokenIntrospection".into(),
            )),
        },
    ]);
    let mut responses = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "embrace.serviceaccounts.v1.ServiceAccountAdmin",
        "embrace.serviceaccounts.v1.TokenIntrospection",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    // grpcurl also speaks the older v1alpha protocol.
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    let mut alpha = AlphaClient::new(app.channel().await);
    let mut alpha_responses = alpha
        .server_reflection_info(tokio_stream::iter([AlphaReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert!(alpha_responses.next().await.unwrap().is_ok());
}

#[tokio::test]
async fn scopes_are_listed_from_the_catalogue() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let scopes = app
        .admin()
        .await
        .list_scopes(authed(pb::ListScopesRequest {}, &app.admin_jwt("org-a")))
        .await
        .unwrap()
        .into_inner()
        .scopes;
    let names: Vec<&str> = scopes.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mcp:tools:call", "mcp:read", "mcp:write"]);
    assert!(scopes.iter().all(|s| !s.description.is_empty()));
    assert_eq!(scopes[1].requires, ["mcp:tools:call"]);
}

#[tokio::test]
async fn the_binary_mints_dev_admin_tokens_that_its_server_accepts() {
    let data_dir = tempfile::tempdir().unwrap();
    let migrate = Command::new(BINARY)
        .args(["migrate", "--data-dir"])
        .arg(data_dir.path())
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");

    let mut server = ServerProcess::start(|command| {
        command
            .args(["--shutdown-grace", "5s", "--data-dir"])
            .arg(data_dir.path());
    });
    // The server creates the key it trusts before it serves; admin-token only reads it.
    let channel = server.connect_when_serving().await;
    let token = Command::new(BINARY)
        .args([
            "admin-token",
            "--org-id",
            "org-cli",
            "--user-id",
            "operator",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let jwt = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    assert_eq!(jwt.split('.').count(), 3);

    let mut admin = pb::service_account_admin_client::ServiceAccountAdminClient::new(channel);
    let created = admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: "From the CLI".into(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(created.org_id, "org-cli");
    assert_eq!(created.created_by, "operator");

    // SIGTERM: graceful shutdown, exit 0. (Idle client connections can hold hyper's graceful
    // shutdown until the grace period ends; see the README's operations notes.)
    drop(admin);
    let exited = server.terminate().await;
    assert!(exited.status.success(), "{exited:?}");
    let logs = exited.stderr.as_str();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(!logs.contains(&jwt), "{logs}");
}

#[test]
fn startup_mistakes_are_one_line_errors_not_panics() {
    let data_dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "migrate".into(),
                "--database-url".into(),
                "postgres://nobody@127.0.0.1:1/none".into(),
            ],
            "cannot connect to the database",
        ),
        (
            vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--database-url".into(),
                "mysql://x".into(),
                "--admin-trust-dev-key".into(),
            ],
            "cannot connect to the database",
        ),
        (
            vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--admin-jwks".into(),
                "/nonexistent/jwks.json".into(),
                "--admin-jwt-issuer".into(),
                "i".into(),
                "--admin-jwt-audience".into(),
                "a".into(),
            ],
            "cannot use admin JWKS",
        ),
        (
            vec!["--listen".into(), "not-an-address".into()],
            "invalid value",
        ),
        (
            vec!["--admin-jwks".into(), "x.json".into()],
            "--admin-jwt-issuer",
        ),
        (
            vec!["--introspection-cache-max-age".into(), "500ms".into()],
            "counts whole seconds",
        ),
        (
            vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--http-listen".into(),
                "127.0.0.1:0".into(),
                "--introspection-clients".into(),
                "/nonexistent/clients".into(),
            ],
            "cannot use introspection clients: cannot read /nonexistent/clients",
        ),
        (
            vec!["--introspection-cache-max-age".into(), "1500ms".into()],
            "counts whole seconds",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(BINARY)
            .args(&args)
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `admin-token` signs with the key the server created; pointed at a data dir where no server
/// runs, it says where it looked instead of creating a key that no server trusts.
#[test]
fn admin_token_without_a_key_names_the_directory_and_creates_nothing() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .args([
            "admin-token",
            "--org-id",
            "acme",
            "--user-id",
            "alice",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(
        stderr.contains(&format!(
            "no development admin key in {}",
            data_dir.path().display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(data_dir.path()).unwrap().count(), 0);
}

/// A `DATABASE_URL` password reaches neither the logs nor the error of a failed start.
#[test]
fn a_database_password_never_reaches_logs_or_errors() {
    let data_dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the connection fails, and the server says so.
    let output = Command::new(BINARY)
        .args(["migrate", "--data-dir"])
        .arg(data_dir.path())
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2-secret@127.0.0.1:1/accounts",
        )
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2") && !stdout.contains("hunter2"),
        "{stderr}{stdout}"
    );
    // The variable's value is hidden from --help as well.
    let help = Command::new(BINARY)
        .arg("--help")
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2-secret@127.0.0.1:1/accounts",
        )
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("hunter2"));
}

/// SQLite has no cross-process invalidation: a second server on the same file is refused at start
/// with a clear error, rather than serving revoked tokens from its own cache.
#[tokio::test]
async fn a_second_process_on_the_same_sqlite_file_is_refused() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let (url, data_dir) = (app.database.url.clone(), data_path(&app));
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(["--listen", "127.0.0.1:0", "--database-url", &url])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is in use by another process")
            && stderr.contains(&std::process::id().to_string()),
        "{stderr}"
    );
    // The first server is unaffected.
    let health = app
        .health_client()
        .await
        .unwrap()
        .check(HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "{health:?}");
}
