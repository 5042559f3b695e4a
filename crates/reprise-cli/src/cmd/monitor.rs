//! `reprise monitor`: the samplers without a replay (GPUs, Prometheus endpoints, the host)
//! into a directory until Ctrl-C/SIGTERM or `--duration`; `reprise monitor import` brings
//! nvidia-smi CSV logs and saved DCGM-exporter scrapes into gpu/1. Also the monitoring
//! options shared with `replay`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use reprise_monitor::{Monitor, MonitorConfig};
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
    /// Sample the GPUs of this host through NVML (without NVML, one line says so).
    #[arg(long)]
    gpu: bool,
    /// Scrape this Prometheus endpoint (repeatable).
    #[arg(long, value_name = "URL")]
    scrape: Vec<String>,
    /// Sampling interval.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    interval_ms: u64,
    /// Time limit of one scrape.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    scrape_timeout_ms: u64,
    /// Do not sample this host.
    #[arg(long)]
    no_host_metrics: bool,
    /// A scraped host's clock minus this one's (`URL=MS`; repeatable).
    #[arg(long, value_name = "URL=MS")]
    clock_offset: Vec<String>,
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

/// Monitoring options as `replay` and `monitor` take them.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// NVML.
    pub gpu: bool,
    /// This host.
    pub host: bool,
    /// Endpoints (`target` = every target's /metrics).
    pub scrape: Vec<String>,
    /// Interval, ms.
    pub interval_ms: u64,
    /// Scrape timeout, ms.
    pub scrape_timeout_ms: u64,
    /// `URL=MS` offsets.
    pub clock_offset: Vec<String>,
}

/// The monitor configuration for `s`, or `None` when nothing is to be sampled.
pub fn config_from(
    out_dir: &Path,
    s: &Sampling,
    targets: &[String],
) -> Result<Option<MonitorConfig>> {
    if !s.gpu && !s.host && s.scrape.is_empty() {
        return Ok(None);
    }
    if s.interval_ms == 0 {
        bail!("the monitoring interval must be at least 1 ms");
    }
    let mut scrape = Vec::new();
    for u in &s.scrape {
        if u == "target" {
            scrape.extend(
                targets
                    .iter()
                    .map(|t| format!("{}/metrics", t.trim_end_matches('/'))),
            );
        } else if u.starts_with("http://") || u.starts_with("https://") {
            scrape.push(u.clone());
        } else {
            bail!("--scrape `{u}`: expected http(s)://host:port/path or `target`");
        }
    }
    let mut offsets = BTreeMap::new();
    for o in &s.clock_offset {
        let (url, ms) = o
            .rsplit_once('=')
            .ok_or_else(|| anyhow!("--clock-offset `{o}`: expected URL=MS"))?;
        let ms: f64 = ms
            .parse()
            .map_err(|_| anyhow!("--clock-offset `{o}`: `{ms}` is not a number of ms"))?;
        offsets.insert(url.to_owned(), ms);
    }
    let mut cfg = MonitorConfig::new(out_dir);
    cfg.gpu = s.gpu;
    cfg.host = s.host;
    cfg.scrape = scrape;
    cfg.interval = Duration::from_millis(s.interval_ms);
    cfg.scrape_timeout = Duration::from_millis(s.scrape_timeout_ms.max(1));
    cfg.clock_offsets_ms = offsets;
    Ok(Some(cfg))
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
    let cfg = config_from(
        &out,
        &Sampling {
            gpu: a.gpu,
            host: !a.no_host_metrics,
            scrape: a.scrape,
            interval_ms: a.interval_ms,
            scrape_timeout_ms: a.scrape_timeout_ms,
            clock_offset: a.clock_offset,
        },
        &[],
    )?
    .ok_or_else(|| anyhow!("nothing to sample: give --gpu or --scrape, or keep host metrics on"))?;
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
                    _ = super::sim::shutdown_signal() => {}
                }
            }
            None => super::sim::shutdown_signal().await,
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
