//! Audit events: one per admin mutation, committed in the same transaction as the change.
//!
//! An event stays typed until the store writes it, and its action says whether the change can
//! alter an introspection answer. The store's one commit function reads that to keep every
//! replica's cache coherent, so a new action gets coherence by being classified here.

use crate::ids::{AuditEventId, OrgId, ServiceAccountId, TokenId, UserId};
use crate::time::Timestamp;

/// The mutations that are audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter)]
pub enum AuditAction {
    ServiceAccountCreate,
    ServiceAccountUpdate,
    ServiceAccountDelete,
    ServiceAccountDisable,
    ServiceAccountEnable,
    AppAccessSet,
    AppAccessGrant,
    AppAccessRevoke,
    TokenCreate,
    TokenRevoke,
    TokenRotate,
    TokenUpdate,
    TokenLeakRevoke,
    TokenPolicyUpdate,
}

/// What a committed change means for cached introspection answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Introspecting the account's tokens may now answer differently: every cache must forget
    /// them.
    ChangesIntrospection,
    /// Nothing introspection reports about existing tokens changes.
    None,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::ServiceAccountCreate => "service_account.create",
            AuditAction::ServiceAccountUpdate => "service_account.update",
            AuditAction::ServiceAccountDelete => "service_account.delete",
            AuditAction::ServiceAccountDisable => "service_account.disable",
            AuditAction::ServiceAccountEnable => "service_account.enable",
            AuditAction::AppAccessSet => "service_account.app_access.set",
            AuditAction::AppAccessGrant => "service_account.app_access.grant",
            AuditAction::AppAccessRevoke => "service_account.app_access.revoke",
            AuditAction::TokenCreate => "token.create",
            AuditAction::TokenRevoke => "token.revoke",
            AuditAction::TokenRotate => "token.rotate",
            AuditAction::TokenUpdate => "token.update",
            AuditAction::TokenLeakRevoke => "token.leak_revoke",
            AuditAction::TokenPolicyUpdate => "token_policy.update",
        }
    }

    /// No wildcard arm: a new action does not compile until someone decides this.
    pub fn effect(self) -> Effect {
        match self {
            // The display name, state and app access are part of every introspection answer;
            // a rotation shortens or revokes the old token; an update may change its networks.
            AuditAction::ServiceAccountUpdate
            | AuditAction::ServiceAccountDelete
            | AuditAction::ServiceAccountDisable
            | AuditAction::ServiceAccountEnable
            | AuditAction::AppAccessSet
            | AuditAction::AppAccessGrant
            | AuditAction::AppAccessRevoke
            | AuditAction::TokenRevoke
            | AuditAction::TokenRotate
            | AuditAction::TokenUpdate
            | AuditAction::TokenLeakRevoke => Effect::ChangesIntrospection,
            // A new account has no tokens; a new token's hash was never seen by any cache; a
            // policy applies to tokens not yet created.
            AuditAction::ServiceAccountCreate
            | AuditAction::TokenCreate
            | AuditAction::TokenPolicyUpdate => Effect::None,
        }
    }
}

/// What a change was made to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    ServiceAccount(ServiceAccountId),
    Token {
        service_account_id: ServiceAccountId,
        token_id: TokenId,
    },
    /// An org's token policy.
    TokenPolicy(OrgId),
}

impl Target {
    pub fn type_name(&self) -> &'static str {
        match self {
            Target::ServiceAccount(_) => "service_account",
            Target::Token { .. } => "token",
            Target::TokenPolicy(_) => "token_policy",
        }
    }

    pub fn id(&self) -> String {
        match self {
            Target::ServiceAccount(id) => id.to_string(),
            Target::Token { token_id, .. } => token_id.to_string(),
            Target::TokenPolicy(org) => org.to_string(),
        }
    }

    pub fn service_account_id(&self) -> Option<ServiceAccountId> {
        match self {
            Target::ServiceAccount(id)
            | Target::Token {
                service_account_id: id,
                ..
            } => Some(*id),
            Target::TokenPolicy(_) => None,
        }
    }
}

/// A mutation about to be recorded, written in the same transaction as the change.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: AuditEventId,
    pub org_id: OrgId,
    pub actor: UserId,
    pub action: AuditAction,
    pub target: Target,
    pub request_id: String,
    pub create_time: Timestamp,
    /// A JSON object describing the change. Never contains secrets.
    pub details: String,
    /// The change is only being validated (AIP-163): the store runs it, checks and all, in its
    /// transaction, then rolls it back instead of committing; nothing is recorded or published.
    pub validate_only: bool,
}

impl AuditEvent {
    /// The account whose cached introspection answers this change makes stale, if any.
    pub fn stale_account(&self) -> Option<ServiceAccountId> {
        match self.action.effect() {
            Effect::ChangesIntrospection => self.target.service_account_id(),
            Effect::None => None,
        }
    }
}

/// An audit event as stored and listed: plain strings, so that events written by any version
/// of the service can be read back.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: AuditEventId,
    pub org_id: OrgId,
    pub actor: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub request_id: String,
    pub create_time: Timestamp,
    pub details: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use strum::IntoEnumIterator;

    use super::*;

    /// The decision for each action, by its stored name. A new action fails here until it is
    /// added, which forces the question "can it change an introspection answer?".
    const CLASSIFIED: &[(&str, Effect)] = &[
        ("service_account.create", Effect::None),
        ("service_account.update", Effect::ChangesIntrospection),
        ("service_account.delete", Effect::ChangesIntrospection),
        ("service_account.disable", Effect::ChangesIntrospection),
        ("service_account.enable", Effect::ChangesIntrospection),
        (
            "service_account.app_access.set",
            Effect::ChangesIntrospection,
        ),
        (
            "service_account.app_access.grant",
            Effect::ChangesIntrospection,
        ),
        (
            "service_account.app_access.revoke",
            Effect::ChangesIntrospection,
        ),
        ("token.create", Effect::None),
        ("token.revoke", Effect::ChangesIntrospection),
        ("token.rotate", Effect::ChangesIntrospection),
        ("token.update", Effect::ChangesIntrospection),
        ("token.leak_revoke", Effect::ChangesIntrospection),
        ("token_policy.update", Effect::None),
    ];

    #[test]
    fn every_action_is_classified_for_introspection_and_named_once() {
        let mut names = BTreeSet::new();
        for action in AuditAction::iter() {
            assert!(names.insert(action.as_str()), "{action:?}: duplicate name");
            let decided = CLASSIFIED
                .iter()
                .find(|(name, _)| *name == action.as_str())
                .unwrap_or_else(|| panic!("{action:?} is not classified in CLASSIFIED"));
            assert_eq!(action.effect(), decided.1, "{action:?}");
        }
        assert_eq!(
            names.len(),
            CLASSIFIED.len(),
            "CLASSIFIED names a removed action"
        );
    }

    #[test]
    fn a_change_that_alters_introspection_names_its_account_even_for_a_token() {
        let account = ServiceAccountId::generate();
        let event = |action, target| AuditEvent {
            validate_only: false,
            id: AuditEventId::generate(),
            org_id: OrgId::parse("o").unwrap(),
            actor: UserId::parse("u").unwrap(),
            action,
            target,
            request_id: "r".into(),
            create_time: crate::time::now(),
            details: "{}".into(),
        };
        let token = Target::Token {
            service_account_id: account,
            token_id: TokenId::generate(),
        };
        assert_eq!(
            event(AuditAction::TokenRevoke, token.clone()).stale_account(),
            Some(account)
        );
        assert_eq!(event(AuditAction::TokenCreate, token).stale_account(), None);
        assert_eq!(
            event(AuditAction::AppAccessGrant, Target::ServiceAccount(account)).stale_account(),
            Some(account)
        );
    }
}
