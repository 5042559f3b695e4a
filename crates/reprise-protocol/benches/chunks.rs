//! What reading one streamed chunk costs: `chunk_facts` (the skim fast path) against the
//! serde path it must agree with (`chunk_facts_serde`), in the same process, on the shapes
//! servers send: a completions token (the stub servers' and llama.cpp's), a chat delta
//! (vLLM, SGLang), a reasoning delta, and the final usage chunk. And the whole per-event
//! path of the replayer and the capture proxy: SSE framing (`feed_ref`) plus the facts.
//!
//! Run: `cargo bench -p reprise-protocol --bench chunks [-- --events N]`. Prints ns per
//! event (best of five runs of N events each, 200,000 by default) and the ratio. Under
//! `valgrind --tool=callgrind` (a few thousand events) it counts instructions instead,
//! which this noisy machine cannot disturb.

use std::hint::black_box;
use std::time::Instant;

use reprise_protocol::openai::{chunk_facts, chunk_facts_serde};
use reprise_protocol::sse::SseParser;

const SHAPES: [(&str, &str); 4] = [
    (
        "completions token",
        r#"{"id":"cmpl-0","object":"text_completion","created":0,"model":"m","choices":[{"index":0,"text":" the","logprobs":null,"finish_reason":null}]}"#,
    ),
    (
        "chat delta (vLLM)",
        r#"{"id":"chatcmpl-9f1c2a7e4b5d4c3e8a9b0c1d2e3f4a5b","object":"chat.completion.chunk","created":1764000000,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}"#,
    ),
    (
        "reasoning delta",
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764000000,"model":"qwen3","choices":[{"index":0,"delta":{"role":"assistant","content":null,"reasoning_content":"Let me think"},"finish_reason":null}]}"#,
    ),
    (
        "final usage",
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764000000,"model":"m","choices":[],"usage":{"prompt_tokens":812,"completion_tokens":128,"total_tokens":940,"prompt_tokens_details":{"cached_tokens":512}}}"#,
    ),
];

/// Best of five runs of `events` calls: ns per call of `f`.
fn time(events: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let mut sink = 0usize;
        for _ in 0..events {
            sink = sink.wrapping_add(f());
        }
        black_box(sink);
        best = best.min(start.elapsed().as_nanos() as f64 / events as f64);
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    println!("| chunk | bytes | chunk_facts ns | serde path ns | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for (name, data) in SHAPES {
        // Both paths must agree before their speed means anything.
        assert_eq!(
            chunk_facts(data).expect("valid"),
            chunk_facts_serde(data).expect("valid"),
            "{name}"
        );
        let fast = time(events, || {
            usize::from(chunk_facts(black_box(data)).expect("valid").has_content)
        });
        let serde = time(events, || {
            usize::from(
                chunk_facts_serde(black_box(data))
                    .expect("valid")
                    .has_content,
            )
        });
        println!(
            "| {name} | {} | {fast:.0} | {serde:.0} | {:.2}x |",
            data.len(),
            serde / fast
        );
    }
    // SSE framing plus facts, one network read of 16 events at a time.
    let (_, token) = SHAPES[0];
    let read: Vec<u8> = (0..16)
        .flat_map(|_| format!("data: {token}\n\n").into_bytes())
        .collect();
    let mut parser = SseParser::new();
    let per_read = time(events / 16, || {
        let mut content = 0;
        parser
            .feed_ref(black_box(&read), |e| {
                content += usize::from(chunk_facts(e.data).is_ok_and(|f| f.has_content));
            })
            .expect("valid");
        content
    });
    println!(
        "\nSSE framing + facts, 16 completions events per read: {:.0} ns per event",
        per_read / 16.0
    );
}
