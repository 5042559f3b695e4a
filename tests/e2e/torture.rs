//! The capture proxy under faults, as a process in front of `reprise sim`: killed at random
//! instants in a loop, frozen and copied mid-write, left by clients before their answer.
//! Each check can fail on a real loss: a part file that does not read, a row written twice
//! across restarts, more rows missing than the last flush interval can hold, counts that do
//! not add up on a clean stop.
//!
//! `REPRISE_TORTURE_ITERATIONS` sets the crash loop's length (20 by default, the short mode
//! CI runs; `scripts/torture` runs the long mode, 200).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use reprise_trace::{DatasetReader, TraceRecord};

use crate::record::{Kill, chat, signal, sim};
use crate::support::*;

/// Flush interval of the recorder under test, seconds.
const FLUSH_S: f64 = 0.2;

/// `reprise record` with its stderr collected: the process, its address, its lines.
fn recorder(
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(&args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("http://")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                {
                    let _ = tx.send(addr.to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
    }
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("address");
    (child, addr, lines)
}

/// A non-streamed request; the whole answer (empty when the proxy is gone).
fn plain(addr: &str) -> String {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"ignore_eos":true}"#;
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Client threads sending streamed and plain requests until stopped; they count what they
/// sent and when each answer came whole.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    answered: Arc<Mutex<Vec<Instant>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (addr, stop, sent, answered) =
                    (addr.to_owned(), stop.clone(), sent.clone(), answered.clone());
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
    fn finish(self) -> (u64, Vec<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let answered = self.answered.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), answered)
    }
}

/// Every finished part file of `dir` read; panics naming a file that does not read.
fn read_parts(dir: &Path) -> Vec<TraceRecord> {
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return rows;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "parquet") {
            let part = DatasetReader::<TraceRecord>::open(&p)
                .and_then(|r| r.read_all())
                .unwrap_or_else(|e| panic!("{}: a finished part does not read: {e}", p.display()));
            rows.extend(part);
        }
    }
    rows
}

/// Whether the recorder's closing line says: `n` forwarded, `n` recorded, none skipped or lost.
fn accounted(lines: &str, n: u64) -> bool {
    lines.lines().any(|l| {
        l.starts_with(&format!("reprise record: {n} requests forwarded: {n} recorded in "))
            && l.contains(" files, 0 skipped (filters, sampling), 0 lost (")
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
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        state >> 33
    };
    let mut totals = (0u64, 0u64);
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
        let rows = read_parts(&out);
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
        assert!(new <= sent, "iteration {i}: {new} rows for {sent} requests sent");
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
