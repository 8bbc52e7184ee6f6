//! Service accounts and their app access.

use std::collections::BTreeSet;

use crate::error::Invalid;
use crate::ids::{OrgId, ServiceAccountId, UserId};
use crate::labels::Labels;
use crate::time::Timestamp;

pub const MAX_DISPLAY_NAME_CHARS: usize = 128;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
pub const MAX_APP_ID_CHARS: usize = 64;
/// Explicit grants per account; beyond this an admin wants `all_apps`.
pub const MAX_APP_IDS: usize = 1000;

/// Characters that render as nothing or reorder the text around them (Unicode's bidirectional
/// controls and default-ignorable code points): in a name they let one account pass for another
/// in callers' logs ("service account 'CI' did X").
fn is_invisible_or_bidi(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// A display name: trimmed, 1-128 characters, no control, invisible or bidirectional-control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let trimmed = s.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            return Err(Invalid::new("is required"));
        }
        if chars > MAX_DISPLAY_NAME_CHARS {
            return Err(Invalid::new(format!(
                "must be at most {MAX_DISPLAY_NAME_CHARS} characters, got {chars}"
            )));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(Invalid::new("must not contain control characters"));
        }
        if trimmed.chars().any(is_invisible_or_bidi) {
            return Err(Invalid::new(
                "must not contain invisible or bidirectional-control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is checked on: names that differ only in case collide.
    pub fn uniqueness_key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A description: at most 1024 characters, may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description(String);

impl Description {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let chars = s.chars().count();
        if chars > MAX_DESCRIPTION_CHARS {
            return Err(Invalid::new(format!(
                "must be at most {MAX_DESCRIPTION_CHARS} characters, got {chars}"
            )));
        }
        if s.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(Invalid::new(
                "must not contain control characters other than line breaks and tabs",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An app id, owned by other services: 1-64 characters of `[A-Za-z0-9_-]`. Held as a
/// `Box<str>`: every cached account holds its app ids, and a `String`'s capacity is 8 bytes more.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(Box<str>);

impl AppId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = (1..=MAX_APP_ID_CHARS).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.into()))
        } else {
            // The value is not echoed: a caller that put a secret in the wrong field would get
            // it back in an error message, which callers log.
            Err(Invalid::new(format!(
                "an app id must be 1-{MAX_APP_ID_CHARS} characters of [A-Za-z0-9_-]"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which apps an account's tokens may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppAccess {
    /// Every app of the org, including apps added later.
    AllApps,
    /// Exactly these apps (possibly none yet).
    Apps(AppSet),
}

/// A set of app ids, sorted and without repeats, held in one allocation of exactly its size:
/// every cached token's account holds one, where a `BTreeSet` would take a node with room for
/// eleven ids however few there are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppSet(Box<[AppId]>);

impl AppSet {
    pub fn contains(&self, app: &AppId) -> bool {
        self.0.binary_search(app).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In order.
    pub fn iter(&self) -> std::slice::Iter<'_, AppId> {
        self.0.iter()
    }

    /// The same ids as a set to compute with (grants, revocations).
    pub fn to_set(&self) -> BTreeSet<AppId> {
        self.0.iter().cloned().collect()
    }
}

impl FromIterator<AppId> for AppSet {
    fn from_iter<I: IntoIterator<Item = AppId>>(ids: I) -> Self {
        let mut ids: Vec<AppId> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        Self(ids.into_boxed_slice())
    }
}

impl From<BTreeSet<AppId>> for AppSet {
    fn from(ids: BTreeSet<AppId>) -> Self {
        // Already sorted and unique.
        Self(ids.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a AppSet {
    type Item = &'a AppId;
    type IntoIter = std::slice::Iter<'a, AppId>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl AppAccess {
    pub fn none() -> Self {
        AppAccess::Apps(AppSet::default())
    }

    pub fn allows(&self, app: &AppId) -> bool {
        match self {
            AppAccess::AllApps => true,
            AppAccess::Apps(apps) => apps.contains(app),
        }
    }

    /// Checks an explicit list's size (the shape of each id is checked by [`AppId::parse`]).
    pub fn explicit(apps: BTreeSet<AppId>) -> Result<Self, Invalid> {
        if apps.len() > MAX_APP_IDS {
            return Err(Invalid::new(format!(
                "at most {MAX_APP_IDS} app ids; use all_apps for more"
            )));
        }
        Ok(AppAccess::Apps(apps.into()))
    }
}

/// Whether an account's tokens work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccountState {
    #[default]
    Active,
    /// No token of the account works until it is enabled again.
    Disabled,
}

impl AccountState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Active => "active",
            AccountState::Disabled => "disabled",
        }
    }

    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AccountState::Active),
            "disabled" => Some(AccountState::Disabled),
            _ => None,
        }
    }
}

/// A service account.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAccount {
    pub id: ServiceAccountId,
    pub org_id: OrgId,
    pub display_name: DisplayName,
    pub description: Description,
    pub app_access: AppAccess,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub created_by: UserId,
    pub state: AccountState,
    pub labels: Labels,
    /// The latest last-used time of its tokens (read, never stored on the account).
    pub last_used_time: Option<Timestamp>,
    /// Bumped on every change; stores update only the revision they read (optimistic locking).
    pub revision: i64,
}

impl ServiceAccount {
    /// The account's version as clients see it: changes with every change of the account.
    pub fn etag(&self) -> String {
        self.revision.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_app_set_is_sorted_without_repeats_and_finds_its_ids() {
        let id = |s: &str| AppId::parse(s).unwrap();
        let apps: AppSet = ["web", "ios", "web", "android"]
            .map(id)
            .into_iter()
            .collect();
        let listed: Vec<&str> = apps.iter().map(AppId::as_str).collect();
        assert_eq!(listed, ["android", "ios", "web"]);
        assert!(apps.contains(&id("ios")) && !apps.contains(&id("mac")));
        assert_eq!(AppSet::from(apps.to_set()), apps);
        assert!(!AppAccess::none().allows(&id("ios")));
    }

    use super::*;

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  CI  ").unwrap().as_str(), "CI");
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"é".repeat(128)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(129)).is_err());
        assert!(DisplayName::parse("a\nb").is_err());
        assert_eq!(
            DisplayName::parse("CI Pipeline").unwrap().uniqueness_key(),
            DisplayName::parse("ci pipeline").unwrap().uniqueness_key()
        );
    }

    #[test]
    fn names_that_could_pass_for_another_are_refused() {
        // Right-to-left override, zero-width space and joiner, word joiner, BOM, tag characters.
        for spoof in [
            "CI\u{202E}enilepiP",
            "C\u{200B}I",
            "C\u{200D}I",
            "CI\u{2060}",
            "\u{FEFF}CI",
            "CI\u{E0041}",
        ] {
            let error = DisplayName::parse(spoof).expect_err(spoof);
            assert!(error.0.contains("invisible"), "{spoof:?}: {error}");
        }
        // Visible non-ASCII is fine.
        assert!(DisplayName::parse("Déploiement 🚀 ビルド").is_ok());
    }

    #[test]
    fn descriptions_are_bounded() {
        assert!(Description::parse("").is_ok());
        assert!(Description::parse(&"x".repeat(1024)).is_ok());
        assert!(Description::parse(&"x".repeat(1025)).is_err());
        assert!(Description::parse("two\nlines\tand a tab").is_ok());
        assert!(Description::parse("nul\0byte").is_err());
    }

    #[test]
    fn app_ids_have_a_fixed_shape() {
        assert!(AppId::parse("app_1-X").is_ok());
        assert!(AppId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(AppId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn all_apps_allows_any_app_and_explicit_only_listed_ones() {
        let a = AppId::parse("a").unwrap();
        let b = AppId::parse("b").unwrap();
        assert!(AppAccess::AllApps.allows(&a));
        let explicit = AppAccess::explicit([a.clone()].into()).unwrap();
        assert!(explicit.allows(&a));
        assert!(!explicit.allows(&b));
        assert!(!AppAccess::none().allows(&a));
    }
}
