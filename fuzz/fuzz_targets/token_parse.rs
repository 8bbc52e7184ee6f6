//! `TokenSecret::parse` on arbitrary text: never panics, and accepts exactly the strings an
//! independent reading of the documented format accepts (differential oracle). Each input is
//! also tried with its first 44 characters completed by their correct checksum, so the
//! accepting path is exercised as much as the rejecting one.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use service_accounts_domain::token::{LENGTH, PREFIX, TokenSecret};

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn checksum(body: &str) -> String {
    URL_SAFE_NO_PAD.encode(crc32fast::hash(body.as_bytes()).to_be_bytes())
}

/// The format as docs and the module comment state it, written independently of `parse`.
fn well_formed(s: &str) -> bool {
    s.len() == LENGTH
        && s.starts_with(PREFIX)
        && s.bytes().skip(PREFIX.len()).all(|b| ALPHABET.contains(&b))
        && checksum(&s[..44]) == s[44..]
}

fn check(candidate: &str) {
    let parsed = TokenSecret::parse(candidate);
    assert_eq!(parsed.is_ok(), well_formed(candidate), "{candidate:?}");
    if let Ok(secret) = parsed {
        assert_eq!(secret.expose(), candidate);
        assert_eq!(TokenSecret::parse(secret.expose()), Ok(secret.clone()));
        assert_eq!(secret.hint(), format!("{PREFIX}…{}", &candidate[44..]));
        assert!(
            secret
                .hash()
                .ct_eq(&TokenSecret::parse(candidate).unwrap().hash())
        );
        assert!(!format!("{secret:?}").contains(&candidate[PREFIX.len()..44]));
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    if text.is_char_boundary(44) && text.len() >= 44 {
        let body = &text[..44];
        check(&format!("{body}{}", checksum(body)));
    }
});
