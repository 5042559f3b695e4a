//! `reprise record`: the capture reverse proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use super::common::secs;
use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use reprise_record::salt::Salt;
use reprise_record::{RecordConfig, RecordError, Recorder};

/// Put a capture proxy in front of an LLM server and record its traffic to trace/1.
///
/// Every request is forwarded to --upstream unchanged and every response streamed back as it
/// arrives (SSE chunks are not buffered or re-chunked). Each exchange becomes one row: arrival,
/// TTFT, inter-token gaps, E2E, status, token counts (the server's usage, else the embedded
/// cl100k tokenizer), salted prefix-block hashes, a salted session id, non-content parameters.
///
/// Never written: header values (Authorization, api-key, cookies, ...), prompt and completion
/// text (unless --record-content), the salt itself (only its id). A part file is finished
/// every --flush-interval, so a crash loses at most that much; SIGINT/SIGTERM drains and
/// closes. Counters are served on --admin as Prometheus /metrics.
#[derive(Debug, Parser)]
#[command(
    after_help = "Example:\n  reprise record --listen 0.0.0.0:8080 --upstream http://vllm:8000 --out traces/capture"
)]
pub struct Args {
    /// Address clients connect to (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The server to forward to: http(s)://host:port.
    #[arg(long)]
    upstream: String,
    /// Output directory of trace/1 part files.
    #[arg(long, short)]
    out: PathBuf,
    /// Admin address for /metrics and /health.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Also record prompt and completion text.
    #[arg(long)]
    record_content: bool,
    /// Header whose value (salted, hashed) becomes session_id; default: the `user` field.
    #[arg(long, value_name = "NAME")]
    session_header: Option<String>,
    /// Salt file for session ids and prefix hashes (created with a random salt if missing).
    #[arg(long, value_name = "PATH")]
    salt_file: Option<PathBuf>,
    /// Tokens per prefix-hash block.
    #[arg(long, default_value_t = 16)]
    block_tokens: usize,
    /// Record this fraction of requests (all are forwarded).
    #[arg(long, default_value_t = 1.0)]
    sample: f64,
    /// Record only requests whose path starts with this (repeatable).
    #[arg(long = "path", value_name = "PREFIX")]
    paths: Vec<String>,
    /// Record only requests for this model (repeatable).
    #[arg(long = "model", value_name = "MODEL")]
    models: Vec<String>,
    /// Finish a part file this often (seconds) when rows arrived: the most a crash loses.
    #[arg(long, default_value_t = 1.0)]
    flush_interval: f64,
    /// Rows per part file at most.
    #[arg(long, default_value_t = 1_000_000)]
    part_rows: u64,
    /// Seconds to wait for the upstream's response head.
    #[arg(long, default_value_t = 600.0)]
    upstream_timeout: f64,
    /// Worker threads for tokenizing and hashing.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// How the workers step aside for forwarding. low: nice 10, a share of a busy CPU.
    /// idle: they run only on CPU time nothing else wants (Linux SCHED_IDLE), for the
    /// lowest added latency on a machine with CPU to spare; on CPUs kept busy by other work
    /// they barely run, so rows wait in memory (a crash loses them) and past 10,000 waiting
    /// are written without tokenizing (counted in the summary and /metrics).
    #[arg(long, value_enum, default_value_t = WorkersPriority::Low)]
    workers_priority: WorkersPriority,
    /// Seconds to wait for exchanges in flight at shutdown.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Largest request body, bytes: a bigger one is answered 413 (and recorded as
    /// `request_too_large`) rather than held in memory.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, help_heading = "Limits")]
    max_body_bytes: usize,
    /// Largest request head (request line and headers), bytes: a bigger one is answered 431.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 10, help_heading = "Limits")]
    max_header_bytes: usize,
    /// Seconds a client has to send a whole request head (idle keep-alive time included);
    /// a slower one (slowloris, or idle) is disconnected.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30.0,
        help_heading = "Limits"
    )]
    header_timeout: f64,
    /// Client connections open at once. Past it, a new client makes the connection idle
    /// longest close (as nginx does); when all are busy with exchanges, it waits for one.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        help_heading = "Limits"
    )]
    max_connections: usize,
}

/// `--workers-priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorkersPriority {
    Idle,
    Low,
}

fn default_salt_file() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("reprise/salt")
}

/// Runs the proxy until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> Result<ExitCode> {
    // The forwarding thread allocates each exchange and a recording thread frees it: kept
    // mapped, those pages are not faulted in again on the forwarding path.
    reprise_os::keep_freed_memory();
    let salt_file = args.salt_file.clone().unwrap_or_else(default_salt_file);
    let salt = Salt::load_or_create(&salt_file).context("--salt-file")?;
    let mut config = RecordConfig::new(args.listen, args.upstream.clone(), args.out.clone(), salt);
    config.admin = args.admin;
    config.observe.record_content = args.record_content;
    config.observe.block_tokens = args.block_tokens.max(1);
    config.session_header = args.session_header.map(|h| h.to_ascii_lowercase());
    config.sample = args.sample;
    config.paths = args.paths;
    config.models = args.models;
    config.flush_interval = secs(args.flush_interval, "--flush-interval")?;
    config.part_max_rows = args.part_rows.max(1);
    config.upstream_timeout = secs(args.upstream_timeout, "--upstream-timeout")?;
    config.workers = args.workers.max(1);
    config.worker_priority = match args.workers_priority {
        WorkersPriority::Idle => reprise_record::Priority::Idle,
        WorkersPriority::Low => reprise_record::Priority::Nice(reprise_record::RECORDING_NICE),
    };
    config.drain = secs(args.drain, "--drain")?;
    config.max_observed_body = args.max_body_bytes.max(1);
    config.limits = reprise_record::Limits {
        max_header_bytes: args.max_header_bytes,
        header_timeout: secs(args.header_timeout, "--header-timeout")?,
        max_connections: args.max_connections,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let recorder = Recorder::start(config).await.map_err(|e| match e {
            // The library names the setting; the flag it came from is added here.
            RecordError::Setting { setting, message } => anyhow::anyhow!("--{setting} {message}"),
            e => anyhow::Error::new(e),
        })?;
        eprintln!(
            "reprise record: http://{} -> {} recording to {}{}; Ctrl-C stops",
            recorder.addr(),
            args.upstream,
            args.out.display(),
            recorder
                .admin_addr()
                .map(|a| format!(" (metrics on http://{a}/metrics)"))
                .unwrap_or_default()
        );
        super::common::shutdown_signal().await;
        eprintln!("reprise record: stopping, draining requests in flight");
        let summary = recorder.shutdown().await;
        eprintln!("reprise record: {}", summary.describe());
        if !summary.reconciles() {
            eprintln!(
                "reprise record: the counts do not add up (forwarded {} != recorded {} + skipped {} + lost {})",
                summary.forwarded, summary.recorded, summary.skipped, summary.lost
            );
        }
        Ok(if summary.lost > 0 || !summary.reconciles() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
