//! Every fault mode: what the client sees and what `/metrics` counts.

mod support;

use std::time::{Duration, Instant};

use reprise_sim::{Profile, SimConfig, SimServer};
use serde_json::{Value, json};
use support::*;

async fn sim() -> SimServer {
    let mut profile = Profile::named("instant").unwrap();
    profile.model = "m".into();
    SimServer::start(SimConfig::new(profile)).await.unwrap()
}

fn stream_req(max_tokens: u32) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens, "ignore_eos": true, "stream": true})
}

async fn set_faults(base: &str, faults: Value) {
    let r = post(base, "/admin/faults", faults).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn fault_count(base: &str, kind: &str) -> f64 {
    metric(
        &get(base, "/metrics").await.text(),
        &format!("reprise_sim_faults_total{{kind=\"{kind}\"}}"),
    )
}

fn content_chunks(r: &Reply) -> usize {
    r.chunks()
        .iter()
        .filter(|(_, c)| !reprise_protocol::openai::content_of(c).is_empty())
        .count()
}

#[tokio::test]
async fn injected_errors_use_the_chosen_status() {
    let s = sim().await;
    let base = s.base_url();
    set_faults(&base, json!({"error_rate": 1.0, "error_status": 503})).await;
    let r = post(&base, "/v1/chat/completions", stream_req(5)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["message"], "injected fault");
    assert_eq!(fault_count(&base, "error").await, 1.0);
    set_faults(&base, json!({})).await;
    assert_eq!(
        post(&base, "/v1/chat/completions", stream_req(5))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn reset_closes_the_connection_without_a_response() {
    let s = sim().await;
    let base = s.base_url();
    set_faults(&base, json!({"reset_rate": 1.0})).await;
    let err = send(
        &base,
        "POST",
        "/v1/completions",
        Some(json!({"model": "m", "prompt": "x"})),
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());
    assert_eq!(fault_count(&base, "reset").await, 1.0);
}

#[tokio::test]
async fn cut_aborts_the_stream_after_n_tokens() {
    let s = sim().await;
    let base = s.base_url();
    set_faults(&base, json!({"cut_rate": 1.0, "cut_after_tokens": 3})).await;
    let r = post(&base, "/v1/chat/completions", stream_req(10)).await;
    assert_eq!(r.status, 200);
    assert!(r.body_error.is_some(), "the body ends with an error");
    assert_eq!(content_chunks(&r), 3);
    assert!(!r.text().contains("[DONE]"));
    assert_eq!(fault_count(&base, "cut").await, 1.0);
}

#[tokio::test]
async fn stall_holds_the_stream_then_resumes() {
    let s = sim().await;
    let base = s.base_url();
    set_faults(
        &base,
        json!({"stall_rate": 1.0, "stall_after_tokens": 2, "stall_ms": 300}),
    )
    .await;
    let r = post(&base, "/v1/chat/completions", stream_req(4)).await;
    let times: Vec<Duration> = r
        .chunks()
        .into_iter()
        .filter(|(_, c)| !reprise_protocol::openai::content_of(c).is_empty())
        .map(|(t, _)| t)
        .collect();
    assert_eq!(times.len(), 4);
    let gap = times[2] - times[1];
    assert!(
        gap >= Duration::from_millis(290),
        "gap after the stall: {gap:?}"
    );
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    assert_eq!(fault_count(&base, "stall").await, 1.0);
}

#[tokio::test]
async fn malformed_events_are_not_json() {
    let s = sim().await;
    let base = s.base_url();
    set_faults(&base, json!({"malformed_rate": 1.0})).await;
    let r = post(&base, "/v1/chat/completions", stream_req(3)).await;
    let bad = r
        .events
        .iter()
        .filter(|(_, e)| !e.is_done() && serde_json::from_str::<Value>(&e.data).is_err())
        .count();
    assert_eq!(bad, 1);
    assert_eq!(
        content_chunks(&r),
        3,
        "the stream carries on after the bad event"
    );
    assert_eq!(fault_count(&base, "malformed").await, 1.0);
}

#[tokio::test]
async fn reload_pauses_the_engine() {
    let s = sim().await;
    let base = s.base_url();
    let r = post(&base, "/admin/reload", json!({"seconds": 0.5})).await;
    assert_eq!(r.status, 200);
    let start = Instant::now();
    let r = post(&base, "/v1/chat/completions", stream_req(2)).await;
    let first = r
        .chunks()
        .into_iter()
        .find(|(_, c)| !reprise_protocol::openai::content_of(c).is_empty())
        .unwrap()
        .0;
    assert!(
        first >= Duration::from_millis(400),
        "first token waited for the reload: {first:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(fault_count(&base, "reload").await, 1.0);
}

#[tokio::test]
async fn bad_fault_settings_are_rejected() {
    let s = sim().await;
    let base = s.base_url();
    let r = post(&base, "/admin/faults", json!({"error_rate": 2})).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("error_rate")
    );
    let r = post(&base, "/admin/faults", json!({"eror_rate": 0.1})).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_slot() {
    let mut profile = Profile::named("small-t4").unwrap();
    profile.model = "m".into();
    let s = SimServer::start(SimConfig::new(profile)).await.unwrap();
    let base = s.base_url();
    let handle = tokio::spawn({
        let base = base.clone();
        async move { post(&base, "/v1/chat/completions", stream_req(4000)).await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &get(&base, "/metrics").await.text(),
        "vllm:num_requests_running{model_name=\"m\"}",
    ) != 1.0
    {
        assert!(Instant::now() < deadline, "the request never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let running = metric(
            &get(&base, "/metrics").await.text(),
            "vllm:num_requests_running{model_name=\"m\"}",
        );
        if running == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the aborted request still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
