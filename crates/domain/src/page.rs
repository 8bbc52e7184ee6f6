//! Keyset pagination: page sizes and opaque, validated page tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::error::Invalid;
use crate::time::Timestamp;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A requested page size: 0 means the default, anything above the maximum is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    pub fn parse(requested: i32) -> Result<Self, Invalid> {
        match u32::try_from(requested) {
            Err(_) => Err(Invalid::new("must not be negative")),
            Ok(0) => Ok(Self(DEFAULT_PAGE_SIZE)),
            Ok(n) => Ok(Self(n.min(MAX_PAGE_SIZE))),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// Which listing a page token belongs to, so a token from one list is refused by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    ServiceAccounts,
    Tokens,
    AuditEvents,
    ExpiringTokens,
}

impl Listing {
    fn tag(self) -> &'static str {
        match self {
            Listing::ServiceAccounts => "sa",
            Listing::Tokens => "tk",
            Listing::AuditEvents => "ae",
            Listing::ExpiringTokens => "ex",
        }
    }
}

/// Where a page starts: after the item with this (time-ordered) id, or at the beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<Uuid>,
    pub size: PageSize,
}

impl PageRequest {
    pub fn parse(
        listing: Listing,
        page_size: i32,
        page_token: &str,
    ) -> Result<Self, Vec<(&'static str, Invalid)>> {
        let size = PageSize::parse(page_size);
        let after = decode(listing, page_token);
        match (size, after) {
            (Ok(size), Ok(after)) => Ok(Self { after, size }),
            (size, after) => Err([
                size.err().map(|e| ("page_size", e)),
                after.err().map(|e| ("page_token", e)),
            ]
            .into_iter()
            .flatten()
            .collect()),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// Builds a page from up to `size + 1` rows fetched in key order: the extra row, if present,
    /// only signals that another page exists.
    pub fn from_rows(
        listing: Listing,
        mut rows: Vec<T>,
        size: PageSize,
        key: impl Fn(&T) -> Uuid,
    ) -> Self {
        let size = size.get() as usize;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| encode(listing, key(last)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Self {
            items: rows,
            next_page_token,
        }
    }
}

/// Where a page of a filtered, ordered listing starts. Its page tokens are bound to the
/// request's query (see [`binding`]): a token returned for one filter or order is refused with
/// another, rather than silently starting somewhere meaningless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryPage {
    pub after: Option<crate::query::After<Uuid>>,
    pub size: PageSize,
    pub binding: u64,
}

impl QueryPage {
    pub fn parse(
        listing: Listing,
        page_size: i32,
        page_token: &str,
        binding: u64,
    ) -> Result<Self, Vec<(&'static str, Invalid)>> {
        let size = PageSize::parse(page_size);
        let after = decode_query(listing, page_token, binding);
        match (size, after) {
            (Ok(size), Ok(after)) => Ok(Self {
                after,
                size,
                binding,
            }),
            (size, after) => Err([
                size.err().map(|e| ("page_size", e)),
                after.err().map(|e| ("page_token", e)),
            ]
            .into_iter()
            .flatten()
            .collect()),
        }
    }
}

/// What a page token is bound to: the parts of the request that decide which rows, in which
/// order (canonical forms, so that two spellings of one query are one query).
pub fn binding(parts: &[&str]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl<T> Page<T> {
    /// [`Page::from_rows`] for a listing read through a query.
    pub fn from_query_rows(
        listing: Listing,
        mut rows: Vec<T>,
        page: QueryPage,
        key: impl Fn(&T) -> crate::query::After<Uuid>,
    ) -> Self {
        let size = page.size.get() as usize;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| encode_query(listing, page.binding, key(last)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Self {
            items: rows,
            next_page_token,
        }
    }
}

fn encode_query(listing: Listing, binding: u64, after: crate::query::After<Uuid>) -> String {
    let time = after
        .time
        .map(|t| t.timestamp_micros().to_string())
        .unwrap_or_default();
    URL_SAFE_NO_PAD.encode(format!(
        "{}:{binding:016x}:{time}:{}",
        listing.tag(),
        after.id.hyphenated()
    ))
}

fn decode_query(
    listing: Listing,
    token: &str,
    binding: u64,
) -> Result<Option<crate::query::After<Uuid>>, Invalid> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Invalid::new("is not a page token returned by this listing");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(4, ':');
    let (Some(tag), Some(bound), Some(time), Some(id)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if tag != listing.tag() {
        return Err(invalid());
    }
    if u64::from_str_radix(bound, 16).ok() != Some(binding) {
        return Err(Invalid::new(
            "was returned for another filter, order or parent: page with the request that \
             returned it",
        ));
    }
    let time = match time {
        "" => None,
        micros => Some(
            micros
                .parse::<i64>()
                .ok()
                .and_then(chrono::DateTime::from_timestamp_micros)
                .ok_or_else(invalid)?,
        ),
    };
    let after = crate::query::After {
        time,
        id: Uuid::try_parse(id).map_err(|_| invalid())?,
    };
    // Only the form `encode_query` writes: one token means one position.
    if encode_query(listing, binding, after) != token {
        return Err(invalid());
    }
    Ok(Some(after))
}

/// Where a page of a listing ordered by a time, then id, starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedPageRequest {
    pub after: Option<(Timestamp, Uuid)>,
    pub size: PageSize,
}

impl TimedPageRequest {
    pub fn parse(
        listing: Listing,
        page_size: i32,
        page_token: &str,
    ) -> Result<Self, Vec<(&'static str, Invalid)>> {
        let size = PageSize::parse(page_size);
        let after = decode_timed(listing, page_token);
        match (size, after) {
            (Ok(size), Ok(after)) => Ok(Self { after, size }),
            (size, after) => Err([
                size.err().map(|e| ("page_size", e)),
                after.err().map(|e| ("page_token", e)),
            ]
            .into_iter()
            .flatten()
            .collect()),
        }
    }
}

impl<T> Page<T> {
    /// [`Page::from_rows`] for a listing ordered by `(time, id)`.
    pub fn from_timed_rows(
        listing: Listing,
        mut rows: Vec<T>,
        size: PageSize,
        key: impl Fn(&T) -> (Timestamp, Uuid),
    ) -> Self {
        let size = size.get() as usize;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| encode_timed(listing, key(last)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Self {
            items: rows,
            next_page_token,
        }
    }
}

fn encode_timed(listing: Listing, (time, id): (Timestamp, Uuid)) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}:{}:{}",
        listing.tag(),
        time.timestamp_micros(),
        id.hyphenated()
    ))
}

fn decode_timed(listing: Listing, token: &str) -> Result<Option<(Timestamp, Uuid)>, Invalid> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Invalid::new("is not a page token returned by this listing");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(3, ':');
    let (Some(tag), Some(micros), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if tag != listing.tag() {
        return Err(invalid());
    }
    let time = micros
        .parse::<i64>()
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    let id = Uuid::try_parse(id).map_err(|_| invalid())?;
    // Only the form `encode_timed` writes: one token means one position.
    if encode_timed(listing, (time, id)) != token {
        return Err(invalid());
    }
    Ok(Some((time, id)))
}

fn encode(listing: Listing, after: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", listing.tag(), after.hyphenated()))
}

fn decode(listing: Listing, token: &str) -> Result<Option<Uuid>, Invalid> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Invalid::new("is not a page token returned by this listing");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
    let (tag, id) = text.split_once(':').ok_or_else(invalid)?;
    if tag != listing.tag() {
        return Err(invalid());
    }
    // Only the form `encode` writes: a token is opaque, and one token means one position.
    match Uuid::try_parse(id) {
        Ok(uuid) if uuid.hyphenated().to_string() == id => Ok(Some(uuid)),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_token_form_this_service_writes_is_accepted() {
        let id = Uuid::now_v7();
        let upper = URL_SAFE_NO_PAD.encode(format!(
            "{}:{}",
            Listing::Tokens.tag(),
            id.hyphenated().to_string().to_uppercase()
        ));
        assert!(decode(Listing::Tokens, &upper).is_err());
        let simple = URL_SAFE_NO_PAD.encode(format!("{}:{}", Listing::Tokens.tag(), id.simple()));
        assert!(decode(Listing::Tokens, &simple).is_err());
        assert_eq!(
            decode(Listing::Tokens, &encode(Listing::Tokens, id)),
            Ok(Some(id))
        );
    }

    #[test]
    fn timed_page_tokens_round_trip_in_one_form_only() {
        let position = (crate::time::now(), Uuid::now_v7());
        let token = encode_timed(Listing::ExpiringTokens, position);
        assert_eq!(
            decode_timed(Listing::ExpiringTokens, &token),
            Ok(Some(position))
        );
        assert!(decode_timed(Listing::Tokens, &token).is_err());
        let padded = URL_SAFE_NO_PAD.encode(format!(
            "ex:0{}:{}",
            position.0.timestamp_micros(),
            position.1.hyphenated()
        ));
        assert!(decode_timed(Listing::ExpiringTokens, &padded).is_err());
        assert!(
            decode_timed(
                Listing::ExpiringTokens,
                &encode(Listing::ExpiringTokens, position.1)
            )
            .is_err()
        );
    }

    #[test]
    fn query_page_tokens_work_only_with_the_query_they_were_issued_for() {
        let bound = binding(&["-", "state = ACTIVE", "create_time"]);
        for time in [Some(crate::time::now()), None] {
            let after = crate::query::After {
                time,
                id: Uuid::now_v7(),
            };
            let token = encode_query(Listing::Tokens, bound, after);
            assert_eq!(
                decode_query(Listing::Tokens, &token, bound),
                Ok(Some(after))
            );
            let other = binding(&["-", "state = REVOKED", "create_time"]);
            let refused = decode_query(Listing::Tokens, &token, other).unwrap_err();
            assert!(refused.0.contains("another filter"), "{refused}");
            assert!(decode_query(Listing::AuditEvents, &token, bound).is_err());
        }
        // The parts are delimited: moving text from one to the next is another query.
        assert_ne!(binding(&["ab", "c"]), binding(&["a", "bc"]));
    }

    #[test]
    fn page_size_defaults_caps_and_rejects_negative() {
        assert_eq!(PageSize::parse(0).unwrap().get(), 50);
        assert_eq!(PageSize::parse(7).unwrap().get(), 7);
        assert_eq!(PageSize::parse(5000).unwrap().get(), 1000);
        assert!(PageSize::parse(-1).is_err());
    }

    #[test]
    fn page_tokens_round_trip_only_within_their_listing() {
        let id = Uuid::now_v7();
        let token = encode(Listing::Tokens, id);
        assert_eq!(decode(Listing::Tokens, &token), Ok(Some(id)));
        assert!(decode(Listing::ServiceAccounts, &token).is_err());
        assert!(decode(Listing::Tokens, "garbage!").is_err());
        assert!(decode(Listing::Tokens, &format!("{token}x")).is_err());
        assert_eq!(decode(Listing::Tokens, ""), Ok(None));
    }

    #[test]
    fn a_full_page_plus_one_row_yields_a_next_token_for_the_last_item() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let size = PageSize::parse(2).unwrap();
        let page = Page::from_rows(Listing::AuditEvents, ids.clone(), size, |id| *id);
        assert_eq!(page.items, ids[..2]);
        assert_eq!(
            decode(Listing::AuditEvents, &page.next_page_token),
            Ok(Some(ids[1]))
        );
        let last = Page::from_rows(Listing::AuditEvents, ids[..2].to_vec(), size, |id| *id);
        assert_eq!(last.next_page_token, "");
    }
}
