//! `reprise export RUN_DIR --to DIR`: tidy Parquet tables for notebooks, one row per
//! observation, plain column types, no reprise needed to read them:
//!
//! | file | one row per | columns |
//! |---|---|---|
//! | `requests.parquet` | measured request | `phase`, `step_value`, `target`, `ok`, `error_kind`, `scheduled_s`, `sent_s`, `done_s` (s from the first scheduled request), `queue_ms`, `ttft_ms`, `ttft_sched_ms`, `tpot_ms`, `e2e_ms`, `e2e_sched_ms`, `n_in`, `n_out` |
//! | `gaps.parquet` | gap between two content events | `request` (row of requests.parquet), `gap` (0-based), `gap_ms` |
//! | `windows.parquet` | time window | `start_s`, `length_s`, `target_rate`, `sent_rate` + the stats columns |
//! | `steps.parquet` | phase or step | `label`, `step_value` + the stats columns |
//!
//! Stats columns: `requests`, `ok`, `error_rate`, `duration_s`, `request_throughput`,
//! `output_tokens_per_s`, `total_tokens_per_s`, `goodput`, and `{metric}_{stat}_ms` for the
//! metrics ttft, ttft_sched, tpot, itl, e2e, e2e_sched, queue and the stats mean, p50, p90,
//! p95, p99, p999, max.

use std::path::Path;

use polars::prelude::*;

use crate::metrics::{REPORTED, Stats};
use crate::{Report, ReportError, Run};

const STATS: [&str; 7] = ["mean", "p50", "p90", "p95", "p99", "p999", "max"];

fn write(df: &mut DataFrame, path: &Path) -> Result<(), ReportError> {
    let file = std::fs::File::create(path).map_err(|e| ReportError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    ParquetWriter::new(file)
        .finish(df)
        .map_err(|e| ReportError::Polars(format!("{}: {e}", path.display())))?;
    Ok(())
}

fn stats_columns(rows: &[&Stats]) -> Vec<Column> {
    let f = |name: &str, get: &dyn Fn(&Stats) -> Option<f64>| {
        Column::new(
            name.into(),
            rows.iter().map(|s| get(s)).collect::<Vec<Option<f64>>>(),
        )
    };
    let mut cols = vec![
        Column::new(
            "requests".into(),
            rows.iter().map(|s| s.requests).collect::<Vec<u64>>(),
        ),
        Column::new("ok".into(), rows.iter().map(|s| s.ok).collect::<Vec<u64>>()),
        f("error_rate", &|s| Some(s.error_rate)),
        f("duration_s", &|s| Some(s.duration_s)),
        f("request_throughput", &|s| Some(s.request_throughput)),
        f("output_tokens_per_s", &|s| Some(s.output_tokens_per_s)),
        f("total_tokens_per_s", &|s| Some(s.total_tokens_per_s)),
        f("goodput", &|s| s.goodput),
    ];
    for m in REPORTED {
        for st in STATS {
            cols.push(f(&format!("{m}_{st}_ms"), &|s| s.p(m, st)));
        }
    }
    cols
}

/// Writes the tables of `run` (analysed as `report`) into `dir`; returns the files written.
pub fn export(run: &Run, report: &Report, dir: &Path) -> Result<Vec<String>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| ReportError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    let measured = run.requests.clone().filter(col("phase").neq(lit("warmup")));
    let t0 = measured
        .clone()
        .select([col("scheduled").min().alias("t0")])
        .collect()?;
    let t0 = t0.column("t0")?.i64()?.get(0).unwrap_or(0);
    let secs =
        |c: &str| ((col(c) - lit(t0)).cast(DataType::Float64) / lit(1e9)).alias(format!("{c}_s"));
    let ms = |c: &str| (col(format!("{c}_us")) / lit(1000.0)).alias(format!("{c}_ms"));
    let mut requests = measured
        .clone()
        .select([
            col("phase"),
            col("step_value"),
            col("target"),
            col("ok"),
            col("error_kind"),
            secs("scheduled"),
            secs("sent"),
            secs("done"),
            ms("queue"),
            ms("ttft"),
            ms("ttft_sched"),
            ms("tpot"),
            ms("e2e"),
            ms("e2e_sched"),
            col("n_in"),
            col("n_out"),
        ])
        .collect()?;
    write(&mut requests, &dir.join("requests.parquet"))?;

    let mut gaps = measured
        .with_row_index("request", None)
        .select([col("request"), col("itl_us")])
        .explode(
            Selector::ByName {
                names: ["itl_us".into()].into(),
                strict: true,
            },
            ExplodeOptions {
                empty_as_null: false,
                keep_nulls: false,
            },
        )
        .select([
            col("request"),
            (col("itl_us").cast(DataType::Float64) / lit(1000.0)).alias("gap_ms"),
        ])
        .collect()?;
    // The gap's index within its request: rows of a request are consecutive.
    let gap_index: Vec<u32> = {
        let req = gaps.column("request")?.cast(&DataType::UInt64)?;
        let mut last = None;
        let mut k = 0u32;
        req.u64()?
            .iter()
            .map(|r| {
                if r == last {
                    k += 1;
                } else {
                    (last, k) = (r, 0);
                }
                k
            })
            .collect()
    };
    gaps.insert_column(1, Column::new("gap".into(), gap_index))?;
    write(&mut gaps, &dir.join("gaps.parquet"))?;

    let wrows: Vec<&Stats> = report.windows.iter().map(|w| &w.stats).collect();
    let mut cols = vec![
        Column::new(
            "start_s".into(),
            report
                .windows
                .iter()
                .map(|w| w.start_s)
                .collect::<Vec<f64>>(),
        ),
        Column::new(
            "length_s".into(),
            report
                .windows
                .iter()
                .map(|w| w.length_s)
                .collect::<Vec<f64>>(),
        ),
        Column::new(
            "target_rate".into(),
            report
                .windows
                .iter()
                .map(|w| w.target_rate)
                .collect::<Vec<f64>>(),
        ),
        Column::new(
            "sent_rate".into(),
            report
                .windows
                .iter()
                .map(|w| w.sent_rate)
                .collect::<Vec<f64>>(),
        ),
    ];
    cols.extend(stats_columns(&wrows));
    let mut windows = DataFrame::new(report.windows.len(), cols)?;
    write(&mut windows, &dir.join("windows.parquet"))?;

    let steps: Vec<&Stats> = if report.steps.is_empty() {
        vec![&report.overall]
    } else {
        report.steps.iter().collect()
    };
    let mut cols = vec![
        Column::new(
            "label".into(),
            steps
                .iter()
                .map(|s| s.label.clone())
                .collect::<Vec<String>>(),
        ),
        Column::new(
            "step_value".into(),
            steps
                .iter()
                .map(|s| s.step_value)
                .collect::<Vec<Option<f64>>>(),
        ),
    ];
    cols.extend(stats_columns(&steps));
    let mut steps_df = DataFrame::new(steps.len(), cols)?;
    write(&mut steps_df, &dir.join("steps.parquet"))?;
    Ok([
        "requests.parquet",
        "gaps.parquet",
        "windows.parquet",
        "steps.parquet",
    ]
    .iter()
    .map(|f| dir.join(f).display().to_string())
    .collect())
}
