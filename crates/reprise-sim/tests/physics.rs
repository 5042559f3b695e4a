//! The engine's physics under load, on the real clock (compressed by `speedup`): throughput
//! rises with concurrency and then flattens at `max_num_seqs`; TTFT grows with queueing once
//! the batch or the KV cache is full; prefix-cache hits lower TTFT.
//!
//! Figures are in modelled time (wall time × speedup); margins are wide so that a loaded
//! machine does not make the shapes flaky.

mod support;

use std::time::{Duration, Instant};

use reprise_sim::{Profile, SimConfig, SimServer};
use serde_json::json;
use support::*;

const SPEEDUP: f64 = 5.0;

async fn sim(tune: impl FnOnce(&mut Profile)) -> SimServer {
    sim_at(SPEEDUP, tune).await
}

async fn sim_at(speedup: f64, tune: impl FnOnce(&mut Profile)) -> SimServer {
    let mut profile = Profile::named("llama-8b-h100").unwrap();
    profile.model = "m".into();
    tune(&mut profile);
    let mut config = SimConfig::new(profile);
    config.speedup = speedup;
    SimServer::start(config).await.unwrap()
}

fn prompt(words: usize, salt: usize) -> String {
    let mut s = format!("request {salt}:");
    for i in 0..words {
        s.push_str([" alpha", " beta", " gamma", " delta"][(i + salt) % 4]);
    }
    s
}

/// Streams one request; returns TTFT (modelled seconds).
async fn one(base: &str, prompt: &str, out: u32) -> f64 {
    one_at(SPEEDUP, base, prompt, out).await
}

async fn one_at(speedup: f64, base: &str, prompt: &str, out: u32) -> f64 {
    let r = post(
        base,
        "/v1/chat/completions",
        json!({
            "model": "m", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": out, "ignore_eos": true, "stream": true
        }),
    )
    .await;
    assert_eq!(r.status, 200);
    let first = r
        .chunks()
        .into_iter()
        .find(|(_, c)| !reprise_protocol::openai::content_of(c).is_empty())
        .expect("a token")
        .0;
    first.as_secs_f64() * speedup
}

/// Closed loop: `users` clients each send `each` requests back to back.
/// Returns (output tokens per modelled second, mean TTFT in modelled seconds).
async fn closed_loop(base: &str, users: usize, each: usize, out: u32) -> (f64, f64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for u in 0..users {
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut ttfts = Vec::new();
            for i in 0..each {
                ttfts.push(one(&base, &prompt(100, u * 1000 + i), out).await);
            }
            ttfts
        }));
    }
    let mut ttfts = Vec::new();
    for t in tasks {
        ttfts.extend(t.await.unwrap());
    }
    let modelled = start.elapsed().as_secs_f64() * SPEEDUP;
    let tokens = (users * each) as f64 * f64::from(out);
    (
        tokens / modelled,
        ttfts.iter().sum::<f64>() / ttfts.len() as f64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_rises_then_flattens_at_max_num_seqs_while_ttft_queues() {
    let s = sim(|p| p.max_num_seqs = 8).await;
    let base = s.base_url();
    let (t1, ttft1) = closed_loop(&base, 1, 3, 32).await;
    let (t4, ttft4) = closed_loop(&base, 4, 3, 32).await;
    let (t16, ttft16) = closed_loop(&base, 16, 3, 32).await;
    let (t32, ttft32) = closed_loop(&base, 32, 3, 32).await;
    eprintln!(
        "tokens/s: c1 {t1:.0}, c4 {t4:.0}, c16 {t16:.0}, c32 {t32:.0}; \
         mean TTFT s: {ttft1:.3}, {ttft4:.3}, {ttft16:.3}, {ttft32:.3}"
    );
    assert!(
        t4 > 2.5 * t1,
        "batching raises throughput: {t1:.0} -> {t4:.0}"
    );
    assert!(t16 > 1.5 * t4, "up to max_num_seqs: {t4:.0} -> {t16:.0}");
    assert!(
        t32 < 1.25 * t16,
        "throughput flattens past max_num_seqs: {t16:.0} -> {t32:.0}"
    );
    assert!(
        ttft16 > 3.0 * ttft4,
        "TTFT grows once requests queue: {ttft4:.3} -> {ttft16:.3}"
    );
    assert!(
        ttft32 > 1.8 * ttft16,
        "and keeps growing with the queue: {ttft16:.3} -> {ttft32:.3}"
    );
    // One decode step of the 8B profile at batch 1 is ~7.7 ms: ~130 tokens/s.
    assert!(
        (60.0..160.0).contains(&t1),
        "single-stream decode rate {t1:.0} tokens/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_kv_cache_makes_requests_wait() {
    // Room for ~5 sequences of ~130 tokens: the rest wait even though max_num_seqs is 256.
    let s = sim(|p| p.kv_capacity_tokens = 16 * 48).await;
    let base = s.base_url();
    let (_, ttft_few) = closed_loop(&base, 2, 2, 24).await;
    let probe = {
        let base = base.clone();
        tokio::spawn(async move {
            let mut most_waiting: f64 = 0.0;
            let mut most_running: f64 = 0.0;
            for _ in 0..40 {
                let m = get(&base, "/metrics").await.text();
                most_waiting =
                    most_waiting.max(metric(&m, "vllm:num_requests_waiting{model_name=\"m\"}"));
                most_running =
                    most_running.max(metric(&m, "vllm:num_requests_running{model_name=\"m\"}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (most_waiting, most_running)
        })
    };
    let (_, ttft_many) = closed_loop(&base, 16, 2, 24).await;
    let (waiting, running) = probe.await.unwrap();
    eprintln!(
        "mean TTFT s: 2 users {ttft_few:.3}, 16 users {ttft_many:.3}; peak waiting {waiting}, running {running}"
    );
    assert!(
        waiting >= 4.0,
        "requests queue for KV blocks: peak waiting {waiting}"
    );
    assert!(running <= 6.0, "at most ~5 fit: peak running {running}");
    assert!(
        ttft_many > 3.0 * ttft_few,
        "TTFT grows: {ttft_few:.3} -> {ttft_many:.3}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_hits_lower_ttft() {
    // Real time (speedup 1), so that the server's own tokenizing of the prompt is small
    // against the modelled prefill.
    let s = sim_at(1.0, |_| {}).await;
    let base = s.base_url();
    let long = prompt(3000, 7);
    let cold = one_at(1.0, &base, &long, 2).await;
    let warm = one_at(1.0, &base, &long, 2).await;
    let other = one_at(1.0, &base, &prompt(3000, 8), 2).await;
    let m = get(&base, "/metrics").await.text();
    let hits = metric(&m, "vllm:prefix_cache_hits_total{model_name=\"m\"}");
    eprintln!(
        "TTFT s: cold {cold:.4}, warm {warm:.4}, different prefix {other:.4}; hit tokens {hits}"
    );
    // 3,000 prompt tokens at ~32 µs each: ~0.1 s of prefill; a hit leaves one block to compute.
    assert!(cold > 0.06, "{cold}");
    assert!(warm < cold / 2.0, "prefix hit: {cold:.4} -> {warm:.4}");
    assert!(other > cold / 2.0, "a different prefix misses: {other:.4}");
    assert!(hits >= 2900.0, "{hits}");
}
