//! What the replayer and the capture proxy read from servers: arbitrary bytes, split at an
//! arbitrary point, go through the SSE parser and every event through `chunk_facts`, and a
//! request body through `GenerationRequest::parse`; errors are values, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_protocol::openai::{Api, GenerationRequest, chunk_facts};
use reprise_protocol::sse::SseParser;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut parser = SseParser::new();
    for part in [&data[..split], &data[split..]] {
        let _ = parser.feed(part, |event| {
            let _ = chunk_facts(&event.data);
        });
    }
    for api in [Api::Chat, Api::Completions] {
        let _ = GenerationRequest::parse(api, data);
    }
});
