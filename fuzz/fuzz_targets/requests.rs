//! Every request message: bytes → `prost::Message::decode` → `Parse::parse`, as the server does
//! before any use case runs. Never panics, and an `InvalidArgument` is always bounded: 1 to 21
//! violations, each naming a field and described in at most `MAX_DESCRIPTION_BYTES` bytes.
//!
//! Input: byte 0 picks the request type (modulo the length of `REQUEST_KINDS`), the rest is the
//! encoded message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_accounts_domain::Error;
use service_accounts_fuzz::{MAX_DESCRIPTION_BYTES, MAX_VIOLATIONS, decode_and_parse_request};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let Some(result) = decode_and_parse_request(kind, bytes) else {
        return;
    };
    match result {
        Ok(()) => {}
        Err(Error::InvalidArgument(violations)) => {
            assert!(
                (1..=MAX_VIOLATIONS).contains(&violations.len()),
                "{} violations",
                violations.len()
            );
            for violation in &violations {
                assert!(!violation.description.is_empty(), "{violation:?}");
                assert!(
                    violation.description.len() <= MAX_DESCRIPTION_BYTES,
                    "{} bytes: {violation:?}",
                    violation.description.len()
                );
                assert!(violation.field.len() <= 100, "{violation:?}");
            }
        }
        Err(other) => {
            panic!("parsing answered with something other than InvalidArgument: {other:?}")
        }
    }
});
