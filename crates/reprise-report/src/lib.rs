//! The analyzer's library (the only reprise crate besides the `reprise-analyze` binary
//! that links polars): lazy polars pipelines over a replay's `result/1` rows, with
//! `gpu/1` and `server/1` beside them when recorded.
//!
//! - [`load`] opens and checks a run directory and normalises its columns;
//! - [`metrics`] computes the metrics of `docs/metrics.md` exactly (percentiles by
//!   linear interpolation), overall and per phase or step;
//! - [`windows`] cuts the run into time windows (achieved against target rate);
//! - [`knee`] finds a ramp's saturation point and diagnoses the bottleneck;
//! - [`side`] averages GPU and server metrics over each step;
//! - [`compare`] sets two runs side by side (bootstrap intervals, regression gates) and
//!   N runs into a scaling table;
//! - [`export`] writes tidy Parquet tables for notebooks;
//! - [`html`] draws the self-contained `report.html` (inline SVG charts);
//! - [`render`] writes `report.md` (the load-test report template, see docs/analyze.md), `summary.json` and the terminal
//!   summary.
//!
//! [`analyze`] runs them all on one run.

pub mod cache;
pub mod compare;
pub mod correlate;
pub mod export;
pub mod gaps;
pub mod html;
pub mod knee;
pub mod load;
pub mod metrics;
pub mod render;
pub mod series;
pub mod side;
pub mod windows;

use std::path::Path;

use polars::prelude::*;
use serde::Serialize;

pub use knee::{Knee, Rules};
pub use load::{Run, open};
pub use metrics::{Dist, Slo, Stats};
pub use windows::Window;

/// Why an analysis failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Missing, malformed or empty input.
    #[error("{0}")]
    Input(String),
    /// A polars error.
    #[error("analysis failed: {0}")]
    Polars(String),
    /// Writing an output.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl From<PolarsError> for ReportError {
    fn from(e: PolarsError) -> Self {
        ReportError::Polars(e.to_string())
    }
}

/// What to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Goodput objectives.
    pub slo: Slo,
    /// Window length, s.
    pub window_s: f64,
    /// Knee search thresholds (`queue_limit_ms` is taken from the run when it says).
    pub rules: Rules,
    /// Seconds of context around each event.
    pub event_context_s: f64,
    /// Bin length of the GPU/server correlation, s.
    pub corr_bin_s: f64,
    /// The server's prefix-cache size in blocks of the trace's `block_tokens`, for the hit
    /// rate the trace implies with an LRU cache of that size (else unbounded only).
    pub cache_blocks: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            slo: Slo::default(),
            window_s: 10.0,
            rules: Rules::default(),
            event_context_s: 30.0,
            corr_bin_s: 2.0,
            cache_blocks: None,
        }
    }
}

/// An event with the run before, during and after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventReport {
    /// The event.
    pub event: load::Event,
    /// Offset of its start from the first scheduled request, s.
    pub offset_s: f64,
    /// Requests sent in the `event_context_s` before it.
    pub before: Stats,
    /// Requests sent while it ran (or within a second of it, for instant events).
    pub during: Stats,
    /// Requests sent in the `event_context_s` after it.
    pub after: Stats,
}

/// The analysis of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `reprise.report/1`.
    pub format: String,
    /// The run.
    pub run_id: String,
    /// Its directory.
    pub dir: String,
    /// The command that made it, when known.
    pub command: Option<Vec<String>>,
    /// Whether the replay ran to its end.
    pub complete: Option<bool>,
    /// Targets and model, when known.
    pub targets: Vec<String>,
    /// Model.
    pub model: Option<String>,
    /// Rows in the result file.
    pub rows: u64,
    /// Warm-up requests left out.
    pub warmup_excluded: u64,
    /// The objectives of goodput.
    pub slo: Slo,
    /// The measured requests together.
    pub overall: Stats,
    /// `concurrency` or `rate` when the run has steps.
    pub step_unit: Option<String>,
    /// Each step (or phase), in order of load.
    pub steps: Vec<Stats>,
    /// GPU and server figures per step (same order; empty when none were recorded).
    pub side: Vec<side::StepSide>,
    /// Window length, s.
    pub window_s: f64,
    /// The run over time.
    pub windows: Vec<Window>,
    /// CDFs of `ttft`, `tpot`, `itl` and `e2e` over the measured requests: (percentile,
    /// ms) points at [`metrics::CDF_PROBS`].
    pub cdf: std::collections::BTreeMap<String, Vec<(f64, f64)>>,
    /// The knee and its diagnosis, for ramps.
    pub knee: Option<Knee>,
    /// The server's prefix-cache hit rate beside the one the trace implies, when either is
    /// known.
    pub cache: Option<cache::CacheFidelity>,
    /// GPU and server series against the requests, when `gpu.parquet` or `server.parquet`
    /// exist.
    pub correlation: Option<correlate::Correlation>,
    /// Events with their surroundings.
    pub events: Vec<EventReport>,
    /// The client's queue limit, ms.
    pub queue_limit_ms: f64,
    /// Whether the client's queue p99 exceeded its limit.
    pub client_behind: bool,
    /// Wall time of each stage of the analysis, s (for benchmarks; not in summary.json).
    #[serde(skip)]
    pub timings: Vec<(&'static str, f64)>,
}

fn step_unit(label: &str) -> Option<&'static str> {
    if label.starts_with("concurrency=") {
        Some("concurrency")
    } else if label.starts_with("rate=") {
        Some("rate")
    } else {
        None
    }
}

/// Analyses the run at `dir`.
pub fn analyze(dir: &Path, opts: &Options) -> Result<Report, ReportError> {
    let run = load::open(dir)?;
    analyze_run(&run, opts)
}

/// Analyses an opened run.
///
/// The gaps (ITL) are counted by [`gaps::pass`] on a thread of its own, started as soon as
/// the windows' origin is known, while polars reads the other columns and aggregates them;
/// the window aggregation hands it the per-window counts that let it free finished windows.
pub fn analyze_run(run: &Run, opts: &Options) -> Result<Report, ReportError> {
    let started = std::time::Instant::now();
    let mut timings: Vec<(&'static str, f64)> = Vec::new();
    let mut last = 0.0;
    let mut mark = |stage: &'static str| {
        let now = started.elapsed().as_secs_f64();
        timings.push((stage, now - last));
        last = now;
    };
    let measured_rows = run.requests.clone().filter(col("phase").neq(lit("warmup")));
    let t0 = first_scheduled(&measured_rows)?;
    let mut plan = gaps::Plan {
        t0,
        window_ns: (opts.window_s * 1e9) as i64,
        ..gaps::Plan::default()
    };
    for e in &run.events {
        plan.ranges.extend(event_ranges(e, opts));
    }
    let window_counts = plan.ok_per_window.clone();
    let stop = plan.stop.clone();
    mark("origin");
    let (report, gaps) = std::thread::scope(|scope| {
        let pass = std::thread::Builder::new()
            .name("reprise-itl".into())
            .spawn_scoped(scope, || {
                let started = std::time::Instant::now();
                gaps::pass(&run.files, &plan).map(|g| (g, started.elapsed().as_secs_f64()))
            })
            .map_err(|e| ReportError::Input(format!("cannot start the ITL pass: {e}")))?;
        let polars_part = {
            // However the polars part ends (an error, a panic), the pass must not wait for
            // window counts that will never come.
            let _release = Release {
                counts: &window_counts,
                stop: &stop,
            };
            polars_stages(run, opts, t0, &window_counts, &mut mark)
        };
        if polars_part.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let gaps = pass
            .join()
            .map_err(|_| ReportError::Input("the ITL pass panicked".into()))?;
        Ok::<_, ReportError>((polars_part?, gaps?))
    })?;
    mark("itl gaps (wait)");
    let (gaps, pass_s) = gaps;
    timings.push(("itl pass (own thread, overlapped)", pass_s));
    let mut report = report;
    apply_gaps(&gaps, &mut report);
    report.timings = timings;
    Ok(report)
}

/// Releases a waiting [`gaps::pass`] when dropped before the window counts were given: it
/// is told to stop and handed an empty map.
struct Release<'a> {
    counts: &'a std::sync::OnceLock<std::collections::HashMap<i64, u64>>,
    stop: &'a std::sync::atomic::AtomicBool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.counts.get().is_none() {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = self.counts.set(std::collections::HashMap::new());
        }
    }
}

/// Everything but the gaps: one read of the measured requests (without their gap lists or
/// target URLs), then every aggregation on them in memory.
fn polars_stages(
    run: &Run,
    opts: &Options,
    t0: i64,
    window_counts: &std::sync::OnceLock<std::collections::HashMap<i64, u64>>,
    mark: &mut impl FnMut(&'static str),
) -> Result<Report, ReportError> {
    let measured = run
        .requests
        .clone()
        .filter(col("phase").neq(lit("warmup")))
        .drop(by_name(["itl_us", "target"], true, false))
        .with_columns(metrics::mask_failed())
        .collect()?
        .lazy();
    mark("read");
    let mut windows = windows::windows(measured.clone(), t0, opts.window_s, &opts.slo)?;
    let _ = window_counts.set(
        windows
            .iter()
            .map(|w| (window_index(w), w.stats.ok))
            .collect(),
    );
    side::per_window(run, t0, opts.window_s, &mut windows)?;
    mark("windows");
    let overall = metrics::overall(measured.clone(), &opts.slo)?;
    mark("overall");
    let warmup_excluded = run.rows.saturating_sub(overall.requests);
    if overall.requests == 0 {
        return Err(ReportError::Input(format!(
            "{}: no measured requests ({} rows, all warm-up or none)",
            run.dir.display(),
            run.rows
        )));
    }
    let phases = metrics::by_phase(measured.clone(), &opts.slo)?;
    mark("steps");
    let unit = phases
        .iter()
        .find_map(|s| step_unit(&s.label))
        .map(str::to_owned);
    let mut steps = if phases.len() > 1 || unit.is_some() {
        phases
    } else {
        Vec::new()
    };
    if unit.is_some() {
        steps.sort_by(|a, b| {
            a.step_value
                .unwrap_or(0.0)
                .total_cmp(&b.step_value.unwrap_or(0.0))
        });
    }
    let side = side::per_step(run, &measured, &steps)?;
    mark("side");
    let correlation = if run.gpu.is_some() || run.server.is_some() {
        Some(correlate::correlate(run, &measured, t0, opts.corr_bin_s)?)
    } else {
        None
    };
    mark("correlation");
    let mut cdf = std::collections::BTreeMap::new();
    for (name, column) in [("ttft", "ttft_us"), ("tpot", "tpot_us"), ("e2e", "e2e_us")] {
        cdf.insert(name.to_owned(), metrics::cdf(measured.clone(), column)?);
    }
    mark("cdf");
    let mut rules = opts.rules;
    rules.queue_limit_ms = run.queue_limit_ms;
    let knee = unit
        .as_deref()
        .and_then(|u| knee::find_with(&steps, &side, &rules, u, correlation.as_ref()));
    mark("knee");
    let events = event_reports(run, &measured, opts, t0)?;
    mark("events");
    // The cache size: as given, else the simulator's profile the replay recorded.
    let cache_blocks = opts.cache_blocks.or_else(|| {
        let (tokens, block) = (run.server_cache_tokens?, run.block_tokens?);
        (block > 0).then(|| tokens / u64::from(block))
    });
    let cache = cache::fidelity(run, overall.prefix_cache_hit_rate, cache_blocks)?;
    mark("prefix cache");
    let info = run.info.as_ref();
    let client_behind = overall
        .p("queue", "p99")
        .is_some_and(|q| q > run.queue_limit_ms);
    Ok(Report {
        format: "reprise.report/1".into(),
        run_id: run.run_id.clone(),
        dir: run.dir.display().to_string(),
        command: info.map(|i| i.command.clone()).filter(|c| !c.is_empty()),
        complete: info.map(|i| i.complete),
        targets: info.map(|i| i.config.targets.clone()).unwrap_or_default(),
        model: info
            .map(|i| i.config.model.clone())
            .filter(|m| !m.is_empty()),
        rows: run.rows,
        warmup_excluded,
        slo: opts.slo,
        overall,
        step_unit: unit,
        steps,
        side,
        window_s: opts.window_s,
        windows,
        cdf,
        knee,
        cache,
        correlation,
        events,
        queue_limit_ms: run.queue_limit_ms,
        client_behind,
        timings: Vec::new(),
    })
}

/// The index of a window (its start over its length), as [`gaps::pass`] numbers them.
fn window_index(w: &Window) -> i64 {
    (w.start_s / w.length_s).round() as i64
}

/// Fills in the ITL distributions counted by [`gaps::pass`].
fn apply_gaps(g: &gaps::Gaps, report: &mut Report) {
    report.overall.latency.insert("itl".into(), g.overall);
    for s in report.steps.iter_mut() {
        s.latency.insert(
            "itl".into(),
            g.phases.get(&s.label).copied().unwrap_or_default(),
        );
    }
    for w in report.windows.iter_mut() {
        let d = g.windows.get(&window_index(w)).copied().unwrap_or_default();
        w.stats.latency.insert("itl".into(), d);
    }
    for (e, d) in report.events.iter_mut().zip(g.ranges.chunks(3)) {
        e.before.latency.insert("itl".into(), d[0]);
        e.during.latency.insert("itl".into(), d[1]);
        e.after.latency.insert("itl".into(), d[2]);
    }
    report.cdf.insert("itl".into(), g.cdf.clone());
}

/// The first scheduled time of `lf`, ns (the origin of windows and event offsets).
fn first_scheduled(lf: &LazyFrame) -> Result<i64, ReportError> {
    let t0 = lf
        .clone()
        .select([col("scheduled").min().alias("t0")])
        .collect()?;
    Ok(t0.column("t0")?.i64()?.get(0).unwrap_or(0))
}

/// The spans of `sent` (ns, half-open) before, during and after an event.
fn event_ranges(e: &load::Event, opts: &Options) -> [(i64, i64); 3] {
    let ctx = (opts.event_context_s * 1e9) as i64;
    let end = e.finished_ns.max(e.started_ns + 1_000_000_000);
    [
        (e.started_ns - ctx, e.started_ns),
        (e.started_ns, end),
        (end, end + ctx),
    ]
}

fn event_reports(
    run: &Run,
    measured: &LazyFrame,
    opts: &Options,
    t0: i64,
) -> Result<Vec<EventReport>, ReportError> {
    let between = |(a, b): (i64, i64), label: &str| -> Result<Stats, ReportError> {
        let mut s = metrics::overall(
            measured
                .clone()
                .filter(col("sent").gt_eq(lit(a)).and(col("sent").lt(lit(b)))),
            &opts.slo,
        )?;
        s.label = label.into();
        Ok(s)
    };
    run.events
        .iter()
        .map(|e| {
            let [before, during, after] = event_ranges(e, opts);
            Ok(EventReport {
                event: e.clone(),
                offset_s: (e.started_ns - t0) as f64 / 1e9,
                before: between(before, "before")?,
                during: between(during, "during")?,
                after: between(after, "after")?,
            })
        })
        .collect()
}
