//! Requests set against GPU and server series: both cut into the same time bins (default
//! 2 s, from the first scheduled request); per bin the requests' throughput and latency and
//! the samples' means (an as-of view: a bin's gauge is the mean of the samples taken in it,
//! and a bin without samples borrows the last one before it). Then, for each pair of a
//! resource (GPU utilisation and memory, KV cache, running and waiting requests, the load
//! generator's CPU) and a request figure (throughput, TTFT, E2E, errors): Pearson and
//! Spearman coefficients, and the lag (in bins, either way up to 5) that maximises |r|.
//!
//! Scrape health comes from the `reprise_scrape_up` rows the monitor writes: failed
//! scrapes by class and the gaps they left, per endpoint.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::Serialize;

use crate::series::{KV_CACHE, RUNNING, WAITING};
use crate::{ReportError, Run};

/// One time bin.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bin {
    /// Start, s from the first scheduled request.
    pub start_s: f64,
    /// Series values in this bin, by name (absent when unknown).
    pub values: BTreeMap<String, f64>,
}

/// The relation between two series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Corr {
    /// The resource series.
    pub x: String,
    /// The request series.
    pub y: String,
    /// Bins where both are known.
    pub n: usize,
    /// Pearson's r at lag 0.
    pub pearson: f64,
    /// Spearman's rho at lag 0.
    pub spearman: f64,
    /// The lag maximising |Pearson r|, s (positive: y follows x).
    pub best_lag_s: f64,
    /// Pearson's r at that lag.
    pub best_lag_r: f64,
}

/// One scraped endpoint's health over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceHealth {
    /// The URL.
    pub source: String,
    /// Scrapes attempted.
    pub scrapes: u64,
    /// Scrapes that failed.
    pub failed: u64,
    /// Failures by class.
    pub errors: BTreeMap<String, u64>,
    /// Runs of consecutive failures (gaps in the data).
    pub gaps: u64,
    /// The longest gap, s.
    pub longest_gap_s: f64,
}

/// Everything this module finds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Correlation {
    /// Bin length, s.
    pub bin_s: f64,
    /// The binned series.
    pub bins: Vec<Bin>,
    /// Every pair with at least [`MIN_BINS`] common bins, strongest first.
    pub pairs: Vec<Corr>,
    /// Scraped endpoints.
    pub sources: Vec<SourceHealth>,
}

impl Correlation {
    /// A pair's result.
    pub fn get(&self, x: &str, y: &str) -> Option<&Corr> {
        self.pairs.iter().find(|c| c.x == x && c.y == y)
    }
}

/// Pairs need this many common bins.
pub const MIN_BINS: usize = 5;
const MAX_LAG: i64 = 5;

/// Resource series.
pub const RESOURCES: [&str; 7] = [
    "gpu_util_pct",
    "gpu_mem_pct",
    "kv_cache_pct",
    "running",
    "waiting",
    "host_cpu_pct",
    "client_queue_p99_ms",
];

/// Request series.
pub const REQUESTS: [&str; 6] = [
    "throughput_rps",
    "output_tokens_per_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "e2e_mean_ms",
    "error_rate",
];

/// Pearson's r of paired values (NaN when either is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let (mx, my) = (
        x[..n].iter().sum::<f64>() / n as f64,
        y[..n].iter().sum::<f64>() / n as f64,
    );
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (a, b) = (x[i] - mx, y[i] - my);
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks with ties averaged (1-based).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rho (Pearson of the ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// The paired values of two series where both are known, y shifted by `lag` bins.
fn paired(bins: &[Bin], x: &str, y: &str, lag: i64) -> (Vec<f64>, Vec<f64>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (i, bin) in bins.iter().enumerate() {
        let j = i as i64 + lag;
        if j < 0 || j >= bins.len() as i64 {
            continue;
        }
        if let (Some(&u), Some(&v)) = (bin.values.get(x), bins[j as usize].values.get(y))
            && u.is_finite()
            && v.is_finite()
        {
            a.push(u);
            b.push(v);
        }
    }
    (a, b)
}

fn map_of(df: &DataFrame, key: &str, value: &str) -> Result<BTreeMap<i64, f64>, ReportError> {
    let k = df.column(key)?.cast(&DataType::Int64)?;
    let v = df.column(value)?.cast(&DataType::Float64)?;
    Ok(k.i64()?
        .iter()
        .zip(v.f64()?.iter())
        .filter_map(|(k, v)| Some((k?, v?)))
        .filter(|(_, v)| v.is_finite())
        .collect())
}

/// Bins the run and correlates. `measured` are the measured requests (normalised
/// columns), `t0` the first scheduled time, ns.
pub fn correlate(
    run: &Run,
    measured: &LazyFrame,
    t0: i64,
    bin_s: f64,
) -> Result<Correlation, ReportError> {
    if !(bin_s.is_finite() && bin_s > 0.0) {
        return Err(ReportError::Input(format!(
            "correlation bin length must be positive, got {bin_s}"
        )));
    }
    let bin_ns = ((bin_s * 1e9) as i64).max(1);
    let bin_of = |c: &str| ((col(c).cast(DataType::Int64) - lit(t0)) / lit(bin_ns)).alias("b");
    let mut series: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    // Requests by the bin they were sent in (latency) and finished in (throughput).
    let sent = measured
        .clone()
        .filter(col("sent").is_not_null())
        .with_columns([bin_of("sent")])
        .group_by([col("b")])
        .agg([
            col("ttft_us")
                .filter(col("ok"))
                .quantile(lit(0.5), QuantileMethod::Linear)
                .alias("ttft_p50"),
            col("ttft_us")
                .filter(col("ok"))
                .quantile(lit(0.99), QuantileMethod::Linear)
                .alias("ttft_p99"),
            col("e2e_us").filter(col("ok")).mean().alias("e2e_mean"),
            (lit(1.0) - col("ok").cast(DataType::Float64).mean()).alias("error_rate"),
            col("queue_us")
                .quantile(lit(0.99), QuantileMethod::Linear)
                .alias("queue_p99"),
        ])
        .collect()?;
    let ms = |m: BTreeMap<i64, f64>| m.into_iter().map(|(k, v)| (k, v / 1000.0)).collect();
    series.insert("ttft_p50_ms".into(), ms(map_of(&sent, "b", "ttft_p50")?));
    series.insert("ttft_p99_ms".into(), ms(map_of(&sent, "b", "ttft_p99")?));
    series.insert("e2e_mean_ms".into(), ms(map_of(&sent, "b", "e2e_mean")?));
    series.insert("error_rate".into(), map_of(&sent, "b", "error_rate")?);
    series.insert(
        "client_queue_p99_ms".into(),
        ms(map_of(&sent, "b", "queue_p99")?),
    );
    let done = measured
        .clone()
        .filter(col("ok").and(col("done").is_not_null()))
        .with_columns([bin_of("done")])
        .group_by([col("b")])
        .agg([
            len().cast(DataType::Float64).alias("n"),
            col("n_out").sum().alias("tok"),
        ])
        .collect()?;
    let per_s = |m: BTreeMap<i64, f64>| m.into_iter().map(|(k, v)| (k, v / bin_s)).collect();
    series.insert("throughput_rps".into(), per_s(map_of(&done, "b", "n")?));
    series.insert(
        "output_tokens_per_s".into(),
        per_s(map_of(&done, "b", "tok")?),
    );
    let first_bin = series
        .values()
        .flat_map(|m| m.keys().copied())
        .min()
        .unwrap_or(0);
    let last_bin = series
        .values()
        .flat_map(|m| m.keys().copied())
        .max()
        .unwrap_or(-1);
    // A bin in the run without completions completed none.
    for name in ["throughput_rps", "output_tokens_per_s"] {
        let m = series.entry(name.into()).or_default();
        for b in first_bin..=last_bin {
            m.entry(b).or_insert(0.0);
        }
    }
    // GPU: mean utilisation and memory share over all GPUs per bin.
    if let Some(gpu) = &run.gpu {
        let g = gpu
            .clone()
            .with_columns([bin_of("time")])
            .group_by([col("b")])
            .agg([
                col("util_pct").cast(DataType::Float64).mean().alias("util"),
                (col("mem_used_bytes").cast(DataType::Float64)
                    / col("mem_total_bytes").cast(DataType::Float64)
                    * lit(100.0))
                .mean()
                .alias("mem"),
            ])
            .collect()?;
        series.insert("gpu_util_pct".into(), map_of(&g, "b", "util")?);
        series.insert("gpu_mem_pct".into(), map_of(&g, "b", "mem")?);
    }
    let mut sources = Vec::new();
    if let Some(server) = &run.server {
        let gauge = |names: &[&str], scale: f64| -> Result<BTreeMap<i64, f64>, ReportError> {
            let pred = names
                .iter()
                .fold(lit(false), |acc, n| acc.or(col("metric").eq(lit(*n))));
            // Sum over label sets (e.g. models) within one scrape, then mean over the bin.
            let df = server
                .clone()
                .filter(pred)
                .group_by([col("time"), col("source")])
                .agg([col("value").sum().alias("v")])
                .with_columns([bin_of("time")])
                .group_by([col("b")])
                .agg([(col("v").mean() * lit(scale)).alias("v")])
                .collect()?;
            map_of(&df, "b", "v")
        };
        series.insert("waiting".into(), gauge(&WAITING, 1.0)?);
        series.insert("running".into(), gauge(&RUNNING, 1.0)?);
        series.insert("kv_cache_pct".into(), gauge(&KV_CACHE, 100.0)?);
        series.insert("host_cpu_pct".into(), gauge(&["host_cpu_util_pct"], 1.0)?);
        if series.get("gpu_util_pct").is_none_or(BTreeMap::is_empty) {
            series.insert(
                "gpu_util_pct".into(),
                gauge(&["DCGM_FI_DEV_GPU_UTIL"], 1.0)?,
            );
        }
        sources = source_health(server)?;
    }
    series.retain(|_, m| !m.is_empty());
    // As-of: a resource bin without a sample borrows the last sample before it.
    for name in RESOURCES {
        if let Some(m) = series.get_mut(name) {
            let mut last = None;
            for b in first_bin..=last_bin {
                match m.get(&b) {
                    Some(&v) => last = Some(v),
                    None => {
                        if let Some(v) = last {
                            m.insert(b, v);
                        }
                    }
                }
            }
        }
    }
    let bins: Vec<Bin> = (first_bin..=last_bin.max(first_bin - 1))
        .map(|b| Bin {
            start_s: b as f64 * bin_s,
            values: series
                .iter()
                .filter_map(|(name, m)| m.get(&b).map(|v| (name.clone(), *v)))
                .collect(),
        })
        .collect();
    let mut pairs = Vec::new();
    for x in RESOURCES {
        for y in REQUESTS {
            let (a, b) = paired(&bins, x, y, 0);
            if a.len() < MIN_BINS {
                continue;
            }
            let r = pearson(&a, &b);
            if !r.is_finite() {
                continue;
            }
            let mut best = (0i64, r);
            for lag in -MAX_LAG..=MAX_LAG {
                let (a, b) = paired(&bins, x, y, lag);
                if a.len() < MIN_BINS {
                    continue;
                }
                let rl = pearson(&a, &b);
                if rl.is_finite() && rl.abs() > best.1.abs() + 1e-12 {
                    best = (lag, rl);
                }
            }
            pairs.push(Corr {
                x: x.into(),
                y: y.into(),
                n: a.len(),
                pearson: r,
                spearman: spearman(&a, &b),
                best_lag_s: best.0 as f64 * bin_s,
                best_lag_r: best.1,
            });
        }
    }
    pairs.sort_by(|a, b| b.pearson.abs().total_cmp(&a.pearson.abs()));
    Ok(Correlation {
        bin_s,
        bins,
        pairs,
        sources,
    })
}

/// Scrape health per endpoint from `reprise_scrape_up` rows.
fn source_health(server: &LazyFrame) -> Result<Vec<SourceHealth>, ReportError> {
    let df = server
        .clone()
        .filter(col("metric").eq(lit("reprise_scrape_up")))
        .select([
            col("source"),
            col("time").cast(DataType::Int64).alias("t"),
            col("value"),
            col("labels"),
        ])
        .sort(["source", "t"], SortMultipleOptions::default())
        .collect()?;
    let src = df.column("source")?.str()?.clone();
    let t = df.column("t")?.i64()?.clone();
    let v = df.column("value")?.cast(&DataType::Float64)?;
    let v = v.f64()?.clone();
    let labels = df.column("labels")?.str()?.clone();
    let mut out: Vec<SourceHealth> = Vec::new();
    let mut gap_start: Option<i64> = None;
    for i in 0..df.height() {
        let s = src.get(i).unwrap_or_default();
        if out.last().is_none_or(|h| h.source != s) {
            gap_start = None;
            out.push(SourceHealth {
                source: s.to_owned(),
                ..SourceHealth::default()
            });
        }
        let h = out.last_mut().expect("pushed");
        h.scrapes += 1;
        let time = t.get(i).unwrap_or(0);
        if v.get(i).unwrap_or(1.0) < 0.5 {
            h.failed += 1;
            let kind = labels
                .get(i)
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .and_then(|j| j["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".into());
            *h.errors.entry(kind).or_insert(0) += 1;
            if gap_start.is_none() {
                gap_start = Some(time);
                h.gaps += 1;
            }
            let len = (time - gap_start.unwrap_or(time)) as f64 / 1e9;
            h.longest_gap_s = h.longest_gap_s.max(len);
        } else {
            if let Some(g) = gap_start.take() {
                h.longest_gap_s = h.longest_gap_s.max((time - g) as f64 / 1e9);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_have_known_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0, 10.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!(pearson(&x, &[1.0; 5]).is_nan());
        // Monotone but not linear: Spearman 1, Pearson below.
        let y = [1.0, 10.0, 100.0, 1000.0, 10000.0];
        assert!((spearman(&x, &y) - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &y) < 0.9);
        // scipy.stats.pearsonr([1,2,3,4,5],[2,1,4,3,5]) = 0.8; spearmanr also 0.8.
        let z = [2.0, 1.0, 4.0, 3.0, 5.0];
        assert!((pearson(&x, &z) - 0.8).abs() < 1e-12);
        assert!((spearman(&x, &z) - 0.8).abs() < 1e-12);
        // Ties share their average rank: scipy.stats.spearmanr([1,2,2,3],[1,2,3,4]) = 0.9486833.
        assert!(
            (spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]) - 0.948_683_298_050_513_8)
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn the_lag_is_found() {
        // y follows x two bins later.
        let xs = [0.0, 1.0, 5.0, 2.0, 8.0, 3.0, 9.0, 1.0, 4.0, 7.0, 2.0, 6.0];
        let bins: Vec<Bin> = (0..xs.len())
            .map(|i| Bin {
                start_s: i as f64,
                values: [
                    ("x".to_owned(), xs[i]),
                    ("y".to_owned(), if i >= 2 { xs[i - 2] } else { 0.0 }),
                ]
                .into(),
            })
            .collect();
        let (a, b) = paired(&bins, "x", "y", 2);
        assert!((pearson(&a, &b) - 1.0).abs() < 1e-12);
        assert_eq!(a.len(), xs.len() - 2);
    }
}
