//! The `IntrospectResponse` written straight from the introspection result.
//!
//! Every request of every calling service pays for this response. Building the generated
//! `pb::IntrospectResponse` first would allocate, copy and free seven strings and vectors per
//! call; this type encodes the same bytes from the cached record instead, with ids rendered on
//! the stack. The generated message stays the reference: the tests check that both encodings
//! are the same, byte for byte, and clients decode with it.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, skip_field,
};
use prost::{DecodeError, Message};
use service_accounts_domain::introspection::{Denial, Ended, Introspection, Unrecognised};
use service_accounts_domain::service_account::AppAccess;
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::TokenRecord;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::pb::{DenialReason, InactiveReason};

/// Field numbers of `IntrospectResponse`, `AppAccess` and `google.protobuf.Timestamp`.
mod tag {
    pub const ACTIVE: u32 = 1;
    pub const INACTIVE_REASON: u32 = 2;
    pub const ORG_ID: u32 = 3;
    pub const SERVICE_ACCOUNT_ID: u32 = 4;
    pub const DISPLAY_NAME: u32 = 5;
    pub const TOKEN_ID: u32 = 6;
    pub const SCOPES: u32 = 7;
    pub const APP_ACCESS: u32 = 8;
    pub const EXPIRE_TIME: u32 = 9;
    pub const ALLOWED: u32 = 10;
    pub const DENIAL_REASON: u32 = 11;
    pub const MISSING_SCOPES: u32 = 12;
    pub const DENIAL_REASONS: u32 = 13;
    pub const ALLOWED_CIDRS: u32 = 14;
    pub const ALL_APPS: u32 = 1;
    pub const APP_IDS: u32 = 2;
    pub const SECONDS: u32 = 1;
    pub const NANOS: u32 = 2;
}

/// An `Introspect` answer, encoded as `IntrospectResponse`. Encode-only: the server never
/// decodes it, and decoding one skips every field.
#[derive(Debug)]
pub struct IntrospectReply(pub Introspection);

impl IntrospectReply {
    pub fn is_active(&self) -> bool {
        matches!(self.0, Introspection::Active { .. })
    }

    pub fn is_allowed(&self) -> bool {
        matches!(&self.0, Introspection::Active { denials, .. } if denials.allowed())
    }

    /// The metrics label of the outcome.
    pub fn outcome(&self) -> &'static str {
        match &self.0 {
            Introspection::Active { .. } => "active",
            Introspection::Unrecognised(Unrecognised::Malformed) => "malformed",
            Introspection::Unrecognised(Unrecognised::Unknown) => "unknown",
            Introspection::Ended { reason, .. } => match reason {
                Ended::Revoked => "revoked",
                Ended::Expired => "expired",
                Ended::AccountDisabled => "account_disabled",
            },
        }
    }

    fn inactive_reason(&self) -> InactiveReason {
        match &self.0 {
            Introspection::Active { .. } => InactiveReason::Unspecified,
            Introspection::Unrecognised(Unrecognised::Malformed) => InactiveReason::Malformed,
            Introspection::Unrecognised(Unrecognised::Unknown) => InactiveReason::Unknown,
            Introspection::Ended { reason, .. } => match reason {
                Ended::Revoked => InactiveReason::Revoked,
                Ended::Expired => InactiveReason::Expired,
                Ended::AccountDisabled => InactiveReason::AccountDisabled,
            },
        }
    }

    /// The reasons in report order: `TOKEN_INACTIVE` alone for an inactive token.
    fn denial_reasons(&self) -> impl Iterator<Item = DenialReason> + '_ {
        let (inactive, active) = match &self.0 {
            Introspection::Active { denials, .. } => (None, denials.reasons.as_slice()),
            _ => (Some(DenialReason::TokenInactive), &[][..]),
        };
        inactive
            .into_iter()
            .chain(active.iter().map(|denial| denial_reason(*denial)))
    }
}

pub fn denial_reason(denial: Denial) -> DenialReason {
    match denial {
        Denial::OrgMismatch => DenialReason::OrgMismatch,
        Denial::ClientIpNotAllowed => DenialReason::ClientIpNotAllowed,
        Denial::AppNotGranted => DenialReason::AppNotGranted,
        Denial::ScopeMissing => DenialReason::ScopeMissing,
    }
}

impl Message for IntrospectReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_bool(tag::ACTIVE, self.is_active(), buf);
        put_enum(tag::INACTIVE_REASON, self.inactive_reason() as i32, buf);
        if let Introspection::Active { token, .. } = &self.0 {
            put_token(token, buf);
        }
        put_bool(tag::ALLOWED, self.is_allowed(), buf);
        put_enum(
            tag::DENIAL_REASON,
            self.denial_reasons().next().map_or(0, |r| r as i32),
            buf,
        );
        if let Introspection::Active { denials, .. } = &self.0 {
            for scope in &denials.missing_scopes {
                put_str(tag::MISSING_SCOPES, scope.as_str(), buf);
            }
        }
        let packed: usize = self.denial_reasons().map(|r| enum_len(r as i32)).sum();
        if packed > 0 {
            encode_key(tag::DENIAL_REASONS, WireType::LengthDelimited, buf);
            encode_varint(packed as u64, buf);
            for reason in self.denial_reasons() {
                encode_varint(reason as i32 as u64, buf);
            }
        }
        // Restricted tokens only, which are few: the text is made here rather than kept.
        if let Introspection::Active { token, .. } = &self.0 {
            for cidr in token.allowed_cidrs.iter() {
                put_str(tag::ALLOWED_CIDRS, &cidr.to_string(), buf);
            }
        }
    }

    fn encoded_len(&self) -> usize {
        let mut len = bool_len(tag::ACTIVE, self.is_active())
            + enum_field_len(tag::INACTIVE_REASON, self.inactive_reason() as i32)
            + bool_len(tag::ALLOWED, self.is_allowed())
            + enum_field_len(
                tag::DENIAL_REASON,
                self.denial_reasons().next().map_or(0, |r| r as i32),
            );
        if let Introspection::Active { token, denials } = &self.0 {
            len += token_len(token);
            len += denials
                .missing_scopes
                .iter()
                .map(|scope| str_len(tag::MISSING_SCOPES, scope.as_str()))
                .sum::<usize>();
        }
        let packed: usize = self.denial_reasons().map(|r| enum_len(r as i32)).sum();
        if packed > 0 {
            len += key_len(tag::DENIAL_REASONS) + encoded_len_varint(packed as u64) + packed;
        }
        if let Introspection::Active { token, .. } = &self.0 {
            len += token
                .allowed_cidrs
                .iter()
                .map(|cidr| str_len(tag::ALLOWED_CIDRS, &cidr.to_string()))
                .sum::<usize>();
        }
        len
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn clear(&mut self) {
        self.0 = Introspection::Unrecognised(Unrecognised::Unknown);
    }
}

/// Fields 3 to 9: who the token is.
fn put_token(token: &TokenRecord, buf: &mut impl BufMut) {
    let account = &token.account;
    put_string(tag::ORG_ID, account.org_id.as_str(), buf);
    put_uuid(
        tag::SERVICE_ACCOUNT_ID,
        account.service_account_id.as_uuid(),
        buf,
    );
    put_string(tag::DISPLAY_NAME, &account.display_name, buf);
    put_uuid(tag::TOKEN_ID, token.token_id.as_uuid(), buf);
    for scope in token.scopes.names() {
        put_str(tag::SCOPES, scope, buf);
    }
    encode_key(tag::APP_ACCESS, WireType::LengthDelimited, buf);
    encode_varint(app_access_len(&account.app_access) as u64, buf);
    match &account.app_access {
        AppAccess::AllApps => put_bool(tag::ALL_APPS, true, buf),
        AppAccess::Apps(apps) => {
            for app in apps {
                put_str(tag::APP_IDS, app.as_str(), buf);
            }
        }
    }
    if let Some(expire_time) = token.expire_time {
        let (seconds, nanos) = seconds_and_nanos(expire_time);
        encode_key(tag::EXPIRE_TIME, WireType::LengthDelimited, buf);
        encode_varint(timestamp_len(seconds, nanos) as u64, buf);
        put_int(tag::SECONDS, seconds, buf);
        put_int(tag::NANOS, nanos.into(), buf);
    }
}

fn token_len(token: &TokenRecord) -> usize {
    let account = &token.account;
    let app_access = app_access_len(&account.app_access);
    let expire_time = token.expire_time.map_or(0, |expire_time| {
        let (seconds, nanos) = seconds_and_nanos(expire_time);
        nested_len(tag::EXPIRE_TIME, timestamp_len(seconds, nanos))
    });
    string_len(tag::ORG_ID, account.org_id.as_str())
        + uuid_len(tag::SERVICE_ACCOUNT_ID)
        + string_len(tag::DISPLAY_NAME, &account.display_name)
        + uuid_len(tag::TOKEN_ID)
        + token
            .scopes
            .names()
            .map(|scope| str_len(tag::SCOPES, scope))
            .sum::<usize>()
        + nested_len(tag::APP_ACCESS, app_access)
        + expire_time
}

fn app_access_len(access: &AppAccess) -> usize {
    match access {
        AppAccess::AllApps => bool_len(tag::ALL_APPS, true),
        AppAccess::Apps(apps) => apps
            .iter()
            .map(|app| str_len(tag::APP_IDS, app.as_str()))
            .sum(),
    }
}

fn seconds_and_nanos(t: Timestamp) -> (i64, i32) {
    (t.timestamp(), t.timestamp_subsec_nanos() as i32)
}

fn timestamp_len(seconds: i64, nanos: i32) -> usize {
    int_len(tag::SECONDS, seconds) + int_len(tag::NANOS, nanos.into())
}

// proto3 leaves out singular scalar fields that hold their default value; the elements of a
// repeated field are all written, empty or not.

fn put_bool(tag: u32, value: bool, buf: &mut impl BufMut) {
    if value {
        encode_key(tag, WireType::Varint, buf);
        buf.put_u8(1);
    }
}

fn bool_len(tag: u32, value: bool) -> usize {
    if value { key_len(tag) + 1 } else { 0 }
}

/// Enums and int32/int64 are varints of the value sign-extended to 64 bits.
fn put_int(tag: u32, value: i64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value as u64, buf);
    }
}

fn int_len(tag: u32, value: i64) -> usize {
    if value != 0 {
        key_len(tag) + encoded_len_varint(value as u64)
    } else {
        0
    }
}

fn put_enum(tag: u32, value: i32, buf: &mut impl BufMut) {
    put_int(tag, value.into(), buf);
}

fn enum_field_len(tag: u32, value: i32) -> usize {
    int_len(tag, value.into())
}

fn enum_len(value: i32) -> usize {
    encoded_len_varint(i64::from(value) as u64)
}

fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_str(tag, value, buf);
    }
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        str_len(tag, value)
    }
}

/// A repeated string's element (or a string known not to be empty).
fn put_str(tag: u32, value: &str, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value.as_bytes());
}

fn str_len(tag: u32, value: &str) -> usize {
    nested_len(tag, value.len())
}

fn nested_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_uuid(tag: u32, id: Uuid, buf: &mut impl BufMut) {
    let mut rendered = [0; Hyphenated::LENGTH];
    put_str(tag, id.hyphenated().encode_lower(&mut rendered), buf);
}

fn uuid_len(tag: u32) -> usize {
    nested_len(tag, Hyphenated::LENGTH)
}

#[cfg(test)]
mod tests;
