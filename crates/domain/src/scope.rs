//! The scope catalogue: every capability a token can carry, in one place.

use std::fmt;
use std::sync::LazyLock;

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

/// A scope from the catalogue: its position there.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope(u8);

// A token's scopes are one bit each of a `u64`.
const _: () = assert!(CATALOGUE.len() <= 64);

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
            .position(|d| d.name == name)
            .map(|i| Scope(i as u8))
    }

    pub fn as_str(&self) -> &'static str {
        self.definition().name
    }

    fn definition(&self) -> &'static ScopeDefinition {
        &CATALOGUE[usize::from(self.0)]
    }

    fn bit(self) -> u64 {
        1 << self.0
    }
}

/// Scopes sort by name, as they are listed and stored.
impl Ord for Scope {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for Scope {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The catalogue's scopes in name order.
static BY_NAME: LazyLock<Vec<Scope>> = LazyLock::new(|| {
    let mut scopes: Vec<Scope> = (0..CATALOGUE.len()).map(|i| Scope(i as u8)).collect();
    scopes.sort();
    scopes
});

/// The scopes of one token: non-empty, known, and closed under `requires`. One bit per
/// catalogue scope, so that every cached token holds its scopes in 8 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u64);

impl Scopes {
    /// Validates a requested scope list. Duplicates are harmless and folded.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, Invalid> {
        let mut set = Self(0);
        for name in names {
            set.0 |= Scope::parse(name)?.bit();
        }
        if set.0 == 0 {
            return Err(Invalid::new("at least one scope is required"));
        }
        for scope in set.iter() {
            for required in scope.definition().requires {
                if !set.names().any(|s| s == *required) {
                    return Err(Invalid::new(format!(
                        "scope {scope} requires scope {required}"
                    )));
                }
            }
        }
        Ok(set)
    }

    /// Reads scopes as stored (space-separated). A name no longer in the catalogue is dropped:
    /// a token never gains a capability from stale data.
    pub fn from_stored(stored: &str) -> Self {
        Self::known(stored.split_whitespace())
    }

    /// The names this catalogue knows, the others dropped (as from a newer control plane).
    pub fn known<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            names
                .into_iter()
                .filter_map(Scope::lookup)
                .fold(0, |bits, scope| bits | scope.bit()),
        )
    }

    /// The storage form: names sorted and separated by single spaces.
    pub fn to_stored(&self) -> String {
        self.names().collect::<Vec<_>>().join(" ")
    }

    /// The scopes in name order.
    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        BY_NAME.iter().copied().filter(|s| self.contains(*s))
    }

    /// The names in name order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.iter().map(|s| s.as_str())
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
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
