//! The metrics of `docs/metrics.md`, computed exactly (linear interpolation between
//! order statistics, as numpy's default) by one lazy polars aggregation per grouping: the
//! whole measured run, each phase or step, each time window.
//!
//! Latencies count successful requests only; `queue` counts every request that was sent.
//! Duration is last `done` − first `sent` of the rows in the group.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::Serialize;

use crate::ReportError;

/// Service-level objectives for goodput, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slo {
    /// TTFT at most this.
    pub ttft_ms: Option<f64>,
    /// TPOT at most this.
    pub tpot_ms: Option<f64>,
    /// E2E at most this.
    pub e2e_ms: Option<f64>,
}

impl Slo {
    /// Whether any objective is set.
    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some() || self.e2e_ms.is_some()
    }
}

/// A distribution's summary, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Dist {
    /// Values.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Percentiles.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 95th.
    pub p95: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// The percentiles reported, with their column suffixes.
pub const QUANTILES: [(f64, &str); 5] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.95, "p95"),
    (0.99, "p99"),
    (0.999, "p999"),
];

/// Probabilities at which CDFs are given: every 2%, then the tail to the maximum.
pub const CDF_PROBS: [f64; 57] = [
    0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.22, 0.24, 0.26, 0.28, 0.3,
    0.32, 0.34, 0.36, 0.38, 0.4, 0.42, 0.44, 0.46, 0.48, 0.5, 0.52, 0.54, 0.56, 0.58, 0.6, 0.62,
    0.64, 0.66, 0.68, 0.7, 0.72, 0.74, 0.76, 0.78, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.92, 0.94,
    0.96, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
];

/// The CDF of a latency column over the successful requests of `lf`: (percentile, ms) at
/// [`CDF_PROBS`], interpolated like every other percentile. One sort of the column.
pub fn cdf(lf: LazyFrame, column: &str) -> Result<Vec<(f64, f64)>, ReportError> {
    let df = lf
        .select([col(column)
            .filter(col("ok"))
            .drop_nulls()
            .sort(SortOptions::default())
            .alias("v")])
        .collect()?;
    let v = df.column("v")?.as_materialized_series().rechunk();
    let v = v.f64()?;
    let Some(sorted) = v.cont_slice().ok() else {
        return Ok(Vec::new());
    };
    if sorted.is_empty() {
        return Ok(Vec::new());
    }
    let last = (sorted.len() - 1) as f64;
    Ok(CDF_PROBS
        .iter()
        .map(|&q| {
            let pos = q * last;
            let (lo, hi) = (sorted[pos.floor() as usize], sorted[pos.ceil() as usize]);
            (q * 100.0, (lo + (hi - lo) * (pos - pos.floor())) / 1000.0)
        })
        .collect())
}

/// The latency metrics, by the name used in reports and `summary.json`.
pub const LATENCIES: [(&str, &str); 6] = [
    ("ttft", "ttft_us"),
    ("ttft_sched", "ttft_sched_us"),
    ("tpot", "tpot_us"),
    ("e2e", "e2e_us"),
    ("e2e_sched", "e2e_sched_us"),
    ("queue", "queue_us"),
];

/// Every latency distribution reported, in report order.
pub const REPORTED: [&str; 7] = [
    "ttft",
    "ttft_sched",
    "tpot",
    "itl",
    "e2e",
    "e2e_sched",
    "queue",
];

/// Everything measured over one group of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// `all`, a phase label (`measure`, `concurrency=100`, `rate=20`) or a window start.
    pub label: String,
    /// The step's concurrency or rate, when a step.
    pub step_value: Option<f64>,
    /// Requests.
    pub requests: u64,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests by class.
    pub errors: BTreeMap<String, u64>,
    /// Failed / all.
    pub error_rate: f64,
    /// Last `done` − first `sent`, s.
    pub duration_s: f64,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Output tokens (of successful requests) per second.
    pub output_tokens_per_s: f64,
    /// Prompt and output tokens per second.
    pub total_tokens_per_s: f64,
    /// Successful requests meeting every SLO, per second (when SLOs are given).
    pub goodput: Option<f64>,
    /// Share of successful requests meeting every SLO.
    pub slo_attainment: Option<f64>,
    /// Latency distributions (ms) by metric name (see [`LATENCIES`]), plus `itl`.
    pub latency: BTreeMap<String, Dist>,
    /// Prompt tokens the server served from its prefix cache over the prompt tokens of
    /// the successful requests whose server said (`n_cached_usage`); `None` when none did.
    pub prefix_cache_hit_rate: Option<f64>,
}

impl Stats {
    /// A latency distribution, if measured.
    pub fn dist(&self, name: &str) -> Option<&Dist> {
        self.latency.get(name).filter(|d| d.count > 0)
    }

    /// A percentile of a metric, ms.
    pub fn p(&self, name: &str, which: &str) -> Option<f64> {
        let d = self.dist(name)?;
        Some(match which {
            "p50" => d.p50,
            "p90" => d.p90,
            "p95" => d.p95,
            "p99" => d.p99,
            "p999" => d.p999,
            "mean" => d.mean,
            "max" => d.max,
            "min" => d.min,
            _ => return None,
        })
    }
}

fn dist_exprs(name: &str, values: Expr) -> Vec<Expr> {
    // The percentiles are not polars quantiles: five of them per column and group would
    // sort each column five times. [`fill_percentiles`] selects them in one pass per column.
    vec![
        values.clone().count().alias(format!("{name}__count")),
        values.clone().mean().alias(format!("{name}__mean")),
        values.clone().min().alias(format!("{name}__min")),
        values.max().alias(format!("{name}__max")),
    ]
}

/// Marks a row that belongs to no group in [`fill_percentiles`].
pub const NO_GROUP: u32 = u32::MAX;

/// Linear interpolation between order statistics (numpy's default) over `n` values (n > 0):
/// the position of each probability, and the distinct 0-based ranks (the floor and ceiling
/// of each position) whose values it needs, ascending.
pub(crate) fn rank_plan(n: u64, probs: &[f64]) -> (Vec<f64>, Vec<u64>) {
    let pos: Vec<f64> = probs
        .iter()
        .map(|q| q.clamp(0.0, 1.0) * (n - 1) as f64)
        .collect();
    let mut ranks: Vec<u64> = pos
        .iter()
        .flat_map(|p| [p.floor() as u64, (p.ceil() as u64).min(n - 1)])
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    (pos, ranks)
}

/// The interpolated value at each position of a [`rank_plan`], given the values `at` its
/// ranks.
pub(crate) fn interpolate(n: u64, pos: &[f64], ranks: &[u64], at: &[f64]) -> Vec<f64> {
    let value = |r: u64| at[ranks.partition_point(|&x| x < r)];
    pos.iter()
        .map(|p| {
            let (lo, hi) = (value(p.floor() as u64), value((p.ceil() as u64).min(n - 1)));
            lo + (hi - lo) * (p - p.floor())
        })
        .collect()
}

/// The values of `values` at the 0-based ranks `ranks` (ascending) as they would be in
/// sorted order, by repeated selection on the shrinking unsorted rest: about two passes
/// over the values for the five reported percentiles, instead of a sort.
fn select_ranks(values: &mut [f64], ranks: &[u64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(ranks.len());
    let mut from = 0usize;
    for &r in ranks {
        let r = r as usize;
        let (_, v, _) = values[from..].select_nth_unstable_by(r - from, f64::total_cmp);
        out.push(*v);
        from = r + 1;
    }
    out
}

/// The [`QUANTILES`] of `values` by linear interpolation between order statistics
/// (numpy's default, as polars' `Linear`); NaN when empty. Reorders `values`.
pub fn quantiles_of(values: &mut [f64]) -> [f64; 5] {
    let n = values.len() as u64;
    if n == 0 {
        return [f64::NAN; 5];
    }
    let (pos, ranks) = rank_plan(n, &QUANTILES.map(|(q, _)| q));
    let at = select_ranks(values, &ranks);
    let q = interpolate(n, &pos, &ranks, &at);
    [q[0], q[1], q[2], q[3], q[4]]
}

/// Fills the percentiles of every latency of `stats` (one per group) from `df`, whose rows
/// belong to the groups `ids` ([`NO_GROUP`] for none): each column's values are split by
/// group once, then each group's five percentiles are selected together. `df` needs `ok`
/// and the columns of [`LATENCIES`].
pub fn fill_percentiles(
    df: &DataFrame,
    ids: &[u32],
    stats: &mut [Stats],
) -> Result<(), ReportError> {
    if df.height() != ids.len() {
        return Err(ReportError::Polars(format!(
            "{} group ids for {} rows",
            ids.len(),
            df.height()
        )));
    }
    let groups = stats.len();
    // Which rows count: `ok` for the latencies of successful requests, every row for
    // `queue` — resolved once into group ids per row.
    let ok = df.column("ok")?.bool()?.clone();
    let ok_ids: Vec<u32> = ids
        .iter()
        .zip(ok.iter())
        .map(|(&id, ok)| if ok == Some(true) { id } else { NO_GROUP })
        .collect();
    let mut offsets = vec![0usize; groups + 1];
    let mut values_of_groups: Vec<f64> = Vec::new();
    for (name, column) in LATENCIES {
        let row_ids = if name == "queue" { ids } else { &ok_ids[..] };
        let values = df.column(column)?.cast(&DataType::Float64)?;
        let values = values.f64()?.rechunk();
        let values = values.downcast_as_array();
        let validity = values.validity().filter(|b| b.unset_bits() > 0);
        let valid = |row: usize| validity.is_none_or(|b| b.get_bit(row));
        // Counting sort by group: sizes, offsets, then each value in its group's slot.
        offsets.iter_mut().for_each(|o| *o = 0);
        for (row, &id) in row_ids.iter().enumerate() {
            if (id as usize) < groups && valid(row) {
                offsets[id as usize + 1] += 1;
            }
        }
        for g in 0..groups {
            offsets[g + 1] += offsets[g];
        }
        values_of_groups.clear();
        values_of_groups.resize(offsets[groups], 0.0);
        let mut next = offsets.clone();
        for (row, (&id, &v)) in row_ids.iter().zip(values.values().iter()).enumerate() {
            if (id as usize) < groups && valid(row) {
                values_of_groups[next[id as usize]] = v / 1000.0;
                next[id as usize] += 1;
            }
        }
        for (g, s) in stats.iter_mut().enumerate() {
            let [p50, p90, p95, p99, p999] =
                quantiles_of(&mut values_of_groups[offsets[g]..offsets[g + 1]]);
            let d = s.latency.entry(name.to_owned()).or_default();
            (d.p50, d.p90, d.p95, d.p99, d.p999) = (p50, p90, p95, p99, p999);
        }
    }
    Ok(())
}

/// The group of each row of the string column `key`: the index of its value in `labels`
/// ([`NO_GROUP`] when absent or null).
pub fn ids_by_label(key: &StringChunked, labels: &[String]) -> Vec<u32> {
    let index: std::collections::HashMap<&str, u32> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i as u32))
        .collect();
    let mut last: Option<(&str, u32)> = None;
    key.iter()
        .map(|k| match k {
            None => NO_GROUP,
            Some(k) => match last {
                Some((l, id)) if l == k => id,
                _ => {
                    let id = index.get(k).copied().unwrap_or(NO_GROUP);
                    last = Some((k, id));
                    id
                }
            },
        })
        .collect()
}

/// The latency columns of failed requests set to null, so that they count only
/// successful requests (`queue` counts every request that was sent and is kept). Applied
/// once when the measured requests are read; [`agg_exprs`] expects it.
pub fn mask_failed() -> Vec<Expr> {
    LATENCIES
        .iter()
        .filter(|(name, _)| *name != "queue")
        .map(|(_, column)| {
            when(col("ok"))
                .then(col(*column))
                .otherwise(lit(NULL))
                .alias(*column)
        })
        .collect()
}

/// The aggregation expressions of [`Stats`] (error counts and ITL, which [`crate::gaps`]
/// counts in one pass over the files, are computed apart), over requests whose latencies
/// were masked by [`mask_failed`].
pub fn agg_exprs(slo: &Slo) -> Vec<Expr> {
    let ok = col("ok");
    // Token counts of successful requests only, as null elsewhere: an elementwise mask
    // keeps polars' fast grouped aggregations (a `filter` inside `agg` makes a list per
    // group).
    let if_ok = |e: Expr| when(ok.clone()).then(e).otherwise(lit(NULL));
    let mut v = vec![
        len().alias("requests"),
        ok.clone().cast(DataType::UInt64).sum().alias("ok_n"),
        (col("done").max() - col("sent").min()).alias("span_ns"),
        if_ok(col("n_out")).sum().alias("out_tokens"),
        if_ok(col("n_out").fill_null(lit(0.0)) + col("n_in").fill_null(lit(0.0)))
            .sum()
            .alias("all_tokens"),
        if_ok(col("n_cached")).sum().alias("cached_tokens"),
        if_ok(
            when(col("n_cached").is_not_null())
                .then(col("n_in"))
                .otherwise(lit(NULL)),
        )
        .sum()
        .alias("cached_of"),
    ];
    for (name, column) in LATENCIES {
        v.extend(dist_exprs(name, col(column) / lit(1000.0)));
    }
    if slo.is_set() {
        let mut good = ok.clone();
        for (limit, column) in [
            (slo.ttft_ms, "ttft_us"),
            (slo.tpot_ms, "tpot_us"),
            (slo.e2e_ms, "e2e_us"),
        ] {
            if let Some(ms) = limit {
                // A request without the value (e.g. TPOT of one token) does not fail it.
                good = good.and(col(column).lt_eq(lit(ms * 1000.0)).fill_null(lit(true)));
            }
        }
        v.push(good.cast(DataType::UInt64).sum().alias("good_n"));
    }
    v
}

fn get_f64(df: &DataFrame, name: &str, row: usize) -> Option<f64> {
    let c = df.column(name).ok()?;
    let c = c.cast(&DataType::Float64).ok()?;
    c.f64().ok()?.get(row)
}

/// Reads row `row` of an aggregation made with [`agg_exprs`].
pub fn stats_from_row(df: &DataFrame, row: usize, slo: &Slo) -> Stats {
    let g = |name: &str| get_f64(df, name, row);
    let requests = g("requests").unwrap_or(0.0) as u64;
    let ok = g("ok_n").unwrap_or(0.0) as u64;
    let duration_s = g("span_ns").map_or(0.0, |ns| (ns / 1e9).max(0.0));
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };
    let mut latency = BTreeMap::new();
    for name in LATENCIES.iter().map(|(n, _)| *n) {
        let count = g(&format!("{name}__count")).unwrap_or(0.0) as u64;
        let q = |s: &str| g(&format!("{name}__{s}")).unwrap_or(f64::NAN);
        latency.insert(
            name.to_owned(),
            Dist {
                count,
                mean: q("mean"),
                min: q("min"),
                p50: q("p50"),
                p90: q("p90"),
                p95: q("p95"),
                p99: q("p99"),
                p999: q("p999"),
                max: q("max"),
            },
        );
    }
    let good = slo.is_set().then(|| g("good_n").unwrap_or(0.0));
    Stats {
        label: String::new(),
        step_value: None,
        requests,
        ok,
        errors: BTreeMap::new(),
        error_rate: if requests > 0 {
            (requests - ok) as f64 / requests as f64
        } else {
            0.0
        },
        duration_s,
        request_throughput: per_s(ok as f64),
        output_tokens_per_s: per_s(g("out_tokens").unwrap_or(0.0)),
        total_tokens_per_s: per_s(g("all_tokens").unwrap_or(0.0)),
        goodput: good.map(per_s),
        slo_attainment: good.map(|n| if ok > 0 { n / ok as f64 } else { 0.0 }),
        latency,
        prefix_cache_hit_rate: match (g("cached_tokens"), g("cached_of")) {
            (Some(c), Some(of)) if of > 0.0 => Some(c / of),
            _ => None,
        },
    }
}

/// Error counts by class of `lf`'s failed requests, per value of `key` (or overall).
fn errors_by(lf: LazyFrame, key: Option<&str>) -> Result<Vec<(String, String, u64)>, ReportError> {
    let mut keys = vec![col("error_kind").fill_null(lit("unknown"))];
    if let Some(k) = key {
        keys.push(col(k).cast(DataType::String));
    }
    let df = lf
        .filter(col("ok").not())
        .group_by(keys)
        .agg([len().alias("n")])
        .collect()?;
    let kinds = df.column("error_kind")?.str()?.clone();
    let n = df.column("n")?.cast(&DataType::UInt64)?;
    let n = n.u64()?;
    let group = match key {
        Some(k) => Some(df.column(k)?.str()?.clone()),
        None => None,
    };
    Ok((0..df.height())
        .map(|i| {
            (
                group
                    .as_ref()
                    .and_then(|g| g.get(i))
                    .unwrap_or_default()
                    .to_owned(),
                kinds.get(i).unwrap_or("unknown").to_owned(),
                n.get(i).unwrap_or(0),
            )
        })
        .collect())
}

/// The stats of all of `lf`.
pub fn overall(lf: LazyFrame, slo: &Slo) -> Result<Stats, ReportError> {
    let df = lf.clone().select(agg_exprs(slo)).collect()?;
    let mut s = stats_from_row(&df, 0, slo);
    s.label = "all".into();
    let values = lf.clone().select(latency_columns()).collect()?;
    fill_percentiles(
        &values,
        &vec![0; values.height()],
        std::slice::from_mut(&mut s),
    )?;
    for (_, kind, n) in errors_by(lf, None)? {
        s.errors.insert(kind, n);
    }
    Ok(s)
}

/// `ok` and the latency columns, as [`fill_percentiles`] reads them.
pub fn latency_columns() -> Vec<Expr> {
    std::iter::once(col("ok"))
        .chain(LATENCIES.iter().map(|(_, c)| col(*c)))
        .collect()
}

/// The stats of each phase of `lf`, in the order the phases first appear (by `sent`).
pub fn by_phase(lf: LazyFrame, slo: &Slo) -> Result<Vec<Stats>, ReportError> {
    let mut exprs = agg_exprs(slo);
    exprs.push(col("step_value").first().alias("step_value"));
    exprs.push(col("scheduled").min().alias("first_scheduled"));
    let df = lf
        .clone()
        .group_by([col("phase")])
        .agg(exprs)
        .sort(["first_scheduled"], SortMultipleOptions::default())
        .collect()?;
    let phases = df.column("phase")?.str()?.clone();
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let mut s = stats_from_row(&df, i, slo);
        s.label = phases.get(i).unwrap_or_default().to_owned();
        s.step_value = get_f64(&df, "step_value", i);
        out.push(s);
    }
    let mut columns = latency_columns();
    columns.push(col("phase"));
    let values = lf.clone().select(columns).collect()?;
    let labels: Vec<String> = out.iter().map(|s| s.label.clone()).collect();
    let ids = ids_by_label(values.column("phase")?.str()?, &labels);
    fill_percentiles(&values, &ids, &mut out)?;
    for (phase, kind, n) in errors_by(lf, Some("phase"))? {
        if let Some(s) = out.iter_mut().find(|s| s.label == phase) {
            s.errors.insert(kind, n);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_sorting(values: &[f64], q: f64) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let pos = q * (v.len() - 1) as f64;
        let (lo, hi) = (v[pos.floor() as usize], v[pos.ceil() as usize]);
        lo + (hi - lo) * (pos - pos.floor())
    }

    #[test]
    fn selected_percentiles_equal_sorted_ones_for_every_size_and_ties() {
        let mut x = 12345u64;
        for n in (1..60).chain([99, 100, 101, 999, 1000, 1001, 4321]) {
            for spread in [3u64, 1_000_000] {
                let values: Vec<f64> = (0..n)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((x >> 33) % spread) as f64 / 7.0
                    })
                    .collect();
                let mut work = values.clone();
                let got = quantiles_of(&mut work);
                for ((q, _), g) in QUANTILES.iter().zip(got) {
                    let want = by_sorting(&values, *q);
                    assert!((g - want).abs() < 1e-12, "n {n} q {q}: {g} vs {want}");
                }
            }
        }
        assert!(quantiles_of(&mut []).iter().all(|v| v.is_nan()));
    }
}
