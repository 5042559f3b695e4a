//! Resource monitoring beside a replay (or alone, `reprise monitor`): GPUs through NVML,
//! Prometheus endpoints (the target's `/metrics` — vLLM, SGLang, TGI, Triton, llama.cpp —
//! DCGM-exporter, node-exporter), and the load generator's own host, sampled at a set
//! interval into `gpu.parquet` (gpu/1) and `server.parquet` (server/1, long format,
//! counters and histograms raw) in a run directory.
//!
//! - [`prom`] parses the Prometheus text format (untrusted input: errors name the line);
//! - [`scrape`] scrapes one endpoint with a timeout and classes its failures, and estimates
//!   the scraped host's clock offset from `Date` headers;
//! - [`gpu`] samples NVML (no GPU is a one-line reason, never a crash) and turns DCGM
//!   samples into gpu/1 rows;
//! - [`host`] reads `/proc` (CPU, memory, network, this process);
//! - [`monitor`] runs the samplers on their own threads and writes the files and
//!   `monitor.json` (scrape failures and gaps per source, clock offsets);
//! - [`sampling`] resolves the options `replay` and `monitor` share into a [`MonitorConfig`];
//! - [`import`] brings nvidia-smi CSV logs and saved DCGM scrapes into gpu/1.

pub mod gpu;
pub mod host;
pub mod import;
pub mod monitor;
pub mod prom;
pub mod sampling;
pub mod scrape;

pub use monitor::{Monitor, MonitorConfig, MonitorSummary, SourceSummary};
pub use sampling::Sampling;

/// Why monitoring failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A file or thread could not be made.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Writing gpu/1 or server/1.
    #[error("{0}")]
    Trace(String),
    /// Malformed input (file and line named).
    #[error("{0}")]
    Input(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
    /// A named setting has an unusable value. `setting` is the option's name as the
    /// binary spells its flag (`scrape`, `clock-offset`), so that it can name the flag.
    #[error("{setting} {message}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// What is wrong with its value.
        message: String,
    },
}
