//! `filter::parse` on arbitrary text: never panics, refuses at a position inside the input (or
//! one past its end), and whatever parses prints in a canonical form that parses to the same
//! filter and prints the same again. Checking against the token and audit fields never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_accounts_domain::filter::{self, AUDIT_FIELDS, TOKEN_FIELDS};

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    match filter::parse(&input) {
        Ok(None) => assert!(input.trim().is_empty()),
        Ok(Some(expr)) => {
            let printed = expr.to_string();
            let again = filter::parse(&printed).expect("the canonical form parses");
            assert_eq!(again.as_ref(), Some(&expr), "{printed}");
            assert_eq!(again.map(|e| e.to_string()), Some(printed));
            let _ = expr.check(TOKEN_FIELDS);
            let _ = expr.check(AUDIT_FIELDS);
        }
        Err(error) => {
            let length = input.chars().count();
            assert!((1..=length + 1).contains(&error.at), "{error}");
        }
    }
});
