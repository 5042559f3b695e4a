//! Flag groups and checks shared by subcommands, defined once: durations and positive
//! numbers with the flag named in the error, the shutdown signals, and the monitoring flags
//! of `replay` and `monitor`.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

/// A non-negative, finite number of seconds, or a one-line error naming the flag.
pub fn secs(s: f64, flag: &str) -> Result<Duration> {
    if !(s.is_finite() && s >= 0.0) {
        bail!("{flag} must be a non-negative number of seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

/// A strictly positive, finite number, or a one-line error naming the flag.
pub fn positive(v: f64, flag: &str, unit: &str) -> Result<f64> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a positive number of {unit}, got {v}");
    }
    Ok(v)
}

/// Resolves at the first Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The samplers' flags, the same in `replay` and `monitor`.
#[derive(Debug, Clone, Args)]
pub struct MonitorArgs {
    /// Sample the GPUs of this host through NVML (gpu.parquet); without NVML, one line
    /// says so and the run goes on.
    #[arg(long, help_heading = "Monitoring")]
    pub gpu: bool,
    /// Scrape this Prometheus endpoint (server.parquet; DCGM-exporter series also go to
    /// gpu.parquet). Repeatable. In a replay, `target` scrapes every target's /metrics
    /// (the sim's included).
    #[arg(long, value_name = "URL", help_heading = "Monitoring")]
    pub scrape: Vec<String>,
    /// Sampling interval of GPUs, scrapes and the host.
    #[arg(
        long = "monitor-interval-ms",
        alias = "interval-ms",
        value_name = "MS",
        default_value_t = 500,
        help_heading = "Monitoring"
    )]
    pub interval_ms: u64,
    /// Time limit of one scrape.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 2000,
        help_heading = "Monitoring"
    )]
    pub scrape_timeout_ms: u64,
    /// Do not sample this host's CPU, memory and network (sampled by default, so that a
    /// saturated load generator shows).
    #[arg(long, help_heading = "Monitoring")]
    pub no_host_metrics: bool,
    /// A scraped host's clock minus this one's, applied to timestamps its exposition
    /// carries (`URL=MS`; repeatable). Estimated from `Date` headers into monitor.json
    /// either way.
    #[arg(long, value_name = "URL=MS", help_heading = "Monitoring")]
    pub clock_offset: Vec<String>,
}

impl MonitorArgs {
    /// The options as the monitor library takes them.
    pub fn sampling(&self) -> reprise_monitor::Sampling {
        reprise_monitor::Sampling {
            gpu: self.gpu,
            host: !self.no_host_metrics,
            scrape: self.scrape.clone(),
            interval_ms: self.interval_ms,
            scrape_timeout_ms: self.scrape_timeout_ms,
            clock_offset: self.clock_offset.clone(),
        }
    }
}

/// A monitoring error with the flag it came from.
pub fn monitor_error(e: reprise_monitor::MonitorError) -> anyhow::Error {
    match e {
        reprise_monitor::MonitorError::Setting { setting, message } => {
            anyhow::anyhow!("--{setting} {message}")
        }
        e => anyhow::Error::new(e),
    }
}
