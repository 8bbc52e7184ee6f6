//! The change bus: every change that can alter an introspection answer, from this replica's
//! commits and from other replicas' notifications alike, published once to every part of the
//! replica that keeps derived state (the introspection cache, the issued-token filter, the
//! change feed that callers watch).
//!
//! Subscribers are called synchronously, in the order they were given, on the publishing
//! thread: the cache is given first, so that anything told of a change after it (a caller
//! watching the feed) is told only once the cache has dropped what the change made stale.

use std::sync::Arc;

use crate::audit::{AuditEvent, Target};
use crate::ids::{OrgId, ServiceAccountId, TokenId};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Answers for this account's tokens may have changed: all of them, or only `token`'s.
    Account {
        org: OrgId,
        account: ServiceAccountId,
        token: Option<TokenId>,
    },
    /// A token was issued (the first 8 bytes of its hash, see [`crate::issued`]). Changes no
    /// answer: a new token was "unknown" only to callers that had not seen it yet.
    TokenIssued(u64),
    /// Any answer may have changed (a change of many accounts at once): drop everything.
    Everything,
    /// The cross-replica notifications are (again) arriving. Changes made elsewhere while they
    /// were not are unknown: drop everything, then trust what arrives.
    Subscribed,
    /// The cross-replica notifications stopped: changes made elsewhere may be missed until the
    /// next [`Change::Subscribed`].
    Lost,
}

impl Change {
    /// The change an admin event makes to introspection answers, if any.
    pub fn of_event(event: &AuditEvent) -> Option<Self> {
        let account = event.stale_account()?;
        let token = match event.target {
            Target::Token { token_id, .. } => Some(token_id),
            _ => None,
        };
        Some(Self::Account {
            org: event.org_id.clone(),
            account,
            token,
        })
    }
}

/// One part of the replica that follows changes.
pub trait Subscriber: Send + Sync + 'static {
    fn changed(&self, change: &Change);
}

impl<F: Fn(&Change) + Send + Sync + 'static> Subscriber for F {
    fn changed(&self, change: &Change) {
        self(change)
    }
}

/// Publishes each change to every subscriber, in order. Cheap to clone.
#[derive(Clone, Default)]
pub struct ChangeBus {
    subscribers: Arc<[Arc<dyn Subscriber>]>,
}

impl ChangeBus {
    /// `subscribers` are told in this order: put whatever others must see updated first.
    pub fn new(subscribers: Vec<Arc<dyn Subscriber>>) -> Self {
        Self {
            subscribers: subscribers.into(),
        }
    }

    pub fn publish(&self, change: &Change) {
        for subscriber in self.subscribers.iter() {
            subscriber.changed(change);
        }
    }
}

impl std::fmt::Debug for ChangeBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeBus")
            .field("subscribers", &self.subscribers.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::audit::AuditAction;
    use crate::ids::{AuditEventId, UserId};

    #[test]
    fn subscribers_are_told_in_the_order_given() {
        let told = Arc::new(Mutex::new(Vec::new()));
        let subscriber = |name: &'static str| -> Arc<dyn Subscriber> {
            let told = told.clone();
            Arc::new(move |_: &Change| told.lock().unwrap().push(name))
        };
        let bus = ChangeBus::new(vec![subscriber("cache"), subscriber("feed")]);
        bus.publish(&Change::Everything);
        bus.clone().publish(&Change::Lost);
        assert_eq!(*told.lock().unwrap(), ["cache", "feed", "cache", "feed"]);
    }

    #[test]
    fn an_event_names_the_token_it_changed_or_only_the_account() {
        let (account, token) = (ServiceAccountId::generate(), TokenId::generate());
        let event = |action, target| AuditEvent {
            id: AuditEventId::generate(),
            org_id: OrgId::parse("acme").unwrap(),
            actor: UserId::parse("alice").unwrap(),
            action,
            target,
            request_id: String::new(),
            create_time: crate::time::now(),
            details: String::new(),
            validate_only: false,
        };
        let revoke = event(
            AuditAction::TokenRevoke,
            Target::Token {
                service_account_id: account,
                token_id: token,
            },
        );
        assert_eq!(
            Change::of_event(&revoke),
            Some(Change::Account {
                org: OrgId::parse("acme").unwrap(),
                account,
                token: Some(token),
            })
        );
        let disable = event(
            AuditAction::ServiceAccountDisable,
            Target::ServiceAccount(account),
        );
        assert!(matches!(
            Change::of_event(&disable),
            Some(Change::Account { token: None, .. })
        ));
        let create = event(
            AuditAction::TokenCreate,
            Target::Token {
                service_account_id: account,
                token_id: token,
            },
        );
        assert_eq!(Change::of_event(&create), None);
    }
}
