//! `reprise-analyze`: the polars analyzer behind `reprise analyze` (it is its own binary so
//! that `reprise` never links polars). Argument parsing only; the work is in
//! `reprise-report`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use reprise_report::{Options, Rules, Slo};

/// polars allocates and frees large buffers all the time; mimalloc keeps them from being
/// returned to and faulted back from the kernel each time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Analyse reprise replay runs: percentiles, steps, windows, the knee, reports.
#[derive(Debug, Parser)]
#[command(name = "reprise-analyze", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse one or more run directories: writes report.md, report.html and summary.json into each
    /// (or into --out) and prints a summary.
    Analyze(AnalyzeArgs),
    /// Compare runs: BASE against NEW metric by metric (bootstrap 95% intervals), exit
    /// status 1 on a regression beyond a --fail-on threshold; with more than two runs,
    /// also a scaling table (throughput against replicas).
    Compare(CompareArgs),
    /// Export a run as tidy Parquet tables for notebooks: requests, gaps (one row per
    /// gap between content events), windows, steps.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The run directory.
    run: PathBuf,
    /// Output directory.
    #[arg(long)]
    to: PathBuf,
    /// Window length of windows.parquet, seconds.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
}

fn export(a: ExportArgs) -> Result<ExitCode> {
    let run = reprise_report::open(&a.run)?;
    let opts = Options {
        window_s: a.window,
        ..Options::default()
    };
    let report = reprise_report::analyze_run(&run, &opts)?;
    for f in reprise_report::export::export(&run, &report, &a.to)? {
        println!("{f}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// The base run, the new run, and optionally more runs for a scaling table.
    #[arg(required = true, num_args = 2..)]
    runs: Vec<PathBuf>,
    /// Fail (exit status 1) when METRIC worsens significantly by more than this, e.g.
    /// `ttft.p99=10%`, `request_throughput=5%`, `error_rate=0.01` (absolute). Metrics:
    /// ttft|tpot|e2e|ttft_sched .p50|.p90|.p99, request_throughput, output_tokens_per_s,
    /// error_rate. Repeatable.
    #[arg(long, value_name = "METRIC=LIMIT")]
    fail_on: Vec<String>,
    /// Replicas of each run for the scaling table (default: each run's target count).
    #[arg(long, value_delimiter = ',')]
    replicas: Option<Vec<f64>>,
    /// Write compare.md and compare.json here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print compare.json to stdout instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_threshold(s: &str) -> Result<(String, f64)> {
    let Some((metric, limit)) = s.split_once('=') else {
        anyhow::bail!("--fail-on `{s}`: expected METRIC=LIMIT, e.g. ttft.p99=10%");
    };
    let value = match limit.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|x| x / 100.0),
        None => limit.trim().parse::<f64>(),
    }
    .map_err(|_| anyhow::anyhow!("--fail-on `{s}`: `{limit}` is not a number"))?;
    Ok((metric.trim().to_owned(), value))
}

fn compare(a: CompareArgs) -> Result<ExitCode> {
    let thresholds = a
        .fail_on
        .iter()
        .map(|s| parse_threshold(s))
        .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
    let opts = Options::default();
    let runs = reprise_report::compare::open_all(&a.runs, &opts)?;
    let c = reprise_report::compare::compare(
        (&runs[0].0, &runs[0].1),
        (&runs[1].0, &runs[1].1),
        &thresholds,
        1,
    )?;
    let mut text = reprise_report::compare::markdown(&c);
    let mut json = serde_json::json!({ "comparison": c });
    if runs.len() > 2 {
        let reports: Vec<_> = runs.into_iter().map(|(_, r)| r).collect();
        let rows = reprise_report::compare::scaling(&reports, a.replicas.as_deref());
        text.push_str(&reprise_report::compare::scaling_markdown(&rows));
        json["scaling"] = serde_json::to_value(&rows)?;
    }
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("compare.md"), &text)?;
        std::fs::write(
            out.join("compare.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{text}");
    }
    Ok(if c.regressions.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Debug, Args)]
struct AnalyzeArgs {
    /// Run directories of `reprise replay` (or requests.parquet files).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Write the reports here instead of into each run directory (one sub-directory per
    /// run when several).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Window length of the over-time table, seconds.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    /// Bin length of the GPU/server correlation, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    corr_bin: f64,
    /// Goodput SLO: TTFT at most this many ms.
    #[arg(long, value_name = "MS")]
    slo_ttft: Option<f64>,
    /// Goodput SLO: TPOT at most this many ms.
    #[arg(long, value_name = "MS")]
    slo_tpot: Option<f64>,
    /// Goodput SLO: E2E at most this many ms.
    #[arg(long, value_name = "MS")]
    slo_e2e: Option<f64>,
    /// Knee: a step whose throughput grew less than this fraction has stopped growing.
    #[arg(long, default_value_t = 0.10)]
    knee_min_gain: f64,
    /// Knee: P99 latency ratio between steps that counts as a jump.
    #[arg(long, default_value_t = 1.5)]
    knee_p99_rise: f64,
    /// Knee: error rate that breaks a step.
    #[arg(long, default_value_t = 0.05)]
    knee_error_rate: f64,
    /// The server's prefix-cache size in blocks of the trace's `block_tokens`: the hit rate
    /// the trace implies is also given for an LRU cache of that size (vLLM: the KV cache's
    /// tokens over the trace's block size).
    #[arg(long, value_name = "BLOCKS")]
    cache_blocks: Option<u64>,
    /// Print summary.json to stdout instead of the terminal summary.
    #[arg(long)]
    json: bool,
}

fn analyze(a: AnalyzeArgs) -> Result<ExitCode> {
    let opts = Options {
        slo: Slo {
            ttft_ms: a.slo_ttft,
            tpot_ms: a.slo_tpot,
            e2e_ms: a.slo_e2e,
        },
        window_s: a.window,
        corr_bin_s: a.corr_bin,
        cache_blocks: a.cache_blocks,
        rules: Rules {
            min_gain: a.knee_min_gain,
            p99_rise: a.knee_p99_rise,
            max_error_rate: a.knee_error_rate,
            ..Rules::default()
        },
        ..Options::default()
    };
    let color = std::io::stdout().is_terminal();
    let several = a.runs.len() > 1;
    for dir in &a.runs {
        let report = reprise_report::analyze(dir, &opts)?;
        let out = match &a.out {
            Some(o) if several => o.join(&report.run_id),
            Some(o) => o.clone(),
            None if dir.is_file() => dir.parent().map_or_else(|| ".".into(), PathBuf::from),
            None => dir.clone(),
        };
        reprise_report::render::write(&report, &out)?;
        if a.json {
            println!("{}", reprise_report::render::json(&report));
        } else {
            print!("{}", reprise_report::render::terminal(&report, color));
            eprintln!(
                "wrote {}, {} and {}",
                out.join("report.md").display(),
                out.join("report.html").display(),
                out.join("summary.json").display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Analyze(a) => analyze(a),
        Command::Compare(a) => compare(a),
        Command::Export(a) => export(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 1 is kept for "regression found" (compare), so that CI gates can tell.
            ExitCode::from(2)
        }
    }
}
