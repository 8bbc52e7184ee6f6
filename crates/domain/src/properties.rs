//! Property tests (proptest, stable toolchain, run by `cargo test`): the invariants the fuzz
//! targets in `fuzz/` probe with random bytes, stated here over generated values. Case counts are
//! kept small so the domain's test run stays quick; `PROPTEST_CASES=100000` runs more locally.
//! See docs/fuzzing.md.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta};
use proptest::prelude::*;
use uuid::Uuid;

use crate::ids::{OrgId, ServiceAccountId, TokenId};
use crate::introspection::{Checks, Denial, Introspection, evaluate};
use crate::page::{Listing, Page, PageRequest, PageSize};
use crate::scope::{CATALOGUE, Scope, Scopes};
use crate::service_account::{AppAccess, AppId};
use crate::time::Timestamp;
use crate::token::{LENGTH, PREFIX, TokenSecret};

/// The URL-safe base64 alphabet tokens are written in.
const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const RANDOM_CHARS: usize = 37;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // `PROPTEST_CASES` overrides the count for a longer local run.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
        // Failures are reported with their minimal input; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The 37 random characters of a token, drawn by proptest (so failures shrink).
fn random_part() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(ALPHABET.as_bytes()), RANDOM_CHARS)
        .prop_map(|bytes| String::from_utf8(bytes).expect("ASCII"))
}

/// A well-formed token built from the documented format (prefix, 37 random characters, CRC32
/// of the first 44 characters in unpadded URL-safe base64), independently of `generate`.
fn formatted(random: &str) -> String {
    let body = format!("{PREFIX}{random}");
    let checksum = URL_SAFE_NO_PAD.encode(crc32fast::hash(body.as_bytes()).to_be_bytes());
    format!("{body}{checksum}")
}

/// Either a token from `TokenSecret::generate` or one built by [`formatted`].
fn valid_token() -> impl Strategy<Value = String> {
    prop_oneof![
        random_part().prop_map(|random| formatted(&random)),
        Just(()).prop_map(|()| TokenSecret::generate().expose().to_owned()),
    ]
}

/// Replacement characters: the token alphabet, the rest of printable ASCII, controls and
/// any Unicode scalar value.
fn replacement() -> impl Strategy<Value = char> {
    prop_oneof![
        proptest::sample::select(ALPHABET.chars().collect::<Vec<_>>()),
        (0x20u8..0x7f).prop_map(char::from),
        (0u8..0x20).prop_map(char::from),
        any::<char>(),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn every_well_formed_token_parses_back_to_itself_and_its_hint_hides_the_random_part(
        token in valid_token(),
    ) {
        let secret = TokenSecret::parse(&token).expect("a well-formed token parses");
        prop_assert_eq!(secret.expose(), token.as_str());
        prop_assert_eq!(TokenSecret::parse(secret.expose()), Ok(secret.clone()));
        let hint = secret.hint();
        prop_assert_eq!(&hint, &format!("{PREFIX}…{}", &token[44..]));
        let random = &token[PREFIX.len()..PREFIX.len() + RANDOM_CHARS];
        prop_assert!(!hint.contains(random));
        // The hint's runs of alphabet characters are the 7-character prefix and the
        // 6-character checksum, so no 8 consecutive random characters can appear in it.
        for window in random.as_bytes().windows(8) {
            let window = std::str::from_utf8(window).expect("ASCII");
            prop_assert!(!hint.contains(window), "hint {hint:?} shows {window:?}");
        }
        let debug = format!("{secret:?}");
        prop_assert!(!debug.contains(random));
    }

    #[test]
    fn any_single_character_change_of_a_valid_token_is_rejected(
        token in valid_token(),
        position in 0..LENGTH,
        replacement in replacement(),
    ) {
        let original = token.as_bytes()[position] as char;
        prop_assume!(replacement != original);
        let changed: String = token
            .chars()
            .enumerate()
            .map(|(i, c)| if i == position { replacement } else { c })
            .collect();
        prop_assert!(TokenSecret::parse(&changed).is_err(), "{changed:?} was accepted");
    }

    #[test]
    fn any_string_that_parses_as_a_token_is_kept_verbatim_and_is_well_formed(
        candidate in prop_oneof![
            any::<String>(),
            "emb_sa_[A-Za-z0-9_-]{43}",
            valid_token(),
        ],
    ) {
        if let Ok(secret) = TokenSecret::parse(&candidate) {
            prop_assert_eq!(secret.expose(), candidate.as_str());
            prop_assert_eq!(formatted(&candidate[PREFIX.len()..PREFIX.len() + RANDOM_CHARS]), candidate);
        }
    }
}

fn listing() -> impl Strategy<Value = Listing> {
    prop_oneof![
        Just(Listing::ServiceAccounts),
        Just(Listing::Tokens),
        Just(Listing::AuditEvents),
    ]
}

fn other_listing(listing: Listing) -> impl Strategy<Value = Listing> {
    proptest::sample::select(
        [
            Listing::ServiceAccounts,
            Listing::Tokens,
            Listing::AuditEvents,
        ]
        .into_iter()
        .filter(|l| *l != listing)
        .collect::<Vec<_>>(),
    )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn page_tokens_from_from_rows_round_trip_in_their_listing_and_are_refused_by_another(
        (listing, other) in listing().prop_flat_map(|l| (Just(l), other_listing(l))),
        requested_size in 1i32..=30,
        rows in proptest::collection::vec(any::<u128>().prop_map(Uuid::from_u128), 0..=32),
        next_size in -1i32..=2000,
    ) {
        let size = PageSize::parse(requested_size).expect("a positive size");
        let page = Page::from_rows(listing, rows.clone(), size, |id| *id);
        let kept = rows.len().min(size.get() as usize);
        prop_assert_eq!(&page.items[..], &rows[..kept]);

        let parsed = PageRequest::parse(listing, next_size, &page.next_page_token);
        if rows.len() > kept {
            prop_assert!(!page.next_page_token.is_empty());
            if next_size >= 0 {
                let parsed = parsed.expect("its own listing accepts the token");
                prop_assert_eq!(parsed.after, Some(rows[kept - 1]));
                prop_assert_eq!(Some(parsed.size), PageSize::parse(next_size).ok());
            } else {
                // A bad size is reported alone: the token itself is fine.
                let fields: Vec<&str> = parsed.expect_err("negative size").iter().map(|(f, _)| *f).collect();
                prop_assert_eq!(fields, ["page_size"]);
            }
            let refused = PageRequest::parse(other, 10, &page.next_page_token)
                .expect_err("another listing refuses the token");
            let fields: Vec<&str> = refused.iter().map(|(f, _)| *f).collect();
            prop_assert_eq!(fields, ["page_token"]);
        } else {
            // The last page: no token, and "no token" means "from the start".
            prop_assert_eq!(&page.next_page_token, "");
            if next_size >= 0 {
                prop_assert_eq!(parsed.expect("empty token").after, None);
            }
        }
    }

    #[test]
    fn arbitrary_page_tokens_never_panic_and_only_canonical_ones_are_accepted(
        listing in listing(),
        token in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_-]{0,64}",
            (any::<u128>(), "(sa|tk|ae|xx)").prop_map(|(id, tag)| {
                URL_SAFE_NO_PAD.encode(format!("{tag}:{}", Uuid::from_u128(id)))
            }),
        ],
    ) {
        if let Ok(request) = PageRequest::parse(listing, 10, &token) {
            match request.after {
                None => prop_assert_eq!(token, ""),
                Some(_) => {
                    // Whatever was accepted is a token of this listing; re-encoding the id it
                    // names through `from_rows` gives a token the listing accepts for it too.
                    let after = request.after.expect("some");
                    let page = Page::from_rows(
                        listing,
                        vec![after, Uuid::nil()],
                        PageSize::parse(1).expect("size"),
                        |id| *id,
                    );
                    let again = PageRequest::parse(listing, 10, &page.next_page_token)
                        .expect("round trip");
                    prop_assert_eq!(again.after, Some(after));
                }
            }
        }
    }
}

/// Orgs and apps are drawn from small pools so that matches and mismatches are both common.
fn org() -> impl Strategy<Value = OrgId> {
    proptest::sample::select(vec!["org", "other-org", "acme"])
        .prop_map(|s| OrgId::parse(s).expect("valid org"))
}

fn app() -> impl Strategy<Value = AppId> {
    proptest::sample::select(vec!["app1", "app2", "app3", "billing"])
        .prop_map(|s| AppId::parse(s).expect("valid app"))
}

fn allowed_cidrs() -> impl Strategy<Value = crate::network::AllowedCidrs> {
    proptest::sample::subsequence(vec!["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], 0..=2)
        .prop_map(|nets| crate::network::AllowedCidrs::parse(nets.into_iter()).expect("valid"))
}

fn client_ip() -> impl Strategy<Value = Option<std::net::IpAddr>> {
    proptest::option::of(
        proptest::sample::select(vec![
            "10.1.2.3",
            "192.0.2.7",
            "192.0.2.8",
            "2001:db8::1",
            "::1",
        ])
        .prop_map(|s| s.parse().expect("valid address")),
    )
}

fn scope() -> impl Strategy<Value = Scope> {
    proptest::sample::select(CATALOGUE.iter().map(|d| d.name).collect::<Vec<_>>())
        .prop_map(|name| Scope::parse(name).expect("catalogue scope"))
}

/// Any subset of the catalogue, including ones `Scopes::parse` would refuse (as stale stored
/// data can hold): `evaluate` must be safe whatever the record says.
fn scopes() -> impl Strategy<Value = Scopes> {
    proptest::collection::vec(scope(), 0..=CATALOGUE.len()).prop_map(|scopes| {
        Scopes::from_stored(
            &scopes
                .iter()
                .map(Scope::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        )
    })
}

fn app_access() -> impl Strategy<Value = AppAccess> {
    prop_oneof![
        Just(AppAccess::AllApps),
        proptest::collection::btree_set(app(), 0..=3).prop_map(|apps| AppAccess::Apps(apps.into())),
    ]
}

/// A time near `now()`'s fixed stand-in, so "at", "just before" and "just after" all occur.
fn around(now: Timestamp) -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        Just(now),
        (-3i64..=3).prop_map(move |us| now + TimeDelta::microseconds(us)),
        (-10_000_000i64..=10_000_000).prop_map(move |s| now + TimeDelta::seconds(s)),
    ]
}

fn fixed_now() -> Timestamp {
    DateTime::from_timestamp(1_750_000_000, 123_456_000).expect("valid time")
}

prop_compose! {
    fn record()(
        org_id in org(),
        scopes in scopes(),
        app_access in app_access(),
        expire_time in proptest::option::of(around(fixed_now())),
        revoke_time in proptest::option::of(around(fixed_now())),
        allowed_cidrs in allowed_cidrs(),
        disabled in proptest::bool::weighted(0.2),
    ) -> crate::token::TokenRecord {
        crate::token::TokenRecord {
            token_id: TokenId::generate(),
            token_hash: TokenSecret::generate().hash(),
            scopes,
            create_time: chrono::Utc::now(),
            expire_time,
            revoke_time,
            allowed_cidrs,
            account: std::sync::Arc::new(crate::token::AccountRecord {
                org_id,
                service_account_id: ServiceAccountId::generate(),
                display_name: "CI".into(),
                app_access,
                disabled,
            }),
        }
    }
}

/// Checks as `Checks::parse` can produce them: an app check always comes with an org.
fn checks() -> impl Strategy<Value = Checks> {
    (
        proptest::option::of(org()),
        proptest::option::of(app()),
        proptest::collection::vec(scope(), 0..=4),
        client_ip(),
    )
        .prop_map(|(org_id, app_id, required_scopes, client_ip)| Checks {
            app_id: if org_id.is_some() { app_id } else { None },
            org_id,
            required_scopes,
            client_ip,
        })
}

/// Like [`checks`], but also app checks without an org (which parsing refuses): `evaluate`
/// must still never grant an app the account lacks.
fn any_checks() -> impl Strategy<Value = Checks> {
    (
        proptest::option::of(org()),
        proptest::option::of(app()),
        proptest::collection::vec(scope(), 0..=4),
        client_ip(),
    )
        .prop_map(|(org_id, app_id, required_scopes, client_ip)| Checks {
            org_id,
            app_id,
            required_scopes,
            client_ip,
        })
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn evaluate_never_allows_what_any_rule_denies(
        record in record(),
        checks in prop_oneof![checks(), any_checks()],
        now in around(fixed_now()),
    ) {
        let revoked = record.revoke_time.is_some();
        let expired = record.expire_time.is_some_and(|t| t <= now);
        let other_org = checks.org_id.as_ref().is_some_and(|org| *org != record.account.org_id);
        let lacks_scope = checks.required_scopes.iter().any(|s| !record.scopes.contains(*s));
        let app_refused = checks
            .app_id
            .as_ref()
            .is_some_and(|app| !record.account.app_access.allows(app));
        let disabled = record.account.disabled;
        let network_refused = !record.allowed_cidrs.is_empty()
            && !checks.client_ip.is_some_and(|ip| record.allowed_cidrs.iter().any(|n| n.contains(&ip)));
        let denied = revoked || expired || disabled || other_org || lacks_scope || app_refused
            || network_refused;

        let result = evaluate(Arc::new(record.clone()), &checks, now);
        let allowed = matches!(&result, Introspection::Active { denials, .. } if denials.allowed());
        prop_assert!(
            !(denied && allowed),
            "allowed although revoked={revoked} expired={expired} disabled={disabled} \
             other_org={other_org} lacks_scope={lacks_scope} app_refused={app_refused} \
             network_refused={network_refused}: {result:?}"
        );
        // And the converse: nothing is refused without a reason.
        prop_assert_eq!(allowed, !denied);
        if let Introspection::Active { denials, .. } = &result {
            prop_assert!(!revoked && !expired && !disabled);
            prop_assert_eq!(denials.reasons.contains(&Denial::OrgMismatch), other_org);
            prop_assert_eq!(
                denials.reasons.contains(&Denial::ClientIpNotAllowed),
                network_refused
            );
            prop_assert_eq!(denials.reasons.contains(&Denial::ScopeMissing), lacks_scope);
            prop_assert_eq!(!denials.missing_scopes.is_empty(), lacks_scope);
            if app_refused {
                prop_assert!(denials.reasons.contains(&Denial::AppNotGranted));
            }
            let mut sorted = denials.reasons.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&sorted, &denials.reasons, "reasons are in report order, once each");
        }
    }

    #[test]
    fn checks_parsed_from_strings_never_grant_another_orgs_app(
        record in record(),
        org in "(org|other-org|acme|)",
        app in "(app1|app2|billing|)",
        required in proptest::collection::vec("(mcp:read|mcp:write|mcp:tools:call)", 0..=3),
    ) {
        let Ok(checks) = Checks::parse(&org, &app, &required, "") else {
            prop_assert!(org.is_empty() && !app.is_empty(), "only an app without an org is refused");
            return Ok(());
        };
        let now = fixed_now();
        let result = evaluate(Arc::new(record.clone()), &checks, now);
        if let Introspection::Active { denials, .. } = &result
            && denials.allowed()
            && !app.is_empty()
        {
            prop_assert_eq!(org.as_str(), record.account.org_id.as_str());
            let app = AppId::parse(&app).expect("valid");
            prop_assert!(record.account.app_access.allows(&app));
        }
    }
}
