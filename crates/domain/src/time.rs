//! Time as the domain sees it: UTC, truncated to microseconds so that every store round-trips
//! it exactly (PostgreSQL keeps microseconds).

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use crate::error::Invalid;

pub type Timestamp = DateTime<Utc>;

/// The current time, truncated to microseconds.
pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    DateTime::from_timestamp_micros(since_epoch.as_micros() as i64)
        .unwrap_or_else(|| truncate(Utc::now()))
}

/// `t` truncated to microseconds.
pub fn truncate(t: Timestamp) -> Timestamp {
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

pub const SECONDS_PER_DAY: i64 = 86_400;

/// A duration from the API (`google.protobuf.Duration`'s parts) that must be whole seconds
/// between `min` and `max` seconds inclusive.
pub fn whole_seconds(seconds: i64, nanos: i32, min: i64, max: i64) -> Result<TimeDelta, Invalid> {
    if nanos != 0 {
        return Err(Invalid::new("must be whole seconds (nanos must be 0)"));
    }
    if seconds < min {
        return Err(Invalid::new(if min == 1 {
            "must be positive".to_owned()
        } else if min == 0 {
            "must not be negative".to_owned()
        } else {
            format!("must be at least {min} seconds")
        }));
    }
    if seconds > max {
        return Err(Invalid::new(format!(
            "must be at most {} ({max} seconds)",
            describe(max)
        )));
    }
    Ok(TimeDelta::seconds(seconds))
}

/// `seconds` in days when whole, for messages.
pub fn describe(seconds: i64) -> String {
    if seconds % SECONDS_PER_DAY == 0 {
        format!("{} days", seconds / SECONDS_PER_DAY)
    } else {
        format!("{seconds} seconds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_seconds_within_bounds() {
        assert_eq!(whole_seconds(60, 0, 1, 120), Ok(TimeDelta::seconds(60)));
        assert_eq!(whole_seconds(0, 0, 0, 120), Ok(TimeDelta::zero()));
        assert!(whole_seconds(0, 0, 1, 120).is_err());
        assert!(whole_seconds(-1, 0, 0, 120).is_err());
        assert!(whole_seconds(1, 500, 1, 120).is_err());
        assert!(whole_seconds(121, 0, 1, 120).is_err());
        assert!(whole_seconds(i64::MAX, 0, 1, 120).is_err());
    }
}
