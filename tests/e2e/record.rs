//! `reprise record` as a process in front of `reprise sim`: SIGTERM loses nothing, `kill -9`
//! leaves only valid part files, and a replay of the recording reproduces its arrival times.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use reprise_trace::{DatasetReader, ResultRecord, TraceRecord};

use crate::support::*;

/// Starts `reprise <args>` and returns it with the first `http://` address it prints.
pub(crate) fn start(args: &[&str]) -> (Child, String) {
    let (child, addr, _lines) = start_logged(args);
    (child, addr)
}

/// Starts `reprise <args>` in the repository; returns it, the first `http://` address it
/// prints on stderr, and every stderr line as it comes.
pub(crate) fn start_logged(args: &[&str]) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .current_dir(repo())
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
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("address printed");
    (child, addr, lines)
}

pub(crate) fn chat(addr: &str, tokens: u32) -> String {
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"hello there"}}],"max_tokens":{tokens},"ignore_eos":true,"stream":true,"stream_options":{{"include_usage":true}}}}"#
    );
    post_chat(addr, &body)
}

/// POSTs `body` to `/v1/chat/completions` on a connection of its own (with a credential
/// that must never reach the disk) and returns the whole answer, or nothing when the proxy
/// is gone (after a kill -9).
pub(crate) fn post_chat(addr: &str, body: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-e2e-secret\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

pub(crate) fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

pub(crate) fn sim() -> (Child, String) {
    start(&[
        "sim",
        "--listen",
        "127.0.0.1:0",
        "--model",
        "m",
        "--speedup",
        "20",
    ])
}

fn record(upstream: &str, out: &Path, dir: &Path) -> (Child, String) {
    start(&[
        "record",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("http://{upstream}"),
        "--out",
        s(out),
        "--salt-file",
        s(&dir.join("salt")),
        "--flush-interval",
        "0.2",
    ])
}

pub(crate) struct Kill(pub(crate) Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A conversation through the proxy: turns of the same `user` are numbered and their think
/// time (end of the previous response to the next arrival) recorded, and the capture
/// replays as a closed session.
#[test]
fn a_conversation_is_recorded_with_turns_and_think_times_and_replays_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, upstream) = sim();
    let _sim = Kill(sim);
    let out = dir.path().join("capture");
    let (proxy, addr) = record(&upstream, &out, dir.path());
    let turn = |user: &str| {
        let body = format!(
            r#"{{"model":"m","user":"{user}","messages":[{{"role":"user","content":"hello there"}}],"max_tokens":4,"ignore_eos":true,"stream":true}}"#
        );
        let reply = post_chat(&addr, &body);
        assert!(reply.contains("[DONE]"), "{reply}");
    };
    for think_ms in [0u64, 300, 150] {
        std::thread::sleep(Duration::from_millis(think_ms));
        turn("alice");
    }
    turn("bob");
    signal(&proxy, "-TERM");
    let mut proxy = proxy;
    assert!(proxy.wait().unwrap().success());
    let mut rows = DatasetReader::<TraceRecord>::open(&out)
        .unwrap()
        .read_all()
        .unwrap();
    rows.sort_by_key(|r| r.arrival);
    assert_eq!(rows.len(), 4);
    let alice = rows[0].session_id.clone().unwrap();
    assert!(!alice.contains("alice"), "the session key is hashed");
    let turns: Vec<_> = rows.iter().map(|r| r.turn).collect();
    assert_eq!(turns, [Some(1), Some(2), Some(3), Some(1)]);
    assert_ne!(rows[3].session_id.as_deref(), Some(alice.as_str()));
    for (r, want_ms) in [(&rows[1], 300.0), (&rows[2], 150.0)] {
        let think = r.think_us.unwrap() as f64 / 1000.0;
        assert!(
            think >= want_ms - 1.0 && think < want_ms + 60.0,
            "think {think:.1} ms, slept {want_ms} ms"
        );
    }
    assert_eq!((rows[0].think_us, rows[3].think_us), (None, None));
    // Replayed as a closed session.
    let run = dir.path().join("run");
    let stdout = ok(&reprise(&[
        "replay",
        s(&out),
        "--target",
        &format!("http://{upstream}"),
        "--out",
        s(&run),
    ]));
    assert!(
        stdout.contains("sessions 2 started, 2 completed; 4 turns (2 after a first)"),
        "{stdout}"
    );
}

#[test]
fn sigterm_loses_nothing_and_a_replay_reproduces_the_arrivals() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, upstream) = sim();
    let _sim = Kill(sim);
    let out = dir.path().join("capture");
    let (proxy, addr) = record(&upstream, &out, dir.path());
    // Requests at known offsets.
    let offsets_ms = [0u64, 120, 250, 400, 700, 1000];
    let start = Instant::now();
    let handles: Vec<_> = offsets_ms
        .iter()
        .map(|&ms| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let at = start + Duration::from_millis(ms);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                chat(&addr, 8)
            })
        })
        .collect();
    for h in handles {
        let reply = h.join().unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 200") && reply.contains("[DONE]"),
            "{reply}"
        );
    }
    signal(&proxy, "-TERM");
    let mut proxy = proxy;
    assert!(proxy.wait().unwrap().success());
    assert!(
        std::fs::read_dir(&out).unwrap().all(|e| !e
            .unwrap()
            .path()
            .to_string_lossy()
            .ends_with(".tmp")),
        "every part finished"
    );
    let mut rows = DatasetReader::<TraceRecord>::open(&out)
        .unwrap()
        .read_all()
        .unwrap();
    rows.sort_by_key(|r| r.arrival.0);
    assert_eq!(rows.len(), offsets_ms.len());
    assert!(
        rows.iter()
            .all(|r| r.status == Some(200) && r.output_tokens == Some(8))
    );
    let recorded: Vec<f64> = rows
        .iter()
        .map(|r| (r.arrival.0 - rows[0].arrival.0) as f64 / 1e6)
        .collect();
    for (got, want) in recorded.iter().zip(offsets_ms) {
        assert!((got - want as f64).abs() < 15.0, "{recorded:?}");
    }
    let secret = std::fs::read_dir(&out).unwrap().any(|e| {
        let b = std::fs::read(e.unwrap().path()).unwrap();
        b.windows(13).any(|w| w == b"sk-e2e-secret")
    });
    assert!(!secret);

    // Replay the capture against the in-process sim: same arrival offsets.
    let run = dir.path().join("run");
    ok(&reprise(&[
        "replay",
        s(&out),
        "--target",
        "sim",
        "--out",
        s(&run),
    ]));
    let mut results = DatasetReader::<ResultRecord>::open(run.join("requests.parquet"))
        .unwrap()
        .read_all()
        .unwrap();
    results.sort_by_key(|r| r.scheduled);
    assert_eq!(results.len(), rows.len());
    let t0 = results[0].scheduled.0;
    let mut late = Vec::new();
    for (r, want) in results.iter().zip(&recorded) {
        let got = (r.scheduled.0 - t0) as f64 / 1e6;
        assert!(
            (got - want).abs() < 0.01,
            "scheduled {got} ms vs recorded {want} ms"
        );
        let sent = (r.sent.unwrap().0 - t0) as f64 / 1e6;
        late.push((sent - want).abs());
        assert_eq!(r.n_in_usage, r.request.input_tokens);
    }
    // Sends follow the schedule: typically well under a millisecond late; a busy test
    // machine may delay one (the first pays for the connection).
    late.sort_by(f64::total_cmp);
    assert!(late[late.len() / 2] < 3.0, "send lateness, ms: {late:?}");
    assert!(late[late.len() - 1] < 50.0, "send lateness, ms: {late:?}");
}

#[test]
fn kill_9_under_load_leaves_only_valid_part_files() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, upstream) = sim();
    let _sim = Kill(sim);
    let out = dir.path().join("capture");
    let (proxy, addr) = record(&upstream, &out, dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop, done) = (addr.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if chat(&addr, 4).contains("[DONE]") {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let before_kill = done.load(Ordering::Relaxed);
    signal(&proxy, "-KILL");
    let mut proxy = proxy;
    let _ = proxy.wait();
    stop.store(true, Ordering::Relaxed);
    for h in load {
        let _ = h.join();
    }
    let mut parts = 0;
    let mut rows = 0;
    for e in std::fs::read_dir(&out).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "parquet") {
            let r = DatasetReader::<TraceRecord>::open(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .read_all()
                .unwrap();
            parts += 1;
            rows += r.len() as u64;
        }
    }
    assert!(parts >= 2, "parts finished every 0.2 s: {parts}");
    // Everything but the last flush interval (0.2 s at the rate seen) is on disk.
    let per_second = before_kill as f64 / 1.5;
    assert!(
        rows as f64 >= before_kill as f64 - per_second * 0.5,
        "{rows} rows of {before_kill} completed"
    );
    // The directory still reads as a dataset (the unfinished part is skipped).
    assert_eq!(
        DatasetReader::<TraceRecord>::open(&out)
            .unwrap()
            .read_all()
            .unwrap()
            .len() as u64,
        rows
    );
}
