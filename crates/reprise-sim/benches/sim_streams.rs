//! How many concurrent streams and streamed tokens/s the simulator sustains on one core,
//! against a no-op SSE server (no engine, no tokenizer) on the same core, same client.
//!
//! Run: `cargo bench -p reprise-sim --bench sim_streams`. The server side (tokio runtime
//! and engine thread) is pinned to CPU 0 and the load client, a child process, to CPU 1
//! (with `taskset`, when present). Streams: `REPRISE_BENCH_STREAMS` (default 10,000),
//! tokens per stream: `REPRISE_BENCH_TOKENS` (default 100).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reprise_sim::{Profile, SimConfig, SimServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

// ---------- the no-op baseline server ----------

async fn noop_server(tokens: u32) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let options = reprise_stub::sse::Options {
        style: reprise_stub::sse::Style::Completion,
        events: tokens,
        split: true,
    };
    tokio::spawn(reprise_stub::sse::serve(listener, options));
    addr
}

// ---------- the load client (child process) ----------

struct ClientReport {
    ok: u64,
    failed: u64,
    tokens: u64,
    secs: f64,
    concurrent: u64,
}

async fn stream_one(
    addr: String,
    request: Arc<Vec<u8>>,
    first_done: Arc<AtomicU64>,
    started_before_first_done: Arc<AtomicU64>,
    epoch: Instant,
    first_token_ns: Arc<AtomicU64>,
) -> Result<u64, String> {
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).ok();
    s.write_all(&request).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 8192];
    let mut events = 0u64;
    let mut tail: Vec<u8> = Vec::new();
    let mut seen_first = false;
    loop {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before [DONE]".into());
        }
        let mut hay = std::mem::take(&mut tail);
        hay.extend_from_slice(&buf[..n]);
        events += hay.windows(6).filter(|w| w == b"data: ").count() as u64;
        if !seen_first && events > 0 {
            seen_first = true;
            first_token_ns.fetch_min(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if first_done.load(Ordering::Relaxed) == 0 {
                started_before_first_done.fetch_add(1, Ordering::Relaxed);
            }
        }
        if hay.windows(12).any(|w| w == b"data: [DONE]") {
            first_done.store(1, Ordering::Relaxed);
            return Ok(events.saturating_sub(2));
        }
        let keep = hay.len().min(11);
        tail = hay[hay.len() - keep..].to_vec();
        // Avoid double counting a "data: " that straddles the kept tail.
        events -= tail.windows(6).filter(|w| w == b"data: ").count() as u64;
    }
}

fn client(addr: &str, streams: usize, tokens: u32, model: &str) -> ClientReport {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let body = format!(r#"{{"model":"{model}","prompt":"hi","max_tokens":{tokens},"ignore_eos":true,"stream":true}}"#);
        let request = Arc::new(format!(
            "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ).into_bytes());
        let first_done = Arc::new(AtomicU64::new(0));
        let concurrent = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let first_token = Arc::new(AtomicU64::new(u64::MAX));
        let mut tasks = Vec::with_capacity(streams);
        for _ in 0..streams {
            tasks.push(tokio::spawn(stream_one(
                addr.to_owned(),
                request.clone(),
                first_done.clone(),
                concurrent.clone(),
                start,
                first_token.clone(),
            )));
        }
        let (mut ok, mut failed, mut total) = (0, 0, 0);
        for t in tasks {
            match t.await {
                Ok(Ok(n)) if n == u64::from(tokens) => {
                    ok += 1;
                    total += n;
                }
                _ => failed += 1,
            }
        }
        // Streaming time: from the first token anywhere to the last [DONE].
        let first = Duration::from_nanos(first_token.load(Ordering::Relaxed).min(start.elapsed().as_nanos() as u64));
        let secs = (start.elapsed() - first).as_secs_f64();
        ClientReport { ok, failed, tokens: total, secs, concurrent: concurrent.load(Ordering::Relaxed) }
    })
}

fn run_client(
    addr: SocketAddr,
    streams: usize,
    tokens: u32,
    model: &str,
    pinned: bool,
) -> ClientReport {
    let exe = std::env::current_exe().expect("exe");
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let out = cmd
        .args([
            "--client",
            &addr.to_string(),
            &streams.to_string(),
            &tokens.to_string(),
            model,
        ])
        .output()
        .expect("client runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(
        v.len(),
        5,
        "client output: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ClientReport {
        ok: v[0] as u64,
        failed: v[1] as u64,
        tokens: v[2] as u64,
        secs: v[3],
        concurrent: v[4] as u64,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        let r = client(
            &args[i + 1],
            args[i + 2].parse().expect("streams"),
            args[i + 3].parse().expect("tokens"),
            &args[i + 4],
        );
        println!(
            "{} {} {} {} {}",
            r.ok, r.failed, r.tokens, r.secs, r.concurrent
        );
        return;
    }
    let streams = env_usize("REPRISE_BENCH_STREAMS", 10_000);
    let tokens = env_usize("REPRISE_BENCH_TOKENS", 100) as u32;
    // Pin this process (and the threads it starts from now on) to CPU 0.
    let pinned = Command::new("taskset")
        .args(["-p", "-c", "0", &std::process::id().to_string()])
        .output()
        .is_ok_and(|o| o.status.success());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let peak_rss = Arc::new(AtomicU64::new(0));
    {
        let peak = peak_rss.clone();
        std::thread::spawn(move || {
            loop {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
    let rt_thread = std::thread::spawn(move || {
        rt.block_on(async move {
            let noop = noop_server(tokens).await;
            let mut profile = Profile::named("instant").expect("built-in");
            profile.model = "m".into();
            let sim = SimServer::start(SimConfig::new(profile))
                .await
                .expect("sim");
            let _ = ADDRS.set((noop, sim.addr()));
            std::future::pending::<()>().await;
        });
    });
    let _ = rt_thread;
    let (noop, sim) = find_servers();
    let base_rss = peak_rss.load(Ordering::Relaxed);
    println!(
        "sim streams benchmark: {streams} concurrent streams x {tokens} tokens, server pinned to one core: {pinned}"
    );
    let b = run_client(noop, streams, tokens, "m", pinned);
    let rss_after_noop = peak_rss.load(Ordering::Relaxed);
    // Hold the engine (a simulated reload) while the client connects, so that every stream
    // is admitted in the same step and all of them stream at once.
    let pause = format!("{}", (streams as f64 / 2000.0).max(2.0));
    let reload = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-d",
            &format!("{{\"seconds\": {pause}}}"),
            &format!("http://{sim}/admin/reload"),
        ])
        .status()
        .is_ok_and(|st| st.success());
    let s = run_client(sim, streams, tokens, "m", pinned);
    let rss_after_sim = peak_rss.load(Ordering::Relaxed);
    println!("| server | streams ok | failed | concurrent at peak | tokens/s | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| no-op SSE (baseline) | {} | {} | {} | {:.0} | {:.0} |",
        b.ok,
        b.failed,
        b.concurrent,
        b.tokens as f64 / b.secs,
        rss_after_noop as f64 / 1024.0
    );
    println!(
        "| reprise sim, instant profile | {} | {} | {} | {:.0} | {:.0} |",
        s.ok,
        s.failed,
        s.concurrent,
        s.tokens as f64 / s.secs,
        rss_after_sim as f64 / 1024.0
    );
    println!(
        "sim / baseline tokens/s: {:.2} (RSS before load {:.0} MiB; engine held {pause} s while connecting: {reload})",
        (s.tokens as f64 / s.secs) / (b.tokens as f64 / b.secs),
        base_rss as f64 / 1024.0
    );
}

/// The two servers' addresses, published by the runtime thread through this global.
static ADDRS: std::sync::OnceLock<(SocketAddr, SocketAddr)> = std::sync::OnceLock::new();

fn find_servers() -> (SocketAddr, SocketAddr) {
    for _ in 0..100 {
        if let Some(a) = ADDRS.get() {
            return *a;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("servers did not start");
}
