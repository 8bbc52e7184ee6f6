//! Identifiers. Server-assigned ids are UUIDv7 (time-ordered, so keyset pagination by id is
//! pagination by creation time); org and user ids come from the admin's JWT and are opaque.

use std::fmt;

use uuid::Uuid;

use crate::error::Invalid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Accepts only the canonical lower-case hyphenated form the server hands out.
            pub fn parse(s: &str) -> Result<Self, Invalid> {
                match Uuid::try_parse(s) {
                    Ok(uuid) if uuid.hyphenated().to_string() == s => Ok(Self(uuid)),
                    _ => Err(Invalid::new("must be an id returned by this service (a UUID)")),
                }
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The canonical form as a `String`, without the formatting machinery.
            pub fn to_canonical(&self) -> String {
                let mut buf = Uuid::encode_buffer();
                self.0.hyphenated().encode_lower(&mut buf).to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Id of a service account.
    ServiceAccountId
);
uuid_id!(
    /// Non-secret handle of a token.
    TokenId
);
uuid_id!(
    /// Id of an audit event.
    AuditEventId
);

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        // A `Box<str>`, not a `String`: every cached account holds its org id.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            /// 1-128 printable characters without whitespace.
            pub fn parse(s: &str) -> Result<Self, Invalid> {
                let ok = !s.is_empty()
                    && s.chars().count() <= 128
                    && s.chars().all(|c| !c.is_whitespace() && !c.is_control());
                if ok {
                    Ok(Self(s.into()))
                } else {
                    Err(Invalid::new(concat!($what, " must be 1-128 printable characters without spaces")))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

opaque_id!(
    /// An org, as named by the platform's identity side.
    OrgId,
    "org id"
);
opaque_id!(
    /// A human user (an admin), as named by the platform's identity side.
    UserId,
    "user id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_round_trip_and_reject_other_forms() {
        let id = ServiceAccountId::generate();
        assert_eq!(ServiceAccountId::parse(&id.to_string()), Ok(id));
        assert!(ServiceAccountId::parse("not-a-uuid").is_err());
        assert!(ServiceAccountId::parse(&id.to_string().to_uppercase()).is_err());
        assert!(ServiceAccountId::parse(&id.as_uuid().simple().to_string()).is_err());
    }

    #[test]
    fn generated_ids_are_time_ordered() {
        let a = TokenId::generate();
        let b = TokenId::generate();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn opaque_ids_reject_blank_and_spaces() {
        assert!(OrgId::parse("org_1").is_ok());
        assert!(OrgId::parse("").is_err());
        assert!(OrgId::parse("a b").is_err());
        assert!(UserId::parse(&"x".repeat(129)).is_err());
    }
}
