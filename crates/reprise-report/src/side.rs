//! GPU (`gpu/1`) and server (`server/1`) measurements averaged over each step's time span
//! (first `sent` to last `done` of its requests), for the step table and the diagnosis.

use polars::prelude::*;
use serde::Serialize;

use crate::metrics::Stats;
use crate::series::{KV_CACHE, RUNNING, WAITING};
use crate::{ReportError, Run};

/// Measurements beside a step, from the server's metrics and the GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StepSide {
    /// Mean GPU utilisation, %.
    pub gpu_util_pct: Option<f64>,
    /// Mean GPU memory used / total, %.
    pub gpu_mem_pct: Option<f64>,
    /// Mean of the server's waiting-requests gauge (`vllm:num_requests_waiting` or alike).
    pub server_waiting: Option<f64>,
    /// Mean of the server's KV-cache usage gauge, % (`vllm:gpu_cache_usage_perc` or alike).
    pub kv_cache_pct: Option<f64>,
    /// Mean of the server's running-requests gauge: the achieved batch size.
    pub server_running: Option<f64>,
    /// Mean CPU utilisation of the load generator's host, %.
    pub host_cpu_pct: Option<f64>,
}

fn mean_in(
    lf: &LazyFrame,
    value: Expr,
    filter: Option<Expr>,
    from: i64,
    to: i64,
) -> Result<Option<f64>, ReportError> {
    let t = col("time").cast(DataType::Int64);
    let mut pred = t.clone().gt_eq(lit(from)).and(t.lt_eq(lit(to)));
    if let Some(f) = filter {
        pred = pred.and(f);
    }
    let df = lf
        .clone()
        .filter(pred)
        .select([value.cast(DataType::Float64).mean().alias("m")])
        .collect()?;
    Ok(df.column("m")?.f64()?.get(0))
}

/// The side figures of each step (empty when neither GPU nor server data exist).
pub fn per_step(
    run: &Run,
    measured: &LazyFrame,
    steps: &[Stats],
) -> Result<Vec<StepSide>, ReportError> {
    if steps.is_empty() || (run.gpu.is_none() && run.server.is_none()) {
        return Ok(Vec::new());
    }
    let spans = measured
        .clone()
        .group_by([col("phase")])
        .agg([
            col("sent").min().alias("from"),
            col("done").max().alias("to"),
        ])
        .collect()?;
    let phases = spans.column("phase")?.str()?.clone();
    let from = spans.column("from")?.i64()?.clone();
    let to = spans.column("to")?.i64()?.clone();
    let span = |label: &str| {
        (0..spans.height())
            .find(|&i| phases.get(i) == Some(label))
            .and_then(|i| Some((from.get(i)?, to.get(i)?)))
    };
    let names = |list: &[&str]| {
        list.iter()
            .fold(lit(false), |acc, n| acc.or(col("metric").eq(lit(*n))))
    };
    let mut out = Vec::with_capacity(steps.len());
    for s in steps {
        let mut side = StepSide::default();
        if let Some((a, b)) = span(&s.label) {
            if let Some(gpu) = &run.gpu {
                side.gpu_util_pct = mean_in(gpu, col("util_pct"), None, a, b)?;
                side.gpu_mem_pct = mean_in(
                    gpu,
                    col("mem_used_bytes").cast(DataType::Float64)
                        / col("mem_total_bytes").cast(DataType::Float64)
                        * lit(100.0),
                    None,
                    a,
                    b,
                )?;
            }
            if let Some(server) = &run.server {
                side.server_waiting = mean_in(server, col("value"), Some(names(&WAITING)), a, b)?;
                side.kv_cache_pct =
                    mean_in(server, col("value"), Some(names(&KV_CACHE)), a, b)?.map(|f| f * 100.0);
                side.server_running = mean_in(server, col("value"), Some(names(&RUNNING)), a, b)?;
                side.host_cpu_pct = mean_in(
                    server,
                    col("value"),
                    Some(names(&["host_cpu_util_pct"])),
                    a,
                    b,
                )?;
            }
        }
        out.push(side);
    }
    Ok(out)
}

/// Sets each window's mean GPU utilisation (over all GPUs) from `gpu.parquet`, windows
/// counted from `t0` (ns) like the requests'.
pub fn per_window(
    run: &Run,
    t0: i64,
    window_s: f64,
    windows: &mut [crate::Window],
) -> Result<(), ReportError> {
    let Some(gpu) = &run.gpu else {
        return Ok(());
    };
    let w_ns = (window_s * 1e9) as i64;
    let df = gpu
        .clone()
        .filter(col("util_pct").is_not_null())
        .with_columns([((col("time").cast(DataType::Int64) - lit(t0)) / lit(w_ns)).alias("w")])
        .filter(col("time").cast(DataType::Int64).gt_eq(lit(t0)))
        .group_by([col("w")])
        .agg([col("util_pct").cast(DataType::Float64).mean().alias("util")])
        .collect()?;
    let w = df.column("w")?.i64()?.clone();
    let util = df.column("util")?.f64()?.clone();
    let by: std::collections::HashMap<i64, f64> = w
        .iter()
        .zip(util.iter())
        .filter_map(|(w, u)| Some((w?, u?)))
        .collect();
    for win in windows {
        let i = (win.start_s / win.length_s).round() as i64;
        win.gpu_util_pct = by.get(&i).copied();
    }
    Ok(())
}
