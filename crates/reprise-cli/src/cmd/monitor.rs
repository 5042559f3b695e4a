//! `reprise monitor`: the samplers without a replay (GPUs, Prometheus endpoints, the host)
//! into a directory until Ctrl-C/SIGTERM or `--duration`; `reprise monitor import` brings
//! nvidia-smi CSV logs and saved DCGM-exporter scrapes into gpu/1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use reprise_monitor::Monitor;

use super::common::{MonitorArgs, monitor_error, shutdown_signal};
use reprise_trace::{DatasetWriter, GpuSample, Output, WriterOptions};

/// Sample GPUs (NVML), Prometheus endpoints and this host into gpu.parquet and
/// server.parquet.
///
/// Runs until Ctrl-C or SIGTERM (or --duration), then closes its files and writes
/// monitor.json (failed scrapes and gaps per endpoint, clock-offset estimates).
#[derive(Debug, Parser)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  reprise monitor --out mon --gpu --scrape http://gpu-host:8000/metrics --scrape http://gpu-host:9400/metrics\n  reprise monitor import nvidia-smi smi.csv --host gpu-host --out mon\n  reprise monitor import dcgm dcgm-*.prom --out mon"
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<MonitorCommand>,
    #[command(flatten)]
    live: LiveArgs,
}

#[derive(Debug, Parser)]
struct LiveArgs {
    /// Directory for gpu.parquet, server.parquet and monitor.json.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    sampling: MonitorArgs,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
}

#[derive(Debug, Subcommand)]
enum MonitorCommand {
    /// Bring GPU logs taken elsewhere into gpu/1 (gpu.parquet in --out).
    Import(ImportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ImportKind {
    /// `nvidia-smi --query-gpu=timestamp,index,... --format=csv -l 1` output.
    NvidiaSmi,
    /// DCGM-exporter scrapes saved to files (one exposition each).
    Dcgm,
}

#[derive(Debug, Parser)]
struct ImportArgs {
    /// What the files are.
    #[arg(value_enum)]
    kind: ImportKind,
    /// The files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Directory for gpu.parquet.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Host name for the rows (DCGM's `Hostname` label wins when present).
    #[arg(long, default_value = "gpu-host")]
    host: String,
    /// The GPU host's clock minus UTC as read here, ms (nvidia-smi writes local time
    /// without a zone).
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    clock_offset_ms: f64,
}

/// Runs `reprise monitor`.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Some(MonitorCommand::Import(a)) => import(a),
        None => live(args.live),
    }
}

fn live(a: LiveArgs) -> Result<ExitCode> {
    let out = a
        .out
        .ok_or_else(|| anyhow!("--out DIR is required (or `reprise monitor import ...`)"))?;
    let cfg = a
        .sampling
        .sampling()
        .config(&out, &[])
        .map_err(monitor_error)?
        .ok_or_else(|| {
            anyhow!("nothing to sample: give --gpu or --scrape, or keep host metrics on")
        })?;
    let monitor = Monitor::start(cfg).context("starting the monitor")?;
    eprintln!("monitoring into {} (Ctrl-C to stop)", out.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match a.duration {
            Some(s) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))) => {}
                    _ = shutdown_signal() => {}
                }
            }
            None => shutdown_signal().await,
        }
    });
    let s = monitor.stop().context("closing the monitor's files")?;
    // A failure to open NVML was already said, in one line, when sampling began.
    if let Some(n) = s.nvml.as_ref().filter(|n| !n.starts_with("NVML")) {
        eprintln!("GPU: {n}");
    }
    eprintln!("{}", s.describe());
    for src in &s.sources {
        eprintln!(
            "{}: {} scrapes ok, {} failed{}",
            src.source,
            src.ok,
            src.failed,
            src.last_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (last: {e})"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn import(a: ImportArgs) -> Result<ExitCode> {
    let mut rows: Vec<GpuSample> = Vec::new();
    for f in &a.files {
        let mut r = match a.kind {
            ImportKind::NvidiaSmi => {
                reprise_monitor::import::nvidia_smi(f, &a.host, a.clock_offset_ms)?
            }
            ImportKind::Dcgm => reprise_monitor::import::dcgm_file(f, &a.host)?,
        };
        rows.append(&mut r);
    }
    if rows.is_empty() {
        bail!("no GPU samples in {} file(s)", a.files.len());
    }
    rows.sort_by_key(|r| (r.time, r.host.clone(), r.gpu));
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let path = a.out.join("gpu.parquet");
    let tmp = a.out.join("gpu.parquet.tmp");
    let mut w =
        DatasetWriter::<GpuSample>::create(Output::File(tmp.clone()), WriterOptions::default())?;
    for r in &rows {
        w.write(r)?;
    }
    w.close()?;
    std::fs::rename(&tmp, &path).with_context(|| path.display().to_string())?;
    eprintln!("{} GPU samples -> {}", rows.len(), path.display());
    Ok(ExitCode::SUCCESS)
}
