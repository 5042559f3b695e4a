//! `reprise merge`: the workers' run directories of one distributed replay become one run.
//! Their result files go side by side into `requests.parquet/` (hard links, so nothing is
//! copied on the same volume), `run.json` lists the workers, their shards, offsets and
//! counts, and its summary comes from the workers' HDR histograms (`histograms.json`),
//! merged exactly as their precision allows. A worker that died or is missing makes the
//! merged run `partial`, saying how many of its requests were never sent; nothing partial
//! is reported as complete.

use std::path::{Path, PathBuf};

use reprise_replay::summary::{Export, merge_exports};
use reprise_trace::run::{
    ClockInfo, Distributed, RUN_FORMAT, RunInfo, RunSummary, WorkerRun, read_json, write_json,
};

use crate::DistError;

/// Where a worker writes its shard's description (before its run starts).
pub const SHARD_FILE: &str = "shard.json";
/// Where a worker writes its histograms (at the end of its run).
pub const HISTOGRAMS_FILE: &str = "histograms.json";

/// What to merge.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// The workers' run directories.
    pub inputs: Vec<PathBuf>,
    /// The merged run directory (created); `None` with `summary_only`.
    pub out: Option<PathBuf>,
    /// Replace an existing output directory.
    pub force: bool,
}

/// A merge's result: the merged run's `run.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The merged run (also written to the output's `run.json`).
    pub info: RunInfo,
    /// Shards whose histograms were missing (a worker that died): the summary lacks
    /// their requests (the rows, where they exist, are merged and the analyzer counts
    /// them).
    pub without_histograms: Vec<u32>,
}

struct Input {
    dir: PathBuf,
    shard: Distributed,
    run: Option<RunInfo>,
    export: Option<Export>,
}

fn read_input(dir: &Path) -> Result<Input, DistError> {
    let shard: Distributed = read_json(&dir.join(SHARD_FILE))
        .map_err(|e| DistError::Input(e.to_string()))?
        .ok_or_else(|| {
            DistError::Input(format!(
                "{}: not a worker's run of a distributed replay (no {SHARD_FILE})",
                dir.display()
            ))
        })?;
    if shard.shard.is_none() {
        return Err(DistError::Input(format!(
            "{}: {SHARD_FILE} names no shard",
            dir.display()
        )));
    }
    let run = RunInfo::read(dir).map_err(|e| DistError::Input(e.to_string()))?;
    let export: Option<Export> =
        read_json(&dir.join(HISTOGRAMS_FILE)).map_err(|e| DistError::Input(e.to_string()))?;
    Ok(Input {
        dir: dir.to_owned(),
        shard,
        run,
        export,
    })
}

/// Rows readable in a run directory's `requests.parquet` (0 when there is none or it is
/// not whole: a worker killed before closing it).
fn readable_rows(dir: &Path) -> u64 {
    reprise_trace::DatasetReader::<reprise_trace::ResultRecord>::open(dir.join("requests.parquet"))
        .map_or(0, |r| r.num_rows())
}

fn thousands(n: u64) -> String {
    reprise_trace::human::thousands(n)
}

/// Merges the workers' runs (see the module's documentation); with no output directory,
/// only the merged `run.json` is computed (`--summary-only`).
pub fn merge(opts: &MergeOptions) -> Result<Merged, DistError> {
    if opts.inputs.is_empty() {
        return Err(DistError::Config(
            "merge needs the workers' run directories".into(),
        ));
    }
    let mut seen: Vec<(PathBuf, &PathBuf)> = Vec::new();
    for dir in &opts.inputs {
        let canon = dir
            .canonicalize()
            .map_err(|e| DistError::Input(format!("{}: {e}", dir.display())))?;
        if let Some((_, first)) = seen.iter().find(|(c, _)| *c == canon) {
            return Err(DistError::Input(format!(
                "{} is given twice (as {} too): a run cannot be merged with itself",
                dir.display(),
                first.display()
            )));
        }
        seen.push((canon, dir));
    }
    if let Some(out) = &opts.out
        && let Ok(out_canon) = out.canonicalize()
        && let Some((_, dir)) = seen.iter().find(|(c, _)| *c == out_canon)
    {
        return Err(DistError::Input(format!(
            "the output {} is one of the inputs ({})",
            out.display(),
            dir.display()
        )));
    }
    let mut inputs = opts
        .inputs
        .iter()
        .map(|d| read_input(d))
        .collect::<Result<Vec<_>, _>>()?;
    inputs.sort_by_key(|i| i.shard.shard);
    let first = &inputs[0];
    for i in &inputs[1..] {
        if i.shard.coordinator_id != first.shard.coordinator_id {
            return Err(DistError::Input(format!(
                "{} is of coordinator run {}, {} of {}: runs of different coordinators cannot be merged",
                i.dir.display(),
                i.shard.coordinator_id,
                first.dir.display(),
                first.shard.coordinator_id
            )));
        }
        if i.shard.shards != first.shard.shards {
            return Err(DistError::Input(format!(
                "{} has {} shards, {} has {}",
                i.dir.display(),
                i.shard.shards,
                first.dir.display(),
                first.shard.shards
            )));
        }
    }
    for w in inputs.windows(2) {
        if w[0].shard.shard == w[1].shard.shard {
            return Err(DistError::Input(format!(
                "{} and {} are both shard {}",
                w[0].dir.display(),
                w[1].dir.display(),
                w[0].shard.shard.unwrap_or(0)
            )));
        }
    }
    let shards = first.shard.shards;
    let mut partial = Vec::new();
    let mut workers = Vec::new();
    for k in 0..shards {
        if !inputs.iter().any(|i| i.shard.shard == Some(k)) {
            partial.push(format!(
                "shard {k} of {shards} is missing (no run directory given)"
            ));
        }
    }
    let mut exports = Vec::new();
    let mut without_histograms = Vec::new();
    for i in &inputs {
        let k = i.shard.shard.unwrap_or(0);
        let (state, recorded) = match &i.run {
            Some(r) if r.complete => ("complete", r.summary.recorded),
            Some(r) => ("incomplete", r.summary.recorded),
            None => ("died", readable_rows(&i.dir)),
        };
        let planned = i.shard.planned;
        if state != "complete" {
            partial.push(format!(
                "shard {k} {}: {} of its {} requests were never sent{}",
                if state == "died" {
                    "died"
                } else {
                    "stopped early"
                },
                thousands(planned.saturating_sub(recorded)),
                thousands(planned),
                if state == "died" {
                    " (or their rows were lost with it)"
                } else {
                    ""
                }
            ));
        }
        match &i.export {
            Some(e) => exports.push(e.clone()),
            None => without_histograms.push(k),
        }
        workers.push(WorkerRun {
            shard: k,
            host: i.run.as_ref().map(|r| r.host.clone()).unwrap_or_default(),
            run_dir: i.dir.display().to_string(),
            offset_ns: i.shard.offset_ns,
            uncertainty_ns: i.shard.uncertainty_ns,
            planned,
            recorded,
            sent: recorded,
            state: state.to_owned(),
        });
    }
    let overall = merge_exports(&exports).map_err(DistError::Input)?;
    let partial = (!partial.is_empty()).then(|| partial.join("; "));
    let complete = partial.is_none();
    let base = inputs
        .iter()
        .find_map(|i| i.run.clone())
        .unwrap_or_default();
    let out_dir = opts.out.clone().unwrap_or_default();
    let run_id = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged".into());
    let recorded = workers.iter().map(|w| w.recorded).sum();
    let intended_s = inputs
        .iter()
        .filter_map(|i| i.run.as_ref()?.summary.intended_s)
        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))));
    let info = RunInfo {
        format: RUN_FORMAT.into(),
        run_id: run_id.clone(),
        tool: "reprise".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        command: std::env::args().collect(),
        host: String::new(),
        complete,
        clock: ClockInfo {
            anchor_wall_ns: first.shard.t0_ns,
            note: "the coordinator's clock: every worker's times were corrected by its offset"
                .into(),
        },
        config: base.config.clone(),
        summary: RunSummary {
            run_id,
            complete,
            recorded,
            phases: vec![overall.clone()],
            intended_throughput: intended_s
                .filter(|s| *s > 0.0)
                .map(|s| overall.ok as f64 / s),
            overall,
            requests_file: out_dir.join("requests.parquet"),
            targets: base.summary.targets.clone(),
            intended_s,
            ..RunSummary::default()
        },
        distributed: Some(Distributed {
            coordinator_id: first.shard.coordinator_id.clone(),
            coordinator: first.shard.coordinator.clone(),
            shards,
            shard: None,
            t0_ns: first.shard.t0_ns,
            offset_ns: 0,
            uncertainty_ns: inputs
                .iter()
                .map(|i| i.shard.uncertainty_ns)
                .max()
                .unwrap_or(0),
            residual_ns: None,
            planned: inputs.iter().map(|i| i.shard.planned).sum(),
            workers,
            partial,
        }),
    };
    if let Some(out) = &opts.out {
        write_merged(out, &inputs, &info, opts.force)?;
    }
    Ok(Merged {
        info,
        without_histograms,
    })
}

fn io(path: &Path, e: std::io::Error) -> DistError {
    DistError::Io {
        path: path.to_owned(),
        source: e,
    }
}

fn write_merged(
    out: &Path,
    inputs: &[Input],
    info: &RunInfo,
    force: bool,
) -> Result<(), DistError> {
    if out.exists() {
        if !force {
            return Err(DistError::Input(format!(
                "{} exists: pick another directory or give --force",
                out.display()
            )));
        }
        std::fs::remove_dir_all(out).map_err(|e| io(out, e))?;
    }
    let parts = out.join("requests.parquet");
    std::fs::create_dir_all(&parts).map_err(|e| io(&parts, e))?;
    for i in inputs {
        let from = i.dir.join("requests.parquet");
        if !from.is_file() {
            continue;
        }
        let to = parts.join(format!("part-{:06}.parquet", i.shard.shard.unwrap_or(0)));
        // A hard link where the volume allows (nothing copied), else a copy.
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| io(&to, e))?;
        }
    }
    write_json(&out.join("run.json"), info).map_err(|e| DistError::Input(e.to_string()))
}
