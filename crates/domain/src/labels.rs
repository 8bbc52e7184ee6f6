//! Labels of a service account, with Kubernetes' rules for keys and values (SPEC §23): tools
//! that manage accounts (such as `service-accounts apply`) mark theirs with them, and listings
//! filter on them.

use std::collections::BTreeMap;

use crate::error::Invalid;

/// Labels per account.
pub const MAX_LABELS: usize = 32;
/// A key's prefix (a DNS subdomain).
pub const MAX_PREFIX_CHARS: usize = 253;
/// A key's name, and a value.
pub const MAX_NAME_CHARS: usize = 63;

/// An account's labels: at most [`MAX_LABELS`], each key and value checked, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

/// Why a set of labels was refused: the whole set (too many), or one entry, by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelProblem {
    TooMany(Invalid),
    Entry { key: String, invalid: Invalid },
}

impl Labels {
    /// Every problem at once: the count, then each bad entry in key order (its key's problem
    /// and its value's, in one description). Values are never quoted back: callers log errors.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<LabelProblem>> {
        let mut entries: Vec<(&str, &str)> = entries.into_iter().collect();
        entries.sort_unstable();
        let mut problems = Vec::new();
        if entries.len() > MAX_LABELS {
            problems.push(LabelProblem::TooMany(Invalid::new(format!(
                "at most {MAX_LABELS} labels, got {}",
                entries.len()
            ))));
        }
        for (key, value) in &entries {
            let why: Vec<String> = [check_key(key), check_value(value)]
                .into_iter()
                .filter_map(Result::err)
                .map(|invalid| invalid.0)
                .collect();
            if !why.is_empty() {
                problems.push(LabelProblem::Entry {
                    key: (*key).to_owned(),
                    invalid: Invalid::new(why.join("; ")),
                });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        ))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// As an audit event's details show them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.iter().map(|(k, v)| (k.to_owned(), v.into())).collect())
    }
}

/// A key: an optional prefix (a DNS subdomain) and `/`, then a name.
pub fn check_key(key: &str) -> Result<(), Invalid> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if name.contains('/') {
        return Err(Invalid::new(
            "the key has more than one `/`: a key is a name, optionally after a prefix and `/`",
        ));
    }
    if let Some(prefix) = prefix {
        check_prefix(prefix)?;
    }
    if name.is_empty() {
        return Err(Invalid::new("the key's name is empty"));
    }
    check_name(name).map_err(|why| Invalid::new(format!("the key's name {why}")))
}

/// A value: empty, or a name.
pub fn check_value(value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|why| Invalid::new(format!("the value {why}")))
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters; the error completes
/// "the key's name …" or "the value …".
fn check_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "must be at most {MAX_NAME_CHARS} characters, got {chars}"
        ));
    }
    let inner_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if inner_ok && ends_ok {
        Ok(())
    } else {
        Err(
            "must be ASCII letters, digits, `-`, `_` and `.`, starting and ending with a letter \
             or digit"
                .into(),
        )
    }
}

/// A DNS subdomain (RFC 1123): dot-separated parts of lower-case letters, digits and `-`, each
/// starting and ending with a letter or digit; at most 253 characters.
fn check_prefix(prefix: &str) -> Result<(), Invalid> {
    let chars = prefix.chars().count();
    if chars > MAX_PREFIX_CHARS {
        return Err(Invalid::new(format!(
            "the key's prefix must be at most {MAX_PREFIX_CHARS} characters, got {chars}"
        )));
    }
    let part_ok = |part: &str| {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        part.starts_with(alnum)
            && part.ends_with(alnum)
            && part.chars().all(|c| alnum(c) || c == '-')
    };
    if prefix.split('.').all(part_ok) {
        Ok(())
    } else {
        Err(Invalid::new(
            "the key's prefix must be a DNS subdomain: lower-case letters, digits, `-` and `.`, \
             each dot-separated part starting and ending with a letter or digit",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(entries: &[(&str, &str)]) -> Result<Labels, Vec<LabelProblem>> {
        Labels::parse(entries.iter().copied())
    }

    #[test]
    fn kubernetes_shaped_keys_and_values_are_accepted() {
        let labels = parsed(&[
            ("team", "platform"),
            ("app.embrace.io/managed-by", "apply"),
            ("a", ""),
            ("Tier_1.x-y", "V1.2_3-b"),
            (
                &format!("{}/{}", "p".repeat(253), "n".repeat(63)),
                &"v".repeat(63),
            ),
            ("1-2.example/9", "0"),
        ])
        .unwrap();
        assert_eq!(labels.len(), 6);
        assert_eq!(labels.get("app.embrace.io/managed-by"), Some("apply"));
        assert_eq!(labels.get("a"), Some(""));
        // In key order, whatever the order given.
        let keys: Vec<&str> = labels.iter().map(|(k, _)| k).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        assert_eq!(
            labels.to_json()["app.embrace.io/managed-by"],
            serde_json::json!("apply")
        );
    }

    #[test]
    fn each_bad_key_shape_is_refused_with_what_is_wrong() {
        let long_prefix = format!("{}/x", "p".repeat(254));
        let long_name = "n".repeat(64);
        let cases: &[(&str, &str)] = &[
            ("", "name is empty"),
            ("prefix/", "name is empty"),
            ("/name", "prefix must be a DNS subdomain"),
            ("a/b/c", "more than one `/`"),
            ("Upper.io/x", "prefix must be a DNS subdomain"),
            ("-a.io/x", "prefix must be a DNS subdomain"),
            ("a..io/x", "prefix must be a DNS subdomain"),
            ("a_b.io/x", "prefix must be a DNS subdomain"),
            (&long_prefix, "prefix must be at most 253"),
            (&long_name, "name must be at most 63 characters, got 64"),
            ("bad key", "name must be ASCII letters"),
            ("-team", "name must be ASCII letters"),
            ("team.", "name must be ASCII letters"),
            ("équipe", "name must be ASCII letters"),
        ];
        for (key, words) in cases {
            let error = check_key(key).expect_err(key);
            assert!(error.0.contains(words), "{key:?}: {error}");
        }
    }

    #[test]
    fn each_bad_value_shape_is_refused_and_not_quoted_back() {
        for (value, words) in [
            ("with space", "value must be ASCII letters"),
            ("_x", "value must be ASCII letters"),
            ("x-", "value must be ASCII letters"),
            ("a/b", "value must be ASCII letters"),
            (
                &*"v".repeat(64),
                "value must be at most 63 characters, got 64",
            ),
        ] {
            let error = check_value(value).expect_err(value);
            assert!(error.0.contains(words), "{value:?}: {error}");
            assert!(!error.0.contains(value), "{error}");
        }
    }

    #[test]
    fn every_bad_entry_and_the_count_are_reported_at_once_in_key_order() {
        let mut entries: Vec<(String, String)> =
            (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        entries.push(("z z".into(), "bad value".into()));
        entries.push(("b b".into(), "ok".into()));
        let problems =
            Labels::parse(entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            matches!(&problems[0], LabelProblem::TooMany(i) if i.0.contains("at most 32 labels, got 35"))
        );
        let LabelProblem::Entry { key, invalid } = &problems[1] else {
            panic!("{problems:?}");
        };
        assert_eq!(key, "b b");
        assert!(!invalid.0.contains("value"), "{invalid}");
        let LabelProblem::Entry { key, invalid } = &problems[2] else {
            panic!("{problems:?}");
        };
        assert_eq!(key, "z z");
        assert!(
            invalid.0.contains("the key's name") && invalid.0.contains("the value"),
            "{invalid}"
        );
    }

    #[test]
    fn thirty_two_labels_are_the_most() {
        let keys: Vec<String> = (0..33).map(|i| format!("k{i}")).collect();
        assert!(Labels::parse(keys[..32].iter().map(|k| (k.as_str(), ""))).is_ok());
        assert!(Labels::parse(keys.iter().map(|k| (k.as_str(), ""))).is_err());
        assert!(Labels::parse([]).unwrap().is_empty());
    }
}
