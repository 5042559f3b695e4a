//! The run over time: fixed windows (default 10 s) from the first scheduled request, each
//! with the requests sent in it (throughput, latency percentiles, errors) and the requests
//! the workload scheduled in it (the target rate), so that the achieved rate can be set
//! against the asked one.

use polars::prelude::*;
use serde::Serialize;

use crate::ReportError;
use crate::metrics::{
    NO_GROUP, Slo, Stats, agg_exprs, fill_percentiles, latency_columns, stats_from_row,
};

/// One window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Start, s from the run's first scheduled request.
    pub start_s: f64,
    /// Length, s.
    pub length_s: f64,
    /// Requests scheduled in the window / its length.
    pub target_rate: f64,
    /// Requests sent in the window / its length.
    pub sent_rate: f64,
    /// Stats of the requests sent in the window (throughputs per the window's length).
    pub stats: Stats,
    /// Mean GPU utilisation over the window (all GPUs), % — when `gpu.parquet` exists.
    pub gpu_util_pct: Option<f64>,
}

/// Splits `lf` into windows of `length_s` seconds from `t0` (ns, its first scheduled
/// request).
pub fn windows(
    lf: LazyFrame,
    t0: i64,
    length_s: f64,
    slo: &Slo,
) -> Result<Vec<Window>, ReportError> {
    if !(length_s.is_finite() && length_s > 0.0) {
        return Err(ReportError::Input(format!(
            "window length must be positive, got {length_s}"
        )));
    }
    let w_ns = (length_s * 1e9) as i64;
    let idx = |c: &str| ((col(c) - lit(t0)) / lit(w_ns)).alias("w");
    let mut exprs = agg_exprs(slo);
    exprs.push(len().alias("sent_n"));
    let sent = lf
        .clone()
        .filter(col("sent").is_not_null())
        .with_columns([idx("sent")])
        .group_by([col("w")])
        .agg(exprs)
        .sort(["w"], SortMultipleOptions::default())
        .collect()?;
    let scheduled = lf
        .clone()
        .with_columns([idx("scheduled")])
        .group_by([col("w")])
        .agg([len().alias("n")])
        .collect()?;
    let sched_w = scheduled.column("w")?.i64()?.clone();
    let sched_n = scheduled.column("n")?.cast(&DataType::Float64)?;
    let sched_n = sched_n.f64()?.clone();
    let by_window: std::collections::HashMap<i64, f64> = sched_w
        .iter()
        .zip(sched_n.iter())
        .filter_map(|(w, n)| Some((w?, n?)))
        .collect();
    let target = |w: i64| by_window.get(&w).copied().unwrap_or(0.0);
    let ws = sent.column("w")?.i64()?.clone();
    let mut out = Vec::with_capacity(sent.height());
    for i in 0..sent.height() {
        let w = ws.get(i).unwrap_or(0);
        let mut stats = stats_from_row(&sent, i, slo);
        // Throughputs per window length (requests sent in a window may finish after it).
        let per = |x: f64| x / length_s;
        let span = stats.duration_s;
        if span > 0.0 {
            stats.request_throughput = per(stats.request_throughput * span);
            stats.output_tokens_per_s = per(stats.output_tokens_per_s * span);
            stats.total_tokens_per_s = per(stats.total_tokens_per_s * span);
            stats.goodput = stats.goodput.map(|g| per(g * span));
        } else {
            stats.request_throughput = per(stats.ok as f64);
        }
        stats.duration_s = length_s;
        stats.label = format!("{:.0}s", w as f64 * length_s);
        out.push(Window {
            start_s: w as f64 * length_s,
            length_s,
            target_rate: target(w) / length_s,
            sent_rate: stats.requests as f64 / length_s,
            stats,
            gpu_util_pct: None,
        });
    }
    // Percentiles: each row's window by `sent`, as in the aggregation above.
    let mut columns = latency_columns();
    columns.push(col("sent"));
    let values = lf.select(columns).collect()?;
    let position: std::collections::HashMap<i64, u32> = ws
        .iter()
        .enumerate()
        .filter_map(|(i, w)| Some((w?, i as u32)))
        .collect();
    let ids: Vec<u32> = values
        .column("sent")?
        .i64()?
        .iter()
        .map(|s| {
            s.and_then(|s| position.get(&(s - t0).div_euclid(w_ns.max(1))).copied())
                .unwrap_or(NO_GROUP)
        })
        .collect();
    let mut stats: Vec<Stats> = out.iter().map(|w| w.stats.clone()).collect();
    fill_percentiles(&values, &ids, &mut stats)?;
    for (w, s) in out.iter_mut().zip(stats) {
        w.stats.latency = s.latency;
    }
    Ok(out)
}
