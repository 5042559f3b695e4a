//! What the replayer and the proxy read from servers: the SSE parser (input split at the
//! point its first byte names) and `chunk_facts` on every event, its fast path checked
//! against serde's.
//! Errors are values, never panics; the body is `reprise_fuzz::targets::sse_chunks`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reprise_fuzz::targets::sse_chunks(data));
