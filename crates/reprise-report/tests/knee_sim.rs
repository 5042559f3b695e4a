//! The knee of a concurrency ramp against the simulator, whose saturation point is known
//! from its profile: with `max_num_seqs` 8 the engine batches at most 8 sequences, so
//! throughput grows up to concurrency 8 and flattens after it while requests queue for a
//! batch slot (TTFT rises). The analyzer must find the knee within one step of 8 and name
//! the server's queue as the cause.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use reprise_protocol::openai::Api;
use reprise_replay::client::{Backend, RequestShape, Timeouts};
use reprise_replay::prompt::PromptBuilder;
use reprise_replay::{HttpClient, Pacing, Progress, ReplayConfig, StopRule, run};
use reprise_report::{Options, analyze};
use reprise_sim::{Profile, SimConfig, SimServer};
use reprise_trace::{Timestamp, TraceRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_knee_of_a_ramp_against_the_sim_is_at_max_num_seqs() {
    let mut profile = Profile::named("llama-8b-h100").unwrap();
    profile.model = "m".into();
    profile.max_num_seqs = 8;
    let mut sim = SimConfig::new(profile);
    sim.speedup = 5.0;
    let sim = SimServer::start(sim).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ReplayConfig {
        targets: vec![sim.base_url()],
        shape: RequestShape {
            api: Api::Chat,
            backend: Backend::Vllm,
            model: "m".into(),
            stream: true,
        },
        headers: Vec::new(),
        timeouts: Timeouts {
            request: Duration::from_secs(60),
            gap: Duration::from_secs(30),
        },
        max_in_flight: None,
        warmup: 4,
        prompts: PromptBuilder {
            block_tokens: None,
            salt: 1,
        },
        run_dir: dir.path().to_owned(),
        run_id: "knee".into(),
        queue_limit_ms: 1.0,
        stop_rule: StopRule::default(),
        drain: Duration::from_secs(5),
        command: vec!["test".into()],
        events: Vec::new(),
        prompt_words: None,
        senders: 1,
        http: HttpClient::Auto,
        monitor: None,
    };
    let mut request = TraceRecord::new("x", Timestamp(0));
    request.input_tokens = Some(64);
    request.output_tokens = Some(24);
    let users = vec![1, 2, 4, 8, 16, 32];
    run(
        config,
        Pacing::Closed {
            step_duration: None,
            requests_per_step: Some(48),
            think: Duration::ZERO,
            requests: vec![request],
            users: users.clone(),
        },
        Arc::new(AtomicBool::new(false)),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    let report = analyze(dir.path(), &Options::default()).unwrap();
    let values: Vec<f64> = report.steps.iter().filter_map(|s| s.step_value).collect();
    assert_eq!(values, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]);
    let table: Vec<String> = report
        .steps
        .iter()
        .map(|s| {
            format!(
                "c{}: {:.1} req/s, ttft p99 {:.0} ms",
                s.step_value.unwrap(),
                s.request_throughput,
                s.p("ttft", "p99").unwrap_or(f64::NAN)
            )
        })
        .collect();
    eprintln!("{}", table.join("; "));
    let knee = report
        .knee
        .as_ref()
        .unwrap_or_else(|| panic!("no knee: {table:?}"));
    assert!(
        (4.0..=16.0).contains(&knee.knee_value),
        "knee at {} (steps: {table:?})",
        knee.knee_value
    );
    assert!(
        knee.causes.iter().any(|c| c.kind == "server_queue"),
        "{:?}",
        knee.causes
    );
    assert_eq!(report.warmup_excluded, 4);
}
