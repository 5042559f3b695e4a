//! The simulator's API over loopback: vLLM-shaped responses, exact usage, errors.

mod support;

use reprise_sim::{Profile, SimConfig, SimServer};
use reprise_tokenizer::{Cl100k, Tokenizer};
use serde_json::{Value, json};
use support::*;

async fn sim() -> SimServer {
    let mut profile = Profile::named("instant").unwrap();
    profile.model = "m".into();
    SimServer::start(SimConfig::new(profile)).await.unwrap()
}

const PROMPT: &str = "The quick brown fox jumps over the lazy dog. Replay me exactly, please.";

#[tokio::test]
async fn streamed_chat_is_framed_like_vllm_with_exact_usage() {
    let s = sim().await;
    let r = post(&s.base_url(), "/v1/chat/completions", json!({
        "model": "m", "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 7, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}
    })).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("text/event-stream"));
    let raw = r.text();
    assert!(raw.ends_with("data: [DONE]\n\n"), "{raw}");
    let chunks = r.chunks();
    // role chunk, 7 content chunks, finish chunk, usage chunk
    assert_eq!(chunks.len(), 10, "{raw}");
    assert_eq!(
        chunks[0].1["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[0].1["object"], "chat.completion.chunk");
    let content: String = chunks
        .iter()
        .map(|(_, c)| reprise_protocol::openai::content_of(c))
        .collect();
    assert_eq!(Cl100k.count(&content), 7);
    assert_eq!(chunks[8].1["choices"][0]["finish_reason"], "length");
    let usage = &chunks[9].1;
    assert_eq!(usage["choices"], json!([]));
    let prompt_tokens = Cl100k.count(PROMPT) as u64;
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let ids: std::collections::HashSet<_> = chunks.iter().map(|(_, c)| c["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "one id per response");
}

#[tokio::test]
async fn a_repeated_prompt_reports_its_cached_prefix_as_vllm_does() {
    let s = sim().await;
    let prompt = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let prompt_tokens = u64::from(Cl100k.count(&prompt) as u32);
    let mut cached = Vec::new();
    for stream in [false, true] {
        let r = post(
            &s.base_url(),
            "/v1/completions",
            json!({
                "model": "m", "prompt": prompt, "max_tokens": 2, "ignore_eos": true,
                "stream": stream, "stream_options": {"include_usage": true}
            }),
        )
        .await;
        assert_eq!(r.status, 200);
        let usage = if stream {
            r.chunks().last().unwrap().1["usage"].clone()
        } else {
            serde_json::from_str::<serde_json::Value>(&r.text()).unwrap()["usage"].clone()
        };
        cached.push(
            usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        );
    }
    // The first computes everything; the second finds the prompt's full blocks (all but the
    // last token at most) in the prefix cache.
    assert_eq!(cached[0], 0);
    let block = 16;
    assert_eq!(
        cached[1],
        ((prompt_tokens / block) * block).min(prompt_tokens - 1),
        "{cached:?}"
    );
}

#[tokio::test]
async fn non_streamed_completions_carry_usage_and_text() {
    let s = sim().await;
    let r = post(
        &s.base_url(),
        "/v1/completions",
        json!({
            "model": "m", "prompt": PROMPT, "max_tokens": 33, "ignore_eos": true
        }),
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 33);
    assert_eq!(v["usage"]["prompt_tokens"], Cl100k.count(PROMPT) as u64);
    assert_eq!(Cl100k.count(v["choices"][0]["text"].as_str().unwrap()), 33);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn streamed_completions_without_usage_end_with_done() {
    let s = sim().await;
    let r = post(
        &s.base_url(),
        "/v1/completions",
        json!({
            "model": "m", "prompt": "x", "max_tokens": 3, "ignore_eos": true, "stream": true
        }),
    )
    .await;
    let chunks = r.chunks();
    assert_eq!(
        chunks.len(),
        4,
        "3 tokens and the finish chunk, no usage chunk"
    );
    assert_eq!(
        chunks[0].1["choices"][0]["text"]
            .as_str()
            .map(str::len)
            .map(|l| l > 0),
        Some(true)
    );
    assert!(r.events.last().unwrap().1.is_done());
}

#[tokio::test]
async fn without_ignore_eos_lengths_vary_within_min_and_max() {
    let s = sim().await;
    let mut lengths = Vec::new();
    for _ in 0..30 {
        let v = post(&s.base_url(), "/v1/chat/completions", json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300, "min_tokens": 20
        })).await.json();
        let n = v["usage"]["completion_tokens"].as_u64().unwrap();
        let reason = v["choices"][0]["finish_reason"].as_str().unwrap();
        assert!((20..=300).contains(&n), "{n}");
        assert_eq!(reason == "length", n == 300, "{n} {reason}");
        lengths.push(n);
    }
    lengths.sort_unstable();
    assert!(
        lengths[0] < lengths[29],
        "lengths are drawn, not constant: {lengths:?}"
    );
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let s = sim().await;
    let base = s.base_url();
    let r = send(&base, "POST", "/v1/chat/completions", None)
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("request body is not valid JSON")
    );
    let r = post(&base, "/v1/chat/completions", json!({"model": "m"})).await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].clone()),
        (400, json!("messages"))
    );
    let r = post(
        &base,
        "/v1/chat/completions",
        json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"]["message"],
        "The model `nope` does not exist."
    );
    let r = post(
        &base,
        "/v1/completions",
        json!({"model": "m", "prompt": "x", "n": 2}),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = get(&base, "/v2/whatever").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn models_health_and_tokenize() {
    let s = sim().await;
    let base = s.base_url();
    assert_eq!(get(&base, "/health").await.status, 200);
    let m = get(&base, "/v1/models").await.json();
    assert_eq!(m["data"][0]["id"], "m");
    let t = post(&base, "/tokenize", json!({"model": "m", "prompt": PROMPT}))
        .await
        .json();
    assert_eq!(t["count"], Cl100k.count(PROMPT) as u64);
    let metrics = get(&base, "/metrics").await.text();
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
    ] {
        assert!(metrics.contains(name), "{name}");
    }
}

#[tokio::test]
async fn counters_follow_the_traffic() {
    let s = sim().await;
    let base = s.base_url();
    for _ in 0..3 {
        post(
            &base,
            "/v1/completions",
            json!({"model": "m", "prompt": PROMPT, "max_tokens": 5, "ignore_eos": true}),
        )
        .await;
    }
    let text = get(&base, "/metrics").await.text();
    let prompt = Cl100k.count(PROMPT) as f64;
    assert_eq!(
        metric(&text, "vllm:prompt_tokens_total{model_name=\"m\"}"),
        3.0 * prompt
    );
    assert_eq!(
        metric(&text, "vllm:generation_tokens_total{model_name=\"m\"}"),
        15.0
    );
    assert_eq!(
        metric(
            &text,
            "vllm:request_success_total{model_name=\"m\",finished_reason=\"length\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "vllm:time_to_first_token_seconds_count{model_name=\"m\"}"
        ),
        3.0
    );
    let _: Value = Value::Null;
}

#[tokio::test]
async fn a_full_queue_rejects_with_the_profile_status() {
    let mut profile = Profile::named("small-t4").unwrap();
    profile.model = "m".into();
    profile.max_num_seqs = 1;
    profile.max_queue = 2;
    profile.reject_status = 429;
    let s = SimServer::start(SimConfig::new(profile)).await.unwrap();
    let base = s.base_url();
    let body = json!({"model": "m", "prompt": "x", "max_tokens": 200, "ignore_eos": true});
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (base, body) = (base.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post(&base, "/v1/completions", body).await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // One runs, two wait: the fourth finds the queue full.
    let r = post(&base, "/v1/completions", body).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue is full")
    );
    let metrics = get(&base, "/metrics").await.text();
    assert_eq!(
        metric(&metrics, "reprise_sim_rejected_total{model_name=\"m\"}"),
        1.0
    );
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn the_seed_makes_output_lengths_reproducible() {
    async fn lengths(seed: u64) -> Vec<u64> {
        let mut profile = Profile::named("instant").unwrap();
        profile.model = "m".into();
        let mut config = SimConfig::new(profile);
        config.seed = seed;
        let s = SimServer::start(config).await.unwrap();
        let mut out = Vec::new();
        for _ in 0..8 {
            let v = post(
                &s.base_url(),
                "/v1/completions",
                json!({"model": "m", "prompt": "x", "max_tokens": 1000}),
            )
            .await
            .json();
            out.push(v["usage"]["completion_tokens"].as_u64().unwrap());
        }
        out
    }
    let a = lengths(7).await;
    assert_eq!(a, lengths(7).await);
    assert_ne!(a, lengths(8).await);
}
