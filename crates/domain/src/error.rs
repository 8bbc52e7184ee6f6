//! The domain's error type and the field-violation collector used by request parsing.

use std::fmt;

/// Why a single value was rejected by a `parse` constructor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(description: impl Into<String>) -> Self {
        Self(description.into())
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One bad field of a request, named by its path in the API (`app_access.app_ids[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// At most this many violations are reported per error, plus one saying how many were left
/// out: a request cannot make the server answer with a large error.
pub const MAX_VIOLATIONS: usize = 20;

/// At most this many bytes of a caller's input are quoted back in an error.
pub const MAX_ECHO_BYTES: usize = 64;

/// `input` quoted for an error message (escaped as Rust's `Debug` does), cut so that at most
/// [`MAX_ECHO_BYTES`] bytes of it are shown: escaping can multiply the size of odd characters.
pub fn quote(input: &str) -> String {
    let quoted = format!("{input:?}");
    if quoted.len() <= MAX_ECHO_BYTES {
        return quoted;
    }
    let mut end = MAX_ECHO_BYTES;
    while !quoted.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &quoted[..end])
}

/// Collects every violation of a request so that callers see all problems at once.
#[derive(Debug, Default)]
pub struct Violations {
    shown: Vec<FieldViolation>,
    left_out: usize,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `result`'s error against `field`, returning the value when it parsed.
    pub fn check<T>(&mut self, field: impl Into<String>, result: Result<T, Invalid>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(invalid) => {
                self.add(field, invalid.0);
                None
            }
        }
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.shown.len() == MAX_VIOLATIONS {
            self.left_out += 1;
            return;
        }
        self.shown.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }

    /// `Ok(())` when nothing was recorded, else the `InvalidArgument` error carrying them all
    /// (the first [`MAX_VIOLATIONS`], and how many more there were).
    pub fn finish(mut self) -> Result<(), Error> {
        if self.shown.is_empty() {
            return Ok(());
        }
        if self.left_out > 0 {
            self.shown.push(FieldViolation {
                field: "request".into(),
                description: format!("{} more violations not shown", self.left_out),
            });
        }
        Err(Error::InvalidArgument(self.shown))
    }

    /// Like [`Self::finish`], then builds the parsed value from the parts `check` returned.
    /// `build` sees `None` only for a part that failed without recording why: that is still
    /// the caller's bad input, answered as such rather than with a panic.
    pub fn finish_with<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, Error> {
        self.finish()?;
        build().ok_or_else(|| Error::invalid("", "the request could not be parsed"))
    }
}

/// A failure of a storage adapter, in terms the domain can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or timed out; retrying later may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was broken; the payload names the rule.
    #[error("unique constraint violated: {0:?}")]
    Conflict(Conflict),
    /// A conditional write found the row changed since it was read.
    #[error("row changed concurrently")]
    Stale,
    #[error("storage error: {0}")]
    Other(String),
}

/// The uniqueness rules the domain knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    ServiceAccountDisplayName,
    TokenHash,
}

/// Everything a use case can fail with. `api` maps each variant to one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0:?}")]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource does not exist in the caller's org (another org's looks exactly the same).
    #[error("{kind} not found")]
    NotFound { kind: &'static str },
    #[error("{message}")]
    AlreadyExists {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A quota is used up: `subject` names it (as in `google.rpc.QuotaFailure`).
    #[error("{description}")]
    ResourceExhausted {
        subject: String,
        description: String,
    },
    /// Optimistic concurrency gave up after retries; the client may retry.
    #[error("the resource changed concurrently; retry")]
    Aborted,
    /// The caller's etag names an older version of the resource.
    #[error("the etag does not match: the resource changed since it was read")]
    StaleEtag,
    /// The org's token policy forbids the request (`google.rpc.PreconditionFailure` of type
    /// `TOKEN_POLICY`; `subject` names the rule).
    #[error("{description}")]
    PolicyViolation {
        subject: &'static str,
        description: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_of_violations_become_twenty_and_a_count() {
        let mut violations = Violations::new();
        for i in 0..3000 {
            violations.add(format!("required_scopes[{i}]"), "unknown scope");
        }
        let Err(Error::InvalidArgument(shown)) = violations.finish() else {
            panic!("expected invalid argument");
        };
        assert_eq!(shown.len(), MAX_VIOLATIONS + 1);
        assert_eq!(shown[19].field, "required_scopes[19]");
        assert_eq!(shown[20].description, "2980 more violations not shown");
    }

    #[test]
    fn quoted_input_is_cut_at_64_bytes_on_a_character_boundary() {
        assert_eq!(quote("short"), "\"short\"");
        // Multi-byte characters, and characters that escaping makes six times longer.
        for long in ["é".repeat(100), "\u{7f}".repeat(64)] {
            let quoted = quote(&long);
            assert!(quoted.len() <= MAX_ECHO_BYTES + "…".len(), "{quoted}");
            assert!(quoted.ends_with('…'));
        }
    }
}
