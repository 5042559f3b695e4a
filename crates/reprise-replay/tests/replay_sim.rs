//! Replays against the in-process simulator: exact sizes, schedule accuracy, prefix sharing,
//! every error class, closed-loop ramps with a stop rule, and a stop mid-run.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use reprise_replay::client::Timeouts;
use reprise_replay::prompt::PromptBuilder;
use reprise_replay::workload::{
    LoadedTrace, Process, RateStep, Sizes, TraceWindow, rate_plan, trace_plan,
};
use reprise_replay::{HttpClient, Pacing, Progress, ReplayConfig, RunSummary, StopRule, run};
use reprise_sim::{Faults, Profile, SimConfig, SimServer};
use reprise_trace::{DatasetReader, ResultRecord, Timestamp, TraceRecord};

async fn sim(profile: &str, speedup: f64, faults: Faults) -> SimServer {
    let mut p = Profile::named(profile).unwrap();
    p.model = "m".into();
    let mut c = SimConfig::new(p);
    c.speedup = speedup;
    c.faults = faults;
    SimServer::start(c).await.unwrap()
}

fn config(
    targets: Vec<String>,
    dir: &std::path::Path,
    block_tokens: Option<usize>,
) -> ReplayConfig {
    ReplayConfig {
        headers: vec![("authorization".into(), "Bearer secret-token".into())],
        timeouts: Timeouts {
            request: Duration::from_secs(30),
            gap: Duration::from_secs(10),
        },
        prompts: PromptBuilder::new(block_tokens, 1),
        run_id: "test".into(),
        queue_limit_ms: 5.0,
        command: vec!["test".into()],
        senders: 2,
        ..ReplayConfig::new(targets, "m", dir)
    }
}

fn trace(n: usize, gap_ms: i64) -> LoadedTrace {
    let requests = (0..n)
        .map(|i| {
            let mut r = TraceRecord::new(
                format!("r{i}"),
                Timestamp(1_000_000_000_000 + i as i64 * gap_ms * 1_000_000),
            );
            r.input_tokens = Some(20 + (i as u32 * 37) % 300);
            r.output_tokens = Some(1 + (i as u32 * 13) % 40);
            r
        })
        .collect();
    LoadedTrace {
        requests,
        block_tokens: None,
    }
}

/// A fixed-rate open-loop plan of synthetic requests.
fn fixed_plan(
    rate: f64,
    secs: u64,
    input: u32,
    output: u32,
) -> Vec<reprise_replay::workload::Planned> {
    let steps = [RateStep {
        rate,
        duration: Duration::from_secs(secs),
        label: "measure".into(),
    }];
    rate_plan(&steps, Process::Fixed, &Sizes::Fixed { input, output }, 0).unwrap()
}

async fn go(config: ReplayConfig, pacing: Pacing) -> (RunSummary, Vec<ResultRecord>) {
    let summary = run(
        config,
        pacing,
        Arc::new(AtomicBool::new(false)),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    let rows = DatasetReader::<ResultRecord>::open(&summary.requests_file)
        .unwrap()
        .read_all()
        .unwrap();
    (summary, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_replay_matches_sizes_exactly() {
    let s = sim("instant", 1.0, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let t = trace(60, 10);
    let plan = trace_plan(
        &t,
        &TraceWindow {
            speed: 2.0,
            ..Default::default()
        },
    )
    .unwrap();
    let (summary, rows) = go(
        config(vec![s.base_url()], dir.path(), None),
        Pacing::Open(plan.into()),
    )
    .await;
    assert!(summary.complete);
    assert_eq!(rows.len(), 60);
    for r in &rows {
        assert_eq!(r.status, Some(200), "{:?}", r.error);
        assert_eq!(
            r.n_in_usage, r.request.input_tokens,
            "{}",
            r.request.request_id
        );
        assert_eq!(r.n_out_usage, r.request.output_tokens);
        assert_eq!(r.n_out_counted, r.request.output_tokens);
        assert!(r.ttft_us.is_some() && r.e2e_us >= r.ttft_us);
        assert_eq!(
            r.itl_us.as_ref().map_or(0, Vec::len) + 1,
            r.request.output_tokens.unwrap() as usize
        );
    }
    assert_eq!(summary.overall.input_token_mismatch_rate, Some(0.0));
    assert_eq!(summary.overall.output_token_mismatch_rate, Some(0.0));
    // Credentials never reach the run directory.
    let run_json = std::fs::read_to_string(dir.path().join("run.json")).unwrap();
    assert!(!run_json.contains("secret-token") && run_json.contains("\"authorization\""));
    let parquet = std::fs::read(dir.path().join("requests.parquet")).unwrap();
    assert!(!parquet.windows(12).any(|w| w == b"secret-token"));
}

/// Requests are dealt to sender threads in turn, so senders finish one after another while
/// others still send: a sender finishing (and its runtime with it) must break no request of
/// another sender, whose connections must be its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_finishing_one_by_one_break_no_request() {
    let s = sim("instant", 1.0, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let t = trace(600, 1);
    let plan = trace_plan(&t, &TraceWindow::default()).unwrap();
    let mut c = config(vec![s.base_url()], dir.path(), None);
    c.senders = 48;
    let (summary, rows) = go(c, Pacing::Open(plan.into())).await;
    assert_eq!(rows.len(), 600);
    for r in &rows {
        assert_eq!(
            r.status,
            Some(200),
            "{}: {:?}",
            r.request.request_id,
            r.error
        );
    }
    assert_eq!(summary.overall.ok, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_absolute_time() {
    let s = sim("instant", 1.0, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = fixed_plan(200.0, 1, 10, 2);
    let (summary, rows) = go(
        config(vec![s.base_url()], dir.path(), None),
        Pacing::Open(plan.into()),
    )
    .await;
    assert_eq!(rows.len(), 200);
    let t0 = rows.iter().map(|r| r.scheduled.0).min().unwrap();
    let mut offsets: Vec<i64> = rows.iter().map(|r| r.scheduled.0 - t0).collect();
    offsets.sort_unstable();
    for (i, o) in offsets.iter().enumerate() {
        assert_eq!(
            *o,
            i as i64 * 5_000_000,
            "scheduled times are exact multiples of 5 ms"
        );
    }
    let mut queue: Vec<u64> = rows.iter().map(|r| r.queue_us.unwrap()).collect();
    queue.sort_unstable();
    let p99 = queue[queue.len() * 99 / 100];
    // A sanity bound for a debug build sharing 2 cores with the simulator; the pacing
    // targets are measured in the release benchmark.
    assert!(p99 < 10_000, "queue p99 {p99} µs");
    assert_eq!(summary.overall.ok, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_prefix_hashes_hit_the_prefix_cache() {
    let s = sim("llama-8b-h100", 20.0, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mk = |i: usize, hashes: Vec<u64>| {
        let mut r = TraceRecord::new(format!("p{i}"), Timestamp(i as i64 * 100_000_000));
        r.input_tokens = Some(600);
        r.output_tokens = Some(2);
        r.prefix_hashes = Some(hashes);
        r
    };
    // Two requests share 512 tokens of prefix; a third shares nothing with them.
    let t = LoadedTrace {
        requests: vec![mk(0, vec![1]), mk(1, vec![1]), mk(2, vec![2])],
        block_tokens: Some(512),
    };
    let plan = trace_plan(&t, &TraceWindow::default()).unwrap();
    let (_, rows) = go(
        config(vec![s.base_url()], dir.path(), Some(512)),
        Pacing::Open(plan.into()),
    )
    .await;
    assert!(rows.iter().all(|r| r.status == Some(200)));
    let hits = s
        .metrics()
        .prefix_hits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(hits, 512, "exactly the shared 512-token block hits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_is_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let one = |i: usize| {
        let mut r = TraceRecord::new(format!("e{i}"), Timestamp(0));
        r.input_tokens = Some(8);
        r.output_tokens = Some(6);
        r
    };
    let cases: Vec<(Faults, Option<Duration>, &str)> = vec![
        (
            Faults {
                error_rate: 1.0,
                error_status: 503,
                ..Faults::default()
            },
            None,
            "http_5xx",
        ),
        (
            Faults {
                error_rate: 1.0,
                error_status: 429,
                ..Faults::default()
            },
            None,
            "http_4xx",
        ),
        (
            Faults {
                reset_rate: 1.0,
                ..Faults::default()
            },
            None,
            "connect",
        ),
        (
            Faults {
                cut_rate: 1.0,
                cut_after_tokens: 2,
                ..Faults::default()
            },
            None,
            "broken_stream",
        ),
        (
            Faults {
                malformed_rate: 1.0,
                ..Faults::default()
            },
            None,
            "bad_body",
        ),
        (
            Faults {
                stall_rate: 1.0,
                stall_ms: 2000,
                stall_after_tokens: 1,
                ..Faults::default()
            },
            Some(Duration::from_millis(300)),
            "timeout",
        ),
    ];
    // Both HTTP clients classify alike.
    let clients = [HttpClient::Auto, HttpClient::Reqwest];
    for ((faults, gap, want), http) in cases
        .into_iter()
        .flat_map(|c| clients.map(|h| (c.clone(), h)))
    {
        let s = sim("instant", 1.0, faults).await;
        let sub = dir.path().join(format!("{want}-{http:?}"));
        let mut c = config(vec![s.base_url()], &sub, None);
        c.http = http;
        if let Some(g) = gap {
            c.timeouts.gap = g;
        }
        let (summary, rows) = go(
            c,
            Pacing::Closed {
                users: vec![1],
                step_duration: None,
                requests_per_step: Some(2),
                think: Duration::ZERO,
                requests: vec![one(0)],
            },
        )
        .await;
        assert_eq!(rows.len(), 2, "{want}");
        for r in &rows {
            assert_eq!(
                r.error_kind.as_deref(),
                Some(want),
                "{want} ({http:?}): {:?}",
                r.error
            );
            assert!(r.error.as_ref().is_some_and(|e| !e.is_empty()));
        }
        assert_eq!(summary.overall.errors.get(want), Some(&2));
    }
    // A dead target.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    for http in clients {
        let mut c = config(
            vec![dead.clone()],
            &dir.path().join(format!("dead-{http:?}")),
            None,
        );
        c.http = http;
        let (_, rows) = go(
            c,
            Pacing::Closed {
                users: vec![1],
                step_duration: None,
                requests_per_step: Some(1),
                think: Duration::ZERO,
                requests: vec![one(0)],
            },
        )
        .await;
        assert_eq!(
            (rows[0].error_kind.as_deref(), rows[0].status),
            (Some("connect"), Some(0))
        );
        assert!(
            rows[0].error.as_ref().unwrap().contains("127.0.0.1"),
            "{:?}",
            rows[0].error
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_ramp_stops_when_ttft_crosses_the_limit() {
    let s = sim("llama-8b-h100", 10.0, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(vec![s.base_url()], dir.path(), None);
    c.stop_rule = StopRule {
        max_error_rate: None,
        max_p99_ttft_ms: Some(5.0),
    };
    let mut r = TraceRecord::new("x", Timestamp(0));
    r.input_tokens = Some(2000);
    r.output_tokens = Some(4);
    let pacing = Pacing::Closed {
        users: vec![1, 8, 32],
        step_duration: None,
        requests_per_step: Some(16),
        think: Duration::ZERO,
        requests: vec![r],
    };
    let (summary, rows) = go(c, pacing).await;
    assert!(summary.stopped_early.is_some(), "{:?}", summary.phases);
    let phases: std::collections::BTreeSet<_> = rows.iter().map(|r| r.phase.clone()).collect();
    assert!(!phases.contains("concurrency=32"), "{phases:?}");
    assert_eq!(
        rows.iter().filter(|r| r.phase == "concurrency=1").count(),
        16
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_run_keeps_every_sent_request_and_marks_the_run_incomplete() {
    let s = sim("instant", 1.0, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let t = trace(400, 10); // 4 s of trace
    let plan = trace_plan(&t, &TraceWindow::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let summary = run(
        config(vec![s.base_url()], dir.path(), None),
        Pacing::Open(plan.into()),
        stop,
        progress.clone(),
    )
    .await
    .unwrap();
    stopper.await.unwrap();
    assert!(!summary.complete);
    let rows = DatasetReader::<ResultRecord>::open(&summary.requests_file)
        .unwrap()
        .read_all()
        .unwrap();
    let sent = progress.sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!((40..=100).contains(&rows.len()), "{}", rows.len());
    assert_eq!(rows.len() as u64, sent);
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run.json")).unwrap())
            .unwrap();
    assert_eq!(run_json["complete"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_mid_run_is_recorded_and_its_effect_shows() {
    let s = sim("instant", 1.0, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(vec![s.base_url()], dir.path(), None);
    c.events = vec![
        reprise_replay::events::RunEvent::parse_http(
            r#"0.5=POST {target}/admin/reload {"seconds": 0.6}"#,
            &s.base_url(),
        )
        .unwrap(),
    ];
    let plan = fixed_plan(40.0, 2, 10, 2);
    let (summary, rows) = go(c, Pacing::Open(plan.into())).await;
    assert_eq!(summary.events.len(), 1);
    let e = &summary.events[0];
    assert!(e.ok && e.detail == "HTTP 200", "{e:?}");
    assert_eq!(s.metrics().faults_of("reload"), 1);
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("events.json")).unwrap())
            .unwrap();
    assert_eq!(
        recorded[0]["action"],
        format!("POST {}/admin/reload", s.base_url())
    );
    // Requests scheduled early in the pause wait for it; those long before it do not.
    let t0 = rows.iter().map(|r| r.scheduled.0).min().unwrap();
    let at = |from_ms: i64, to_ms: i64| {
        rows.iter()
            .filter(move |r| (from_ms..to_ms).contains(&((r.scheduled.0 - t0) / 1_000_000)))
    };
    assert!(at(0, 400).all(|r| r.ttft_sched_us.unwrap() < 200_000));
    assert!(
        at(550, 700).all(|r| r.ttft_sched_us.unwrap() > 300_000),
        "{:?}",
        at(550, 700).map(|r| r.ttft_sched_us).collect::<Vec<_>>()
    );
}

/// Reads one HTTP request (head and `content-length` body); `false` at end of stream.
async fn read_request(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            return false;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_closed_before_the_response_is_retried_once() {
    // Like llama.cpp's server: a stream's connection is kept alive by the headers but
    // closed as soon as the next request arrives on it.
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                if !read_request(&mut s).await {
                    return;
                }
                let body = "data: {\"choices\":[{\"index\":0,\"text\":\" the\"}]}\n\n\
                    data: {\"choices\":[{\"index\":0,\"text\":\" of\"}]}\n\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2,\"total_tokens\":10}}\n\n\
                    data: [DONE]\n\n";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nkeep-alive: timeout=5, max=100\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
                // The next request on this connection gets no answer.
                let _ = read_request(&mut s).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut request = TraceRecord::new("k".to_owned(), Timestamp(0));
    request.input_tokens = Some(8);
    request.output_tokens = Some(2);
    let (summary, rows) = go(
        config(vec![base], dir.path(), None),
        Pacing::Closed {
            users: vec![1],
            step_duration: None,
            requests_per_step: Some(5),
            think: Duration::ZERO,
            requests: vec![request],
        },
    )
    .await;
    assert_eq!(rows.len(), 5);
    for r in &rows {
        assert_eq!(
            (r.status, r.error_kind.as_deref()),
            (Some(200), None),
            "{:?}",
            r.error
        );
        assert_eq!(r.n_out_usage, Some(2));
    }
    assert_eq!(summary.overall.ok, 5);
    // Every request after the first tried the dead connection, then a fresh one.
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::Relaxed),
        5,
        "one fresh connection per request"
    );
}
