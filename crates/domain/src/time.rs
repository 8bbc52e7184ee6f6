//! Time as the domain sees it: UTC, truncated to microseconds so that every store round-trips
//! it exactly (PostgreSQL keeps microseconds).

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

pub type Timestamp = DateTime<Utc>;

/// The current time, truncated to microseconds.
pub fn now() -> Timestamp {
    truncate(Utc::now())
}

/// `t` truncated to microseconds.
pub fn truncate(t: Timestamp) -> Timestamp {
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}
