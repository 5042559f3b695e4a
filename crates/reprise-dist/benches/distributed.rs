//! The distributed replay's targets, measured:
//!
//! 1. **Merge**: three workers' runs of `REPRISE_BENCH_ROWS` rows each (default 1,000,000)
//!    merged into one run, and the summary from their histograms alone
//!    (`--summary-only`); the merged p99 TTFT against the exact p99 over all rows.
//! 2. **Start skew** (when a `reprise` binary is given in `REPRISE_BIN`, e.g.
//!    `target/release/reprise`): a coordinator and three worker processes, the second with
//!    its wall clock shifted by +250 ms, each sending through a `reprise record` proxy of
//!    its own in front of one simulator, so that the proxies' captures say, on this
//!    machine's one clock, when each worker's first request really left; the spread of
//!    (true first send − the coordinator's T0 − its scheduled offset) across workers is
//!    the start skew after correction.
//!
//! Run: `cargo bench -p reprise-dist --bench distributed` (add
//! `REPRISE_BIN=target/release/reprise` for the skew). Prints a table.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reprise_dist::merge::{HISTOGRAMS_FILE, MergeOptions, SHARD_FILE, merge};
use reprise_replay::summary::{Sample, Summarizer};
use reprise_trace::run::{Distributed, RunInfo, RunSummary, write_json};
use reprise_trace::{
    DatasetReader, DatasetWriter, Output, ResultRecord, Timestamp, TraceRecord, WriterOptions,
};

/// A worker's run of `n` rows: results, histograms, shard.json and run.json.
fn worker_run(dir: &Path, shard: u32, n: u64) -> Vec<u64> {
    std::fs::create_dir_all(dir).unwrap();
    let mut w = DatasetWriter::<ResultRecord>::create(
        Output::File(dir.join("requests.parquet")),
        WriterOptions::default(),
    )
    .unwrap();
    let mut summary = Summarizer::default();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(shard);
    let mut ttfts = Vec::with_capacity(n as usize);
    let t0 = 1_800_000_000_000_000_000i64;
    for i in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // A long-tailed TTFT, 5 ms to several seconds.
        let ttft_us = 5_000 + (state % 1_000) * (state % 1_000) * (state % 7 + 1);
        let at = t0 + (i * 3 + u64::from(shard)) as i64 * 1_000_000;
        let mut request = TraceRecord::new(format!("r{}", i * 3 + u64::from(shard)), Timestamp(at));
        request.input_tokens = Some(100);
        request.output_tokens = Some(10);
        let row = ResultRecord {
            request,
            run_id: format!("s{shard}"),
            target: "http://t".into(),
            phase: "measure".into(),
            step_value: None,
            shard,
            scheduled: Timestamp(at),
            sent: Some(Timestamp(at + 50_000)),
            first_chunk: Some(Timestamp(at + 50_000 + ttft_us as i64 * 1000)),
            first_token: Some(Timestamp(at + 50_000 + ttft_us as i64 * 1000)),
            done: Some(Timestamp(at + 50_000 + ttft_us as i64 * 1000 + 90_000_000)),
            queue_us: Some(50),
            ttft_us: Some(ttft_us),
            e2e_us: Some(ttft_us + 90_000),
            ttft_sched_us: Some(ttft_us + 50),
            e2e_sched_us: Some(ttft_us + 90_050),
            tpot_us: Some(10_000),
            itl_us: None,
            n_in_usage: Some(100),
            n_out_usage: Some(10),
            n_cached_usage: None,
            n_out_counted: Some(10),
            status: Some(200),
            error_kind: None,
            error: None,
        };
        w.write(&row).unwrap();
        summary.add(&Sample {
            phase: "measure".into(),
            ok: true,
            sent_ns: Some((at - t0) as u64 + 50_000),
            done_ns: Some((at - t0) as u64 + ttft_us * 1000 + 90_050_000),
            queue_us: Some(50),
            ttft_us: Some(ttft_us),
            e2e_us: Some(ttft_us + 90_000),
            n_in: 100,
            n_out: 10,
            ..Sample::default()
        });
        ttfts.push(ttft_us);
    }
    w.close().unwrap();
    write_json(&dir.join(HISTOGRAMS_FILE), &summary.export()).unwrap();
    let dist = Distributed {
        coordinator_id: "coord-bench".into(),
        shards: 3,
        shard: Some(shard),
        t0_ns: t0,
        planned: n,
        ..Distributed::default()
    };
    write_json(&dir.join(SHARD_FILE), &dist).unwrap();
    let info = RunInfo {
        format: "run/1".into(),
        complete: true,
        summary: RunSummary {
            complete: true,
            recorded: n,
            overall: summary.overall(),
            ..RunSummary::default()
        },
        distributed: Some(dist),
        ..RunInfo::default()
    };
    write_json(&dir.join("run.json"), &info).unwrap();
    ttfts
}

fn bench_merge(rows: u64) {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut all: Vec<u64> = Vec::new();
    let runs: Vec<PathBuf> = (0..3)
        .map(|k| {
            let d = dir.path().join(format!("s{k}"));
            all.extend(worker_run(&d, k, rows));
            d
        })
        .collect();
    eprintln!(
        "made 3 runs of {rows} rows in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let merged = merge(&MergeOptions {
        inputs: runs.clone(),
        out: Some(dir.path().join("merged")),
        force: false,
    })
    .unwrap();
    let full = t.elapsed();
    let t = Instant::now();
    let summary_only = merge(&MergeOptions {
        inputs: runs,
        out: None,
        force: false,
    })
    .unwrap();
    let quick = t.elapsed();
    // The merged run reads back whole.
    let back = DatasetReader::<ResultRecord>::open(dir.path().join("merged/requests.parquet"))
        .unwrap()
        .num_rows();
    assert_eq!(back, 3 * rows);
    all.sort_unstable();
    let rank = ((0.99 * all.len() as f64).ceil() as usize).max(1) - 1;
    let exact = all[rank] as f64 / 1e3;
    let hdr = summary_only
        .info
        .summary
        .overall
        .ttft_ms
        .as_ref()
        .unwrap()
        .p99;
    assert_eq!(
        merged.info.summary.overall,
        summary_only.info.summary.overall
    );
    println!("| merge, 3 runs of {rows} rows | value | target |");
    println!("|---|---:|---|");
    println!(
        "| full merge (hard links, run.json) | {:.3} s | <= 10 s |",
        full.as_secs_f64()
    );
    println!(
        "| --summary-only (histograms) | {:.3} s | well under 1 s |",
        quick.as_secs_f64()
    );
    println!(
        "| p99 TTFT: merged histograms {hdr:.3} ms, exact {exact:.3} ms | {:.4}% | <= 0.1% |",
        (hdr - exact).abs() / exact * 100.0
    );
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin args...` and returns it with the URL of the first stderr line naming one.
fn spawn_url(bin: &Path, args: &[&str]) -> (Kill, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let l = lines.next().expect("a banner").unwrap();
        if let Some(at) = l.find("http://") {
            break l[at..].split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (Kill(child), url)
}

fn bench_skew(bin: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, sim) = spawn_url(bin, &["sim", "--listen", "127.0.0.1:0", "--speedup", "20"]);
    let upstream = sim.clone();
    let mut skews = Vec::new();
    for round in 0..3 {
        let (_coord, coord) = spawn_url(
            bin,
            &[
                "coordinate",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "3",
                "--margin",
                "1",
                "--register-timeout",
                "30",
            ],
        );
        let mut proxies = Vec::new();
        let mut workers = Vec::new();
        for k in 0..3u32 {
            let capture = dir.path().join(format!("cap{round}-{k}"));
            let (p, url) = spawn_url(
                bin,
                &[
                    "record",
                    "--listen",
                    "127.0.0.1:0",
                    "--upstream",
                    &upstream,
                    "--out",
                    capture.to_str().unwrap(),
                    "--salt-file",
                    dir.path().join("salt").to_str().unwrap(),
                    "--flush-interval",
                    "0.2",
                ],
            );
            let run = dir.path().join(format!("run{round}-{k}"));
            let shard = format!("{k}/3");
            let mut c = Command::new(bin);
            c.args([
                "replay",
                "traces/azure-conv-2023.parquet",
                "--target",
                &url,
                "--shard",
                &shard,
                "--coordinator",
                &coord,
                "--duration",
                "30",
                "--speed",
                "10",
                "--no-tui",
                "--out",
                run.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("w{round}-{k}.err"))).unwrap());
            if k == 1 {
                c.env("REPRISE_TEST_CLOCK_OFFSET_MS", "250");
            }
            workers.push((c.spawn().unwrap(), run, capture));
            proxies.push(p);
        }
        let mut firsts = Vec::new();
        for (k, (mut w, run, capture)) in workers.into_iter().enumerate() {
            if !w.wait().unwrap().success() {
                let err: Vec<String> = (0..3)
                    .map(|j| {
                        std::fs::read_to_string(dir.path().join(format!("w{round}-{j}.err")))
                            .unwrap_or_default()
                    })
                    .collect();
                panic!("worker {k} failed:\n{}", err.join("\n---\n"));
            }
            let info: RunInfo = reprise_trace::run::read_json(&run.join("run.json"))
                .unwrap()
                .unwrap();
            let t0 = info.distributed.unwrap().t0_ns;
            let rows = DatasetReader::<ResultRecord>::open(run.join("requests.parquet"))
                .unwrap()
                .read_all()
                .unwrap();
            let first_sched = rows.iter().map(|r| r.scheduled.0).min().unwrap() - t0;
            // The proxy's arrival: this machine's true clock.
            std::thread::sleep(Duration::from_millis(500));
            firsts.push((capture, t0 + first_sched));
        }
        drop(proxies);
        std::thread::sleep(Duration::from_millis(500));
        let mut errs = Vec::new();
        for (capture, intended) in firsts {
            let arrivals = DatasetReader::<TraceRecord>::open(&capture)
                .unwrap()
                .read_all()
                .unwrap();
            // Completions only (model discovery went through the proxy before the start).
            let first = arrivals
                .iter()
                .filter(|r| r.endpoint.ends_with("completions"))
                .map(|r| r.arrival.0)
                .min()
                .unwrap();
            errs.push((first - intended) as f64 / 1e6);
        }
        let spread = errs.iter().cloned().fold(f64::MIN, f64::max)
            - errs.iter().cloned().fold(f64::MAX, f64::min);
        eprintln!("round {round}: first arrivals − intended, ms: {errs:?} (spread {spread:.3} ms)");
        skews.push(spread);
    }
    skews.sort_by(f64::total_cmp);
    println!(
        "| start skew across 3 workers after correction (one +250 ms off) | median {:.3} ms, worst {:.3} ms of 3 runs | <= 1 ms |",
        skews[1], skews[2]
    );
}

fn main() {
    let rows = std::env::var("REPRISE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000u64);
    bench_merge(rows);
    match std::env::var_os("REPRISE_BIN") {
        Some(bin) => {
            let bin = PathBuf::from(bin)
                .canonicalize()
                .expect("REPRISE_BIN names a file");
            std::env::set_current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap();
            bench_skew(&bin);
        }
        None => eprintln!("start skew: set REPRISE_BIN=path/to/reprise to measure it"),
    }
}
