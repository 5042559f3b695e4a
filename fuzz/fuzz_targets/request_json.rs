//! What the capture proxy reads from clients: a request body, parsed for both APIs and
//! turned into a trace/1 row (prompt tokenized, prefix blocks hashed).
//! Errors are values, never panics; the body is `reprise_fuzz::targets::request_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reprise_fuzz::targets::request_json(data));
