//! docs/admin-guide.md "Token inventory and audit search", as written: its example org is built,
//! then every request of the section is made as the section writes it (bodies built by the real
//! `jq`, dates by the real `date`) with the generated client in grpcurl's place, and what each
//! returns is checked against the section's `# →` line.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use service_accounts_api::pb;
use tonic::{Code, Status};

use crate::on_both_backends;
use crate::support::*;

const DOCS: &str = include_str!("../../docs/admin-guide.md");
const SECTION: &str = "## Token inventory and audit search";

on_both_backends!(the_inventory_and_audit_search_recipes_return_what_the_guide_says);

async fn the_inventory_and_audit_search_recipes_return_what_the_guide_says(backend: Backend) {
    if !jq_installed() {
        return;
    }
    let Some(app) = Setup::new(backend)
        .last_used_flush_interval(Duration::from_millis(100))
        .start()
        .await
    else {
        return;
    };
    let jwt = app.jwt("acme", "alice", &["org_admin"]);
    example_org(&app, &jwt).await;

    let recipes = recipes();
    assert!(
        recipes.len() >= 8,
        "the section has its recipes: {recipes:?}"
    );
    for recipe in recipes {
        let result = call(&app, &jwt, &recipe.method, &recipe.body).await;
        match recipe.expected.strip_prefix("INVALID_ARGUMENT ") {
            Some(message) => {
                let status = result.expect_err(&recipe.command);
                assert_eq!(status.code(), Code::InvalidArgument, "{}", recipe.command);
                assert!(status.message().contains(message), "{status:?}");
            }
            None => {
                let names = result.unwrap_or_else(|s| panic!("{}: {s:?}", recipe.command));
                let expected: Vec<&str> = match recipe.expected.as_str() {
                    "(none)" => vec![],
                    names => names.split(", ").collect(),
                };
                assert_eq!(names, expected, "{}", recipe.command);
            }
        }
    }
}

/// Whether `jq`, which the recipes build bodies with, is installed: without it the test says
/// it is skipped, and under `CI` fails instead.
fn jq_installed() -> bool {
    let found = Command::new("jq").arg("--version").output().is_ok();
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but `jq` is not installed (.ci/run installs it: apt-get install jq)");
        }
        eprintln!("skipping the admin guide's recipes: `jq` is not installed");
    }
    found
}

/// The section's example org, made as its introduction says.
async fn example_org(app: &TestApp, jwt: &str) {
    let ci = create_account(app, jwt, "CI Pipeline", None).await;
    let (_, github) = issue_token(
        app,
        jwt,
        &ci.service_account_id,
        "GitHub Actions",
        &["mcp:tools:call", "mcp:read"],
        None,
    )
    .await;
    issue_token(
        app,
        jwt,
        &ci.service_account_id,
        "nightly export",
        &["mcp:tools:call", "mcp:write"],
        Some(Utc::now() + TimeDelta::days(10)),
    )
    .await;
    let support = create_account(app, jwt, "Support Bot", None).await;
    let (zendesk, zendesk_secret) = issue_token(
        app,
        jwt,
        &support.service_account_id,
        "zendesk",
        &["mcp:tools:call", "mcp:write"],
        None,
    )
    .await;
    for secret in [&github, &zendesk_secret] {
        assert!(introspect(app, secret, "", "", &[]).await.active);
    }
    // Used, as far as listings can tell, once the flush has run.
    for _ in 0..100 {
        let tokens = tokens_of(app, jwt, &support.service_account_id).await;
        if tokens.iter().all(|t| t.last_used_time.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    revoke(app, jwt, &support.service_account_id, &zendesk.token_id).await;
}

#[derive(Debug)]
struct Recipe {
    command: String,
    method: String,
    body: serde_json::Value,
    expected: String,
}

/// The requests of the section's shell blocks, in order, each with the result written after it.
fn recipes() -> Vec<Recipe> {
    let start = DOCS.find(SECTION).expect("the admin guide has the section");
    let section = &DOCS[start..];
    let section = match section[SECTION.len()..].find("\n## ") {
        Some(end) => &section[..SECTION.len() + end],
        None => section,
    };
    let mut recipes = Vec::new();
    let mut variables: HashMap<String, String> = HashMap::new();
    for block in section.split("```sh\n").skip(1) {
        let block = block.split("```").next().unwrap();
        let mut pending: Option<(String, String, serde_json::Value)> = None;
        for line in logical_lines(block) {
            if let Some(expected) = line.strip_prefix("# → ") {
                let (command, method, body) = pending.take().expect("a result follows a request");
                recipes.push(Recipe {
                    command,
                    method,
                    body,
                    expected: expected.to_owned(),
                });
            } else if let Some((name, value)) = assignment(&line) {
                variables.insert(name, shell(&format!("echo \"{value}\""), &variables));
            } else if line.contains("grpcurl") {
                pending = Some((line.clone(), method(&line), body(&line, &variables)));
            }
        }
    }
    recipes
}

/// The block's commands, with `\` continuations and lines ending in `|` joined.
fn logical_lines(block: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(line);
        if line.ends_with('|') {
            current.push(' ');
            continue;
        }
        lines.push(std::mem::take(&mut current));
    }
    lines
}

/// `NAME=$(…)`.
fn assignment(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once('=')?;
    let is_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    (is_name && value.starts_with("$(")).then(|| (name.to_owned(), value.to_owned()))
}

fn method(command: &str) -> String {
    let at = command.find("$ADMIN/").expect("an admin call") + "$ADMIN/".len();
    command[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// The request body: the `-d '…'` literal, or what the `jq -n …` before the pipe prints.
fn body(command: &str, variables: &HashMap<String, String>) -> serde_json::Value {
    let text = if command.starts_with("jq -n") {
        let builder = command.split("| grpcurl").next().unwrap();
        shell(builder, variables)
    } else {
        let at = command.find("-d '").expect("a -d body") + "-d '".len();
        let end = command[at..].find('\'').expect("a closing quote");
        command[at..at + end].to_owned()
    };
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Runs a piece of the guide with bash, with the guide's variables set.
fn shell(script: &str, variables: &HashMap<String, String>) -> String {
    let output = Command::new("bash")
        .arg("-c")
        .arg(script)
        .envs(variables)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn text(body: &serde_json::Value, field: &str) -> String {
    body[field].as_str().unwrap_or_default().to_owned()
}

/// Makes the request; the names it returns in order (token names or audit actions).
async fn call(
    app: &TestApp,
    jwt: &str,
    method: &str,
    body: &serde_json::Value,
) -> Result<Vec<String>, Status> {
    let mut admin = app.admin().await;
    match method {
        "ListTokens" => {
            let request = pb::ListTokensRequest {
                service_account_id: text(body, "service_account_id"),
                filter: text(body, "filter"),
                order_by: text(body, "order_by"),
                ..Default::default()
            };
            let page = admin.list_tokens(authed(request, jwt)).await?.into_inner();
            Ok(page.tokens.into_iter().map(|t| t.display_name).collect())
        }
        "ListAuditEvents" => {
            let request = pb::ListAuditEventsRequest {
                filter: text(body, "filter"),
                order_by: text(body, "order_by"),
                ..Default::default()
            };
            let page = admin
                .list_audit_events(authed(request, jwt))
                .await?
                .into_inner();
            Ok(page.audit_events.into_iter().map(|e| e.action).collect())
        }
        "ExportCredentialReport" => {
            let request = pb::ExportCredentialReportRequest {
                filter: text(body, "filter"),
            };
            let mut stream = admin
                .export_credential_report(authed(request, jwt))
                .await?
                .into_inner();
            let mut csv = Vec::new();
            while let Some(response) = stream.message().await? {
                csv.extend_from_slice(&response.chunk);
            }
            let mut reader = csv::Reader::from_reader(csv.as_slice());
            let name = reader
                .headers()
                .unwrap()
                .iter()
                .position(|h| h == "token_name")
                .expect("a token_name column");
            Ok(reader
                .records()
                .map(|row| row.unwrap()[name].to_owned())
                .collect())
        }
        other => panic!("the section calls {other}, which this test does not know"),
    }
}
