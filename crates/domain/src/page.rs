//! Keyset pagination: page sizes and opaque, validated page tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::error::Invalid;

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
}

impl Listing {
    fn tag(self) -> &'static str {
        match self {
            Listing::ServiceAccounts => "sa",
            Listing::Tokens => "tk",
            Listing::AuditEvents => "ae",
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
