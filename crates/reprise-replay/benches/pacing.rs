//! The replayer's own limits on this machine, against a no-op streaming server (16-token SSE
//! responses) in a child process pinned to CPU 1 (when `taskset` exists):
//!
//! - pacing: `queue = sent − scheduled` percentiles of open-loop fixed-rate runs at 1,000 and
//!   10,000 req/s, with the bare pacer (deadline sleeps, no HTTP) as the baseline;
//! - SSE parsing: events/s of `SseParser` on one core, against a plain scan for event ends.
//!
//! Run: `cargo bench -p reprise-replay --bench pacing`.

use std::convert::Infallible;
use std::io::BufRead;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use reprise_protocol::openai::Api;
use reprise_protocol::sse::SseParser;
use reprise_replay::client::{Backend, RequestShape, Timeouts};
use reprise_replay::prompt::PromptBuilder;
use reprise_replay::workload::{Process, RateStep, Sizes, rate_plan};
use reprise_replay::{Pacing, Progress, ReplayConfig, StopRule, run};

const EVENT: &str = "data: {\"id\":\"cmpl-0\",\"object\":\"text_completion\",\"created\":0,\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\" the\",\"logprobs\":null,\"finish_reason\":null}]}\n\n";

struct Sixteen(u32);

impl Body for Sixteen {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.0 {
            0 => return Poll::Ready(None),
            1 => Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":16,\"completion_tokens\":16,\"total_tokens\":32}}\n\ndata: [DONE]\n\n"),
            _ => Bytes::from_static(EVENT.as_bytes()),
        };
        self.0 -= 1;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

fn serve() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(hyper::Response::new(Sixteen(17)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--serve") {
        serve();
        return;
    }
    let exe = std::env::current_exe().expect("exe");
    let pinned = Command::new("taskset").arg("-V").output().is_ok();
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let mut child = cmd
        .arg("--serve")
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let base = format!("http://{}", line.trim());

    println!("replayer self-benchmark (server pinned to CPU 1: {pinned}), 2-core machine");
    println!(
        "| rate req/s | requests ok | bare pacer queue p50/p99/p99.9 µs | replay queue p50/p99/p99.9 µs |"
    );
    println!("|---:|---:|---|---|");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (rate, secs) in [(1_000.0, 3.0), (10_000.0, 2.0)] {
        // Baseline: the same deadlines, slept to by the same method, nothing sent.
        let n = (rate * secs) as usize;
        let t0 = Instant::now() + Duration::from_millis(20);
        let mut lateness = Vec::with_capacity(n);
        for i in 0..n {
            let deadline = t0 + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if deadline > now + Duration::from_micros(80) {
                std::thread::sleep(deadline - now - Duration::from_micros(80));
            }
            while Instant::now() < deadline {
                std::hint::spin_loop();
            }
            lateness.push((Instant::now() - deadline).as_secs_f64() * 1e6);
        }
        lateness.sort_by(f64::total_cmp);
        let steps = [RateStep {
            rate,
            duration: Duration::from_secs_f64(secs),
            label: "measure".into(),
        }];
        let plan = rate_plan(
            &steps,
            Process::Fixed,
            &Sizes::Fixed {
                input: 16,
                output: 16,
            },
            0,
        )
        .expect("plan");
        let dir = tempfile::tempdir().expect("dir");
        let config = ReplayConfig {
            targets: vec![base.clone()],
            shape: RequestShape {
                api: Api::Completions,
                backend: Backend::Vllm,
                model: "m".into(),
                stream: true,
            },
            headers: Vec::new(),
            timeouts: Timeouts {
                request: Duration::from_secs(30),
                gap: Duration::from_secs(10),
            },
            max_in_flight: None,
            warmup: 0,
            prompts: PromptBuilder {
                block_tokens: None,
                salt: 0,
            },
            run_dir: dir.path().to_owned(),
            run_id: "bench".into(),
            queue_limit_ms: 1.0,
            stop_rule: StopRule::default(),
            drain: Duration::from_secs(10),
            command: Vec::new(),
            events: Vec::new(),
            prompt_words: None,
        };
        let summary = rt
            .block_on(run(
                config,
                Pacing::Open(plan),
                Arc::new(AtomicBool::new(false)),
                Arc::new(Progress::default()),
            ))
            .expect("run");
        let q = summary.overall.queue_ms.expect("queue figures");
        println!(
            "| {rate:.0} | {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |",
            summary.overall.ok,
            percentile(&lateness, 0.5),
            percentile(&lateness, 0.99),
            percentile(&lateness, 0.999),
            q.p50 * 1000.0,
            q.p99 * 1000.0,
            q.p999 * 1000.0
        );
    }
    let _ = child.kill();
    let _ = child.wait();

    // SSE parsing on one core.
    let events = 1_000_000;
    let text = EVENT.repeat(events);
    let bytes = text.as_bytes();
    let start = Instant::now();
    let mut ends = 0usize;
    for chunk in bytes.chunks(1460) {
        ends += chunk.windows(2).filter(|w| w == b"\n\n").count();
    }
    let scan = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut parser = SseParser::new();
    let mut parsed = 0usize;
    for chunk in bytes.chunks(1460) {
        parser.feed(chunk, |_| parsed += 1).expect("valid");
    }
    let parse = start.elapsed().as_secs_f64();
    assert_eq!(parsed, events);
    println!("\n| SSE, {events} events in 1,460-byte chunks | events/s |");
    println!("|---|---:|");
    println!(
        "| plain scan for event ends (baseline, {ends} found) | {:.0} |",
        events as f64 / scan
    );
    println!(
        "| SseParser (events dispatched with their data) | {:.0} |",
        events as f64 / parse
    );
    println!("SseParser / scan: {:.2}", scan / parse);
}
