//! The capture proxy under faults, as a process in front of `reprise sim`: killed at random
//! instants in a loop, frozen and copied mid-write, left by clients before their answer.
//! Each check can fail on a real loss: a part file that does not read, a row written twice
//! across restarts, more rows missing than the last flush interval can hold, counts that do
//! not add up on a clean stop.
//!
//! `REPRISE_TORTURE_ITERATIONS` sets the crash loop's length (20 by default, the short mode
//! CI runs; `scripts/torture` runs the long mode, 200).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reprise_trace::{DatasetReader, TraceRecord};

use crate::record::{Kill, chat, post_chat, signal, sim, start_logged};
use crate::support::*;

/// Flush interval of the recorder under test, seconds.
const FLUSH_S: f64 = 0.2;

/// `reprise record` with its stderr collected: the process, its address, its lines.
pub(crate) fn recorder(
    upstream: &str,
    out: &Path,
    dir: &Path,
    extra: &[&str],
) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut args = vec![
        "record".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        format!("http://{upstream}"),
        "--out".into(),
        s(out).into(),
        "--salt-file".into(),
        s(&dir.join("salt")).into(),
        "--flush-interval".into(),
        FLUSH_S.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_logged(&args)
}

/// A non-streamed request; the whole answer (empty when the proxy is gone).
fn plain(addr: &str) -> String {
    post_chat(
        addr,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"ignore_eos":true}"#,
    )
}

/// Client threads sending streamed and plain requests until stopped; they count what they
/// sent and when each answer came whole.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    answered: Arc<Mutex<Vec<Instant>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(addr: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (addr, stop, sent, answered) = (
                    addr.to_owned(),
                    stop.clone(),
                    sent.clone(),
                    answered.clone(),
                );
                std::thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        sent.fetch_add(1, Ordering::Relaxed);
                        let whole = if i % 2 == 0 {
                            chat(&addr, 4).contains("data: [DONE]")
                        } else {
                            plain(&addr).contains("\"usage\"")
                        };
                        if whole {
                            answered.lock().unwrap().push(Instant::now());
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            answered,
            threads,
        }
    }

    /// Stops the clients; returns (sent, answer instants).
    pub(crate) fn finish(self) -> (u64, Vec<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let answered = self.answered.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), answered)
    }
}

/// Every finished part file of `dir` read; panics naming a file that does not read.
pub(crate) fn read_parts(dir: &Path) -> Vec<TraceRecord> {
    read_new_parts(dir, &mut HashMap::new())
}

/// Like [`read_parts`], reading only the parts not in `cache` (a finished part never
/// changes: parts are written as `*.tmp` and renamed when complete).
fn read_new_parts(dir: &Path, cache: &mut HashMap<PathBuf, Vec<TraceRecord>>) -> Vec<TraceRecord> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "parquet") && !cache.contains_key(&p) {
                let part = DatasetReader::<TraceRecord>::open(&p)
                    .and_then(|r| r.read_all())
                    .unwrap_or_else(|e| {
                        panic!("{}: a finished part does not read: {e}", p.display())
                    });
                cache.insert(p, part);
            }
        }
    }
    cache.values().flatten().cloned().collect()
}

/// Whether the recorder's closing line says: `n` forwarded, `n` recorded, none skipped or lost.
fn accounted(lines: &str, n: u64) -> bool {
    lines.lines().any(|l| {
        l.starts_with(&format!(
            "reprise record: {n} requests forwarded: {n} recorded in "
        )) && l.contains(" files, 0 skipped (filters, sampling), 0 lost (")
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        // A file may be renamed away between listing and copying: that is the point.
        let _ = std::fs::copy(&p, to.join(p.file_name().unwrap()));
    }
}

fn iterations() -> usize {
    std::env::var("REPRISE_TORTURE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn a_crash_loop_loses_at_most_the_last_flush_and_never_writes_a_row_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, upstream) = sim();
    let _sim = Kill(sim);
    let out = dir.path().join("capture");
    let mut seen: HashSet<String> = HashSet::new();
    // A small LCG: the kill instants differ per iteration, the same on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        state >> 33
    };
    let mut totals = (0u64, 0u64);
    let mut parts = HashMap::new();
    for i in 0..iterations() {
        let (proxy, addr, _lines) = recorder(&upstream, &out, dir.path(), &[]);
        let mut proxy = Kill(proxy);
        let load = Load::start(&addr, 4);
        std::thread::sleep(Duration::from_millis(150 + next() % 550));
        if i % 5 == 4 {
            // Frozen mid-write and copied, as a backup would: the copy reads.
            signal(&proxy.0, "-STOP");
            let copy = dir.path().join(format!("copy-{i}"));
            copy_dir(&out, &copy);
            signal(&proxy.0, "-CONT");
            read_parts(&copy);
        }
        let killed = Instant::now();
        signal(&proxy.0, "-KILL");
        let _ = proxy.0.wait();
        let (sent, answered) = load.finish();
        let rows = read_new_parts(&out, &mut parts);
        let mut ids = HashSet::new();
        for r in &rows {
            assert!(
                ids.insert(r.request_id.clone()),
                "iteration {i}: request {} written twice",
                r.request_id
            );
        }
        let new = ids.difference(&seen).count() as u64;
        // Answers that came before the kill but after the last flush may be missing (the
        // flush interval, and as much again for a writer thread slow to wake on a loaded
        // machine).
        let window = Duration::from_secs_f64(FLUSH_S + 0.3);
        let before = answered.iter().filter(|t| **t <= killed).count() as u64;
        let recent = answered
            .iter()
            .filter(|t| **t <= killed && killed.duration_since(**t) <= window)
            .count() as u64;
        assert!(
            new + recent >= before,
            "iteration {i}: {new} rows for {before} answered requests, {recent} in the last {window:?}"
        );
        assert!(
            new <= sent,
            "iteration {i}: {new} rows for {sent} requests sent"
        );
        totals.0 += before;
        totals.1 += new;
        seen = ids;
    }
    assert!(totals.0 > 0, "no request was answered");
    eprintln!(
        "{} iterations: {} answered before the kills, {} recorded",
        iterations(),
        totals.0,
        totals.1
    );

    // A clean stop: every request the clients sent is accounted for, in the proxy's
    // counts and in rows.
    let (proxy, addr, lines) = recorder(&upstream, &out, dir.path(), &[]);
    let mut proxy = Kill(proxy);
    let load = Load::start(&addr, 4);
    std::thread::sleep(Duration::from_millis(600));
    let (sent, answered) = load.finish();
    signal(&proxy.0, "-TERM");
    let status = proxy.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let lines = lines.lock().unwrap().join("\n");
    assert!(status.success(), "exit {status:?}: {lines}");
    assert_eq!(answered.len() as u64, sent, "the sim answers every request");
    assert!(
        accounted(&lines, sent),
        "expected {sent} forwarded, {sent} recorded, 0 skipped, 0 lost in:\n{lines}"
    );
    assert_eq!(read_parts(&out).len() - seen.len(), sent as usize);
}

#[test]
fn a_client_that_leaves_before_its_answer_is_a_row_and_the_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    // An upstream that never answers: the proxy waits for its response head.
    let upstream = reprise_stub::fixed::spawn_silent();
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let out = dir.path().join("capture");
    let (proxy, addr, lines) = recorder(&upstream, &out, dir.path(), &["--drain", "20"]);
    let mut proxy = Kill(proxy);
    for _ in 0..3 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let body = r#"{"model":"m","prompt":"x","max_tokens":2}"#;
        s.write_all(
            format!(
                "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // The client gives up (oha at its deadline, a user closing a tab).
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    signal(&proxy.0, "-TERM");
    let status = proxy.0.wait().unwrap();
    // Nothing was left in flight for the drain to wait on.
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        stopping.elapsed()
    );
    std::thread::sleep(Duration::from_millis(100));
    let lines = lines.lock().unwrap().join("\n");
    assert!(status.success(), "exit {status:?}: {lines}");
    assert!(accounted(&lines, 3), "{lines}");
    let rows = read_parts(&out);
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(r.failure.as_deref(), Some("client_disconnect"), "{r:?}");
    }
}

/// Seconds from sending a streamed request to the end of its answer, `n` times in a row.
fn latencies(addr: &str, n: usize) -> Vec<f64> {
    let mut out: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            assert!(
                chat(addr, 4).contains("data: [DONE]"),
                "a well-behaved request failed"
            );
            t.elapsed().as_secs_f64()
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

fn p99(sorted: &[f64]) -> f64 {
    sorted[((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Writes `head`, then reads what the proxy answers until it closes (or 5 s pass).
fn answer_to(addr: &str, head: &[u8], then: impl FnOnce(&mut TcpStream)) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(head);
    then(&mut s);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises this process's open-files limit towards `want` (children inherit it); the limit
/// now in force.
fn raise_fd_limit(want: u64) -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= want {
        return soft;
    }
    let target = limit.maximum.map_or(want, |hard| hard.min(want));
    limit.current = Some(target);
    match setrlimit(Resource::Nofile, limit) {
        Ok(()) => target,
        Err(_) => soft,
    }
}

/// Idle connections the hostile-client test opens: 10,000 (the proxy's default
/// `--max-connections`, so new clients past it make room), fewer where the open-files limit
/// cannot be raised that far.
fn idle_flood() -> usize {
    let limit = raise_fd_limit(10_600);
    let n = (limit.saturating_sub(600) as usize).min(10_000);
    if n < 10_000 {
        eprintln!("open-files limit {limit}: {n} idle connections instead of 10,000");
    }
    n
}

#[test]
fn idle_connections_past_the_limit_make_room_for_a_new_client() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, upstream) = sim();
    let _sim = Kill(sim);
    let (proxy, addr, _lines) = recorder(
        &upstream,
        &dir.path().join("capture"),
        dir.path(),
        &["--max-connections", "50", "--header-timeout", "60"],
    );
    let _proxy = Kill(proxy);
    // 200 clients that connect and say nothing: each past the 50th closes the oldest.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // A real client is served at once, not after the 60 s header timeout.
    let t = Instant::now();
    assert!(chat(&addr, 4).contains("data: [DONE]"));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "served after {:?}",
        t.elapsed()
    );
    // The oldest idle connections were closed, the newest are still open.
    let open = |s: &TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 1];
        // A read that times out means open; 0 bytes (or a reset) means closed.
        let mut reader: &TcpStream = s;
        matches!(
            reader.read(&mut buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut
        )
    };
    assert!(!open(&idle[0]), "the oldest idle connection is still open");
    assert!(!open(&idle[100]), "an old idle connection is still open");
    assert!(open(&idle[199]), "the newest idle connection was closed");
}

#[test]
fn hostile_clients_do_not_slow_a_well_behaved_one() {
    let flood = idle_flood();
    let dir = tempfile::tempdir().unwrap();
    let (sim, upstream) = sim();
    let _sim = Kill(sim);
    let out = dir.path().join("capture");
    let (proxy, addr, lines) = recorder(
        &upstream,
        &out,
        dir.path(),
        &[
            "--header-timeout",
            "1",
            "--max-header-bytes",
            "16384",
            "--max-body-bytes",
            "1048576",
        ],
    );
    let mut proxy = Kill(proxy);
    let pid = proxy.0.id();
    // Clients that ask for long streams and never read them. Their sequences occupy the
    // upstream's batch (the sim slows as a real server would), so they are there for the
    // baseline too: what is compared is the proxy's service with and without the others.
    let slow_readers: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4000,"ignore_eos":true,"stream":true}"#;
            s.write_all(
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    let _ = latencies(&addr, 10);
    let base = latencies(&addr, 100);
    let rss_before = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let mut hostile = Vec::new();
    // 10,000 idle connections (the default limit: every new client past it closes the
    // connection idle longest), and 20 slowloris heads at a byte every 200 ms.
    let idle: Vec<TcpStream> = (0..flood)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    for _ in 0..20 {
        let (addr, stop) = (addr.clone(), stop.clone());
        hostile.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            let started = Instant::now();
            for b in b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: "
                .iter()
                .cycle()
            {
                if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // Cut off by the header timeout (1 s), not served for the whole test.
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{:?}",
                started.elapsed()
            );
        }));
    }
    // One at a time, beside the load: each gets its error and its connection closed.
    let attacks = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let huge = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            );
            let headers = answer_to(&addr, huge.as_bytes(), |_| {});
            let body = answer_to(
                &addr,
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000000\r\n\r\n",
                |s| {
                    let chunk = vec![b'x'; 64 << 10];
                    for _ in 0..64 {
                        if s.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                },
            );
            let garbage = answer_to(&addr, b"GARBAGE\r\n\r\nMORE GARBAGE\r\n\r\n", |_| {});
            let half = answer_to(&addr, b"POST /v1/chat/completions HTTP/1.1\r\nhost", |s| {
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
            (headers, body, garbage, half)
        })
    };
    let during = latencies(&addr, 100);
    let (headers, body, garbage, half) = attacks.join().unwrap();
    let rss_during = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    for h in hostile {
        h.join().unwrap();
    }
    assert!(headers.starts_with("HTTP/1.1 431"), "{:.80}", headers);
    assert!(body.starts_with("HTTP/1.1 413"), "{:.80}", body);
    assert!(garbage.starts_with("HTTP/1.1 400"), "{:.80}", garbage);
    assert!(!half.starts_with("HTTP/1.1 2"), "{:.80}", half);
    // The idle connections were closed, to make room or by the header timeout.
    let mut buf = [0u8; 16];
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert_eq!(
        first.read(&mut buf).unwrap_or(0),
        0,
        "idle connection still open"
    );
    drop(idle);
    drop(slow_readers);
    let median = |v: &[f64]| v[v.len() / 2];
    eprintln!(
        "well-behaved median {:.2} / p99 {:.2} ms alone, {:.2} / {:.2} ms beside hostile clients; proxy RSS {} -> {} KiB",
        median(&base) * 1e3,
        p99(&base) * 1e3,
        median(&during) * 1e3,
        p99(&during) * 1e3,
        rss_before,
        rss_during
    );
    // The median and the p99 within 1.5x. The test shares a 2-core machine with the rest of
    // the suite, so each bound has an absolute allowance for scheduling noise: 2 ms on the
    // median, 10 ms on the p99 (one request in a hundred delayed by a busy core).
    assert!(
        median(&during) <= 1.5 * median(&base) + 0.002,
        "median {:.2} ms beside hostile clients, {:.2} ms alone",
        median(&during) * 1e3,
        median(&base) * 1e3
    );
    assert!(
        p99(&during) <= 1.5 * p99(&base) + 0.010,
        "p99 {:.2} ms beside hostile clients, {:.2} ms alone",
        p99(&during) * 1e3,
        p99(&base) * 1e3
    );
    assert!(
        rss_during < rss_before + 100 * 1024,
        "RSS {rss_before} -> {rss_during} KiB"
    );
    signal(&proxy.0, "-TERM");
    let status = proxy.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let lines = lines.lock().unwrap().join("\n");
    assert!(status.success(), "exit {status:?}: {lines}");
}
