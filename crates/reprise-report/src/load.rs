//! Opening a run directory: `requests.parquet` (result/1, a file or a directory of parts)
//! checked by reprise's own reader first — so a truncated file, a foreign format or a
//! missing column is a one-line error naming the file — then scanned lazily by polars
//! with the columns the analysis uses, normalised (timestamps as ns integers, token counts
//! from `usage` or else the client's count, an `ok` flag).

use std::path::{Path, PathBuf};

use polars::prelude::*;
use reprise_trace::run::RunInfo;
use reprise_trace::{DatasetReader, ResultRecord};

use crate::ReportError;

/// An event recorded during a run (`run.json` → `summary.events`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    /// What happened (e.g. `http POST http://host/admin/reload`).
    pub action: String,
    /// Wall-clock start and end, ns since the epoch.
    pub started_ns: i64,
    /// When it finished.
    pub finished_ns: i64,
    /// Whether it succeeded.
    pub ok: bool,
}

/// One run, ready to analyse.
#[derive(Clone)]
pub struct Run {
    /// The run directory.
    pub dir: PathBuf,
    /// Its id (`run.json`, else the directory name).
    pub run_id: String,
    /// `run.json` as written by `reprise replay`, when present.
    pub info: Option<RunInfo>,
    /// The requests, normalised (see [`columns`]).
    pub requests: LazyFrame,
    /// Rows in `requests.parquet`.
    pub rows: u64,
    /// The result files (one, or the parts of a directory, in order).
    pub files: Vec<PathBuf>,
    /// `gpu.parquet` (gpu/1), when present.
    pub gpu: Option<LazyFrame>,
    /// `server.parquet` (server/1), when present.
    pub server: Option<LazyFrame>,
    /// Events during the run.
    pub events: Vec<Event>,
    /// The client's queue limit (ms) above which it "could not keep up".
    pub queue_limit_ms: f64,
    /// Tokens a `prefix_hashes` block covers (`reprise.block_tokens` of the replayed
    /// trace, carried into the result file), when known.
    pub block_tokens: Option<u32>,
    /// The target's prefix-cache capacity in tokens, when the replay knew it (the
    /// in-process simulator's profile: `reprise.server_cache_tokens`).
    pub server_cache_tokens: Option<u64>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("dir", &self.dir)
            .field("run_id", &self.run_id)
            .field("rows", &self.rows)
            .field("gpu", &self.gpu.is_some())
            .field("server", &self.server.is_some())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The normalised columns of [`Run::requests`]:
/// `phase` (str), `step_value` (f64), `target` (str), `ok` (bool), `error_kind` (str),
/// `scheduled`, `sent`, `done` (i64 ns, null when absent), `queue_us`, `ttft_us`,
/// `ttft_sched_us`, `tpot_us`, `e2e_us`, `e2e_sched_us` (f64 µs), `itl_us` (list of u32),
/// `n_in`, `n_out` (f64 tokens).
pub fn columns() -> &'static [&'static str] {
    &[
        "phase",
        "step_value",
        "target",
        "ok",
        "error_kind",
        "scheduled",
        "sent",
        "done",
        "queue_us",
        "ttft_us",
        "ttft_sched_us",
        "tpot_us",
        "e2e_us",
        "e2e_sched_us",
        "itl_us",
        "n_in",
        "n_out",
    ]
}

/// Where a run's requests are: `requests.parquet` (file or directory of parts), or the
/// path itself when it is a result file.
fn requests_path(dir: &Path) -> Result<PathBuf, ReportError> {
    if dir.is_file() {
        return Ok(dir.to_owned());
    }
    let p = dir.join("requests.parquet");
    if p.exists() {
        return Ok(p);
    }
    Err(ReportError::Input(format!(
        "{}: no requests.parquet (is this a run directory of `reprise replay`?)",
        dir.display()
    )))
}

/// The parquet files of a dataset (one file, or the parts of a directory, in order).
fn files(path: &Path) -> Result<Vec<PathBuf>, ReportError> {
    reprise_trace::reader::dataset_files(path).map_err(|e| ReportError::Input(e.to_string()))
}

pub(crate) fn scan(files: &[PathBuf]) -> Result<LazyFrame, ReportError> {
    let frames = files
        .iter()
        .map(|f| {
            LazyFrame::scan_parquet(
                PlRefPath::new(f.to_string_lossy().as_ref()),
                ScanArgsParquet::default(),
            )
            .map_err(|e| ReportError::Input(format!("{}: {e}", f.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if frames.len() == 1 {
        return Ok(frames.into_iter().next().expect("one"));
    }
    concat(frames, UnionArgs::default()).map_err(|e| ReportError::Polars(e.to_string()))
}

fn ns(name: &str) -> Expr {
    col(name).cast(DataType::Int64)
}

fn f64c(name: &str) -> Expr {
    col(name).cast(DataType::Float64)
}

/// Opens the run at `dir` (a run directory, or a `requests.parquet` file).
pub fn open(dir: &Path) -> Result<Run, ReportError> {
    let path = requests_path(dir)?;
    // reprise's reader checks footers, format and column types up front.
    let checked = DatasetReader::<ResultRecord>::open(&path)
        .map_err(|e| ReportError::Input(e.to_string()))?;
    let rows = checked.num_rows();
    let parts: Vec<PathBuf> = checked.files().map(Path::to_owned).collect();
    if parts.is_empty() {
        return Err(ReportError::Input(format!(
            "{}: no parquet parts",
            path.display()
        )));
    }
    let block_tokens = checked
        .metadata()
        .get(reprise_trace::writer::META_BLOCK_TOKENS)
        .and_then(|v| v.parse().ok());
    let server_cache_tokens = checked
        .metadata()
        .get("reprise.server_cache_tokens")
        .and_then(|v| v.parse().ok());
    let mut lf = scan(&parts)?;
    // Files written before the column existed have no cached-token counts.
    let cached = if lf
        .collect_schema()
        .map(|s| s.contains("n_cached_usage"))
        .unwrap_or(false)
    {
        f64c("n_cached_usage")
    } else {
        lit(NULL).cast(DataType::Float64)
    };
    let requests = lf.select([
        col("phase"),
        col("step_value").cast(DataType::Float64),
        col("target"),
        (col("status")
            .cast(DataType::Int64)
            .gt_eq(lit(200))
            .and(col("status").cast(DataType::Int64).lt(lit(300)))
            .and(col("error_kind").is_null()))
        .fill_null(lit(false))
        .alias("ok"),
        col("error_kind"),
        ns("scheduled"),
        ns("sent"),
        ns("done"),
        f64c("queue_us"),
        f64c("ttft_us"),
        f64c("ttft_sched_us"),
        f64c("tpot_us"),
        f64c("e2e_us"),
        f64c("e2e_sched_us"),
        col("itl_us"),
        f64c("n_in_usage")
            .fill_null(f64c("input_tokens"))
            .alias("n_in"),
        f64c("n_out_usage")
            .fill_null(f64c("n_out_counted"))
            .alias("n_out"),
        cached.alias("n_cached"),
    ]);
    let dir_of_run = if dir.is_file() {
        dir.parent().unwrap_or(Path::new(".")).to_owned()
    } else {
        dir.to_owned()
    };
    let info = RunInfo::read(&dir_of_run).map_err(|e| ReportError::Input(e.to_string()))?;
    let run_id = info
        .as_ref()
        .map(|i| i.run_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| {
            dir_of_run
                .file_name()
                .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned())
        });
    let events = info
        .as_ref()
        .map(|i| {
            i.summary
                .events
                .iter()
                .map(|e| Event {
                    action: e.action.clone(),
                    started_ns: e.started_ns,
                    finished_ns: e.finished_ns,
                    ok: e.ok,
                })
                .collect()
        })
        .unwrap_or_default();
    let queue_limit_ms = info.as_ref().map_or(1.0, |i| i.config.queue_limit_ms);
    let optional = |name: &str| -> Result<Option<LazyFrame>, ReportError> {
        let p = dir_of_run.join(name);
        if !p.exists() {
            return Ok(None);
        }
        let f = files(&p)?;
        if f.is_empty() {
            return Ok(None);
        }
        scan(&f).map(Some)
    };
    Ok(Run {
        run_id,
        info,
        requests,
        rows,
        files: parts,
        gpu: optional("gpu.parquet")?,
        server: optional("server.parquet")?,
        events,
        queue_limit_ms,
        block_tokens,
        server_cache_tokens,
        dir: dir_of_run,
    })
}
