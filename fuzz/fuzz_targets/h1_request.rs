//! What the capture proxy's own HTTP/1.1 server reads from clients: a request head (any
//! bytes), with a head limit the first byte names. Verdicts are values, never panics; the
//! body is `reprise_fuzz::targets::h1_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reprise_fuzz::targets::h1_request(data));
