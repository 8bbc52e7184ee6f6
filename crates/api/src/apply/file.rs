//! The file `service-accounts apply` reads (SPEC §25): accounts by display name, each with its
//! tokens by display name. Unknown keys are refused, and every error names its line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub accounts: Vec<Account>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub app_access: AppAccess,
    #[serde(default)]
    pub state: State,
    #[serde(default)]
    pub tokens: Vec<Token>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppAccess {
    #[serde(default)]
    pub all_apps: bool,
    #[serde(default)]
    pub app_ids: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Active,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub display_name: String,
    pub scopes: BTreeSet<String>,
    /// `90d`, `12h`, …: the token expires this long after it is created. None: never.
    #[serde(default, with = "lifetime")]
    pub lifetime: Option<Duration>,
    #[serde(default)]
    pub allowed_cidrs: BTreeSet<String>,
}

mod lifetime {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            humantime::parse_duration(&t).map_err(|e| {
                serde::de::Error::custom(format!(
                    "lifetime {t:?} ({e}): write it as 90d, 12h or 30m"
                ))
            })
        })
        .transpose()
    }
}

/// Reads a file's text; the error says where (line and column) and what.
pub fn parse(text: &str) -> Result<File, String> {
    let file: File = serde_norway::from_str(text).map_err(|e| match e.location() {
        Some(at) => format!("line {}, column {}: {e}", at.line(), at.column()),
        None => e.to_string(),
    })?;
    check(&file)?;
    Ok(file)
}

/// What the format itself rules out: the keys (account names, token names within an account)
/// must be unique, and an account has either all apps or a list.
fn check(file: &File) -> Result<(), String> {
    let mut names = BTreeSet::new();
    for account in &file.accounts {
        let key = account.display_name.trim().to_lowercase();
        if !names.insert(key) {
            return Err(format!(
                "account {:?} is declared twice (display names are unique in an org, ignoring case)",
                account.display_name
            ));
        }
        if account.app_access.all_apps && !account.app_access.app_ids.is_empty() {
            return Err(format!(
                "account {:?}: app_access has both all_apps and app_ids",
                account.display_name
            ));
        }
        let mut tokens = BTreeSet::new();
        for token in &account.tokens {
            if !tokens.insert(token.display_name.as_str()) {
                return Err(format!(
                    "account {:?}: token {:?} is declared twice",
                    account.display_name, token.display_name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_file_reads_as_declared() {
        let file = parse(
            r#"
accounts:
  - display_name: CI Pipeline
    description: Builds and deploys
    labels: {team: platform}
    app_access: {app_ids: [checkout-ios]}
    state: active
    tokens:
      - display_name: GitHub Actions
        scopes: [mcp:tools:call, mcp:read]
        lifetime: 90d
        allowed_cidrs: [10.0.0.0/8]
"#,
        )
        .unwrap();
        let account = &file.accounts[0];
        assert_eq!(account.labels["team"], "platform");
        assert_eq!(account.app_access.app_ids.len(), 1);
        assert_eq!(
            account.tokens[0].lifetime,
            Some(Duration::from_secs(90 * 86_400))
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_line_and_column() {
        let error = parse("accounts:\n  - display_name: A\n    colour: red\n").unwrap_err();
        assert!(error.starts_with("line 3, column 5"), "{error}");
        assert!(error.contains("colour"), "{error}");
        let error = parse("accounts:\n  - display_name: A\n    state: paused\n").unwrap_err();
        assert!(error.starts_with("line 3"), "{error}");
        let error = parse(
            "accounts:\n  - display_name: A\n    tokens:\n      - display_name: t\n        scopes: []\n        lifetime: soon\n",
        )
        .unwrap_err();
        // The token's entry is where the bad lifetime is reported.
        assert!(error.starts_with("line 4"), "{error}");
        assert!(error.contains("lifetime \"soon\""), "{error}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let error = parse("accounts:\n  - display_name: A\n  - display_name: a\n").unwrap_err();
        assert!(error.contains("declared twice"), "{error}");
    }
}
