//! The replayer's own limits on this machine, against a no-op streaming server (16-token SSE
//! responses) in a child process pinned to CPU 1 (when `taskset` exists), each figure beside
//! a baseline measured in the same run:
//!
//! - pacing: `queue = sent − scheduled` percentiles of open-loop fixed-rate runs at 1,000 and
//!   10,000 req/s, against the bare pacer (the same deadline waits, nothing sent);
//! - the highest open-loop rate held with `queue` p99 ≤ 1 ms (rates tried in steps);
//! - concurrency: streams held open at once (the server holds each for a few seconds) and
//!   the replayer's peak RSS, against its RSS before the run;
//! - client-added TTFT: replay's median TTFT against a bare hyper client's on the same server;
//! - SSE parsing: events/s of `SseParser` on one core, against a plain scan for event ends;
//! - live metrics: the replayer's CPU at 5,000 req/s with `/metrics` scraped once a second,
//!   and by 100 scrapers a second, against the same run without metrics;
//! - with `--soak SECONDS`: RSS after 1 minute and at the end of constant load.
//!
//! Run: `cargo bench -p reprise-replay --bench pacing [-- --only pacing|max-rate|ttft|concurrency|sse|metrics]`
//! (`--client lean|reqwest` for one HTTP client; both by default, reqwest as the baseline)
//! or `[-- --soak 600]`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use reprise_protocol::openai::Api;
use reprise_protocol::sse::SseParser;
use reprise_replay::client::{Backend, RequestShape};
use reprise_replay::pace::Pacer;
use reprise_replay::prompt::PromptBuilder;
use reprise_replay::workload::{Process, RatePlan, RateStep, Sizes};
use reprise_replay::{HttpClient, Pacing, Progress, ReplayConfig, RunSummary, run};

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// CPU seconds (user + system, all threads) the process `pid` has used (`/proc`, 100 ticks
/// a second).
fn cpu_secs(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised name: state is the 3rd, utime the 14th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn shape() -> RequestShape {
    RequestShape {
        api: Api::Completions,
        backend: Backend::Vllm,
        model: "m".into(),
        stream: true,
    }
}

fn config(target: &str, dir: &std::path::Path, http: HttpClient) -> ReplayConfig {
    ReplayConfig {
        shape: shape(),
        prompts: PromptBuilder::new(None, 0),
        run_id: "bench".into(),
        drain: Duration::from_secs(10),
        // The server has the other core.
        senders: 1,
        http,
        ..ReplayConfig::new(vec![target.to_owned()], "m", dir)
    }
}

/// Evenly spaced 16-in/16-out requests at `rate` for `secs`, drawn as the run goes (as
/// `reprise replay --rate` does: the plan takes no memory).
fn fixed_rate(rate: f64, secs: f64) -> RatePlan {
    let steps = vec![RateStep {
        rate,
        duration: Duration::from_secs_f64(secs),
        label: "measure".into(),
    }];
    let sizes = Sizes::Fixed {
        input: 16,
        output: 16,
    };
    RatePlan::new(steps, Process::Fixed, sizes, 0).expect("plan")
}

/// An open-loop fixed-rate replay of 16-in/16-out requests.
fn replay(
    rt: &tokio::runtime::Runtime,
    target: &str,
    rate: f64,
    secs: f64,
    progress: Arc<Progress>,
    http: HttpClient,
) -> RunSummary {
    let plan = fixed_rate(rate, secs);
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(run(
        config(target, dir.path(), http),
        Pacing::Open(plan.into()),
        Arc::new(AtomicBool::new(false)),
        progress,
    ))
    .expect("run")
}

/// Lateness of the bare pacer — the replay's own wait (`Pacer::until`) on a runtime of its
/// own, nothing sent — at `rate` for `secs`, µs, sorted.
fn bare_pacer(rate: f64, secs: f64) -> Vec<f64> {
    let n = (rate * secs) as usize;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut lateness = rt.block_on(async move {
        let mut lateness = Vec::with_capacity(n);
        let mut pacer = Pacer::new();
        for i in 0..n {
            let deadline = t0 + Duration::from_secs_f64(i as f64 / rate);
            pacer.until(deadline).await;
            lateness.push((Instant::now() - deadline).as_secs_f64() * 1e6);
        }
        lateness
    });
    lateness.sort_by(f64::total_cmp);
    lateness
}

fn pacing(rt: &tokio::runtime::Runtime, base: &str) {
    println!("\n## Pacing: open loop, fixed rate, 16-token streams\n");
    println!(
        "| rate req/s | client | requests ok | bare pacer lateness p50/p99/p99.9 µs | replay queue p50/p99/p99.9 µs |"
    );
    println!("|---:|---|---:|---|---|");
    let runs = [(1_000.0, 3.0), (10_000.0, 2.0)]
        .into_iter()
        .flat_map(|(rate, secs)| clients().into_iter().map(move |h| (rate, secs, h)));
    for (rate, secs, http) in runs {
        std::thread::sleep(Duration::from_secs(1));
        let lateness = bare_pacer(rate, secs);
        let summary = replay(rt, base, rate, secs, Arc::default(), http);
        let q = summary.overall.queue_ms.expect("queue figures");
        println!(
            "| {rate:.0} | {} | {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |",
            client_name(http),
            summary.overall.ok,
            percentile(&lateness, 0.5),
            percentile(&lateness, 0.99),
            percentile(&lateness, 0.999),
            q.p50 * 1000.0,
            q.p99 * 1000.0,
            q.p999 * 1000.0
        );
    }
}

fn max_rate(rt: &tokio::runtime::Runtime, base: &str, server_pid: u32) {
    println!("\n## Highest open-loop rate with queue p99 <= 1 ms (2 s per rate)\n");
    println!("CPU per request: the replayer's process (all threads) and the server's.\n");
    println!(
        "| client | rate req/s | ok | achieved req/s | queue p50 / p99 µs | replayer CPU µs/req | server CPU µs/req | held |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---|");
    let server_pid = server_pid.to_string();
    for http in clients() {
        let mut best = 0.0;
        for rate in [
            2_500.0, 5_000.0, 7_500.0, 10_000.0, 12_500.0, 15_000.0, 20_000.0, 25_000.0,
        ] {
            std::thread::sleep(Duration::from_secs(2));
            let (me0, server0) = (cpu_secs("self"), cpu_secs(&server_pid));
            let s = replay(rt, base, rate, 2.0, Arc::default(), http);
            let (me, server) = (cpu_secs("self") - me0, cpu_secs(&server_pid) - server0);
            let q = s.overall.queue_ms.expect("queue figures");
            let held = q.p99 <= 1.0 && s.overall.ok == s.overall.requests;
            let per = |cpu: f64| cpu * 1e6 / s.overall.requests.max(1) as f64;
            println!(
                "| {} | {rate:.0} | {} | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} | {} |",
                client_name(http),
                s.overall.ok,
                s.overall.request_throughput,
                q.p50 * 1000.0,
                q.p99 * 1000.0,
                per(me),
                per(server),
                if held { "yes" } else { "no" }
            );
            if !held {
                break;
            }
            best = rate;
        }
        println!(
            "\nhighest rate held by {}: {best:.0} req/s\n",
            client_name(http)
        );
    }
}

/// `--scrape ADDR N`: every second, `N` scrapers fetch `http://ADDR/metrics` at once and
/// one more reads 1 KiB and drops its connection; until killed. A process of its own, so
/// that the replayer's CPU figure holds the replayer alone.
fn scrape_forever(addr: &str, n: usize) {
    use std::io::{Read, Write};
    loop {
        let started = Instant::now();
        let scrapers: Vec<_> = (0..=n)
            .map(|i| {
                let addr = addr.to_owned();
                std::thread::spawn(move || {
                    let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                        return;
                    };
                    let _ = s.write_all(
                        b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                    );
                    let mut buf = vec![0u8; 1024];
                    if i == n {
                        // Gone mid-response.
                        let _ = s.read(&mut buf);
                        return;
                    }
                    while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
                })
            })
            .collect();
        for s in scrapers {
            let _ = s.join();
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    }
}

/// The cost of serving live metrics: the same 5,000 req/s run without `/metrics`, with a
/// scrape a second, and with 100 scrapers a second (one of them leaving mid-response),
/// interleaved over three rounds (medians reported: this machine is noisy).
fn live_metrics(rt: &tokio::runtime::Runtime, base: &str) {
    let (rate, secs, rounds) = (5_000.0, 4.0, 3);
    println!(
        "\n## Live metrics: /metrics scraped during a {rate:.0} req/s run ({secs} s each, median of {rounds} interleaved rounds)\n"
    );
    let setups = [None, Some(1), Some(100)];
    // Per setup: (CPU s, queue p99 µs, requests ok) of each round.
    let mut results: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(); setups.len()];
    for _ in 0..rounds {
        for (k, scrapers) in setups.iter().enumerate() {
            std::thread::sleep(Duration::from_secs(1));
            let endpoint = scrapers.map(|_| {
                reprise_replay::MetricsEndpoint::bind(
                    "127.0.0.1:0".parse().expect("addr"),
                    Duration::ZERO,
                )
                .expect("metrics port")
            });
            let scraper = match (scrapers, &endpoint) {
                (Some(n), Some(e)) => Some(
                    Command::new(std::env::current_exe().expect("exe"))
                        .args([
                            "--scrape",
                            &e.addr().expect("addr").to_string(),
                            &n.to_string(),
                        ])
                        .spawn()
                        .expect("scraper"),
                ),
                _ => None,
            };
            let plan = fixed_rate(rate, secs);
            let dir = tempfile::tempdir().expect("dir");
            let config = config(base, dir.path(), HttpClient::Auto);
            let pacing = Pacing::Open(plan.into());
            let live = endpoint.map(|e| reprise_replay::LiveRun {
                live: Arc::new(reprise_replay::live::Live::for_run(&config, &pacing)),
                endpoint: Some(e),
            });
            let cpu0 = cpu_secs("self");
            let s = rt
                .block_on(reprise_replay::run_with(
                    config,
                    pacing,
                    Arc::new(AtomicBool::new(false)),
                    Arc::default(),
                    live,
                ))
                .expect("run");
            let cpu = cpu_secs("self") - cpu0;
            if let Some(mut c) = scraper {
                let _ = c.kill();
                let _ = c.wait();
            }
            let q = s.overall.queue_ms.expect("queue figures");
            results[k].push((cpu, q.p99 * 1000.0, s.overall.ok));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // The deterministic part, beside it: what counting one request and rendering one scrape
    // cost on one core.
    let live = Arc::new(reprise_replay::live::Live::new(
        "bench",
        0,
        "m",
        reprise_replay::live::RateProfile::None,
    ));
    let mut observer = live.observer(1.0);
    let sample = reprise_replay::summary::Sample {
        phase: "measure".into(),
        ok: true,
        queue_us: Some(15),
        ttft_us: Some(2_000),
        e2e_us: Some(9_000),
        tpot_us: Some(450),
        itl_us: vec![450; 15],
        n_in: 16,
        n_out: 16,
        ..Default::default()
    };
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        observer.observe(Some(200), std::hint::black_box(&sample));
    }
    let per_request_ns = t.elapsed().as_secs_f64() * 1e9 / f64::from(n);
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..100 {
        bytes = std::hint::black_box(live.render(reprise_live::Format::Prometheus)).len();
    }
    let render_ms = t.elapsed().as_secs_f64() * 1e3 / 100.0;
    let run_cpu_per_request_ns = base_cpu_of(&results[0]) * 1e9 / (rate * secs);
    println!(
        "counting one finished request (16 tokens): {per_request_ns:.0} ns, {:.2}% of the replayer's {:.0} µs of CPU a request; rendering one scrape ({} KiB): {render_ms:.2} ms, {:.2}% of a core at one scrape a second\n",
        per_request_ns / run_cpu_per_request_ns * 100.0,
        run_cpu_per_request_ns / 1e3,
        bytes / 1024,
        render_ms / 10.0
    );
    println!(
        "| scrapers a second | requests ok (each run) | replayer CPU s | CPU vs no metrics | queue p99 µs |"
    );
    println!("|---|---:|---:|---:|---:|");
    let base_cpu = median(results[0].iter().map(|r| r.0).collect());
    for (scrapers, runs) in setups.iter().zip(&results) {
        let cpu = median(runs.iter().map(|r| r.0).collect());
        println!(
            "| {} | {} | {cpu:.2} | {:.3}x | {:.0} |",
            scrapers.map_or("no /metrics".to_owned(), |n| n.to_string()),
            runs.iter().map(|r| r.2).min().unwrap_or(0),
            cpu / base_cpu,
            median(runs.iter().map(|r| r.1).collect())
        );
    }
}

/// Median CPU seconds of a setup's runs.
fn base_cpu_of(runs: &[(f64, f64, u64)]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|r| r.0).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The clients compared (`--client lean|reqwest` for one).
static CLIENTS: std::sync::OnceLock<Vec<HttpClient>> = std::sync::OnceLock::new();

fn clients() -> Vec<HttpClient> {
    CLIENTS
        .get()
        .cloned()
        .unwrap_or_else(|| vec![HttpClient::Reqwest, HttpClient::Auto])
}

fn client_name(http: HttpClient) -> &'static str {
    match http {
        HttpClient::Auto => "lean",
        HttpClient::Reqwest => "reqwest",
    }
}

fn concurrency(rt: &tokio::runtime::Runtime, base: &str) {
    // The hard limit on open files here is 20,000 per process, the sockets included: 19,000
    // streams leave room for the runtime's own descriptors.
    let streams = 19_000.0;
    println!(
        "\n## Concurrency: {streams:.0} streams opened over 2 s, each held {} s\n",
        reprise_stub::sse::HOLD.as_secs()
    );
    let before = rss_kib();
    let progress = Arc::new(Progress::default());
    let peak = Arc::new(AtomicU64::new(0));
    let peak_open = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (progress, peak, peak_open, stop) = (
            progress.clone(),
            peak.clone(),
            peak_open.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                let open = progress.sent.load(Ordering::Relaxed)
                    - progress.finished.load(Ordering::Relaxed);
                peak_open.fetch_max(open, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let s = replay(
        rt,
        &format!("{base}/hold"),
        streams / 2.0,
        2.0,
        progress,
        HttpClient::Auto,
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let (peak, open) = (
        peak.load(Ordering::Relaxed),
        peak_open.load(Ordering::Relaxed),
    );
    println!("| streams ok | peak open at once | RSS before | peak RSS | per open stream |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {open} | {:.0} MiB | {:.0} MiB | {:.1} KiB |",
        s.overall.ok,
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak.saturating_sub(before)) as f64 / open.max(1) as f64
    );
}

/// Median TTFT of a bare hyper client sending the same requests one after another, µs.
fn bare_ttft(rt: &tokio::runtime::Runtime, base: &str, n: usize) -> f64 {
    let addr = base.trim_start_matches("http://").to_owned();
    let body = shape()
        .body(&PromptBuilder::new(None, 0).build("x", 16, None), 16)
        .to_string();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let mut ttft = Vec::with_capacity(n);
        for _ in 0..n {
            let req = hyper::Request::post("/v1/completions")
                .header("host", &addr)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.clone())))
                .expect("request");
            sender.ready().await.expect("ready");
            let sent = Instant::now();
            let resp = sender.send_request(req).await.expect("response");
            let mut body = resp.into_body();
            let mut first = None;
            while let Some(frame) = body.frame().await {
                if frame.expect("frame").is_data() && first.is_none() {
                    first = Some(sent.elapsed());
                }
            }
            ttft.push(first.expect("data").as_secs_f64() * 1e6);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ttft.sort_by(f64::total_cmp);
        percentile(&ttft, 0.5)
    })
}

fn client_ttft(rt: &tokio::runtime::Runtime, base: &str) {
    println!("\n## Client-added TTFT: 1,000 requests at 200 req/s, medians\n");
    let bare = bare_ttft(rt, base, 1_000);
    let s = replay(rt, base, 200.0, 5.0, Arc::default(), HttpClient::Auto);
    let ours = s.overall.ttft_ms.expect("ttft").p50 * 1000.0;
    println!("| bare hyper client | replay | added |");
    println!("|---:|---:|---:|");
    println!("| {bare:.0} µs | {ours:.0} µs | {:.0} µs |", ours - bare);
}

fn sse() {
    let events = 1_000_000;
    let text = reprise_stub::sse::COMPLETION_EVENT.repeat(events);
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
    println!("\n## SSE parsing, {events} events in 1,460-byte chunks, one core\n");
    println!("| | events/s |");
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

fn soak(rt: &tokio::runtime::Runtime, base: &str, secs: f64) {
    println!("\n## Memory under constant load: 1,000 req/s for {secs:.0} s\n");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                samples.push((start.elapsed().as_secs_f64(), rss_kib()));
                std::thread::sleep(Duration::from_millis(200));
            }
            samples
        })
    };
    let s = replay(rt, base, 1_000.0, secs, Arc::default(), HttpClient::Auto);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap_or_default();
    let mib = |k: u64| k as f64 / 1024.0;
    let at = |t: f64| {
        samples
            .iter()
            .find(|(s, _)| *s >= t)
            .or(samples.last())
            .map_or(0, |x| x.1)
    };
    let peak = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(s, _)| (from..to).contains(s))
            .map(|x| x.1)
            .max()
            .unwrap_or(0)
    };
    let end = samples.last().map_or(0, |x| x.1);
    let q = s.overall.queue_ms.expect("queue figures");
    println!(
        "queue p50 / p99 / max: {:.3} / {:.3} / {:.1} ms\n",
        q.p50, q.p99, q.max
    );
    let minutes: Vec<String> = (0..(secs / 60.0).ceil() as usize)
        .map(|m| format!("{:.1}", mib(peak(m as f64 * 60.0, (m + 1) as f64 * 60.0))))
        .collect();
    println!("peak RSS per minute, MiB: {}\n", minutes.join(", "));
    // Result rows are buffered up to a 65,536-row group before they are written, so RSS is
    // a sawtooth of one group's period (65 s at 1,000 req/s): peaks over two-minute windows
    // compare like with like.
    let (early, late) = (peak(60.0, 180.0), peak(secs - 120.0, secs + 1.0));
    println!(
        "| requests ok | RSS at 1 min | RSS at the end | drift | peak, minutes 1-3 | peak, last 2 minutes | drift of peaks |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.1} MiB | {:.1} MiB | {:+.1}% | {:.1} MiB | {:.1} MiB | {:+.1}% |",
        s.overall.ok,
        mib(at(60.0)),
        mib(end),
        (end as f64 / at(60.0).max(1) as f64 - 1.0) * 100.0,
        mib(early),
        mib(late),
        (late as f64 / early.max(1) as f64 - 1.0) * 100.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scrape") {
        scrape_forever(&args[i + 1], args[i + 2].parse().expect("scrapers"));
        return;
    }
    if args.iter().any(|a| a == "--serve") {
        reprise_stub::sse::serve_forever(reprise_stub::sse::Style::Completion);
        return;
    }
    let soak_secs = args
        .iter()
        .position(|a| a == "--soak")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<f64>().ok());
    if let Some(c) = args
        .iter()
        .position(|a| a == "--client")
        .and_then(|i| args.get(i + 1))
    {
        let _ = CLIENTS.set(vec![match c.as_str() {
            "reqwest" => HttpClient::Reqwest,
            _ => HttpClient::Auto,
        }]);
    }
    reprise_replay::raise_open_files_limit();
    let (mut child, base, pinned) = common::start_server();
    println!("# replayer self-benchmark (server pinned to CPU 1: {pinned}), 2-core machine");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if let Some(secs) = soak_secs {
        soak(&rt, &base, secs);
    } else {
        // The highest rate first: a run that falls behind leaves thousands of connections
        // closing (TIME_WAIT) that slow the next one.
        if want("max-rate") {
            max_rate(&rt, &base, child.id());
        }
        if want("pacing") {
            pacing(&rt, &base);
        }
        if want("ttft") {
            client_ttft(&rt, &base);
        }
        if want("concurrency") {
            concurrency(&rt, &base);
        }
        if want("sse") {
            sse();
        }
        if want("metrics") {
            live_metrics(&rt, &base);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
