//! What `apply` would change: the difference between the file and the org as the admin API
//! shows it, as an ordered list of steps. Pure: reading and writing are the caller's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::file::{self, File};

/// The label `apply` puts on the accounts it manages; `--prune` deletes only those.
pub const MANAGED_BY: (&str, &str) = ("app.embrace.io/managed-by", "apply");

/// An account as the admin API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveAccount {
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub app_access: file::AppAccess,
    pub state: file::State,
    /// Its tokens that work (neither revoked nor expired), oldest first.
    pub tokens: Vec<LiveToken>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LiveToken {
    pub id: String,
    pub display_name: String,
    pub scopes: BTreeSet<String>,
    pub allowed_cidrs: BTreeSet<String>,
}

/// Which account a step acts on: one that exists, or one an earlier step creates.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Existing(String),
    New,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    CreateAccount {
        account: file::Account,
    },
    UpdateAccount {
        id: String,
        name: String,
        display_name: Option<String>,
        description: Option<String>,
        labels: Option<BTreeMap<String, String>>,
    },
    SetAppAccess {
        account: Target,
        name: String,
        access: file::AppAccess,
    },
    SetState {
        account: Target,
        name: String,
        state: file::State,
    },
    CreateToken {
        account: Target,
        account_name: String,
        token: file::Token,
    },
    /// A new token with the declared scopes, then the old one revoked.
    ReplaceToken {
        account: String,
        account_name: String,
        old: LiveToken,
        token: file::Token,
    },
    UpdateTokenNetworks {
        account: String,
        account_name: String,
        token: LiveToken,
        allowed_cidrs: BTreeSet<String>,
    },
    RevokeToken {
        account: String,
        account_name: String,
        token: LiveToken,
    },
    DeleteAccount {
        id: String,
        name: String,
    },
}

fn key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The steps that make the org what `file` declares, in the order they run: accounts first,
/// then their settings, then tokens, then what is revoked or deleted.
pub fn plan(file: &File, live: &[LiveAccount], prune: bool) -> Vec<Step> {
    let by_key: BTreeMap<String, &LiveAccount> =
        live.iter().map(|a| (key(&a.display_name), a)).collect();
    let mut steps = Vec::new();
    let mut tokens = Vec::new();
    let mut removals = Vec::new();
    for wanted in &file.accounts {
        let labels = managed(&wanted.labels);
        let Some(current) = by_key.get(&key(&wanted.display_name)) else {
            let mut account = wanted.clone();
            account.labels = labels;
            let name = wanted.display_name.clone();
            steps.push(Step::CreateAccount { account });
            if wanted.state == file::State::Disabled {
                steps.push(Step::SetState {
                    account: Target::New,
                    name: name.clone(),
                    state: file::State::Disabled,
                });
            }
            for token in &wanted.tokens {
                tokens.push(Step::CreateToken {
                    account: Target::New,
                    account_name: name.clone(),
                    token: token.clone(),
                });
            }
            continue;
        };
        let name = wanted.display_name.clone();
        let display_name =
            (current.display_name != wanted.display_name).then(|| wanted.display_name.clone());
        let description =
            (current.description != wanted.description).then(|| wanted.description.clone());
        let new_labels = (current.labels != labels).then_some(labels);
        if display_name.is_some() || description.is_some() || new_labels.is_some() {
            steps.push(Step::UpdateAccount {
                id: current.id.clone(),
                name: name.clone(),
                display_name,
                description,
                labels: new_labels,
            });
        }
        if current.app_access != wanted.app_access {
            steps.push(Step::SetAppAccess {
                account: Target::Existing(current.id.clone()),
                name: name.clone(),
                access: wanted.app_access.clone(),
            });
        }
        if current.state != wanted.state {
            steps.push(Step::SetState {
                account: Target::Existing(current.id.clone()),
                name: name.clone(),
                state: wanted.state,
            });
        }
        let mut declared = BTreeSet::new();
        for token in &wanted.tokens {
            declared.insert(token.display_name.as_str());
            // The newest live token of that name is the declared one.
            match current
                .tokens
                .iter()
                .rev()
                .find(|t| t.display_name == token.display_name)
            {
                None => tokens.push(Step::CreateToken {
                    account: Target::Existing(current.id.clone()),
                    account_name: name.clone(),
                    token: token.clone(),
                }),
                Some(old) if old.scopes != token.scopes => tokens.push(Step::ReplaceToken {
                    account: current.id.clone(),
                    account_name: name.clone(),
                    old: old.clone(),
                    token: token.clone(),
                }),
                Some(old) if old.allowed_cidrs != token.allowed_cidrs => {
                    tokens.push(Step::UpdateTokenNetworks {
                        account: current.id.clone(),
                        account_name: name.clone(),
                        token: old.clone(),
                        allowed_cidrs: token.allowed_cidrs.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        if prune {
            for token in &current.tokens {
                let newest_of_name = current
                    .tokens
                    .iter()
                    .rev()
                    .find(|t| t.display_name == token.display_name)
                    .is_some_and(|t| t.id == token.id);
                if !declared.contains(token.display_name.as_str()) || !newest_of_name {
                    removals.push(Step::RevokeToken {
                        account: current.id.clone(),
                        account_name: name.clone(),
                        token: token.clone(),
                    });
                }
            }
        }
    }
    if prune {
        let declared: BTreeSet<String> =
            file.accounts.iter().map(|a| key(&a.display_name)).collect();
        for account in live {
            let managed =
                account.labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
            if managed && !declared.contains(&key(&account.display_name)) {
                removals.push(Step::DeleteAccount {
                    id: account.id.clone(),
                    name: account.display_name.clone(),
                });
            }
        }
    }
    steps.extend(tokens);
    steps.extend(removals);
    steps
}

fn managed(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels
}

fn words(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(" ")
    }
}

/// As a file would write it: whole days as `90d`.
fn lifetime(d: std::time::Duration) -> String {
    match d.as_secs() {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ => humantime::format_duration(d).to_string(),
    }
}

fn access(access: &file::AppAccess) -> String {
    if access.all_apps {
        "all apps".into()
    } else {
        format!("apps: {}", words(&access.app_ids))
    }
}

/// One line per step, like `terraform plan`: `+` creates, `~` changes, `-/+` replaces, `-`
/// revokes or deletes.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateAccount { account } => write!(
                f,
                "+ create account {:?} ({}, {})",
                account.display_name,
                access(&account.app_access),
                account
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Step::UpdateAccount {
                name,
                display_name,
                description,
                labels,
                ..
            } => {
                let mut fields = Vec::new();
                if let Some(new) = display_name {
                    fields.push(format!("display_name → {new:?}"));
                }
                if let Some(new) = description {
                    fields.push(format!("description → {new:?}"));
                }
                if let Some(new) = labels {
                    let text: Vec<String> = new.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    fields.push(format!("labels → {}", text.join(" ")));
                }
                write!(f, "~ update account {name:?}: {}", fields.join(", "))
            }
            Step::SetAppAccess {
                name, access: a, ..
            } => {
                write!(f, "~ set app access of {name:?}: {}", access(a))
            }
            Step::SetState { name, state, .. } => match state {
                file::State::Disabled => write!(f, "~ disable account {name:?}"),
                file::State::Active => write!(f, "~ enable account {name:?}"),
            },
            Step::CreateToken {
                account_name,
                token,
                ..
            } => write!(
                f,
                "+ create token {:?} of {account_name:?} (scopes: {}{})",
                token.display_name,
                words(&token.scopes),
                token
                    .lifetime
                    .map(|l| format!(", lifetime {}", lifetime(l)))
                    .unwrap_or_default()
            ),
            Step::ReplaceToken {
                account_name,
                old,
                token,
                ..
            } => write!(
                f,
                "-/+ replace token {:?} of {account_name:?} (scopes: {} → {})",
                token.display_name,
                words(&old.scopes),
                words(&token.scopes)
            ),
            Step::UpdateTokenNetworks {
                account_name,
                token,
                allowed_cidrs,
                ..
            } => write!(
                f,
                "~ update token {:?} of {account_name:?}: allowed_cidrs {} → {}",
                token.display_name,
                words(&token.allowed_cidrs),
                words(allowed_cidrs)
            ),
            Step::RevokeToken {
                account_name,
                token,
                ..
            } => write!(
                f,
                "- revoke token {:?} of {account_name:?} ({})",
                token.display_name, token.id
            ),
            Step::DeleteAccount { name, id } => write!(f, "- delete account {name:?} ({id})"),
        }
    }
}
