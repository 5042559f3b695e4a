//! # reprise-replay — reproduce a workload against a target and measure it
//!
//! A replay is a pipeline of three stages, each a module:
//!
//! 1. **prepare** ([`prepare()`]): a [`Spec`] — typed [`Target`]s, a [`Load`] (a trace
//!    window, a rate, a rate ramp, closed-loop users, a concurrency ramp; [`Scenario`]
//!    presets over it) and a [`ReplayConfig`] — becomes [`Prepared`]: simulators started,
//!    URL targets checked, the model resolved, prompts sized, and the plan ([`Pacing`])
//!    dealt once.
//! 2. **execute** ([`run`]): the open loop (`open`: sender threads release each request
//!    at its absolute deadline `t0 + offset`, [`pace::Pacer`]) or the closed loop
//!    (`closed`: users that send, wait and think), both over one request path
//!    (`send`, [`client`], the lean HTTP/1.1 client [`h1`]). Every request records
//!    `scheduled`, `sent` and `queue = sent − scheduled`.
//! 3. **write** ([`mod@write`]): one writer thread turns each finished request into its
//!    `result/1` row ([`row::row`], a pure function) and summary sample, streaming rows to
//!    `requests.parquet`; at the end `run.json` ([`RunInfo`]) and `events.json`.
//!
//! Beside them: [`workload`] (open-loop plans of offsets), [`prompt`] (prompts of exact
//! token counts with shared prefixes), [`sizing`] (prompts sized by the server's or a local
//! tokenizer), [`summary`] (HDR histograms for the terminal; the analyzer's exact
//! percentiles are authoritative), [`gate`] (exit-status gates), [`events`] (HTTP calls and
//! commands during a run), [`clock`] (one wall-clock anchor, monotonic offsets), [`live`]
//! (Prometheus metrics served while the run goes: [`execute::run_with`]).
//!
//! Where changes go: a load mode is a [`Load`] variant and its arm in [`Load::pacing`];
//! a backend dialect is a [`client::Backend`] variant and its arm in
//! [`client::RequestShape::body`]; a result column is a field of `result/1` in
//! `reprise-trace` filled in [`row::row`]; a `run.json` field is a field of [`RunInfo`]
//! filled in [`write::run_info`] and documented in `docs/formats.md` (a test checks).

pub mod client;
pub mod clock;
mod closed;
pub mod config;
pub mod events;
pub mod execute;
pub mod gate;
pub use reprise_net::h1;
pub mod live;
pub mod load;
mod open;
pub mod pace;
pub mod prepare;
pub mod prompt;
pub mod row;
mod send;
pub mod shard;
pub mod sizing;
pub mod summary;
pub mod target;
pub mod workload;
pub mod write;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use reprise_trace::Timestamp;

pub use config::{HttpClient, Pacing, ReplayConfig, StopRule};
pub use execute::{LiveRun, Progress, connection_budget, raise_open_files_limit, run, run_with};
pub use load::{Knobs, Load, Ramp, Scenario};
pub use prepare::{MetricsEndpoint, PrepareError, Prepared, SizerChoice, Spec, prepare, stop_sims};
pub use reprise_trace::run::{RunInfo, RunSummary};
pub use target::Target;

/// Requests per second that one open-loop sender holds with a client queue p99 under 1 ms
/// (the lean HTTP/1.1 client, 2-core machine, server sharing it; docs/replay.md has the
/// measurement). `--help` and docs/replay.md state this figure; a test keeps them equal.
pub const SENDER_HOLDS_REQ_PER_S: u32 = 10_000;

/// A replay error (configuration, data or output; a failed request is a row, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// Reading the trace or writing results failed.
    #[error(transparent)]
    Data(#[from] reprise_trace::TraceError),
    /// Writing the run directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The results could not be written (a full disk, say): the run stopped sending, and
    /// the requests already measured were not kept.
    #[error("{cause} (run stopped; the results of {rows} requests were not written)")]
    Unwritten {
        /// Why writing failed.
        cause: reprise_trace::TraceError,
        /// Requests whose rows were not written.
        rows: u64,
    },
    /// A trace window that holds no request.
    #[error("{}: no request in the window asked for", path.display())]
    EmptyWindow {
        /// The trace.
        path: PathBuf,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// A run id from the current UTC time: `YYYYMMDD-HHMMSS`.
pub fn new_run_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let text = reprise_trace::time::format_rfc3339(Timestamp(now));
    // 2026-11-28T03:20:46.123456789Z -> 20261128-032046
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    format!("{}-{}", &digits[..8], &digits[8..14])
}

/// Whether a path looks like a run directory (has run.json).
pub fn is_run_dir(path: &Path) -> bool {
    path.join("run.json").is_file()
}
