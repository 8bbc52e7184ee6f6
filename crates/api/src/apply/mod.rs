//! `service-accounts apply`: makes an org's accounts and tokens what a file declares, through
//! the admin API like any other admin client. It reads the org, prints the plan, has the server
//! validate every step (`validate_only`) before it makes any, then makes them in order.

pub mod file;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::config::ApplyArgs;
use crate::pb;
use crate::pb::service_account_admin_client::ServiceAccountAdminClient;
use crate::requests::Parse;
use plan::{LiveAccount, LiveToken, Step, Target};

/// How a run ended, as its exit code says (SPEC §23).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, or nothing to do: 0.
    Done,
    /// `--dry-run` and the plan has changes: 2.
    Changes,
}

type Admin = ServiceAccountAdminClient<Channel>;

pub async fn run(args: &ApplyArgs, out: &mut impl Write) -> Result<Outcome, String> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let file = file::parse(&text).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let jwt = admin_jwt(args)?;
    let channel = Channel::from_shared(args.server.clone())
        .map_err(|e| format!("bad --server {}: {e}", args.server))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", args.server))?;
    let mut admin = ServiceAccountAdminClient::new(channel);
    let live = read_org(&mut admin, &jwt).await?;
    let steps = plan::plan(&file, &live, args.prune);
    if steps.is_empty() {
        writeln!(out, "No changes.").map_err(io)?;
        return Ok(Outcome::Done);
    }
    writeln!(out, "Plan: {} change(s)", steps.len()).map_err(io)?;
    for step in &steps {
        writeln!(out, "  {step}").map_err(io)?;
    }
    if args.dry_run {
        return Ok(Outcome::Changes);
    }
    let creates_tokens = steps
        .iter()
        .any(|s| matches!(s, Step::CreateToken { .. } | Step::ReplaceToken { .. }));
    if creates_tokens && args.secrets_dir.is_none() && !args.print_secrets {
        return Err(
            "the plan creates tokens: give --secrets-dir DIR for their secrets (or --print-secrets)"
                .into(),
        );
    }
    let mut refused = Vec::new();
    for step in &steps {
        if let Err(status) = make(&mut admin, &jwt, step, true, &mut Ids::default()).await {
            refused.push(format!("  {step}\n    refused: {}", status.message()));
        }
    }
    if !refused.is_empty() {
        writeln!(out, "Not applied: the server refused these steps:").map_err(io)?;
        for line in &refused {
            writeln!(out, "{line}").map_err(io)?;
        }
        return Err(format!(
            "{} step(s) refused; nothing was changed",
            refused.len()
        ));
    }
    let mut ids = Ids::default();
    for step in &steps {
        let secret = make(&mut admin, &jwt, step, false, &mut ids)
            .await
            .map_err(|s| format!("{step}: {}", s.message()))?;
        if let Some((account, token, secret)) = secret {
            match &args.secrets_dir {
                Some(dir) => {
                    let path = write_secret(dir, &account, &token, &secret)?;
                    writeln!(out, "  {step}: secret written to {}", path.display()).map_err(io)?;
                }
                None => writeln!(out, "  {step}: secret {secret}").map_err(io)?,
            }
        } else {
            writeln!(out, "  {step}: done").map_err(io)?;
        }
    }
    Ok(Outcome::Done)
}

fn io(error: std::io::Error) -> String {
    format!("cannot write the output: {error}")
}

fn admin_jwt(args: &ApplyArgs) -> Result<String, String> {
    let jwt = match &args.admin_jwt_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        None => std::env::var("SERVICE_ACCOUNTS_ADMIN_JWT").map_err(|_| {
            "no admin JWT: set SERVICE_ACCOUNTS_ADMIN_JWT or give --admin-jwt-file".to_owned()
        })?,
    };
    Ok(jwt.trim().to_owned())
}

fn authed<T>(message: T, jwt: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {jwt}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Every account of the org, with its tokens that work.
async fn read_org(admin: &mut Admin, jwt: &str) -> Result<Vec<LiveAccount>, String> {
    let failed = |s: Status| format!("cannot read the org: {}", s.message());
    let mut accounts = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_service_accounts(authed(
                pb::ListServiceAccountsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                jwt,
            ))
            .await
            .map_err(failed)?
            .into_inner();
        accounts.extend(page.service_accounts);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut tokens: HashMap<String, Vec<LiveToken>> = HashMap::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_tokens(authed(
                pb::ListTokensRequest {
                    service_account_id: "-".into(),
                    filter: "state = ACTIVE".into(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                jwt,
            ))
            .await
            .map_err(failed)?
            .into_inner();
        for token in page.tokens {
            tokens
                .entry(token.service_account_id.clone())
                .or_default()
                .push(LiveToken {
                    id: token.token_id,
                    display_name: token.display_name,
                    scopes: token.scopes.into_iter().collect(),
                    allowed_cidrs: token.allowed_cidrs.into_iter().collect(),
                });
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(accounts
        .into_iter()
        .map(|a| {
            let access = a.app_access.clone().unwrap_or_default();
            LiveAccount {
                tokens: tokens.remove(&a.service_account_id).unwrap_or_default(),
                state: match a.state() {
                    pb::service_account::State::Disabled => file::State::Disabled,
                    _ => file::State::Active,
                },
                id: a.service_account_id,
                display_name: a.display_name,
                description: a.description,
                labels: a.labels.into_iter().collect(),
                app_access: file::AppAccess {
                    all_apps: access.all_apps,
                    app_ids: access.app_ids.into_iter().collect(),
                },
            }
        })
        .collect())
}

/// The ids of the accounts this run created, by display name.
#[derive(Debug, Default)]
struct Ids(BTreeMap<String, String>);

impl Ids {
    fn of(&self, target: &Target, name: &str) -> String {
        match target {
            Target::Existing(id) => id.clone(),
            Target::New => self.0.get(name).cloned().unwrap_or_default(),
        }
    }
}

fn pb_access(access: &file::AppAccess) -> pb::AppAccess {
    pb::AppAccess {
        all_apps: access.all_apps,
        app_ids: access.app_ids.iter().cloned().collect(),
    }
}

/// Makes one step (or, with `validate_only`, has the server check it). A step on an account
/// this run creates cannot be checked before the account exists, and is checked when made.
/// Returns a new token's (account, token, secret).
async fn make(
    admin: &mut Admin,
    jwt: &str,
    step: &Step,
    validate_only: bool,
    ids: &mut Ids,
) -> Result<Option<(String, String, String)>, Status> {
    let new_target = |t: &Target| matches!(t, Target::New);
    match step {
        Step::CreateAccount { account } => {
            let created = admin
                .create_service_account(authed(
                    pb::CreateServiceAccountRequest {
                        display_name: account.display_name.clone(),
                        description: account.description.clone(),
                        app_access: Some(pb_access(&account.app_access)),
                        labels: account.labels.clone().into_iter().collect(),
                        validate_only,
                    },
                    jwt,
                ))
                .await?
                .into_inner();
            if let Some(created) = created.service_account {
                ids.0
                    .insert(account.display_name.clone(), created.service_account_id);
            }
        }
        Step::UpdateAccount {
            id,
            display_name,
            description,
            labels,
            ..
        } => {
            let mut paths = Vec::new();
            let mut account = pb::ServiceAccount {
                service_account_id: id.clone(),
                ..Default::default()
            };
            if let Some(name) = display_name {
                paths.push("display_name".to_owned());
                account.display_name = name.clone();
            }
            if let Some(description) = description {
                paths.push("description".to_owned());
                account.description = description.clone();
            }
            if let Some(labels) = labels {
                paths.push("labels".to_owned());
                account.labels = labels.clone().into_iter().collect();
            }
            admin
                .update_service_account(authed(
                    pb::UpdateServiceAccountRequest {
                        service_account: Some(account),
                        update_mask: Some(prost_types::FieldMask { paths }),
                        validate_only,
                    },
                    jwt,
                ))
                .await?;
        }
        Step::SetAppAccess {
            account,
            name,
            access,
        } => {
            if validate_only && new_target(account) {
                return Ok(None);
            }
            admin
                .set_app_access(authed(
                    pb::SetAppAccessRequest {
                        service_account_id: ids.of(account, name),
                        app_access: Some(pb_access(access)),
                        validate_only,
                    },
                    jwt,
                ))
                .await?;
        }
        Step::SetState {
            account,
            name,
            state,
        } => {
            if validate_only && new_target(account) {
                return Ok(None);
            }
            let id = ids.of(account, name);
            match state {
                file::State::Disabled => {
                    admin
                        .disable_service_account(authed(
                            pb::DisableServiceAccountRequest {
                                service_account_id: id,
                                validate_only,
                            },
                            jwt,
                        ))
                        .await?;
                }
                file::State::Active => {
                    admin
                        .enable_service_account(authed(
                            pb::EnableServiceAccountRequest {
                                service_account_id: id,
                                validate_only,
                            },
                            jwt,
                        ))
                        .await?;
                }
            }
        }
        Step::CreateToken {
            account,
            account_name,
            token,
        } => {
            if validate_only && new_target(account) {
                return check_locally(token).map(|()| None);
            }
            let id = ids.of(account, account_name);
            let secret = create_token(admin, jwt, &id, token, validate_only).await?;
            return Ok(secret.map(|s| (account_name.clone(), token.display_name.clone(), s)));
        }
        Step::ReplaceToken {
            account,
            account_name,
            old,
            token,
        } => {
            let secret = create_token(admin, jwt, account, token, validate_only).await?;
            revoke(admin, jwt, account, &old.id, validate_only).await?;
            return Ok(secret.map(|s| (account_name.clone(), token.display_name.clone(), s)));
        }
        Step::UpdateTokenNetworks {
            account,
            token,
            allowed_cidrs,
            ..
        } => {
            admin
                .update_token(authed(
                    pb::UpdateTokenRequest {
                        token: Some(pb::Token {
                            service_account_id: account.clone(),
                            token_id: token.id.clone(),
                            allowed_cidrs: allowed_cidrs.iter().cloned().collect(),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["allowed_cidrs".into()],
                        }),
                        validate_only,
                    },
                    jwt,
                ))
                .await?;
        }
        Step::RevokeToken { account, token, .. } => {
            revoke(admin, jwt, account, &token.id, validate_only).await?;
        }
        Step::DeleteAccount { id, .. } => {
            admin
                .delete_service_account(authed(
                    pb::DeleteServiceAccountRequest {
                        service_account_id: id.clone(),
                        validate_only,
                    },
                    jwt,
                ))
                .await?;
        }
    }
    Ok(None)
}

fn token_request(
    account: &str,
    token: &file::Token,
    validate_only: bool,
) -> pb::CreateTokenRequest {
    pb::CreateTokenRequest {
        service_account_id: account.to_owned(),
        display_name: token.display_name.clone(),
        scopes: token.scopes.iter().cloned().collect(),
        expire_time: token
            .lifetime
            .map(|lifetime| prost_types::Timestamp::from(std::time::SystemTime::now() + lifetime)),
        allowed_cidrs: token.allowed_cidrs.iter().cloned().collect(),
        validate_only,
    }
}

/// A token of an account this run creates cannot be validated by the server before the
/// account exists: its request is read by the server's own request parser instead (scopes,
/// names, networks, expiry), leaving only the org's quota and policy to the step itself.
fn check_locally(token: &file::Token) -> Result<(), Status> {
    let placeholder = service_accounts_domain::ids::ServiceAccountId::generate().to_string();
    token_request(&placeholder, token, true)
        .parse()
        .map(drop)
        .map_err(|e| crate::error::status(e.into()))
}

async fn create_token(
    admin: &mut Admin,
    jwt: &str,
    account: &str,
    token: &file::Token,
    validate_only: bool,
) -> Result<Option<String>, Status> {
    let created = admin
        .create_token(authed(token_request(account, token, validate_only), jwt))
        .await?
        .into_inner();
    Ok((!validate_only).then_some(created.secret))
}

async fn revoke(
    admin: &mut Admin,
    jwt: &str,
    account: &str,
    token: &str,
    validate_only: bool,
) -> Result<(), Status> {
    admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                service_account_id: account.to_owned(),
                token_id: token.to_owned(),
                validate_only,
            },
            jwt,
        ))
        .await?;
    Ok(())
}

/// A path component from a display name: `/` cannot be in a file name, and `.`/`..` would
/// leave the directory.
fn component(name: &str) -> String {
    let name = name.replace(['/', '\0'], "_");
    match name.as_str() {
        "." | ".." | "" => name.replace('.', "_") + "_",
        _ => name,
    }
}

/// Writes a new token's secret to `DIR/<account>/<token>`: the file readable by its owner
/// only (0600), the directories too (0700).
fn write_secret(dir: &Path, account: &str, token: &str, secret: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let failed = |path: &Path, e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let account_dir = dir.join(component(account));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&account_dir)
        .map_err(|e| failed(&account_dir, e))?;
    let path = account_dir.join(component(token));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| failed(&path, e))?;
    // A file left by an earlier run keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| failed(&path, e))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|e| failed(&path, e))?;
    Ok(path)
}
