//! `PageRequest::parse` on arbitrary page tokens and sizes: never panics, reports each bad
//! field once, and accepts a token only if it is the one `Page::from_rows` hands out for that
//! listing (and no other listing accepts it).
//!
//! Input: byte 0 picks the listing (bits 0-1) and whether the rest is used as the token itself
//! or base64url-encoded first (bit 2, so the decoded text is fuzzed directly); bytes 1-4 are
//! the page size (i32, little-endian); the rest is the token.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use service_accounts_domain::page::{Listing, Page, PageRequest, PageSize};

/// Finding 1 (docs/fuzzing.md): decoding once accepted any form `Uuid::try_parse` does; it now
/// insists on the canonical form it writes, and this checks it.
const CANONICAL_ONLY: bool = true;

const LISTINGS: [Listing; 3] = [
    Listing::ServiceAccounts,
    Listing::Tokens,
    Listing::AuditEvents,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((size, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let listing = LISTINGS[(mode & 3) as usize % 3];
    let page_size = i32::from_le_bytes(*size);
    let token = if mode & 4 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        URL_SAFE_NO_PAD.encode(rest)
    };

    match PageRequest::parse(listing, page_size, &token) {
        Ok(request) => {
            assert!(page_size >= 0);
            assert_eq!(Some(request.size), PageSize::parse(page_size).ok());
            match request.after {
                None => assert_eq!(token, ""),
                Some(after) => {
                    // The token `from_rows` gives for the same row must be this very token.
                    let page = Page::from_rows(
                        listing,
                        vec![after, uuid::Uuid::nil()],
                        PageSize::parse(1).unwrap(),
                        |id| *id,
                    );
                    if CANONICAL_ONLY {
                        assert_eq!(
                            page.next_page_token, token,
                            "a non-canonical token was accepted"
                        );
                    }
                    assert_eq!(
                        PageRequest::parse(listing, 10, &page.next_page_token).map(|r| r.after),
                        Ok(Some(after))
                    );
                    for other in LISTINGS.into_iter().filter(|l| *l != listing) {
                        assert!(PageRequest::parse(other, 10, &token).is_err());
                    }
                }
            }
        }
        Err(problems) => {
            let fields: Vec<&str> = problems.iter().map(|(field, _)| *field).collect();
            assert!(
                matches!(
                    fields[..],
                    ["page_size"] | ["page_token"] | ["page_size", "page_token"]
                ),
                "{fields:?}"
            );
            assert_eq!(fields.contains(&"page_size"), page_size < 0);
            // Fixed sentences: the token is never echoed back.
            for (field, invalid) in &problems {
                let expected = match *field {
                    "page_size" => "must not be negative",
                    _ => "is not a page token returned by this listing",
                };
                assert_eq!(invalid.0, expected);
            }
        }
    }
});
