//! A/B comparison of two runs (a model, config or version change) and the scaling table
//! of N runs.
//!
//! Every metric is set side by side with its relative change. Latency percentiles get a
//! bootstrap 95% confidence interval of the relative change (each run's successful
//! requests resampled with replacement, at most [`BOOT_SAMPLE`] values a run, [`BOOT_ROUNDS`]
//! rounds, a fixed seed): a change is significant when the interval excludes zero. The
//! error rate is compared with a two-proportion z-test. A metric regresses when it worsens
//! by more than its threshold *and* the change is significant.

use std::collections::BTreeMap;

use polars::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::{Options, Report, ReportError, Run};

/// Values per run the bootstrap draws from.
pub const BOOT_SAMPLE: usize = 20_000;
/// Bootstrap rounds.
pub const BOOT_ROUNDS: usize = 300;

/// One compared metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// e.g. `ttft.p99`, `request_throughput`, `error_rate`.
    pub metric: String,
    /// The base run's value.
    pub base: f64,
    /// The new run's value.
    pub new: f64,
    /// (new − base) / base.
    pub relative: f64,
    /// 95% interval of the relative change, when bootstrapped.
    pub ci: Option<(f64, f64)>,
    /// Whether the change is significant at 95%.
    pub significant: bool,
    /// Whether higher is better (throughput) or worse (latency, errors).
    pub higher_is_better: bool,
    /// The threshold of worsening given for it.
    pub threshold: Option<f64>,
    /// Worse by more than the threshold, significantly.
    pub regression: bool,
}

/// Two runs compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// `reprise.compare/1`.
    pub format: String,
    /// The base run's id.
    pub base: String,
    /// The new run's id.
    pub new: String,
    /// Every metric.
    pub changes: Vec<Change>,
    /// The regressions' metric names.
    pub regressions: Vec<String>,
}

fn ok_values(run: &Run, column: &str) -> Result<Vec<f64>, ReportError> {
    let df = run
        .requests
        .clone()
        .filter(col("phase").neq(lit("warmup")).and(col("ok")))
        .select([col(column).alias("v")])
        .drop_nulls(None)
        .collect()?;
    Ok(df
        .column("v")?
        .f64()?
        .into_no_null_iter()
        .map(|x| x / 1000.0)
        .collect())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn subsample(mut v: Vec<f64>, rng: &mut StdRng) -> Vec<f64> {
    if v.len() > BOOT_SAMPLE {
        // Partial Fisher-Yates: a uniform sample without replacement.
        for i in 0..BOOT_SAMPLE {
            let j = rng.random_range(i..v.len());
            v.swap(i, j);
        }
        v.truncate(BOOT_SAMPLE);
    }
    v
}

/// The 95% bootstrap interval of the relative change of quantile `q`.
pub fn bootstrap_ci(base: &[f64], new: &[f64], q: f64, rng: &mut StdRng) -> Option<(f64, f64)> {
    if base.len() < 2 || new.len() < 2 {
        return None;
    }
    let mut buf_a = vec![0.0; base.len()];
    let mut buf_b = vec![0.0; new.len()];
    let mut rel = Vec::with_capacity(BOOT_ROUNDS);
    for _ in 0..BOOT_ROUNDS {
        for x in buf_a.iter_mut() {
            *x = base[rng.random_range(0..base.len())];
        }
        for x in buf_b.iter_mut() {
            *x = new[rng.random_range(0..new.len())];
        }
        buf_a.sort_by(f64::total_cmp);
        buf_b.sort_by(f64::total_cmp);
        let a = quantile(&buf_a, q);
        if a > 0.0 {
            rel.push(quantile(&buf_b, q) / a - 1.0);
        }
    }
    if rel.len() < BOOT_ROUNDS / 2 {
        return None;
    }
    rel.sort_by(f64::total_cmp);
    Some((quantile(&rel, 0.025), quantile(&rel, 0.975)))
}

/// Two-sided two-proportion z-test at 95%.
fn proportions_differ(k1: u64, n1: u64, k2: u64, n2: u64) -> bool {
    if n1 == 0 || n2 == 0 {
        return false;
    }
    let (p1, p2) = (k1 as f64 / n1 as f64, k2 as f64 / n2 as f64);
    let p = (k1 + k2) as f64 / (n1 + n2) as f64;
    let se = (p * (1.0 - p) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    if se == 0.0 {
        return p1 != p2;
    }
    ((p1 - p2) / se).abs() > 1.96
}

/// Compares `new` against `base`. `thresholds` maps metric names (`ttft.p99`,
/// `request_throughput`, `error_rate`, ...) to the worsening allowed (0.1 = 10%; for the
/// error rate, an absolute difference).
pub fn compare(
    base: (&Run, &Report),
    new: (&Run, &Report),
    thresholds: &BTreeMap<String, f64>,
    seed: u64,
) -> Result<Comparison, ReportError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut changes = Vec::new();
    let (a, b) = (&base.1.overall, &new.1.overall);
    for (name, column) in [
        ("ttft", "ttft_us"),
        ("tpot", "tpot_us"),
        ("e2e", "e2e_us"),
        ("ttft_sched", "ttft_sched_us"),
    ] {
        let va = subsample(ok_values(base.0, column)?, &mut rng);
        let vb = subsample(ok_values(new.0, column)?, &mut rng);
        if va.is_empty() || vb.is_empty() {
            continue;
        }
        for (q, suffix) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
            let (x, y) = (a.p(name, suffix), b.p(name, suffix));
            let (Some(x), Some(y)) = (x, y) else { continue };
            let ci = bootstrap_ci(&va, &vb, q, &mut rng);
            let metric = format!("{name}.{suffix}");
            changes.push(change(
                metric,
                x,
                y,
                ci,
                ci.is_some_and(|(lo, hi)| lo > 0.0 || hi < 0.0),
                false,
                thresholds,
            ));
        }
    }
    for (metric, x, y) in [
        (
            "request_throughput",
            a.request_throughput,
            b.request_throughput,
        ),
        (
            "output_tokens_per_s",
            a.output_tokens_per_s,
            b.output_tokens_per_s,
        ),
    ] {
        // A single figure per run: any change beyond the threshold counts.
        changes.push(change(metric.into(), x, y, None, true, true, thresholds));
    }
    let err = {
        let significant =
            proportions_differ(a.requests - a.ok, a.requests, b.requests - b.ok, b.requests);
        let t = thresholds.get("error_rate").copied();
        Change {
            metric: "error_rate".into(),
            base: a.error_rate,
            new: b.error_rate,
            relative: if a.error_rate > 0.0 {
                b.error_rate / a.error_rate - 1.0
            } else if b.error_rate > 0.0 {
                f64::INFINITY
            } else {
                0.0
            },
            ci: None,
            significant,
            higher_is_better: false,
            threshold: t,
            regression: t.is_some_and(|t| significant && b.error_rate - a.error_rate > t),
        }
    };
    changes.push(err);
    let regressions = changes
        .iter()
        .filter(|c| c.regression)
        .map(|c| c.metric.clone())
        .collect();
    Ok(Comparison {
        format: "reprise.compare/1".into(),
        base: base.1.run_id.clone(),
        new: new.1.run_id.clone(),
        changes,
        regressions,
    })
}

fn change(
    metric: String,
    base: f64,
    new: f64,
    ci: Option<(f64, f64)>,
    significant: bool,
    higher_is_better: bool,
    thresholds: &BTreeMap<String, f64>,
) -> Change {
    let relative = if base != 0.0 { new / base - 1.0 } else { 0.0 };
    let threshold = thresholds.get(&metric).copied();
    let worse = if higher_is_better {
        -relative
    } else {
        relative
    };
    Change {
        regression: threshold.is_some_and(|t| significant && worse > t),
        metric,
        base,
        new,
        relative,
        ci,
        significant,
        higher_is_better,
        threshold,
    }
}

/// Markdown of a comparison.
pub fn markdown(c: &Comparison) -> String {
    let mut m = format!(
        "## A/B comparison\n\nbase `{}` → new `{}`\n\n| metric | base | new | change | 95% CI | significant | verdict |\n|---|---|---|---|---|---|---|\n",
        c.base, c.new
    );
    for ch in &c.changes {
        let verdict = if ch.regression {
            "**regression**"
        } else if !ch.significant || ch.relative == 0.0 {
            "same"
        } else if (ch.relative > 0.0) == ch.higher_is_better {
            "better"
        } else {
            "worse"
        };
        m.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:+.1}% | {} | {} | {} |\n",
            ch.metric,
            ch.base,
            ch.new,
            ch.relative * 100.0,
            ch.ci.map_or("–".into(), |(lo, hi)| format!(
                "{:+.1}% .. {:+.1}%",
                lo * 100.0,
                hi * 100.0
            )),
            if ch.significant { "yes" } else { "no" },
            verdict
        ));
    }
    if c.regressions.is_empty() {
        m.push_str("\nNo regression beyond the thresholds given.\n");
    } else {
        m.push_str(&format!("\nRegressions: {}.\n", c.regressions.join(", ")));
    }
    m
}

/// One run of a scaling series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingRow {
    /// The run.
    pub run_id: String,
    /// Replicas (targets) it ran against.
    pub replicas: f64,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// P99 TTFT, ms.
    pub ttft_p99: Option<f64>,
    /// Throughput / (first run's throughput × replicas / first run's replicas).
    pub efficiency: f64,
}

/// The scaling table of runs against 1, 2, 4... replicas (`replicas` per run; from each
/// run's target count when not given).
pub fn scaling(reports: &[Report], replicas: Option<&[f64]>) -> Vec<ScalingRow> {
    let reps: Vec<f64> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            replicas
                .and_then(|x| x.get(i).copied())
                .unwrap_or(r.targets.len().max(1) as f64)
        })
        .collect();
    let (r0, t0) = match reports.first() {
        Some(r) => (reps[0], r.overall.request_throughput),
        None => return Vec::new(),
    };
    reports
        .iter()
        .zip(&reps)
        .map(|(r, &k)| ScalingRow {
            run_id: r.run_id.clone(),
            replicas: k,
            request_throughput: r.overall.request_throughput,
            ttft_p99: r.overall.p("ttft", "p99"),
            efficiency: if t0 > 0.0 {
                r.overall.request_throughput / (t0 * k / r0)
            } else {
                0.0
            },
        })
        .collect()
}

/// Markdown of a scaling table.
pub fn scaling_markdown(rows: &[ScalingRow]) -> String {
    let mut m = String::from(
        "\n## Scaling\n\n| run | replicas | req/s | P99 TTFT (ms) | efficiency |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        m.push_str(&format!(
            "| {} | {} | {:.2} | {} | {:.0}% |\n",
            r.run_id,
            r.replicas,
            r.request_throughput,
            r.ttft_p99.map_or("–".into(), |v| format!("{v:.1}")),
            r.efficiency * 100.0
        ));
    }
    m
}

/// Opens and analyses run directories, each once.
pub fn open_all(
    dirs: &[std::path::PathBuf],
    opts: &Options,
) -> Result<Vec<(Run, Report)>, ReportError> {
    dirs.iter()
        .map(|d| {
            let run = crate::load::open(d)?;
            let report = crate::analyze_run(&run, opts)?;
            Ok((run, report))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_separates_a_real_shift_from_noise() {
        let mut rng = StdRng::seed_from_u64(3);
        let a: Vec<f64> = (0..2000).map(|i| 100.0 + (i % 100) as f64).collect();
        let same: Vec<f64> = (0..2000).map(|i| 100.0 + ((i * 7) % 100) as f64).collect();
        let shifted: Vec<f64> = a.iter().map(|x| x * 1.2).collect();
        let (lo, hi) = bootstrap_ci(&a, &same, 0.5, &mut rng).unwrap();
        assert!(lo <= 0.0 && hi >= 0.0, "{lo} {hi}");
        let (lo, hi) = bootstrap_ci(&a, &shifted, 0.5, &mut rng).unwrap();
        assert!(lo > 0.15 && hi < 0.25, "{lo} {hi}");
    }

    #[test]
    fn proportions() {
        assert!(!proportions_differ(10, 1000, 12, 1000));
        assert!(proportions_differ(10, 1000, 80, 1000));
    }
}
