//! An org's token lifetime policy: the longest lifetime a token may have, and the lifetime of
//! a token created without an expiry.

use chrono::TimeDelta;

use crate::error::{Error, Invalid};
use crate::time::{self, SECONDS_PER_DAY, Timestamp};

/// A policy lifetime is at most ten years.
pub const MAX_POLICY_SECONDS: i64 = 3650 * SECONDS_PER_DAY;

/// A lifetime from the API: positive whole seconds, at most 3,650 days.
pub fn lifetime(seconds: i64, nanos: i32) -> Result<TimeDelta, Invalid> {
    time::whole_seconds(seconds, nanos, 1, MAX_POLICY_SECONDS)
}

/// `None` fields mean "no rule".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenPolicy {
    pub max_lifetime: Option<TimeDelta>,
    pub default_lifetime: Option<TimeDelta>,
}

/// A validated `UpdateTokenPolicy`: `None` leaves a field as it is, `Some(None)` removes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenPolicyPatch {
    pub max_lifetime: Option<Option<TimeDelta>>,
    pub default_lifetime: Option<Option<TimeDelta>>,
}

/// A stored policy with the revision it was read at (0: never set), for optimistic updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredPolicy {
    pub policy: TokenPolicy,
    pub revision: i64,
}

impl TokenPolicy {
    pub fn apply(mut self, patch: TokenPolicyPatch) -> Result<Self, Error> {
        if let Some(max) = patch.max_lifetime {
            self.max_lifetime = max;
        }
        if let Some(default) = patch.default_lifetime {
            self.default_lifetime = default;
        }
        if let (Some(default), Some(max)) = (self.default_lifetime, self.max_lifetime)
            && default > max
        {
            return Err(Error::invalid(
                "token_policy.default_lifetime",
                format!(
                    "must not exceed max_lifetime ({})",
                    time::describe(max.num_seconds())
                ),
            ));
        }
        Ok(self)
    }

    /// A new token's expiry: the requested one if the policy allows it; without one, now plus
    /// the default lifetime, else plus the maximum, else none.
    pub fn expiry(
        &self,
        requested: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, Error> {
        let latest = self.max_lifetime.map(|max| now + max);
        match requested {
            Some(expiry) => match latest {
                Some(latest) if expiry > latest => Err(Error::PolicyViolation {
                    subject: "max_lifetime",
                    description: format!(
                        "the org's token policy allows lifetimes of at most {}: expire_time must \
                         be no later than {}",
                        time::describe(self.max_lifetime.unwrap_or_default().num_seconds()),
                        latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                }),
                _ => Ok(Some(expiry)),
            },
            None => Ok(self.default_lifetime.map(|d| now + d).or(latest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(n: i64) -> TimeDelta {
        TimeDelta::days(n)
    }

    #[test]
    fn without_an_expire_time_a_token_gets_the_default_else_the_maximum_else_none() {
        let now = time::now();
        let both = TokenPolicy {
            max_lifetime: Some(days(90)),
            default_lifetime: Some(days(30)),
        };
        assert_eq!(both.expiry(None, now).unwrap(), Some(now + days(30)));
        let max_only = TokenPolicy {
            max_lifetime: Some(days(90)),
            default_lifetime: None,
        };
        assert_eq!(max_only.expiry(None, now).unwrap(), Some(now + days(90)));
        assert_eq!(TokenPolicy::default().expiry(None, now).unwrap(), None);
    }

    #[test]
    fn an_expire_time_beyond_the_maximum_is_a_policy_violation_and_one_within_it_is_kept() {
        let now = time::now();
        let policy = TokenPolicy {
            max_lifetime: Some(days(90)),
            default_lifetime: None,
        };
        assert_eq!(
            policy.expiry(Some(now + days(90)), now).unwrap(),
            Some(now + days(90))
        );
        assert!(matches!(
            policy.expiry(Some(now + days(91)), now),
            Err(Error::PolicyViolation {
                subject: "max_lifetime",
                ..
            })
        ));
        let far = now + days(3650);
        assert_eq!(
            TokenPolicy::default().expiry(Some(far), now).unwrap(),
            Some(far)
        );
    }

    #[test]
    fn the_default_may_not_exceed_the_maximum_whichever_field_changes() {
        let policy = TokenPolicy {
            max_lifetime: Some(days(30)),
            default_lifetime: Some(days(7)),
        };
        let raise_default = TokenPolicyPatch {
            default_lifetime: Some(Some(days(31))),
            ..Default::default()
        };
        assert!(matches!(
            policy.apply(raise_default),
            Err(Error::InvalidArgument(_))
        ));
        let lower_max = TokenPolicyPatch {
            max_lifetime: Some(Some(days(6))),
            ..Default::default()
        };
        assert!(policy.apply(lower_max).is_err());
        let remove_max = TokenPolicyPatch {
            max_lifetime: Some(None),
            ..Default::default()
        };
        assert_eq!(
            policy.apply(remove_max).unwrap(),
            TokenPolicy {
                max_lifetime: None,
                default_lifetime: Some(days(7))
            }
        );
    }

    #[test]
    fn lifetimes_are_positive_whole_seconds_of_at_most_ten_years() {
        assert!(lifetime(1, 0).is_ok());
        assert!(lifetime(MAX_POLICY_SECONDS, 0).is_ok());
        assert!(lifetime(MAX_POLICY_SECONDS + 1, 0).is_err());
        assert!(lifetime(0, 0).is_err());
        assert!(lifetime(-60, 0).is_err());
        assert!(lifetime(60, 1).is_err());
    }
}
