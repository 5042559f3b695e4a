//! What the replayer's lean HTTP/1.1 client reads from servers: a response head and its
//! body (content-length, chunked or until close), arriving in two reads split at the point
//! the first byte names.
//! Errors are values, never panics; the body is `reprise_fuzz::targets::h1_response`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reprise_fuzz::targets::h1_response(data));
