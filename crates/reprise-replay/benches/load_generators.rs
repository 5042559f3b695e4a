//! `reprise replay` against the load generator a user would pick instead, in one run, on
//! one no-op streaming server (16-token SSE responses, a child process pinned to CPU 1
//! when `taskset` exists), each tool alone on the machine:
//!
//! - `cpu`: open loop at 200, 1,000, 5,000, 10,000 and 20,000 req/s for `--secs` (5 s by
//!   default) each: CPU-seconds of the load generator's process per 1,000 requests (user +
//!   system, read from `/proc` as it exits), the rate achieved, and reprise's queue p99
//!   (sent − scheduled), the median of `--rounds` (3) runs of each tool, alternating (this
//!   machine's noise is larger than some differences). The baseline is oha (`OHA`, `oha` on the `PATH`, or
//!   `~/.cache/reprise/tools/bin/oha`; `cargo install oha --locked --root
//!   ~/.cache/reprise/tools` builds it outside the clone); without it the section says so.
//!   oha parses no SSE and writes no rows; reprise parses every event and writes every row.
//! - `bursts`: a trace of 40 bursts of 32 requests on one instant, 100 ms apart: how long
//!   after its instant the last request of each burst went out (the default sender).
//! - `slow`: pacing while over 2,000 streams are open and slow (events 300 ms apart at 500
//!   req/s; 1,500 ms apart at 100 req/s): queue p50 / p99 / max.
//!
//! Run (the `reprise` binary built in release first; `REPRISE_BIN` names another):
//! `cargo build --release -p reprise-cli && cargo bench -p reprise-replay --bench
//! load_generators [-- --only cpu|bursts|slow] [--secs N] [--rounds N]`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reprise_trace::{DatasetReader, DatasetWriter, Output, ResultRecord, TraceRecord};

/// The `reprise` binary: `REPRISE_BIN`, or the release build beside this bench
/// (`target/release/reprise`).
fn reprise_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("REPRISE_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("reprise"))
        .expect("target/release");
    assert!(
        bin.is_file(),
        "{} not found: `cargo build --release -p reprise-cli` first, or set REPRISE_BIN",
        bin.display()
    );
    bin
}

/// `(utime + stime)` seconds of process `pid` from `/proc`, and whether it has exited (a
/// zombie not yet reaped, whose times are final).
fn proc_cpu(pid: u32) -> Option<(f64, bool)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?;
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0;
    Some((cpu, *state == "Z"))
}

/// Waits for `child` to exit and returns its CPU seconds (read while it is a zombie) and
/// its standard output.
fn cpu_of(mut child: Child) -> (f64, String) {
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let mut cpu = 0.0;
    loop {
        match proc_cpu(pid) {
            Some((c, true)) => {
                cpu = c;
                break;
            }
            Some((c, false)) => cpu = c,
            None => break,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.wait();
    (cpu, reader.join().unwrap_or_default())
}

fn oha() -> Option<String> {
    let candidates = [
        std::env::var("OHA").ok(),
        Some("oha".to_owned()),
        std::env::var("HOME")
            .ok()
            .map(|h| format!("{h}/.cache/reprise/tools/bin/oha")),
    ];
    candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn run_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).expect("run.json"))
        .expect("json")
}

/// `reprise replay` to `target` writing `out` (replaced), without a live view or host
/// sampling.
fn replay_command(target: &str, out: &Path) -> Command {
    let mut c = Command::new(reprise_bin());
    c.args([
        "replay",
        "--target",
        target,
        "--model",
        "m",
        "--api",
        "completions",
    ])
    .args(["--no-tui", "--no-host-metrics", "--force", "--out"])
    .arg(out);
    c
}

/// [`replay_command`] of `n` 16-token requests at `rate` req/s.
fn rate_command(target: &str, out: &Path, rate: u64, n: u64) -> Command {
    let mut c = replay_command(target, out);
    c.args(["--rate", &rate.to_string(), "--requests", &n.to_string()])
        .args(["--input-tokens", "16", "--output-tokens", "16"]);
    c
}

/// One oha run: CPU seconds, achieved rate, p99 latency (ms).
fn oha_run(oha: &str, url: &str, rate: u64, n: u64) -> (f64, f64, f64) {
    let child = Command::new(oha)
        .args(["-n", &n.to_string(), "-q", &rate.to_string(), "-c", "50"])
        .args(["-m", "POST", "-H", "content-type: application/json"])
        .args([
            "-d",
            r#"{"model":"m","prompt":"hello","max_tokens":16,"stream":true}"#,
        ])
        .args(["--no-tui", "--output-format", "json", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("oha runs");
    let (cpu, text) = cpu_of(child);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    (
        cpu,
        v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
        v["latencyPercentiles"]["p99"].as_f64().unwrap_or(f64::NAN) * 1000.0,
    )
}

/// One reprise run: CPU seconds, rate held, queue p99 (ms).
fn reprise_run(base: &str, out: &Path, rate: u64, n: u64) -> (f64, f64, f64) {
    let child = rate_command(base, out, rate, n)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("reprise runs");
    let (cpu, _) = cpu_of(child);
    let s = &run_json(out)["summary"];
    (
        cpu,
        s["client"]["held_rate"].as_f64().unwrap_or(f64::NAN),
        s["overall"]["queue_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cpu(base: &str, secs: u64, rounds: usize) {
    println!(
        "\n## CPU per 1,000 requests: reprise vs oha, open loop, {secs} s per rate, median of {rounds} alternating rounds\n"
    );
    let Some(oha) = oha() else {
        println!(
            "oha not found (OHA, PATH, ~/.cache/reprise/tools/bin): `cargo install oha --locked --root ~/.cache/reprise/tools`; section skipped"
        );
        return;
    };
    println!(
        "| rate req/s | oha CPU s / 1k | oha achieved | oha p99 ms | reprise CPU s / 1k | reprise held | reprise queue p99 ms | reprise / oha (per round) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let url = format!("{base}/v1/completions");
    for rate in [200u64, 1_000, 5_000, 10_000, 20_000] {
        let n = rate * secs;
        let (mut o, mut r) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            std::thread::sleep(Duration::from_secs(1));
            o.push(oha_run(&oha, &url, rate, n));
            std::thread::sleep(Duration::from_secs(1));
            r.push(reprise_run(base, &out, rate, n));
        }
        let per_k = |c: f64| c / n as f64 * 1000.0;
        let ratios: Vec<String> = o
            .iter()
            .zip(&r)
            .map(|(o, r)| format!("{:.2}", r.0 / o.0))
            .collect();
        let m = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
            median(v.iter().map(f).collect())
        };
        println!(
            "| {rate} | {:.3} | {:.0} | {:.2} | {:.3} | {:.0} | {:.2} | {:.2}x ({}) |",
            per_k(m(&o, |x| x.0)),
            m(&o, |x| x.1),
            m(&o, |x| x.2),
            per_k(m(&r, |x| x.0)),
            m(&r, |x| x.1),
            m(&r, |x| x.2),
            m(&r, |x| x.0) / m(&o, |x| x.0),
            ratios.join(", ")
        );
    }
}

/// Writes a trace of `bursts` groups of `size` requests sharing one instant, `gap` apart.
fn burst_trace(path: &Path, bursts: u32, size: u32, gap: Duration) {
    let mut w =
        DatasetWriter::<TraceRecord>::create(Output::File(path.to_path_buf()), Default::default())
            .expect("trace");
    let t0 = 1_700_000_000_000_000_000i64;
    for b in 0..bursts {
        for k in 0..size {
            let at = t0 + i64::from(b) * gap.as_nanos() as i64;
            let mut r = TraceRecord::new(format!("b{b}-{k}"), reprise_trace::Timestamp(at));
            r.input_tokens = Some(200);
            r.output_tokens = Some(16);
            w.write(&r).expect("row");
        }
    }
    w.close().expect("close");
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

fn bursts(base: &str) {
    println!("\n## Bursts: 40 x 32 requests on one instant, 100 ms apart (default sender)\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("bursts.parquet");
    burst_trace(&trace, 40, 32, Duration::from_millis(100));
    let out = dir.path().join("run");
    let status = replay_command(base, &out)
        .arg(&trace)
        .stdout(Stdio::null())
        .status()
        .expect("reprise runs");
    let rows = DatasetReader::<ResultRecord>::open(out.join("requests.parquet"))
        .and_then(|r| r.read_all())
        .expect("results");
    let mut by_instant = std::collections::BTreeMap::<i64, i64>::new();
    for r in &rows {
        let late = r.sent.map_or(i64::MAX, |s| s.0 - r.scheduled.0);
        let e = by_instant.entry(r.scheduled.0).or_insert(0);
        *e = (*e).max(late);
    }
    let mut spread: Vec<i64> = by_instant.values().copied().collect();
    spread.sort_unstable();
    let within = spread.iter().filter(|&&s| s <= 1_000_000).count();
    println!(
        "exit {:?}; {} requests; last of 32 sent after its instant: p50 {:.3} ms, p90 {:.3} ms, max {:.3} ms; bursts all sent within 1 ms: {within} of {}",
        status.code(),
        rows.len(),
        ms(spread[spread.len() / 2]),
        ms(spread[spread.len() * 9 / 10]),
        ms(*spread.last().expect("bursts")),
        spread.len()
    );
}

fn slow(base: &str) {
    println!("\n## Pacing with 2,000 slow streams open (16 events each)\n");
    println!(
        "| rate req/s | event gap ms | stream s | requests | peak streams open | queue p50 / p99 / max ms |"
    );
    println!("|---:|---:|---:|---:|---:|---|");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    for (rate, gap_ms, secs) in [(500u64, 300u64, 8u64), (100, 1_500, 26)] {
        let target = format!("{base}/slow/{gap_ms}");
        rate_command(&target, &out, rate, rate * secs)
            .stdout(Stdio::null())
            .status()
            .expect("reprise runs");
        let rows = DatasetReader::<ResultRecord>::open(out.join("requests.parquet"))
            .and_then(|r| r.read_all())
            .expect("results");
        // Streams open at each send: sends so far less ends so far.
        let mut edges: Vec<(i64, i32)> = rows
            .iter()
            .filter_map(|r| Some([(r.sent?.0, 1), (r.done?.0, -1)]))
            .flatten()
            .collect();
        edges.sort_unstable();
        let (mut open, mut peak) = (0i32, 0i32);
        for (_, d) in edges {
            open += d;
            peak = peak.max(open);
        }
        let q = &run_json(&out)["summary"]["overall"]["queue_ms"];
        println!(
            "| {rate} | {gap_ms} | {:.0} | {} | {peak} | {:.3} / {:.3} / {:.3} |",
            gap_ms as f64 * 16.0 / 1000.0,
            rows.len(),
            q["p50"].as_f64().unwrap_or(f64::NAN),
            q["p99"].as_f64().unwrap_or(f64::NAN),
            q["max"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve") {
        reprise_stub::sse::serve_forever(reprise_stub::sse::Style::Completion);
        return;
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let only = flag("--only");
    let secs = flag("--secs").and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds = flag("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3);
    let (mut server, base, _) = common::start_server();
    println!("# reprise vs the load generators users pick instead (server pinned to CPU 1)");
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wants("cpu") {
        cpu(&base, secs, rounds);
    }
    if wants("bursts") {
        bursts(&base);
    }
    if wants("slow") {
        slow(&base);
    }
    let _ = server.kill();
    let _ = server.wait();
}
