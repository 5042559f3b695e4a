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
//! `nginx-light`): one worker, a plain reverse proxy to the same upstream with
//! `proxy_buffering off` and kept-alive upstream connections, the same client.
//!
//! Run: `cargo bench -p reprise-record --bench proxy`.

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
        for part in text.split("\"sent_ns\":").skip(1) {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(sent) = digits.parse::<u64>() {
                delays.push(now.saturating_sub(sent) as f64 / 1000.0);
            }
        }
    }
    (ttft.expect("data").as_secs_f64() * 1e6, delays)
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

async fn latency(addr: &str, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut sender = connect(addr).await;
    let (mut ttfts, mut delays) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (t, d) = one(&mut sender, addr, "/paced/v1/chat/completions").await;
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
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .arg("--serve")
        .stdout(Stdio::piped())
        .spawn()
        .expect("upstream");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let upstream = line.trim().to_owned();

    // The proxy on a runtime of its own.
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let config = RecordConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        format!("http://{upstream}"),
        dir.path().join("capture"),
        Salt::from_bytes(b"bench"),
    );
    let recorder = proxy_rt.block_on(Recorder::start(config)).expect("proxy");
    let proxy = recorder.addr().to_string();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "# capture proxy overhead (2-core machine; upstream in a child process, proxy on 1 worker thread, client on 1 thread)\n"
    );
    let nginx = start_nginx(dir.path(), &upstream);
    let n = 500;
    // Interleaved rounds, so every side sees the same machine.
    let (mut d_ttft, mut d_delay, mut p_ttft, mut p_delay) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut n_ttft, mut n_delay) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (t, d) = rt.block_on(latency(&upstream, n / 5));
        d_ttft.extend(t);
        d_delay.extend(d);
        let (t, d) = rt.block_on(latency(&proxy, n / 5));
        p_ttft.extend(t);
        p_delay.extend(d);
        if let Some((_, addr)) = &nginx {
            let (t, d) = rt.block_on(latency(addr, n / 5));
            n_ttft.extend(t);
            n_delay.extend(d);
        }
    }
    let (dt50, dt99, pt50, pt99) = (
        pct(&mut d_ttft, 0.5),
        pct(&mut d_ttft, 0.99),
        pct(&mut p_ttft, 0.5),
        pct(&mut p_ttft, 0.99),
    );
    let (dd50, dd99, pd50, pd99) = (
        pct(&mut d_delay, 0.5),
        pct(&mut d_delay, 0.99),
        pct(&mut p_delay, 0.5),
        pct(&mut p_delay, 0.99),
    );
    println!(
        "| {n} paced streams | direct p50 / p99 | through the proxy p50 / p99 | added p50 / p99 | target |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| TTFT | {dt50:.0} / {dt99:.0} µs | {pt50:.0} / {pt99:.0} µs | {:.0} / {:.0} µs | p99 ≤ 200 µs |",
        pt50 - dt50,
        pt99 - dt99
    );
    println!(
        "| per-event delay (receive − send) | {dd50:.0} / {dd99:.0} µs | {pd50:.0} / {pd99:.0} µs | {:.0} / {:.0} µs | p99 ≤ 50 µs |",
        pd50 - dd50,
        pd99 - dd99
    );
    if !n_ttft.is_empty() {
        let (nt50, nt99, nd50, nd99) = (
            pct(&mut n_ttft, 0.5),
            pct(&mut n_ttft, 0.99),
            pct(&mut n_delay, 0.5),
            pct(&mut n_delay, 0.99),
        );
        println!(
            "\n| through nginx (the baseline) | p50 / p99 | added p50 / p99 | reprise's added / nginx's added, p50 / p99 (target ≤ 1.2) |"
        );
        println!("|---|---|---|---|");
        println!(
            "| TTFT | {nt50:.0} / {nt99:.0} µs | {:.0} / {:.0} µs | {:.2} / {:.2} |",
            nt50 - dt50,
            nt99 - dt99,
            (pt50 - dt50) / (nt50 - dt50),
            (pt99 - dt99) / (nt99 - dt99)
        );
        println!(
            "| per-event delay | {nd50:.0} / {nd99:.0} µs | {:.0} / {:.0} µs | {:.2} / {:.2} |",
            nd50 - dd50,
            nd99 - dd99,
            (pd50 - dd50) / (nd50 - dd50),
            (pd99 - dd99) / (nd99 - dd99)
        );
    } else {
        println!("\nnginx not installed (Debian: nginx-light): no baseline proxy in this run");
    }
    let direct = rt.block_on(throughput(&upstream, 32, 3.0));
    let through = rt.block_on(throughput(&proxy, 32, 3.0));
    let via_nginx = nginx
        .as_ref()
        .map(|(_, addr)| rt.block_on(throughput(addr, 32, 3.0)));
    println!("\n| closed loop, 32 connections, 3 s | req/s |\n|---|---:|");
    println!(
        "| direct | {direct:.0} |\n| through the proxy (recording every request) | {through:.0} |"
    );
    if let Some(v) = via_nginx {
        println!("| through nginx (one worker, no recording) | {v:.0} |");
        println!("proxy / nginx: {:.2} (target ≥ 0.80)", through / v);
    }
    println!("proxy / direct: {:.2}", through / direct);
    if let Some((mut child, _)) = nginx {
        let _ = child.kill();
        let _ = child.wait();
    }
    let summary = proxy_rt.block_on(recorder.shutdown());
    println!(
        "rows recorded: {}, lost: {}",
        summary.recorded, summary.lost
    );
    let _ = child.kill();
    let _ = child.wait();
}
