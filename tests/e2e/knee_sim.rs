//! The knee of a concurrency ramp against the simulator, whose saturation point is known
//! from its profile: with `max_num_seqs` 8 the engine batches at most 8 sequences, so
//! throughput grows up to concurrency 8 and flattens after it while requests queue for a
//! batch slot (TTFT rises). The analyzer must find the knee within one step of 8 and name
//! the server's queue as the cause.
//!
//! The run scrapes the sim's `/metrics` (vLLM names and its simulated DCGM GPU) every
//! 100 ms: the correlation must find waiting requests rising with TTFT and the GPU's
//! utilisation tracking throughput.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use reprise_replay::{Pacing, Progress, ReplayConfig, run};
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
        warmup: 4,
        run_id: "knee".into(),
        command: vec!["test".into()],
        monitor: Some({
            let mut m = reprise_monitor::MonitorConfig::new(dir.path());
            m.scrape = vec![format!("{}/metrics", sim.base_url())];
            m.interval = Duration::from_millis(100);
            m
        }),
        ..ReplayConfig::new(vec![sim.base_url()], "m", dir.path())
    };
    let mut request = TraceRecord::new("x", Timestamp(0));
    request.input_tokens = Some(64);
    request.output_tokens = Some(24);
    let users = vec![1, 2, 4, 8, 16, 32];
    run(
        config,
        Pacing::Closed {
            step_duration: Some(Duration::from_millis(1500)),
            requests_per_step: None,
            think: Duration::ZERO,
            requests: vec![request],
            users: users.clone(),
        },
        Arc::new(AtomicBool::new(false)),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    let report = analyze(
        dir.path(),
        &Options {
            corr_bin_s: 0.25,
            ..Options::default()
        },
    )
    .unwrap();
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

    // Monitoring: the sim's gauges were scraped without failure, its DCGM GPU became gpu/1.
    assert!(dir.path().join("server.parquet").is_file());
    assert!(dir.path().join("gpu.parquet").is_file());
    let c = report
        .correlation
        .as_ref()
        .expect("correlation with server data");
    let health = &c.sources[0];
    assert!(health.scrapes >= 20 && health.failed == 0, "{health:?}");
    let waiting_ttft = c.get("waiting", "ttft_p99_ms").expect("waiting vs TTFT");
    eprintln!("waiting~TTFT p99: {waiting_ttft:?}");
    assert!(waiting_ttft.pearson > 0.6, "{waiting_ttft:?}");
    // Waiting is 0 in most low-load bins (ties), so the ranks say less than the values.
    assert!(waiting_ttft.spearman > 0.0, "{waiting_ttft:?}");
    // The batch size (running) per step stops at max_num_seqs, the queue takes the rest.
    let last = report.side.last().unwrap();
    let running = last.server_running.unwrap();
    assert!(running <= 8.5 && running > 5.0, "{last:?}");
    assert!(last.server_waiting.unwrap() > 10.0, "{last:?}");
    let first = &report.side[0];
    assert!(first.server_running.unwrap() < 1.5, "{first:?}");
    assert!(first.server_waiting.unwrap() < 0.5, "{first:?}");
    // The diagnosis cites the correlation.
    let queue = knee
        .causes
        .iter()
        .find(|c| c.kind == "server_queue")
        .unwrap();
    assert!(queue.evidence.contains("Pearson r"), "{}", queue.evidence);
}
