//! The scope catalogue: every capability a token can carry, in one place.

use std::collections::BTreeSet;
use std::fmt;

use crate::error::Invalid;

/// One entry of the catalogue.
#[derive(Debug, PartialEq, Eq)]
pub struct ScopeDefinition {
    pub name: &'static str,
    pub description: &'static str,
    /// Scopes a token must also carry when it carries this one.
    pub requires: &'static [&'static str],
}

pub const MCP_TOOLS_CALL: &str = "mcp:tools:call";

/// Add a scope here and it is accepted, listed by `ListScopes` and enforced everywhere.
pub const CATALOGUE: &[ScopeDefinition] = &[
    ScopeDefinition {
        name: MCP_TOOLS_CALL,
        description: "Invoke MCP tools. Required for any access to the MCP server.",
        requires: &[],
    },
    ScopeDefinition {
        name: "mcp:read",
        description: "Read data through the MCP server.",
        requires: &[MCP_TOOLS_CALL],
    },
    ScopeDefinition {
        name: "mcp:write",
        description: "Write data through the MCP server.",
        requires: &[MCP_TOOLS_CALL],
    },
];

/// A scope from the catalogue.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(&'static str);

impl Scope {
    pub fn parse(name: &str) -> Result<Self, Invalid> {
        Self::lookup(name).ok_or_else(|| {
            let known: Vec<&str> = CATALOGUE.iter().map(|d| d.name).collect();
            // The value is not echoed (it could be a misplaced secret).
            Invalid::new(format!("unknown scope; known scopes: {}", known.join(", ")))
        })
    }

    fn lookup(name: &str) -> Option<Self> {
        CATALOGUE
            .iter()
            .find(|d| d.name == name)
            .map(|d| Scope(d.name))
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    fn definition(&self) -> &'static ScopeDefinition {
        CATALOGUE
            .iter()
            .find(|d| d.name == self.0)
            .expect("a Scope is only built from the catalogue")
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The scopes of one token: non-empty, known, and closed under `requires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    /// Validates a requested scope list. Duplicates are harmless and folded.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, Invalid> {
        let mut set = BTreeSet::new();
        for name in names {
            set.insert(Scope::parse(name)?);
        }
        if set.is_empty() {
            return Err(Invalid::new("at least one scope is required"));
        }
        for scope in &set {
            for required in scope.definition().requires {
                if !set.iter().any(|s| s.as_str() == *required) {
                    return Err(Invalid::new(format!(
                        "scope {scope} requires scope {required}"
                    )));
                }
            }
        }
        Ok(Self(set))
    }

    /// Reads scopes as stored (space-separated). A name no longer in the catalogue is dropped:
    /// a token never gains a capability from stale data.
    pub fn from_stored(stored: &str) -> Self {
        Self(
            stored
                .split_whitespace()
                .filter_map(Scope::lookup)
                .collect(),
        )
    }

    /// The storage form: names sorted and separated by single spaces.
    pub fn to_stored(&self) -> String {
        self.names().collect::<Vec<_>>().join(" ")
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(Scope::as_str)
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_known_scopes_sorted_and_deduplicated() {
        let scopes = Scopes::parse(["mcp:read", "mcp:tools:call", "mcp:read"]).unwrap();
        assert_eq!(
            scopes.names().collect::<Vec<_>>(),
            ["mcp:read", "mcp:tools:call"]
        );
        assert_eq!(Scopes::from_stored(&scopes.to_stored()), scopes);
    }

    #[test]
    fn rejects_empty_unknown_and_mcp_without_tools_call() {
        assert!(Scopes::parse([]).is_err());
        let unknown = Scopes::parse(["mcp:tools:call", "admin"]).unwrap_err();
        assert!(
            unknown
                .0
                .starts_with("unknown scope; known scopes: mcp:tools:call"),
            "{unknown}"
        );
        assert!(
            !unknown.0.contains("admin"),
            "the value is not echoed: {unknown}"
        );
        let missing = Scopes::parse(["mcp:write"]).unwrap_err();
        assert_eq!(missing.0, "scope mcp:write requires scope mcp:tools:call");
        assert!(Scopes::parse([""]).is_err());
    }

    #[test]
    fn every_requirement_in_the_catalogue_names_a_catalogue_scope() {
        for definition in CATALOGUE {
            for required in definition.requires {
                assert!(Scope::parse(required).is_ok(), "{required}");
            }
        }
    }

    #[test]
    fn stored_names_that_left_the_catalogue_are_dropped() {
        let scopes = Scopes::from_stored("mcp:tools:call retired:scope");
        assert_eq!(scopes.names().collect::<Vec<_>>(), ["mcp:tools:call"]);
    }
}
