//! What the capture proxy costs, measured side by side with direct traffic to the same
//! upstream in the same run: a no-op streaming server in a child process (16 SSE events per
//! response, each stamped with its send time on the wall clock), the proxy in this process on
//! a runtime of its own, and a hyper client.
//!
//! - added TTFT: first-event latency through the proxy minus direct (p50, p99), sequential
//!   requests with the upstream pacing its events 1 ms apart;
//! - added per-chunk delay: (receive − send) of every event through the proxy minus direct;
//! - throughput: closed loop, 32 connections, responses sent at once: req/s through the proxy
//!   against direct.
//!
//! The proxy users already trust is measured beside it when `nginx` is installed (Debian's
//! `nginx-light`; `scripts/setup-bench-packages` installs the pinned version): one worker, a
//! plain reverse proxy to the same upstream with `proxy_buffering off` and kept-alive upstream
//! connections, the same client.
//!
//! Run: `cargo bench -p reprise-record --bench proxy` (`BENCH_TTFT_ROUNDS=N` repeats the TTFT
//! phase, 10 rounds of 1,000 streams per side by default, each round started by the next side
//! in turn, to profile the `reprise-proxy` thread or steady its p99; `BENCH_ONLY_TTFT=1` runs the other phases once and briefly;
//! `BENCH_EVENT_ROUNDS=N` sets the per-event phase's rounds, 10 of 60 streams per side, started
//! in turn the same way;
//! `BENCH_SAMPLE=0.000001` records almost nothing: the forwarding path alone;
//! `BENCH_WORKERS_PRIORITY=idle` runs the observation workers idle-class rather than at nice 10).

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use reprise_record::salt::Salt;
use reprise_record::{RecordConfig, Recorder};

use reprise_stub::sse::wall_ns;

/// The allocator of the `reprise` binary, so that the proxy here allocates as it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: &str) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// One request: TTFT (µs) and each event's receive − send (µs).
async fn one(sender: &mut Sender, addr: &str, path: &str) -> (f64, Vec<f64>) {
    let req = hyper::Request::post(path)
        .header("host", addr)
        .body(Empty::<Bytes>::new())
        .expect("request");
    sender.ready().await.expect("ready");
    let start = Instant::now();
    let resp = sender.send_request(req).await.expect("response");
    let mut body = resp.into_body();
    let mut ttft = None;
    let mut delays = Vec::new();
    while let Some(frame) = body.frame().await {
        let now = wall_ns();
        let Ok(data) = frame.expect("frame").into_data() else {
            continue;
        };
        ttft.get_or_insert(start.elapsed());
        let text = String::from_utf8_lossy(&data);
        for sent in reprise_stub::sse::sent_stamps(&text) {
            delays.push(now.saturating_sub(sent) as f64 / 1000.0);
        }
    }
    (ttft.expect("data").as_secs_f64() * 1e6, delays)
}

/// Nanoseconds a thread has run on a CPU (`schedstat`'s first field: exact, where
/// `utime` counts 10 ms ticks).
fn cpu_ns(schedstat: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(schedstat)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `file` of every thread of this process whose name starts with `prefix`.
fn threads_files(prefix: &str, file: &str) -> Vec<std::path::PathBuf> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            comm.starts_with(prefix).then(|| dir.join(file))
        })
        .collect()
}

/// Minor page faults of all of `stats` together (`None` if there are none or one cannot be
/// read).
fn threads_faults(stats: &[std::path::PathBuf]) -> Option<u64> {
    (!stats.is_empty()).then(|| stats.iter().map(|s| thread_faults(s)).sum())?
}

/// CPU time of all of `schedstats` together, ns (`None` if there are none or one cannot be
/// read).
fn threads_cpu_ns(schedstats: &[std::path::PathBuf]) -> Option<u64> {
    (!schedstats.is_empty()).then(|| schedstats.iter().map(|s| cpu_ns(s)).sum())?
}

/// What a counter read `before` and `after` a phase grew by.
fn grown(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// Minor page faults a thread has taken, from its `stat` file (field 10).
fn thread_faults(stat: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The fields after the command name, which may hold spaces, start after its ')'.
    text.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(7)?
        .parse()
        .ok()
}

/// One way to the upstream and what was measured through it.
struct Side {
    name: &'static str,
    addr: String,
    /// Where the proxy's CPU time is read (none for direct traffic).
    schedstat: Option<std::path::PathBuf>,
    /// CPU time of the proxy in the TTFT phase, ns, and requests in it.
    cpu: (u64, usize),
    ttft: Vec<f64>,
    delay: Vec<f64>,
    rate: Vec<f64>,
}

impl Side {
    fn new(name: &'static str, addr: &str) -> Side {
        Side {
            name,
            addr: addr.to_owned(),
            schedstat: None,
            cpu: (0, 0),
            ttft: Vec::new(),
            delay: Vec::new(),
            rate: Vec::new(),
        }
    }

    /// TTFT p50, p99, delay p50, p99, mean req/s.
    fn stats(&mut self) -> [f64; 5] {
        [
            pct(&mut self.ttft, 0.5),
            pct(&mut self.ttft, 0.99),
            pct(&mut self.delay, 0.5),
            pct(&mut self.delay, 0.99),
            self.rate.iter().sum::<f64>() / self.rate.len() as f64,
        ]
    }
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// `n` requests one after another on one connection: their TTFTs and event delays.
async fn latency(addr: &str, path: &str, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut sender = connect(addr).await;
    let (mut ttfts, mut delays) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (t, d) = one(&mut sender, addr, path).await;
        ttfts.push(t);
        delays.extend(d);
    }
    (ttfts, delays)
}

async fn throughput(addr: &str, conns: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (stop, count, addr) = (stop.clone(), count.clone(), addr.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&addr).await;
            while !stop.load(Ordering::Relaxed) {
                one(&mut sender, &addr, "/v1/chat/completions").await;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / secs
}

/// nginx as a plain streaming reverse proxy to `upstream` (one worker, upstream
/// keep-alive, no buffering), in `dir`; its address. `None` when nginx is not installed.
fn start_nginx(dir: &std::path::Path, upstream: &str) -> Option<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream up {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
         proxy_pass http://up;\n      proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = format!("127.0.0.1:{port}");
    // Up when it accepts connections (a second at most).
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return Some((child, addr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn main() {
    if std::env::args().any(|a| a == "--serve") {
        reprise_stub::sse::serve_forever(reprise_stub::sse::Style::ChatStamped);
        return;
    }
    // As `reprise record` does.
    reprise_os::keep_freed_memory();
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .arg("--serve")
        // The upstream ends when this pipe does (`serve_forever`): with this process.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("upstream");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let upstream = line.trim().to_owned();

    // The proxy on a thread and runtime of its own.
    let dir = tempfile::tempdir().expect("dir");
    let config = RecordConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        format!("http://{upstream}"),
        dir.path().join("capture"),
        Salt::from_bytes(b"bench"),
    );
    // `BENCH_SAMPLE=F` records that fraction of the exchanges (in (0, 1]): a tiny one
    // measures the forwarding path alone.
    let mut config = config;
    if let Some(f) = std::env::var("BENCH_SAMPLE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        config.sample = f;
    }
    // `BENCH_WORKERS_PRIORITY=idle` runs the observation workers idle-class (`reprise record
    // --workers-priority idle`) rather than at nice 10.
    if std::env::var("BENCH_WORKERS_PRIORITY").as_deref() == Ok("idle") {
        config.worker_priority = reprise_record::Priority::Idle;
    }
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy_thread = std::thread::Builder::new()
        .name("reprise-proxy".into())
        .spawn(move || {
            let rt = if std::env::var_os("BENCH_MT").is_some() {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            }
            .expect("runtime");
            rt.block_on(async move {
                let recorder = Recorder::start(config).await.expect("proxy");
                addr_tx.send(recorder.addr()).expect("address");
                let _ = stop_rx.await;
                let counters = recorder.counters().clone();
                let summary = recorder.shutdown().await;
                let backlog = counters.backlog.load(Ordering::Relaxed);
                (summary, backlog)
            })
        })
        .expect("proxy thread");
    let proxy = addr_rx.recv().expect("proxy address").to_string();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "# capture proxy overhead (2-core machine; upstream in a child process, proxy on 1 thread ({}), nginx 1 worker, client on 1 thread)\n",
        if std::env::var_os("BENCH_MT").is_some() {
            "tokio multi-thread, 1 worker"
        } else {
            "tokio current-thread"
        }
    );
    let nginx = start_nginx(dir.path(), &upstream);
    let mut sides = vec![
        Side::new("direct", &upstream),
        Side::new("reprise record", &proxy),
    ];
    sides[1].schedstat = threads_files("reprise-proxy", "schedstat").pop();
    let forwarding = threads_files("reprise-proxy", "stat");
    let faults_before = threads_faults(&forwarding);
    // The recording threads: "reprise-record-obs<i>" and "reprise-record-writer".
    let recording = threads_files("reprise-record", "stat");
    let recording_before = threads_faults(&recording);
    let recording_cpu = threads_files("reprise-record", "schedstat");
    let recording_cpu_before = threads_cpu_ns(&recording_cpu);
    if let Some((child, addr)) = &nginx {
        let mut side = Side::new("nginx", addr);
        // One worker, no master: the process is the worker.
        side.schedstat = Some(format!("/proc/{}/schedstat", child.id()).into());
        sides.push(side);
    }
    // Interleaved rounds, so that every side sees the same machine.
    // TTFT: unpaced streams one after another (the first event comes with the head).
    // `BENCH_TTFT_ROUNDS` (10) repeats this phase, for profiling one side's thread.
    let ttft_rounds = std::env::var("BENCH_TTFT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // Each round starts with the next side, so that no side always follows the proxy (whose
    // recording of its round's last 50 ms runs on into the next side's round). Rounds stay
    // long beside that: 1,000 streams, ~0.25 s.
    let k = sides.len();
    for r in 0..ttft_rounds {
        for j in 0..k {
            let side = &mut sides[(r + j) % k];
            let before = side.schedstat.as_deref().and_then(cpu_ns);
            let (t, _) = rt.block_on(latency(&side.addr, "/v1/chat/completions", 1000));
            let after = side.schedstat.as_deref().and_then(cpu_ns);
            if let (Some(a), Some(b)) = (before, after) {
                side.cpu.0 += b.saturating_sub(a);
                side.cpu.1 += t.len();
            }
            side.ttft.extend(t);
        }
    }
    let faults = grown(faults_before, threads_faults(&forwarding));
    let recording_cpu_used = grown(recording_cpu_before, threads_cpu_ns(&recording_cpu));
    let recording_faults = grown(recording_before, threads_faults(&recording));
    // `BENCH_ONLY_TTFT`: the other phases once and short (for repeated TTFT runs).
    let short = std::env::var_os("BENCH_ONLY_TTFT").is_some();
    // Per-event delay: streams whose events come 1 ms apart, 60 streams (~1 s) a side a round,
    // each round started by the next side in turn as above (`BENCH_EVENT_ROUNDS`, 10).
    let event_rounds = if short {
        1
    } else {
        std::env::var("BENCH_EVENT_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10)
    };
    for r in 0..event_rounds {
        for j in 0..k {
            let side = &mut sides[(r + j) % k];
            let (_, d) = rt.block_on(latency(&side.addr, "/paced/v1/chat/completions", 60));
            side.delay.extend(d);
        }
    }
    // Throughput: closed loop, 32 connections, responses sent at once.
    for _ in 0..(if short { 1 } else { 3 }) {
        for side in &mut sides {
            let secs = if short { 0.1 } else { 1.5 };
            side.rate
                .push(rt.block_on(throughput(&side.addr, 32, secs)));
        }
    }
    let stats: Vec<[f64; 5]> = sides.iter_mut().map(Side::stats).collect();
    let d = stats[0];
    println!(
        "| {} sequential streams for TTFT, {} paced events; 3 × 1.5 s closed loop, 32 connections | {} |",
        sides[0].ttft.len(),
        sides[0].delay.len(),
        sides.iter().map(|s| s.name).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---:|".repeat(sides.len()));
    let names = [
        "TTFT p50 (µs)",
        "TTFT p99 (µs)",
        "per-event delay p50 (µs)",
        "per-event delay p99 (µs)",
        "req/s (mean of rounds)",
    ];
    for (i, name) in names.iter().enumerate() {
        let cells: Vec<String> = stats.iter().map(|s| format!("{:.0}", s[i])).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    let p = stats[1];
    println!("\n| reprise record | added over direct | target |\n|---|---:|---|");
    println!(
        "| TTFT p50 / p99 | {:.0} / {:.0} µs | |",
        p[0] - d[0],
        p[1] - d[1]
    );
    println!(
        "| per-event delay p50 / p99 | {:.0} / {:.0} µs | |",
        p[2] - d[2],
        p[3] - d[3]
    );
    if let Some(n) = stats.get(2) {
        let ratio = |i: usize| (p[i] - d[i]) / (n[i] - d[i]);
        println!(
            "\n| reprise record / nginx | ratio | target |\n|---|---:|---|\n\
             | added TTFT p50 | {:.2} | ≤ 1.2 |\n| added TTFT p99 | {:.2} | ≤ 1.2 |\n\
             | added per-event delay p99 | {:.2} | ≤ 1.2 |\n| throughput | {:.2} | ≥ 0.80 |",
            ratio(0),
            ratio(1),
            ratio(3),
            p[4] / n[4]
        );
        // What the added TTFT is made of: the proxy's own CPU time on the request's path.
        let per_request = |s: &Side| (s.cpu.1 > 0).then(|| s.cpu.0 as f64 / s.cpu.1 as f64 / 1e3);
        if let (Some(r), Some(x)) = (per_request(&sides[1]), per_request(&sides[2])) {
            println!(
                "| proxy CPU per sequential request (TTFT phase, µs) | {r:.1} vs {x:.1}: {:.2} | |",
                r / x
            );
        }
        if let Some(f) = faults {
            println!(
                "| forwarding thread's page faults (TTFT phase) | {f} in {} requests | |",
                sides[1].ttft.len()
            );
        }
        if let Some(ns) = recording_cpu_used {
            // Rows of the phase's last 50 ms are observed after it: a slight undercount.
            println!(
                "| recording threads' CPU per row (TTFT phase, µs) | {:.1} | |",
                ns as f64 / sides[1].ttft.len().max(1) as f64 / 1e3
            );
        }
        if let Some(f) = recording_faults {
            println!(
                "| recording threads' page faults (TTFT phase, {} threads) | {f} | |",
                recording.len()
            );
        }
        println!(
            "(nginx added: TTFT {:.0} / {:.0} µs, per-event delay {:.0} / {:.0} µs)",
            n[0] - d[0],
            n[1] - d[1],
            n[2] - d[2],
            n[3] - d[3]
        );
    } else {
        println!("\nnginx not installed (Debian: nginx-light): no baseline proxy in this run");
    }
    println!("proxy / direct throughput: {:.2}", p[4] / d[4]);
    if let Some((mut child, _)) = nginx {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = stop_tx.send(());
    let (summary, backlog) = proxy_thread.join().expect("proxy thread");
    println!(
        "rows recorded: {}, lost: {}, written without tokenizing (workers behind): {backlog}",
        summary.recorded, summary.lost
    );
    let _ = child.kill();
    let _ = child.wait();
}
