//! What `/oauth2/introspect` reads before it knows its caller: the form body, the client
//! credentials (HTTP Basic or form), and the clients file. Never panics; whatever is accepted
//! means what it says.
//!
//! Input: byte 0 picks the mode (modulo 3), the rest is mode-specific:
//! 0. a form body: when `Params::parse` accepts it, the parameters, encoded again, parse to the
//!    same parameters (no byte is lost or invented, none is read twice);
//! 1. the bytes behind `Authorization: Basic <base64>`: accepted credentials, form-encoded and
//!    base64-encoded again, are read back the same;
//! 2. a clients file: `ClientList::parse` never panics, and in a parsed list the empty secret
//!    verifies for exactly the clients whose line holds its hash.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use service_accounts_api::http::oauth2_introspect::{Params, client_credentials};
use service_accounts_api::introspection_clients::ClientList;
use tonic::codegen::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn reencoded(params: &Params) -> String {
    let fields = [
        ("token", &params.token),
        ("token_type_hint", &params.token_type_hint),
        ("org_id", &params.org_id),
        ("app_id", &params.app_id),
        ("required_scopes", &params.required_scopes),
        ("client_ip", &params.client_ip),
        ("client_id", &params.client_id),
        ("client_secret", &params.client_secret),
    ];
    fields
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", encode(v))))
        .collect::<Vec<_>>()
        .join("&")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(params) = Params::parse(rest) {
                let again = Params::parse(reencoded(&params).as_bytes()).expect("re-encoded form");
                assert_eq!(again, params);
            }
        }
        1 => {
            let mut headers = HeaderMap::new();
            let value = format!("Basic {}", STANDARD.encode(rest));
            headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
            let read = client_credentials(&headers, &Params::default()).expect("one place");
            if let Some((id, secret)) = read {
                let raw = format!("{}:{}", encode(&id), encode(&secret));
                let value = format!("Basic {}", STANDARD.encode(raw));
                headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
                let again = client_credentials(&headers, &Params::default()).expect("one place");
                assert_eq!(again, Some((id, secret)));
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            // sha256("")
            const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
            if let Ok(list) = ClientList::parse(&text) {
                for line in text.lines().map(str::trim) {
                    if line.starts_with('#') {
                        continue;
                    }
                    if let Some((id, hash)) = line.split_once(':') {
                        assert_eq!(list.verify(id, ""), hash == EMPTY, "{line}");
                    }
                }
            }
        }
    }
});
