//! The analyzer at scale: a generated stress ramp of 10,000,000 requests (five rate steps,
//! a knee at the fourth, about 100 output tokens and so about a billion content-event gaps,
//! and GPU samples every 500 ms) analysed in full — every table, the knee, `report.md`,
//! `report.html` and `summary.json` — timed and with its peak memory, against a baseline in
//! the same process: one polars query over the same file (P99 TTFT).
//!
//! ```text
//! cargo bench -p reprise-report --bench analyze_10m [-- --requests N] [--data DIR]
//! ```
//!
//! The data set is generated once into `--data` (default `$TMPDIR/reprise-bench-10m-N`) and
//! reused. Peak memory is the process's high-water mark (`VmHWM`), reset before each timed
//! step through `/proc/self/clear_refs`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use polars::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reprise_report::{Options, analyze, render};
use reprise_trace::{
    DatasetWriter, GpuSample, Output, ResultRecord, Timestamp, TraceRecord, WriterOptions,
};

/// The allocator of the `reprise-analyze` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_800_000_000 * S;
/// Rates of the five steps, req/s; the server saturates at about 4,000.
const RATES: [f64; 5] = [1000.0, 2000.0, 3000.0, 4000.0, 5000.0];
const CAPACITY: f64 = 4000.0;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn peak_mib() -> f64 {
    status_kib("VmHWM:") as f64 / 1024.0
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn generate(dir: &Path, n: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(7);
    let mut w = DatasetWriter::<ResultRecord>::create(
        Output::File(dir.join("requests.parquet.tmp")),
        WriterOptions::default(),
    )
    .unwrap();
    let per_step = n / RATES.len() as u64;
    let mut t = T0 as f64;
    let mut gaps_total = 0u64;
    for (step, &rate) in RATES.iter().enumerate() {
        // Past capacity the server queues: TTFT grows through the step, ITL stretches.
        let overload = (rate / CAPACITY).max(1.0);
        for k in 0..per_step {
            t += -rng.random::<f64>().max(1e-12).ln() / rate * 1e9;
            let scheduled = t as i64;
            let queue_us = 5 + (rng.random::<f64>() * 40.0) as i64;
            let sent = scheduled + queue_us * 1000;
            let i = step as u64 * per_step + k;
            let n_in = (200.0 * (0.8 * normal(&mut rng)).exp()).clamp(1.0, 8000.0) as u32;
            let n_out = (100.0 * (0.6 * normal(&mut rng)).exp()).clamp(1.0, 1000.0) as u32;
            let backlog = (overload - 1.0) * k as f64 / per_step as f64 * 2.0;
            let ttft_us = (30_000.0 + n_in as f64 * 40.0) * (1.0 + backlog * 20.0)
                + rng.random::<f64>() * 5_000.0;
            let base_itl = 12_000.0 * overload.powf(0.5);
            let gaps: Vec<u32> = (1..n_out)
                .map(|_| (base_itl * (0.15 * normal(&mut rng)).exp()) as u32)
                .collect();
            gaps_total += gaps.len() as u64;
            // Past capacity the excess times out: throughput stays at capacity.
            let failed = rng.random::<f64>() < 1.0 - 1.0 / overload;
            let ttft = ttft_us as u64;
            let e2e = ttft + gaps.iter().map(|&g| g as u64).sum::<u64>();
            let mut request = TraceRecord::new(format!("r{i}"), Timestamp(scheduled - T0));
            request.input_tokens = Some(n_in);
            request.output_tokens = Some(n_out);
            let phase = format!("rate={rate:.0}");
            let mut r = ResultRecord {
                request,
                run_id: "bench".into(),
                target: "http://127.0.0.1:8000".into(),
                phase,
                step_value: Some(rate),
                shard: 0,
                scheduled: Timestamp(scheduled),
                sent: Some(Timestamp(sent)),
                first_chunk: Some(Timestamp(sent + ttft as i64 * 1000)),
                first_token: Some(Timestamp(sent + ttft as i64 * 1000)),
                done: Some(Timestamp(sent + e2e as i64 * 1000)),
                queue_us: Some(queue_us as u64),
                ttft_us: Some(ttft),
                e2e_us: Some(e2e),
                ttft_sched_us: Some(ttft + queue_us as u64),
                e2e_sched_us: Some(e2e + queue_us as u64),
                tpot_us: (n_out > 1).then(|| (e2e - ttft) / (n_out as u64 - 1)),
                itl_us: Some(gaps),
                n_in_usage: Some(n_in),
                n_out_usage: Some(n_out),
                n_cached_usage: None,
                n_out_counted: Some(n_out),
                status: Some(200),
                error_kind: None,
                error: None,
            };
            if failed {
                // A timeout after 30 s: no response at all.
                r.first_chunk = None;
                r.first_token = None;
                r.done = Some(Timestamp(sent + 30 * S));
                (
                    r.ttft_us,
                    r.e2e_us,
                    r.ttft_sched_us,
                    r.e2e_sched_us,
                    r.tpot_us,
                ) = (None, None, None, None, None);
                r.itl_us = None;
                (r.n_in_usage, r.n_out_usage, r.n_out_counted) = (None, None, Some(0));
                r.status = Some(0);
                r.error_kind = Some("timeout".into());
                r.error = Some("no response within 30 s".into());
            }
            w.write(&r).unwrap();
        }
    }
    w.close().unwrap();
    std::fs::rename(
        dir.join("requests.parquet.tmp"),
        dir.join("requests.parquet"),
    )
    .unwrap();
    // GPU samples every 500 ms over the run: utilisation follows the load up to capacity.
    let mut g = DatasetWriter::<GpuSample>::create(
        Output::File(dir.join("gpu.parquet")),
        WriterOptions::default(),
    )
    .unwrap();
    let end = t as i64;
    let step_ns = (end - T0) / RATES.len() as i64;
    let mut at = T0;
    while at < end {
        let rate = RATES[(((at - T0) / step_ns.max(1)) as usize).min(RATES.len() - 1)];
        let util = (rate / CAPACITY * 95.0).min(99.0) + rng.random::<f64>() * 2.0;
        g.write(&GpuSample {
            time: Timestamp(at),
            host: "gpu-host".into(),
            gpu: 0,
            uuid: None,
            name: Some("simulated".into()),
            util_pct: Some(util),
            mem_util_pct: Some(util * 0.6),
            mem_used_bytes: Some(60 << 30),
            mem_total_bytes: Some(80 << 30),
            power_w: Some(200.0 + util * 4.0),
            sm_clock_mhz: Some(1980),
            temp_c: Some(50.0 + util * 0.2),
        })
        .unwrap();
        at += S / 2;
    }
    g.close().unwrap();
    eprintln!(
        "generated {n} requests, {gaps_total} gaps, {:.0} s of run, in {:.1} s ({:.0} MiB on disk)",
        (end - T0) as f64 / 1e9,
        started.elapsed().as_secs_f64(),
        std::fs::metadata(dir.join("requests.parquet"))
            .map(|m| m.len())
            .unwrap_or(0) as f64
            / 1048576.0
    );
}

fn main() {
    let mut requests: u64 = 10_000_000;
    let mut data: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--requests" => requests = args.next().and_then(|v| v.parse().ok()).unwrap_or(requests),
            "--data" => data = args.next().map(PathBuf::from),
            _ => {} // cargo bench passes --bench
        }
    }
    let dir =
        data.unwrap_or_else(|| std::env::temp_dir().join(format!("reprise-bench-10m-{requests}")));
    if !dir.join("requests.parquet").exists() || !dir.join("gpu.parquet").exists() {
        generate(&dir, requests);
    }
    let file = dir.join("requests.parquet");
    let can_reset = reset_peak();
    let base_rss = status_kib("VmRSS:") as f64 / 1024.0;

    // Baseline: one polars query over the same file.
    let started = Instant::now();
    let df = LazyFrame::scan_parquet(
        PlRefPath::new(file.to_string_lossy().as_ref()),
        ScanArgsParquet::default(),
    )
    .unwrap()
    .select([col("ttft_us")
        .cast(DataType::Float64)
        .quantile(lit(0.99), QuantileMethod::Linear)])
    .collect()
    .unwrap();
    let base_s = started.elapsed().as_secs_f64();
    let base_peak = peak_mib();
    let p99 = df
        .column("ttft_us")
        .unwrap()
        .f64()
        .unwrap()
        .get(0)
        .unwrap_or(f64::NAN);
    drop(df);

    reset_peak();
    let out = dir.join("report");
    let started = Instant::now();
    let report = analyze(&dir, &Options::default()).unwrap();
    let analyze_s = started.elapsed().as_secs_f64();
    render::write(&report, &out).unwrap();
    let full_s = started.elapsed().as_secs_f64();
    let full_peak = peak_mib();
    let render_s = full_s - analyze_s;

    let itl = report.overall.dist("itl").copied().unwrap_or_default();
    println!(
        "analyzer on {} requests ({} ITL gaps), {} steps, {} windows; knee: {}",
        report.rows,
        itl.count,
        report.steps.len(),
        report.windows.len(),
        report.knee.as_ref().map_or("none".into(), |k| format!(
            "rate {} (saturated at {}; causes: {})",
            k.knee_value,
            k.saturated_value,
            k.causes
                .iter()
                .map(|c| c.kind.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    );
    println!();
    println!("| step | wall s | peak RSS MiB | ratio to baseline |");
    println!("|---|---|---|---|");
    println!(
        "| baseline: P99 TTFT (one polars query) = {:.1} ms | {base_s:.2} | {base_peak:.0} | 1.00 |",
        p99 / 1000.0
    );
    println!(
        "| analysis (all tables, knee) | {analyze_s:.2} | | {:.2} |",
        analyze_s / base_s
    );
    println!(
        "| full: analysis + report.md/html/summary.json | {full_s:.2} | {full_peak:.0} | {:.2} |",
        full_s / base_s
    );
    println!();
    println!("| stage | wall s |");
    println!("|---|---|");
    for (stage, s) in &report.timings {
        println!("| {stage} | {s:.2} |");
    }
    println!("| render | {render_s:.2} |");
    println!();
    println!(
        "targets: full analysis < 20 s ({}), peak < 4 GiB ({}){}; RSS before: {base_rss:.0} MiB",
        if full_s < 20.0 { "met" } else { "NOT met" },
        if full_peak < 4096.0 { "met" } else { "NOT met" },
        if can_reset {
            ""
        } else {
            " [peak not resettable: includes generation]"
        }
    );
}
