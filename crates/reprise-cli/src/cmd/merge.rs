//! `reprise merge`: the workers' runs of a distributed replay as one run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;
use reprise_dist::merge::{MergeOptions, merge};
use reprise_replay::summary::render;

/// Merge the workers' run directories of one distributed replay into one run.
///
/// The result files go side by side into OUT/requests.parquet/ (hard links: nothing is
/// copied on the same volume), OUT/run.json lists the workers, their shards, clock offsets
/// and counts, and `reprise analyze OUT` treats it as one run. --summary-only prints the
/// merged summary from the workers' HDR histograms alone, writing nothing. Runs of
/// different coordinators, a run given twice, or two runs of one shard are refused (exit
/// 2); a worker that died or is missing leaves the merged run partial, saying how many
/// requests were never sent (exit 1).
#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  reprise merge runs/s0 runs/s1 runs/s2 -o runs/all\n  reprise merge runs/s* --summary-only"
)]
pub struct Args {
    /// The workers' run directories.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The merged run directory.
    #[arg(short, long, required_unless_present = "summary_only")]
    out: Option<PathBuf>,
    /// Print the merged summary from the histograms; write nothing.
    #[arg(long)]
    summary_only: bool,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

/// Runs the merge.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.summary_only && args.out.is_some() {
        bail!("--summary-only writes nothing: leave out -o/--out");
    }
    let merged = merge(&MergeOptions {
        inputs: args.runs,
        out: args.out.clone(),
        force: args.force,
    })?;
    let info = &merged.info;
    let dist = info.distributed.clone().unwrap_or_default();
    println!(
        "{} shards of coordinator run {}: {} requests recorded of {} planned",
        dist.shards, dist.coordinator_id, info.summary.recorded, dist.planned
    );
    for w in &dist.workers {
        println!(
            "  shard {}: {} ({} of {} recorded), clock offset {:.3} ms ± {:.3} ms",
            w.shard,
            w.state,
            w.recorded,
            w.planned,
            w.offset_ns as f64 / 1e6,
            w.uncertainty_ns as f64 / 1e6
        );
    }
    print!(
        "{}",
        render(
            &info.summary.overall,
            &[],
            info.config.queue_limit_ms.max(1e-9),
            info.summary.intended_s
        )
    );
    if !merged.without_histograms.is_empty() {
        println!(
            "the summary lacks shard(s) {:?} (no histograms.json: the worker died); the rows it left are merged",
            merged.without_histograms
        );
    }
    if let Some(out) = &args.out {
        println!("merged run in {} (reprise analyze {0})", out.display());
    }
    Ok(match &dist.partial {
        Some(why) => {
            println!("run PARTIAL: {why}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    })
}
