//! Metrics on hand-built result sets whose answers are known: percentiles (numpy's linear
//! interpolation), TPOT with one output token, goodput, the scheduled (queue-corrected)
//! view, warm-up exclusion, steps, windows, empty, all-failed and malformed inputs.

use std::path::Path;

use reprise_report::{Options, Slo, analyze};
use reprise_trace::{DatasetWriter, Output, ResultRecord, Timestamp, TraceRecord, WriterOptions};

const S: i64 = 1_000_000_000;
const T0: i64 = 1_800_000_000 * S;

/// A successful request sent at `sent_s` with TTFT `ttft_ms` and `n_out` tokens 10 ms apart.
fn ok(i: usize, phase: &str, sent_s: f64, ttft_ms: u64, n_out: u32) -> ResultRecord {
    let sent = T0 + (sent_s * 1e9) as i64;
    let gaps: Vec<u32> = vec![10_000; n_out.saturating_sub(1) as usize];
    let e2e_us = ttft_ms * 1000 + gaps.iter().map(|&g| g as u64).sum::<u64>();
    let mut request = TraceRecord::new(format!("r{i}"), Timestamp(0));
    request.input_tokens = Some(100);
    request.output_tokens = Some(n_out);
    ResultRecord {
        request,
        run_id: "t".into(),
        target: "http://x".into(),
        phase: phase.into(),
        step_value: phase.split_once('=').and_then(|(_, v)| v.parse().ok()),
        shard: 0,
        scheduled: Timestamp(sent - 2_000_000),
        sent: Some(Timestamp(sent)),
        first_chunk: Some(Timestamp(sent + ttft_ms as i64 * 1_000_000)),
        first_token: Some(Timestamp(sent + ttft_ms as i64 * 1_000_000)),
        done: Some(Timestamp(sent + e2e_us as i64 * 1000)),
        queue_us: Some(2000),
        ttft_us: Some(ttft_ms * 1000),
        e2e_us: Some(e2e_us),
        ttft_sched_us: Some(ttft_ms * 1000 + 2000),
        e2e_sched_us: Some(e2e_us + 2000),
        tpot_us: (n_out > 1).then(|| (e2e_us - ttft_ms * 1000) / (n_out as u64 - 1)),
        itl_us: Some(gaps),
        n_in_usage: Some(100),
        n_out_usage: Some(n_out),
        n_cached_usage: None,
        n_out_counted: Some(n_out),
        status: Some(200),
        error_kind: None,
        error: None,
    }
}

fn failed(i: usize, phase: &str, sent_s: f64, kind: &str) -> ResultRecord {
    let mut r = ok(i, phase, sent_s, 0, 1);
    r.status = Some(if kind == "http_5xx" { 503 } else { 0 });
    r.error_kind = Some(kind.into());
    r.error = Some("boom".into());
    r.first_chunk = None;
    r.first_token = None;
    r.ttft_us = None;
    r.ttft_sched_us = None;
    r.tpot_us = None;
    r.itl_us = None;
    r.n_out_usage = None;
    r.n_out_counted = Some(0);
    r
}

fn write(dir: &Path, rows: &[ResultRecord]) {
    let mut w = DatasetWriter::<ResultRecord>::create(
        Output::File(dir.join("requests.parquet")),
        WriterOptions::default(),
    )
    .unwrap();
    for r in rows {
        w.write(r).unwrap();
    }
    w.close().unwrap();
}

/// numpy.percentile(values, q) with the default (linear) method.
fn np_percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[test]
fn percentiles_throughput_and_goodput_have_known_values() {
    let dir = tempfile::tempdir().unwrap();
    // TTFTs 1..=100 ms, sent 0.1 s apart; 5 tokens each (4 gaps of 10 ms).
    let mut rows: Vec<ResultRecord> = (0..100)
        .map(|i| ok(i, "measure", i as f64 * 0.1, i as u64 + 1, 5))
        .collect();
    // One request of a single token: no TPOT, no gap.
    rows.push(ok(100, "measure", 10.0, 50, 1));
    // Two warm-up requests with huge TTFTs, which must not count.
    rows.push(ok(101, "warmup", 0.0, 100_000, 5));
    rows.push(ok(102, "warmup", 0.0, 100_000, 5));
    write(dir.path(), &rows);
    let opts = Options {
        slo: Slo {
            ttft_ms: Some(50.0),
            tpot_ms: None,
            e2e_ms: None,
        },
        ..Options::default()
    };
    let r = analyze(dir.path(), &opts).unwrap();
    let o = &r.overall;
    assert_eq!((o.requests, o.ok, r.warmup_excluded), (101, 101, 2));
    let mut ttfts: Vec<f64> = (1..=100).map(|x| x as f64).collect();
    ttfts.push(50.0);
    let d = o.dist("ttft").unwrap();
    assert_eq!(d.count, 101);
    for (q, got) in [(0.5, d.p50), (0.9, d.p90), (0.99, d.p99), (0.999, d.p999)] {
        assert!((got - np_percentile(&ttfts, q)).abs() < 1e-9, "q{q}: {got}");
    }
    assert_eq!((d.min, d.max), (1.0, 100.0));
    // TPOT: 10 ms for every request of more than one token, none for the other.
    let tpot = o.dist("tpot").unwrap();
    assert_eq!((tpot.count, tpot.p50, tpot.max), (100, 10.0, 10.0));
    // ITL: 400 gaps of 10 ms.
    let itl = o.dist("itl").unwrap();
    assert_eq!((itl.count, itl.p99), (400, 10.0));
    // Scheduled view adds the 2 ms queue.
    assert!((o.p("ttft_sched", "p50").unwrap() - o.p("ttft", "p50").unwrap() - 2.0).abs() < 1e-9);
    assert_eq!(o.p("queue", "p99"), Some(2.0));
    assert!(r.client_behind, "queue p99 2 ms > the 1 ms default limit");
    // Duration: first sent (0 s) to last done (request 100 at 10 s + 50 ms).
    assert!((o.duration_s - 10.05).abs() < 1e-9, "{}", o.duration_s);
    assert!((o.request_throughput - 101.0 / 10.05).abs() < 1e-9);
    assert!((o.output_tokens_per_s - 501.0 / 10.05).abs() < 1e-9);
    assert!((o.total_tokens_per_s - (501.0 + 101.0 * 100.0) / 10.05).abs() < 1e-9);
    // Goodput: TTFT ≤ 50 ms: 1..=50 and the single-token request.
    assert!((o.goodput.unwrap() - 51.0 / 10.05).abs() < 1e-9);
    assert!((o.slo_attainment.unwrap() - 51.0 / 101.0).abs() < 1e-9);
    // Windows of 10 s: requests 0..=99 in the first, the last one in the second.
    assert_eq!(r.windows.len(), 2);
    assert_eq!(r.windows[0].stats.requests, 100);
    assert!((r.windows[0].sent_rate - 10.0).abs() < 1e-9);
    assert!(r.steps.is_empty() && r.knee.is_none());
    // Outputs are written and name the figures.
    reprise_report::render::write(&r, dir.path()).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("## Load test report") && md.contains("### Conclusion"));
    // The page: latency CDFs (TTFT, TPOT, ITL), E2E, throughput and TTFT over time.
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 4, "{html}");
    assert_eq!(html.matches("<polyline").count(), 3 + 1 + 2 + 2);
    assert!(!html.contains("NaN") && html.ends_with("</html>\n"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(json["format"], "reprise.report/1");
    assert_eq!(json["overall"]["latency"]["ttft"]["count"], 101);

    // Tidy tables for notebooks.
    let out = dir.path().join("tables");
    let run = reprise_report::open(dir.path()).unwrap();
    let files = reprise_report::export::export(&run, &r, &out).unwrap();
    assert_eq!(files.len(), 4);
    let read = |name: &str| {
        polars::prelude::ParquetReader::new(std::fs::File::open(out.join(name)).unwrap())
            .finish()
            .unwrap()
    };
    use polars::prelude::SerReader;
    let requests = read("requests.parquet");
    assert_eq!(requests.height(), 101);
    let gaps = read("gaps.parquet");
    assert_eq!(gaps.height(), 400);
    let g = gaps.column("gap").unwrap().u32().unwrap();
    assert_eq!((g.get(0), g.get(3), g.get(4)), (Some(0), Some(3), Some(0)));
    assert_eq!(read("windows.parquet").height(), 2);
    let steps = read("steps.parquet");
    assert_eq!(steps.height(), 1);
    let p99 = steps
        .column("ttft_p99_ms")
        .unwrap()
        .f64()
        .unwrap()
        .get(0)
        .unwrap();
    assert!((p99 - np_percentile(&ttfts, 0.99)).abs() < 1e-9);
}

#[test]
fn failures_count_by_class_and_an_all_failed_run_still_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<ResultRecord> = (0..8).map(|i| ok(i, "measure", i as f64, 10, 3)).collect();
    rows.push(failed(8, "measure", 8.0, "timeout"));
    rows.push(failed(9, "measure", 9.0, "http_5xx"));
    write(dir.path(), &rows);
    let r = analyze(dir.path(), &Options::default()).unwrap();
    assert_eq!(r.overall.ok, 8);
    assert!((r.overall.error_rate - 0.2).abs() < 1e-12);
    assert_eq!(r.overall.errors.get("timeout"), Some(&1));
    assert_eq!(r.overall.errors.get("http_5xx"), Some(&1));
    // Latencies of successful requests only.
    assert_eq!(r.overall.dist("ttft").unwrap().count, 8);

    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<ResultRecord> = (0..4)
        .map(|i| failed(i, "measure", i as f64, "connect"))
        .collect();
    write(dir.path(), &rows);
    let r = analyze(dir.path(), &Options::default()).unwrap();
    assert_eq!((r.overall.ok, r.overall.error_rate), (0, 1.0));
    assert_eq!(r.overall.errors.get("connect"), Some(&4));
    assert!(r.overall.dist("ttft").is_none());
    assert!(reprise_report::render::markdown(&r).contains("connect 4"));
}

#[test]
fn steps_are_tabled_in_load_order_with_the_knee() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let mut i = 0;
    // concurrency 1, 4, 16, 64: throughput 10, 40, 80, 82 req/s over 10 s; TTFT p99 rises
    // sharply at 64.
    for (k, (c, n, ttft)) in [(1, 100, 20), (4, 400, 25), (16, 800, 40), (64, 820, 400)]
        .into_iter()
        .enumerate()
    {
        let start = k as f64 * 10.0;
        for j in 0..n {
            rows.push(ok(
                i,
                &format!("concurrency={c}"),
                start + j as f64 * 10.0 / n as f64,
                ttft,
                2,
            ));
            i += 1;
        }
    }
    // Written out of order: the table follows the load.
    rows.reverse();
    write(dir.path(), &rows);
    let r = analyze(dir.path(), &Options::default()).unwrap();
    assert_eq!(r.step_unit.as_deref(), Some("concurrency"));
    let values: Vec<f64> = r.steps.iter().map(|s| s.step_value.unwrap()).collect();
    assert_eq!(values, [1.0, 4.0, 16.0, 64.0]);
    let k = r.knee.as_ref().expect("a knee");
    assert_eq!((k.knee_value, k.saturated_value), (16.0, 64.0));
    let md = reprise_report::render::markdown(&r);
    assert!(md.contains("| concurrency | QPS |"), "{md}");
    assert!(md.contains("Knee at concurrency 16"), "{md}");
    // Ramps add throughput and P99 TTFT against the load.
    let page = reprise_report::html::page(&r, &md);
    assert_eq!(page.matches("<svg").count(), 6);
    assert!(page.contains("Throughput against concurrency"));
}

#[test]
fn bad_inputs_are_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = analyze(dir.path(), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no requests.parquet"), "{e}");

    std::fs::write(dir.path().join("requests.parquet"), b"PAR1 not really").unwrap();
    let e = analyze(dir.path(), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("requests.parquet") && !e.contains('\n'), "{e}");

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[]);
    let e = analyze(dir.path(), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no measured requests"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[ok(0, "warmup", 0.0, 1, 2)]);
    let e = analyze(dir.path(), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no measured requests"), "{e}");
}

#[test]
fn gaps_are_counted_per_step_and_window_from_successful_measured_requests_only() {
    let dir = tempfile::tempdir().unwrap();
    let with_gaps = |mut r: ResultRecord, gaps: Vec<u32>| {
        r.itl_us = Some(gaps);
        r
    };
    let rows = vec![
        // Step 1, window 0: gaps 1..=4 ms.
        with_gaps(ok(0, "rate=1", 0.0, 5, 5), vec![1000, 2000, 3000, 4000]),
        // Step 2, window 1 (sent at 12 s with 10 s windows): 20 and 40 ms.
        with_gaps(ok(1, "rate=2", 12.0, 5, 3), vec![20_000, 40_000]),
        // A gap beyond the dense range (70 s) in step 2, window 1.
        with_gaps(ok(2, "rate=2", 13.0, 5, 2), vec![70_000_000]),
        // Neither a failed request's nor a warm-up request's gaps count.
        with_gaps(failed(3, "rate=2", 14.0, "http_5xx"), vec![999_000]),
        with_gaps(ok(4, "warmup", 0.0, 5, 2), vec![888_000]),
    ];
    write(dir.path(), &rows);
    let r = analyze(dir.path(), &Options::default()).unwrap();
    let all = r.overall.dist("itl").unwrap();
    assert_eq!((all.count, all.min, all.max), (7, 1.0, 70_000.0));
    assert_eq!(all.p50, 4.0);
    let step = |v: f64| r.steps.iter().find(|s| s.step_value == Some(v)).unwrap();
    let s1 = step(1.0).dist("itl").unwrap();
    assert_eq!((s1.count, s1.p50, s1.mean), (4, 2.5, 2.5));
    let s2 = step(2.0).dist("itl").unwrap();
    assert_eq!((s2.count, s2.p50, s2.max), (3, 40.0, 70_000.0));
    let w1 = r.windows.iter().find(|w| w.start_s == 10.0).unwrap();
    let d = w1.stats.dist("itl").unwrap();
    assert_eq!((d.count, d.min), (3, 20.0));
    let w0 = r.windows.iter().find(|w| w.start_s == 0.0).unwrap();
    assert_eq!(w0.stats.dist("itl").unwrap().count, 4);
}

/// A small deterministic generator (no dependency needed for test data).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn many_parts_row_groups_and_uneven_gap_lists_give_the_exact_distributions() {
    // 3,000 requests over 5 parts of 128-row groups: gap lists null, empty, one value and
    // long (crossing pages), failures and warm-up between them; every window's and step's
    // percentiles against numpy's on the same values.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(42);
    let mut rows = Vec::new();
    for i in 0..3000usize {
        let phase = match i {
            0..100 => "warmup",
            100..1500 => "rate=1",
            _ => "rate=2",
        };
        let mut r = ok(i, phase, i as f64 * 0.02, 1 + rng.next(400), 1);
        r.ttft_us = Some(1000 + rng.next(900_000));
        r.itl_us = match rng.next(10) {
            0 => None,
            1 => Some(Vec::new()),
            2 => Some(vec![rng.next(200_000) as u32]),
            3 => Some((0..800).map(|_| rng.next(90_000) as u32).collect()),
            _ => Some(
                (0..rng.next(60))
                    .map(|_| 5_000 + rng.next(40_000) as u32)
                    .collect(),
            ),
        };
        if i % 97 == 0 {
            r = failed(i, phase, i as f64 * 0.02, "timeout");
            r.itl_us = Some(vec![7_777_777]);
        }
        rows.push(r);
    }
    let out = dir.path().join("requests.parquet");
    let mut w = DatasetWriter::<ResultRecord>::create(
        Output::Dir(out.clone()),
        WriterOptions {
            row_group_rows: 128,
            batch_rows: 64,
            part_max_rows: Some(600),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for r in &rows {
        w.write(r).unwrap();
    }
    w.close().unwrap();
    assert!(std::fs::read_dir(&out).unwrap().count() >= 5);

    // Default 10-s windows, and 0.1-s windows: more windows (600) than the gap pass may hold
    // open before the window counts reach it (it may wait for them).
    for window_s in [10.0, 0.1] {
        check_run(dir.path(), &rows, window_s);
    }
}

fn check_run(dir: &Path, rows: &[ResultRecord], window_s: f64) {
    let opts = Options {
        window_s,
        ..Options::default()
    };
    let r = analyze(dir, &opts).unwrap();
    let counted = |r: &&ResultRecord| r.phase != "warmup" && r.error_kind.is_none();
    let gaps_of = |pred: &dyn Fn(&ResultRecord) -> bool| -> Vec<f64> {
        rows.iter()
            .filter(counted)
            .filter(|r| pred(r))
            .flat_map(|r| r.itl_us.clone().unwrap_or_default())
            .map(|g| g as f64 / 1000.0)
            .collect()
    };
    let check = |got: &reprise_report::Dist, want: &[f64], what: &str| {
        assert_eq!(got.count, want.len() as u64, "{what}: count");
        for (q, v) in [(0.5, got.p50), (0.99, got.p99), (0.999, got.p999)] {
            let w = np_percentile(want, q);
            assert!((v - w).abs() < 1e-9, "{what} q{q}: {v} vs {w}");
        }
    };
    check(
        r.overall.dist("itl").unwrap(),
        &gaps_of(&|_| true),
        "overall itl",
    );
    for step in &r.steps {
        let want = gaps_of(&|x| x.phase == step.label);
        check(step.dist("itl").unwrap(), &want, &step.label);
    }
    let t0 = rows
        .iter()
        .filter(|r| r.phase != "warmup")
        .map(|r| r.scheduled.0)
        .min()
        .unwrap();
    assert!(r.windows.len() as f64 >= 58.0 / window_s);
    for w in &r.windows {
        let index = (w.start_s / w.length_s).round() as i64;
        let in_window = |x: &ResultRecord| {
            (x.sent.unwrap().0 - t0).div_euclid((w.length_s * 1e9) as i64) == index
        };
        let want = gaps_of(&in_window);
        let itl = w.stats.latency.get("itl").copied().unwrap_or_default();
        if want.is_empty() {
            assert_eq!(itl.count, 0, "{}", w.stats.label);
        } else {
            check(&itl, &want, &w.stats.label);
        }
        let ttft: Vec<f64> = rows
            .iter()
            .filter(counted)
            .filter(|x| in_window(x))
            .map(|x| x.ttft_us.unwrap() as f64 / 1000.0)
            .collect();
        check(w.stats.dist("ttft").unwrap(), &ttft, "window ttft");
    }
}
