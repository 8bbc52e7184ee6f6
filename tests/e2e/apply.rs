//! `service-accounts apply`, the real binary against the real server: plans, dry runs, exit
//! codes, idempotence, token replacement, pruning, secrets files, and nothing changed when any
//! step is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use service_accounts_api::pb;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    a_file_applied_to_an_empty_org_creates_it_and_a_second_run_changes_nothing,
    changed_scopes_replace_a_token_and_prune_deletes_only_managed_accounts,
    a_file_with_one_refused_step_changes_nothing_at_all,
);

const DOCS: &str = include_str!("../../docs/provisioning.md");

/// The example file of docs/provisioning.md.
static FILE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| fenced("<!-- apply-example -->", "```yaml"));

/// The fenced block of `kind` after `marker` in the provisioning doc.
fn fenced(marker: &str, kind: &str) -> String {
    let after = &DOCS[DOCS.find(marker).expect("the marker is in the doc")..];
    let start = after.find(&format!("{kind}\n")).expect("a fenced block") + kind.len() + 1;
    after[start..][..after[start..].find("```").unwrap()].to_owned()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn apply(app: &TestApp, jwt: &str, dir: &Path, file: &str, flags: &[&str]) -> Run {
    let path = dir.join("accounts.yaml");
    std::fs::write(&path, file).unwrap();
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_service-accounts"))
        .arg("apply")
        .arg("-f")
        .arg(&path)
        .arg("--server")
        .arg(format!("http://{}", app.addr))
        .args(flags)
        .env("SERVICE_ACCOUNTS_ADMIN_JWT", jwt)
        .env("RUST_LOG", "debug")
        .output()
        .expect("the binary runs");
    let run = Run {
        code: status.code().expect("exited"),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    };
    assert!(
        !run.stdout.contains(jwt) && !run.stderr.contains(jwt),
        "the JWT was printed"
    );
    run
}

fn secrets_dir(dir: &Path) -> PathBuf {
    dir.join("secrets")
}

fn secret(dir: &Path, account: &str, token: &str) -> String {
    let path = secrets_dir(dir).join(account).join(token);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

async fn accounts(app: &TestApp, jwt: &str) -> Vec<pb::ServiceAccount> {
    app.admin()
        .await
        .list_service_accounts(authed(
            pb::ListServiceAccountsRequest {
                page_size: 1000,
                ..Default::default()
            },
            jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_accounts
}

async fn a_file_applied_to_an_empty_org_creates_it_and_a_second_run_changes_nothing(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir(dir.path());
    let secrets_flag = ["--secrets-dir", secrets.to_str().unwrap()];

    let dry = apply(&app, &jwt, dir.path(), &FILE, &["--dry-run"]);
    assert_eq!(dry.code, 2, "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout.contains("+ create account \"CI Pipeline\""),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("~ disable account \"Nightly Export\""));
    assert!(
        dry.stdout
            .contains("+ create token \"GitHub Actions\" of \"CI Pipeline\"")
    );
    assert!(
        audit_events(&app, &jwt).await.is_empty(),
        "a dry run writes nothing"
    );

    let applied = apply(&app, &jwt, dir.path(), &FILE, &secrets_flag);
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    let github = secret(dir.path(), "CI Pipeline", "GitHub Actions");
    let exporter = secret(dir.path(), "Nightly Export", "exporter");
    for secret in [&github, &exporter] {
        assert!(secret.starts_with("emb_sa_"));
        assert!(
            !applied.stdout.contains(secret.as_str()),
            "a secret was printed"
        );
        assert!(
            !applied.stderr.contains(secret.as_str()),
            "a secret was logged"
        );
    }
    // It works, only from its declared network (the introspection here names no address).
    let answer = introspect(&app, &github, "acme", "checkout-ios", &["mcp:read"]).await;
    assert!(answer.active, "{answer:?}");
    assert_eq!(answer.allowed_cidrs, ["10.0.0.0/8"]);
    assert_eq!(answer.denial_reason(), pb::DenialReason::ClientIpNotAllowed);
    let disabled = introspect(&app, &exporter, "", "", &[]).await;
    assert!(!disabled.allowed, "the exporter's account is disabled");

    let listed = accounts(&app, &jwt).await;
    let ci = listed
        .iter()
        .find(|a| a.display_name == "CI Pipeline")
        .unwrap();
    assert_eq!(ci.description, "Builds and deploys");
    assert_eq!(ci.labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(
        ci.labels
            .get("app.embrace.io/managed-by")
            .map(String::as_str),
        Some("apply")
    );
    let events = audit_events(&app, &jwt).await.len();

    let again = apply(&app, &jwt, dir.path(), &FILE, &secrets_flag);
    assert_eq!(again.code, 0);
    assert_eq!(again.stdout.trim(), "No changes.", "{}", again.stdout);
    assert_eq!(audit_events(&app, &jwt).await.len(), events, "no write");
    let dry = apply(&app, &jwt, dir.path(), &FILE, &["--dry-run"]);
    assert_eq!(dry.code, 0, "nothing to do is exit code 0 in a dry run too");
}

async fn changed_scopes_replace_a_token_and_prune_deletes_only_managed_accounts(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir(dir.path());
    let secrets_flag = ["--secrets-dir", secrets.to_str().unwrap()];
    assert_eq!(apply(&app, &jwt, dir.path(), &FILE, &secrets_flag).code, 0);
    let old = secret(dir.path(), "CI Pipeline", "GitHub Actions");
    let by_hand = create_account(&app, &jwt, "Made by hand", None).await;

    // GitHub Actions now also writes; Nightly Export is no longer declared.
    let changed = FILE
        .replace(
            "scopes: [mcp:tools:call, mcp:read]",
            "scopes: [mcp:tools:call, mcp:read, mcp:write]",
        )
        .split("  - display_name: Nightly Export")
        .next()
        .unwrap()
        .to_owned();
    let plan = apply(&app, &jwt, dir.path(), &changed, &["--dry-run", "--prune"]);
    assert_eq!(plan.code, 2);
    assert!(
        plan.stdout
            .contains("-/+ replace token \"GitHub Actions\" of \"CI Pipeline\""),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("- delete account \"Nightly Export\""));
    assert!(!plan.stdout.contains("Made by hand"), "{}", plan.stdout);

    let kept = apply(&app, &jwt, dir.path(), &changed, &secrets_flag);
    assert_eq!(kept.code, 0, "{}{}", kept.stdout, kept.stderr);
    assert!(
        !kept.stdout.contains("delete"),
        "no pruning without --prune"
    );
    let new = secret(dir.path(), "CI Pipeline", "GitHub Actions");
    assert_ne!(new, old);
    assert!(
        !introspect(&app, &old, "", "", &[]).await.active,
        "replaced"
    );
    let answer = introspect(&app, &new, "", "", &["mcp:write"]).await;
    assert!(answer.active, "{answer:?}");
    assert!(answer.missing_scopes.is_empty(), "{answer:?}");

    let pruned = apply(&app, &jwt, dir.path(), &changed, &["--prune"]);
    assert_eq!(pruned.code, 0, "{}{}", pruned.stdout, pruned.stderr);
    let names: Vec<String> = accounts(&app, &jwt)
        .await
        .into_iter()
        .map(|a| a.display_name)
        .collect();
    assert!(names.contains(&"CI Pipeline".to_owned()));
    assert!(names.contains(&by_hand.display_name), "{names:?}");
    assert!(!names.contains(&"Nightly Export".to_owned()), "{names:?}");
}

async fn a_file_with_one_refused_step_changes_nothing_at_all(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir(dir.path());
    let secrets_flag = ["--secrets-dir", secrets.to_str().unwrap()];
    // Bad labels and a name too long are refused by the server's checks; a token of a new
    // account with a scope missing its requirement, by the same parser the server runs.
    create_account(&app, &jwt, "Made by hand", None).await;
    let events = audit_events(&app, &jwt).await.len();
    for bad in [
        FILE.replace("labels: {team: platform}", "labels: {\"bad key!\": x}"),
        FILE.replace("scopes: [mcp:tools:call, mcp:write]", "scopes: [mcp:write]"),
        format!("{}  - display_name: {}\n", *FILE, "x".repeat(200)),
    ] {
        let run = apply(&app, &jwt, dir.path(), &bad, &secrets_flag);
        assert_eq!(run.code, 1, "{bad}\n{}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("refused"), "{}", run.stdout);
        assert_eq!(
            audit_events(&app, &jwt).await.len(),
            events,
            "nothing applied"
        );
    }
    let unknown = apply(
        &app,
        &jwt,
        dir.path(),
        "accounts:\n  - display_nme: A\n",
        &[],
    );
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("line 2"), "{}", unknown.stderr);
}

// Two workers: the test blocks one on the binary while the server answers on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ci_recipe_plans_on_pull_requests_and_applies_on_merge() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("acme");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("accounts.yaml"), &*FILE).unwrap();
    let workflow: serde_norway::Value =
        serde_norway::from_str(&fenced("## In CI", "```yaml")).unwrap();
    let steps = workflow["jobs"]["plan-or-apply"]["steps"]
        .as_sequence()
        .unwrap();
    let run_of = |name: &str| {
        steps
            .iter()
            .find(|s| s["name"].as_str() == Some(name))
            .and_then(|s| s["run"].as_str())
            .unwrap_or_else(|| panic!("the workflow has a {name} step"))
            .to_owned()
    };
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_service-accounts"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let run = |script: &str| {
        let output = Command::new("bash")
            .arg("-e")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("SERVICE_ACCOUNTS_ADMIN_JWT", &jwt)
            .env("SERVICE_ACCOUNTS_URL", format!("http://{}", app.addr))
            .env("RUNNER_TEMP", dir.path())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
        )
    };
    let (code, plan) = run(&run_of("Plan"));
    assert_eq!(code, Some(0), "a plan with changes passes the step: {plan}");
    assert!(plan.contains("+ create account \"CI Pipeline\""), "{plan}");
    assert!(audit_events(&app, &jwt).await.is_empty());
    let (code, applied) = run(&run_of("Apply"));
    assert_eq!(code, Some(0), "{applied}");
    let secret = secret(dir.path(), "CI Pipeline", "GitHub Actions");
    assert!(introspect(&app, &secret, "", "", &[]).await.active);
    let (code, plan) = run(&run_of("Plan"));
    assert_eq!((code, plan.trim()), (Some(0), "No changes."));
}

on_both_backends!(
    every_declared_field_of_an_account_is_updated_in_place,
    a_refusal_by_the_token_policy_is_shown_for_its_step,
);

async fn every_declared_field_of_an_account_is_updated_in_place(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir(dir.path());
    let secrets_flag = ["--secrets-dir", secrets.to_str().unwrap()];
    assert_eq!(apply(&app, &jwt, dir.path(), &FILE, &secrets_flag).code, 0);
    let before = accounts(&app, &jwt).await;
    let changed = FILE
        .replace(
            "description: Builds and deploys",
            "description: Builds only",
        )
        .replace(
            "labels: {team: platform}",
            "labels: {team: infra, tier: one}",
        )
        .replace(
            "app_access: {app_ids: [checkout-ios]}",
            "app_access: {all_apps: true}",
        )
        .replace("    state: disabled", "    state: active")
        .replace(
            "allowed_cidrs: [10.0.0.0/8]",
            "allowed_cidrs: [192.168.0.0/16]",
        );
    let plan = apply(&app, &jwt, dir.path(), &changed, &["--dry-run"]);
    assert_eq!(plan.code, 2);
    for line in [
        "~ update account \"CI Pipeline\": description → \"Builds only\", labels →",
        "~ set app access of \"CI Pipeline\": all apps",
        "~ enable account \"Nightly Export\"",
        "~ update token \"GitHub Actions\" of \"CI Pipeline\": allowed_cidrs 10.0.0.0/8 → 192.168.0.0/16",
    ] {
        assert!(plan.stdout.contains(line), "{line}\n{}", plan.stdout);
    }
    let run = apply(&app, &jwt, dir.path(), &changed, &secrets_flag);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let after = accounts(&app, &jwt).await;
    let ci = after
        .iter()
        .find(|a| a.display_name == "CI Pipeline")
        .unwrap();
    let ci_before = before
        .iter()
        .find(|a| a.display_name == "CI Pipeline")
        .unwrap();
    assert_eq!(
        ci.service_account_id, ci_before.service_account_id,
        "updated, not replaced"
    );
    assert_eq!(ci.description, "Builds only");
    assert_eq!(ci.labels.get("tier").map(String::as_str), Some("one"));
    assert!(ci.app_access.as_ref().unwrap().all_apps);
    let export = after
        .iter()
        .find(|a| a.display_name == "Nightly Export")
        .unwrap();
    assert_eq!(export.state(), pb::service_account::State::Active);
    let tokens = tokens_of(&app, &jwt, &ci.service_account_id).await;
    assert_eq!(tokens.len(), 1, "the token was updated, not replaced");
    assert_eq!(tokens[0].allowed_cidrs, ["192.168.0.0/16"]);
    let again = apply(&app, &jwt, dir.path(), &changed, &["--dry-run"]);
    assert_eq!((again.code, again.stdout.trim()), (0, "No changes."));
}

async fn a_refusal_by_the_token_policy_is_shown_for_its_step(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("acme");
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir(dir.path());
    let secrets_flag = ["--secrets-dir", secrets.to_str().unwrap()];
    let without_tokens = FILE.split("    tokens:").next().unwrap().to_owned();
    assert_eq!(
        apply(&app, &jwt, dir.path(), &without_tokens, &secrets_flag).code,
        0
    );
    app.admin()
        .await
        .update_token_policy(authed(
            pb::UpdateTokenPolicyRequest {
                token_policy: Some(pb::TokenPolicy {
                    max_lifetime: Some(prost_types::Duration {
                        seconds: 30 * 86_400,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["max_lifetime".into()],
                }),
                validate_only: false,
            },
            &jwt,
        ))
        .await
        .unwrap();
    let events = audit_events(&app, &jwt).await.len();
    let run = apply(&app, &jwt, dir.path(), &FILE, &secrets_flag);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let refusal = run
        .stdout
        .split("  + create token \"GitHub Actions\"")
        .nth(2)
        .unwrap_or_else(|| panic!("the refused step is listed: {}", run.stdout));
    assert!(refusal.contains("refused:"), "{}", run.stdout);
    assert!(
        refusal.contains("lifetime") || refusal.contains("policy"),
        "{}",
        run.stdout
    );
    assert_eq!(
        audit_events(&app, &jwt).await.len(),
        events,
        "nothing applied"
    );
}

/// A random file in the documented format, from a fixed seed.
fn random_file(rng: &mut rand::rngs::StdRng, case: usize) -> String {
    use rand::Rng;
    use rand::seq::IndexedRandom;
    let mut yaml = String::from("accounts:\n");
    for n in 0..rng.random_range(1..=3) {
        yaml += &format!("  - display_name: account {case}-{n}\n");
        yaml += &format!(
            "    description: {}\n",
            ["", "Builds", "Exports nightly"].choose(rng).unwrap()
        );
        let labels: Vec<&str> = [
            "team: a",
            "team: b",
            "tier: x",
            "app.example.com/owner: ops",
        ]
        .into_iter()
        .filter(|_| rng.random_bool(0.4))
        .collect();
        yaml += &format!(
            "    labels: {{{}}}\n",
            labels.join(", ").replace("team: a, team: b", "team: a")
        );
        if rng.random_bool(0.3) {
            yaml += "    app_access: {all_apps: true}\n";
        } else {
            let apps: Vec<&str> = ["checkout-ios", "checkout-web", "backoffice"]
                .into_iter()
                .filter(|_| rng.random_bool(0.5))
                .collect();
            yaml += &format!("    app_access: {{app_ids: [{}]}}\n", apps.join(", "));
        }
        yaml += &format!(
            "    state: {}\n",
            ["active", "disabled"].choose(rng).unwrap()
        );
        yaml += "    tokens:\n";
        for t in 0..rng.random_range(0..=2) {
            let mut scopes = vec!["mcp:tools:call"];
            scopes.extend(
                ["mcp:read", "mcp:write"]
                    .into_iter()
                    .filter(|_| rng.random_bool(0.5)),
            );
            yaml += &format!("      - display_name: token {t}\n");
            yaml += &format!("        scopes: [{}]\n", scopes.join(", "));
            if rng.random_bool(0.5) {
                yaml += "        lifetime: 30d\n";
            }
            if rng.random_bool(0.3) {
                yaml += "        allowed_cidrs: [10.0.0.0/8]\n";
            }
        }
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_generated_files_a_second_apply_plans_nothing() {
    use rand::SeedableRng;
    let app = spawn(Backend::Sqlite).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for case in 0..12 {
        // An org per file: each starts empty.
        let jwt = app.admin_jwt(&format!("org-{case}"));
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets_dir(dir.path());
        let file = random_file(&mut rng, case);
        let first = apply(
            &app,
            &jwt,
            dir.path(),
            &file,
            &["--secrets-dir", secrets.to_str().unwrap()],
        );
        assert_eq!(first.code, 0, "{file}\n{}{}", first.stdout, first.stderr);
        let events = audit_events(&app, &jwt).await.len();
        let second = apply(&app, &jwt, dir.path(), &file, &["--dry-run"]);
        assert_eq!(
            (second.code, second.stdout.trim()),
            (0, "No changes."),
            "{file}"
        );
        assert_eq!(audit_events(&app, &jwt).await.len(), events);
    }
}

on_both_backends!(a_refusal_by_a_quota_is_shown_for_its_step);

async fn a_refusal_by_a_quota_is_shown_for_its_step(backend: Backend) {
    let Some(mut app) = unstarted(Setup::new(backend)).await else {
        return;
    };
    app.options.max_service_accounts_per_org = 1;
    app.start().await;
    let jwt = app.admin_jwt("acme");
    create_account(&app, &jwt, "Made by hand", None).await;
    let events = audit_events(&app, &jwt).await.len();
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir(dir.path());
    let run = apply(
        &app,
        &jwt,
        dir.path(),
        &FILE,
        &["--secrets-dir", secrets.to_str().unwrap()],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    let refusal = run
        .stdout
        .split("  + create account \"CI Pipeline\"")
        .nth(2)
        .unwrap_or_else(|| panic!("the refused step is listed: {}", run.stdout));
    assert!(
        refusal.contains("refused: an org may have at most 1 service accounts"),
        "{}",
        run.stdout
    );
    assert_eq!(
        audit_events(&app, &jwt).await.len(),
        events,
        "nothing applied"
    );
}
