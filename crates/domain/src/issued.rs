//! The tokens this service has issued, as the first 8 bytes of their hashes: a compact set that
//! tells an issued token from one a flooder made up (anyone can compute the checksum), so that
//! storage lookups of issued tokens never queue behind made-up ones. It only orders lookups: a
//! token missing from it (one created on another replica a moment ago) is still looked up, in
//! the slower lane, so a gap never becomes a wrong answer.

use std::collections::HashSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::changes::{Change, Subscriber};
use crate::token::TokenHash;

#[derive(Debug, Default)]
pub struct IssuedTokens {
    prefixes: RwLock<HashSet<u64>>,
    /// Until storage has been read, every token counts as issued.
    loaded: AtomicBool,
}

/// The part of a hash the set keeps: 8 bytes, so a made-up token collides with one of a million
/// issued tokens about once in 10^13 tries.
pub fn prefix(hash: &TokenHash) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

impl IssuedTokens {
    pub fn contains(&self, hash: &TokenHash) -> bool {
        !self.loaded.load(Ordering::Acquire)
            || self
                .prefixes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&prefix(hash))
    }

    pub fn add(&self, prefix: u64) {
        // Mostly already there (every cache miss of an issued token adds it): look before
        // taking the write lock that every lookup would wait for.
        let known = self
            .prefixes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&prefix);
        if !known {
            self.prefixes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(prefix);
        }
    }

    /// Everything storage holds, merged with what was added meanwhile.
    pub fn load(&self, prefixes: impl IntoIterator<Item = u64>) -> usize {
        let mut set = self.prefixes.write().unwrap_or_else(|e| e.into_inner());
        set.extend(prefixes);
        self.loaded.store(true, Ordering::Release);
        set.len()
    }

    /// Notifications of new tokens may have been missed: until the next [`Self::load`], every
    /// token counts as issued again.
    pub fn mark_incomplete(&self) {
        self.loaded.store(false, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.prefixes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// New tokens are announced on the bus; while announcements may be missed, every token counts
/// as issued (the owner reloads the set from storage on [`Change::Subscribed`]).
impl Subscriber for IssuedTokens {
    fn changed(&self, change: &Change) {
        match change {
            Change::TokenIssued(prefix) => self.add(*prefix),
            // Subscribed too: announcements made before the subscription was live were missed.
            Change::Lost | Change::Subscribed => self.mark_incomplete(),
            Change::Account { .. } | Change::Everything => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenSecret;

    #[test]
    fn everything_counts_as_issued_until_loaded_and_then_only_what_was_issued() {
        let issued = IssuedTokens::default();
        let (ours, made_up, early) = (
            TokenSecret::generate().hash(),
            TokenSecret::generate().hash(),
            TokenSecret::generate().hash(),
        );
        assert!(issued.contains(&made_up), "not loaded yet");
        issued.add(prefix(&early)); // created while storage was being read
        assert_eq!(issued.load([prefix(&ours)]), 2);
        assert!(issued.contains(&ours) && issued.contains(&early));
        assert!(!issued.contains(&made_up));
    }
}
