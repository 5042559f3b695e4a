//! `reprise coordinate`: start N replay workers on one timeline (docs/replay.md,
//! "Replaying across hosts").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use reprise_dist::coordinator::{CoordinatorConfig, serve};

use crate::cmd::common::{positive, secs};

/// Start N replay workers (`reprise replay ... --coordinator URL`) on one timeline.
///
/// Each worker registers with its shard, the digests of its trace and arguments and its
/// clock offset (measured over 16 round trips); a mismatch or a second registration is
/// refused naming both. When all N have registered, the start is announced: now + --margin
/// on this clock, which every worker's results are on. It then waits for their ends and
/// exits 0 when every worker completed, 1 when one stopped early or never reported, 2 when
/// the run never started (a worker missing after --register-timeout, or the start skew
/// bound above --max-skew-ms).
#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  reprise coordinate --listen 0.0.0.0:7070 --workers 3\n  reprise replay traces/t.parquet --shard 0/3 --coordinator http://coord:7070 --target http://gpu:8000 --out runs/s0\n  reprise merge runs/s0 runs/s1 runs/s2 -o runs/all"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// Workers (shards) to wait for.
    #[arg(long)]
    workers: u32,
    /// Seconds from the last registration to the start.
    #[arg(long, default_value_t = 3.0)]
    margin: f64,
    /// Seconds to wait for every worker to register.
    #[arg(long, default_value_t = 300.0)]
    register_timeout: f64,
    /// Seconds to wait for every worker's end after the start at most (default: a week).
    #[arg(long)]
    run_timeout: Option<f64>,
    /// Seconds after the longest worker's workload (as it registered it) to wait for its
    /// end; a worker silent by then is taken for dead.
    #[arg(long, default_value_t = 600.0)]
    grace: f64,
    /// Warn when the workers' start skew could exceed this, ms (the two largest clock
    /// offset uncertainties added).
    #[arg(long, default_value_t = 5.0)]
    warn_skew_ms: f64,
    /// Refuse to start when the start skew could exceed this, ms.
    #[arg(long)]
    max_skew_ms: Option<f64>,
    /// Write what happened (registrations, start, ends) to this JSON file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the resolved settings and exit, listening to nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs the coordinator.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let config = CoordinatorConfig {
        workers: args.workers,
        margin: secs(args.margin, "--margin")?,
        register_timeout: secs(
            positive(args.register_timeout, "--register-timeout", "seconds")?,
            "--register-timeout",
        )?,
        run_timeout: match args.run_timeout {
            Some(s) => secs(s, "--run-timeout")?,
            None => Duration::from_secs(7 * 24 * 3600),
        },
        grace: secs(args.grace, "--grace")?,
        warn_skew: Duration::from_secs_f64(
            positive(args.warn_skew_ms, "--warn-skew-ms", "milliseconds")? / 1e3,
        ),
        max_skew: args
            .max_skew_ms
            .map(|m| {
                positive(m, "--max-skew-ms", "milliseconds")
                    .map(|m| Duration::from_secs_f64(m / 1e3))
            })
            .transpose()?,
    };
    if args.dry_run {
        println!(
            "would coordinate {} workers on {}: start {:.1} s after the last registration, registrations for {:.0} s, runs for up to {:.0} s, skew warned above {} ms{}",
            config.workers,
            args.listen,
            config.margin.as_secs_f64(),
            config.register_timeout.as_secs_f64(),
            config.run_timeout.as_secs_f64(),
            args.warn_skew_ms,
            args.max_skew_ms
                .map(|m| format!(", refused above {m} ms"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("--listen {}", args.listen))?;
        let addr = listener.local_addr().context("the listening address")?;
        eprintln!(
            "coordinating {} worker{} on http://{addr}",
            args.workers,
            if args.workers == 1 { "" } else { "s" }
        );
        let report = serve(listener, config).await;
        let report = match report {
            Ok(r) => r,
            Err(e) => bail!("{e}"),
        };
        if let Some(path) = &args.out {
            reprise_trace::run::write_json(path, &report.status)?;
        }
        let done = report.status.done.len();
        let complete = report.status.done.iter().filter(|d| d.complete).count();
        println!(
            "coordinator {}: {done} of {} workers reported their end, {complete} complete",
            report.status.coordinator_id, args.workers
        );
        for d in report.status.done.iter().filter(|d| !d.complete) {
            println!(
                "  shard {}: sent {} of {} (stopped early)",
                d.shard, d.sent, d.planned
            );
        }
        for r in &report.status.registered {
            if !report.status.done.iter().any(|d| d.shard == r.shard) {
                println!("  shard {} ({}): never reported its end", r.shard, r.host);
            }
        }
        Ok(if report.complete {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}
