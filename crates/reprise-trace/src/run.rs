//! The JSON files of a run directory, typed: `run.json` ([`RunInfo`], format `run/1`),
//! `events.json` ([`EventRecord`]s) and `monitor.json` ([`MonitorSummary`],
//! `reprise.monitor/1`). `reprise replay` and `reprise monitor` write them with these types
//! and the analyzer reads them with the same ones, so a field renamed on one side is a
//! compile error on the other; `docs/formats.md` documents every field (a test checks).
//!
//! Reading is lenient where files from older versions lack a field (it takes its default)
//! and strict where a field is present with the wrong type (a one-line error naming the
//! file).
//!
//! The summary here ([`PhaseSummary`]) is replay's terminal summary, from HDR histograms
//! with 3 significant digits. The analyzer's percentiles, exact over the stored rows of
//! `requests.parquet`, are authoritative; the two agree to within the histograms'
//! precision (0.1%).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TraceError;

/// `format` of [`RunInfo`].
pub const RUN_FORMAT: &str = "run/1";
/// `format` of [`MonitorSummary`].
pub const MONITOR_FORMAT: &str = "reprise.monitor/1";

/// `run.json`: what ran, how it was configured, and what it produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RunInfo {
    /// `run/1`.
    pub format: String,
    /// The run's id (also in every result row).
    pub run_id: String,
    /// `reprise`.
    pub tool: String,
    /// The tool's version.
    pub version: String,
    /// The command line, as typed.
    pub command: Vec<String>,
    /// The load generator's host name.
    pub host: String,
    /// Whether every planned request was sent and finished (false after Ctrl-C or an
    /// early stop).
    pub complete: bool,
    /// The run's clock.
    pub clock: ClockInfo,
    /// The replay's settings.
    pub config: RunSettings,
    /// What the run produced.
    pub summary: RunSummary,
    /// A shard of a distributed replay, or a merged run (`reprise merge`).
    pub distributed: Option<Distributed>,
}

/// A shard of a distributed replay (`shard` set; also in `shard.json`, written before the
/// run starts), or the merged run of all of them (`workers` set).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Distributed {
    /// The coordinator run's id (every worker of one run has the same).
    pub coordinator_id: String,
    /// The coordinator's URL.
    pub coordinator: String,
    /// Shards in all.
    pub shards: u32,
    /// This worker's shard (a worker's run).
    pub shard: Option<u32>,
    /// The common start, ns since the epoch on the coordinator's clock: every time in the
    /// run's files is on that clock.
    pub t0_ns: i64,
    /// The worker's clock offset: coordinator − worker, ns (from the round trip of least
    /// delay among at least 16).
    pub offset_ns: i64,
    /// The offset's uncertainty: half that round trip, ns.
    pub uncertainty_ns: i64,
    /// How far the offset had moved by the end of the run (drift), ns, when measured.
    pub residual_ns: Option<i64>,
    /// Requests this shard planned (a worker's run), or all shards did (a merged run).
    pub planned: u64,
    /// The workers (a merged run).
    pub workers: Vec<WorkerRun>,
    /// Why a merged run is partial (a worker died or is missing); `None` when whole.
    pub partial: Option<String>,
}

/// One worker of a merged run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WorkerRun {
    /// Its shard.
    pub shard: u32,
    /// Its host.
    pub host: String,
    /// Its run directory, as given to `reprise merge`.
    pub run_dir: String,
    /// Its clock offset and uncertainty, ns.
    pub offset_ns: i64,
    /// Half its least round trip, ns.
    pub uncertainty_ns: i64,
    /// Requests it planned.
    pub planned: u64,
    /// Rows it recorded.
    pub recorded: u64,
    /// Requests it sent.
    pub sent: u64,
    /// `complete`, `incomplete` (stopped early) or `died` (no run.json: killed, or its
    /// results lost).
    pub state: String,
}

/// The one wall-clock anchor of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClockInfo {
    /// The wall-clock time of the run's start, ns since the Unix epoch (UTC).
    pub anchor_wall_ns: i64,
    /// How the times of the run relate to the anchor.
    pub note: String,
}

/// How a replay was configured (no header values: credentials are never written).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RunSettings {
    /// Base URLs requests went to.
    pub targets: Vec<String>,
    /// The targets as the user named them (`sim:PROFILE` or the URL).
    pub target_names: Vec<String>,
    /// `chat` or `completions`.
    pub api: String,
    /// Server dialect: `vllm`, `sglang`, `llamacpp`, `tgi`, `openai`.
    pub backend: String,
    /// Model id sent.
    pub model: String,
    /// Whether streamed responses were asked for.
    pub stream: bool,
    /// Names of the extra headers sent (never their values).
    pub header_names: Vec<String>,
    /// Per-request time limit, seconds.
    pub timeout_s: f64,
    /// Longest silence inside a stream, seconds.
    pub token_timeout_s: f64,
    /// Cap on requests in flight.
    pub max_in_flight: Option<usize>,
    /// Most connections open at once (the open loop's bound; absent in older runs).
    pub max_connections: Option<usize>,
    /// Requests counted as warm-up.
    pub warmup: u64,
    /// Queue p99 above which the client "could not keep up", ms.
    pub queue_limit_ms: f64,
    /// What sized the prompts: `cl100k`, `server` or `hf:<name>`.
    pub tokenizer: String,
}

impl Default for RunSettings {
    /// Empty, with the replay's default queue limit (1 ms) for files that lack one.
    fn default() -> Self {
        RunSettings {
            targets: Vec::new(),
            target_names: Vec::new(),
            api: String::new(),
            backend: String::new(),
            model: String::new(),
            stream: false,
            header_names: Vec::new(),
            timeout_s: 0.0,
            token_timeout_s: 0.0,
            max_in_flight: None,
            max_connections: None,
            warmup: 0,
            queue_limit_ms: 1.0,
            tokenizer: String::new(),
        }
    }
}

/// What a replay produced (`run.json` → `summary`; also what `reprise replay` prints).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Whether every planned request was sent and finished (false after Ctrl-C).
    pub complete: bool,
    /// Requests recorded.
    pub recorded: u64,
    /// The measured requests' figures.
    pub overall: PhaseSummary,
    /// Per phase (warm-up, steps).
    pub phases: Vec<PhaseSummary>,
    /// Why a ramp stopped before its last step.
    pub stopped_early: Option<String>,
    /// The requests file.
    pub requests_file: PathBuf,
    /// Events that ran.
    pub events: Vec<EventRecord>,
    /// What the samplers did (GPU, scrapes and their failures, host), when any ran.
    pub monitor: Option<MonitorSummary>,
    /// Why the run was stopped before any request succeeded: the target refused
    /// connections or answered 404.
    pub aborted: Option<String>,
    /// The targets, as named (`sim:PROFILE` or URLs).
    pub targets: Vec<String>,
    /// How long the workload was meant to last, seconds.
    pub intended_s: Option<f64>,
    /// Successful measured requests per second of the intended duration.
    pub intended_throughput: Option<f64>,
    /// The sessions of a closed-session replay.
    pub sessions: Option<SessionsSummary>,
    /// Whether the load generator kept to its schedule (open loop).
    pub client: Option<ClientSummary>,
}

/// How the load generator itself fared in an open-loop run (`run.json` →
/// `summary.client`): the rate it was asked for and the rate it held, requests that waited
/// for a free connection, and failures that were its own rather than the target's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClientSummary {
    /// Requests sent (all phases).
    pub sent: u64,
    /// Requests per second the schedule asked for: sent requests over the span from the
    /// first scheduled instant to the last.
    pub asked_rate: f64,
    /// Requests per second actually sent: the same requests over the span from the first
    /// scheduled instant to the last send.
    pub held_rate: f64,
    /// How late the last request went out, seconds.
    pub behind_s: f64,
    /// The client fell behind its schedule (queue p99 over
    /// [`CLIENT_BEHIND_MS`]): the figures measure the client as much as the target, and
    /// `reprise replay` exits 1.
    pub fell_behind: bool,
    /// The bound on open connections in force.
    pub max_connections: Option<usize>,
    /// Requests that found every connection busy and waited for one.
    pub waited_for_connection: u64,
    /// Requests that failed for the client's own shortage (class `client`: no free port,
    /// no file descriptor), never counted against the target.
    pub client_errors: u64,
}

/// A queue p99 above this (ms) means the client fell behind its schedule, not merely
/// jittered: [`ClientSummary::fell_behind`].
pub const CLIENT_BEHIND_MS: f64 = 1000.0;

/// What happened to the sessions of a closed-session replay (`run.json` →
/// `summary.sessions`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SessionsSummary {
    /// `closed`.
    pub mode: String,
    /// Sessions whose first turn was sent.
    pub started: u64,
    /// Sessions whose last turn was answered or failed (not cancelled by a stop).
    pub completed: u64,
    /// Turns sent, first turns included.
    pub turns: u64,
    /// Later turns (after a session's first) sent.
    pub later_turns: u64,
    /// Later turns sent more than 1 ms after their recorded arrival: the server (or the
    /// client) was slower than the trace's.
    pub delayed: u64,
    /// Later turns scheduled before their recorded arrival: a faster server.
    pub earlier: u64,
    /// Of the delayed turns: how much later than recorded they were scheduled, ms.
    pub delay_ms: Option<Latency>,
    /// Turns sent a think time after their predecessor's end: how much later than that
    /// intended instant they were sent (the think-time error), ms.
    pub think_error_ms: Option<Latency>,
}

/// Percentiles of one latency metric, milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Latency {
    /// Values.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// The figures of one phase (or of all measured requests).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PhaseSummary {
    /// Phase label.
    pub phase: String,
    /// Step value.
    pub step_value: Option<f64>,
    /// Requests.
    pub requests: u64,
    /// Successful requests.
    pub ok: u64,
    /// Failures by class.
    pub errors: BTreeMap<String, u64>,
    /// Failed / all.
    pub error_rate: f64,
    /// First sent → last done, seconds.
    pub duration_s: f64,
    /// OK requests per second.
    pub request_throughput: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Prompt + output tokens per second.
    pub total_tokens_per_s: f64,
    /// Prompt tokens of OK requests.
    pub input_tokens: u64,
    /// Output tokens of OK requests.
    pub output_tokens: u64,
    /// `sent − scheduled`.
    pub queue_ms: Option<Latency>,
    /// TTFT from sent.
    pub ttft_ms: Option<Latency>,
    /// TTFT from scheduled (the open-loop headline).
    pub ttft_sched_ms: Option<Latency>,
    /// TPOT.
    pub tpot_ms: Option<Latency>,
    /// ITL (pooled gaps).
    pub itl_ms: Option<Latency>,
    /// E2E from sent.
    pub e2e_ms: Option<Latency>,
    /// E2E from scheduled.
    pub e2e_sched_ms: Option<Latency>,
    /// Share of OK requests whose usage prompt tokens differ from the requested size.
    pub input_token_mismatch_rate: Option<f64>,
    /// Share of OK requests whose usage output tokens differ from the requested size.
    pub output_token_mismatch_rate: Option<f64>,
}

/// What happened when a run event ran (`events.json`; times in ns since the Unix epoch,
/// UTC).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EventRecord {
    /// Offset from the run's start, seconds.
    pub offset_s: f64,
    /// What it did.
    pub action: String,
    /// When it started.
    pub started_ns: i64,
    /// When it finished.
    pub finished_ns: i64,
    /// Whether it succeeded (2xx, or exit status 0).
    pub ok: bool,
    /// Status line, exit status or error.
    pub detail: String,
}

/// One scraped source's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SourceSummary {
    /// The URL.
    pub source: String,
    /// Scrapes that returned samples.
    pub ok: u64,
    /// Scrapes that failed.
    pub failed: u64,
    /// Failures by class.
    pub errors: BTreeMap<String, u64>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Spans without data (ns since the epoch, start and end), from consecutive failures.
    pub gaps: Vec<(i64, i64)>,
    /// The scraped host's clock minus ours, ms (median of `Date` headers, ±500 ms).
    pub clock_offset_ms: Option<f64>,
}

/// What a monitor did (`monitor.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MonitorSummary {
    /// `reprise.monitor/1`.
    pub format: String,
    /// Interval, ms.
    pub interval_ms: u64,
    /// First and last sampling time, ns since the epoch.
    pub started_ns: i64,
    /// End.
    pub finished_ns: i64,
    /// GPUs sampled through NVML, or why not (`null` when not asked).
    pub nvml: Option<String>,
    /// gpu/1 rows written.
    pub gpu_rows: u64,
    /// server/1 rows written (this host's metrics and the scraped endpoints' together).
    pub server_rows: u64,
    /// Of `server_rows`, the rows of this host's own metrics (source `host`).
    pub host_rows: u64,
    /// Host samples taken.
    pub host_samples: u64,
    /// Each scraped endpoint.
    pub sources: Vec<SourceSummary>,
}

impl MonitorSummary {
    /// One line for people: what went where, this host (the load generator) apart from
    /// the scraped servers.
    pub fn describe(&self) -> String {
        let scraped = self.server_rows - self.host_rows.min(self.server_rows);
        format!(
            "{} GPU rows; {} rows from {} scraped endpoint{}; {} samples of this host (the load generator, {} rows)",
            self.gpu_rows,
            scraped,
            self.sources.len(),
            if self.sources.len() == 1 { "" } else { "s" },
            self.host_samples,
            self.host_rows
        )
    }
}

/// Writes one of these files as pretty JSON.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TraceError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TraceError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(|e| TraceError::io(path, e))
}

/// Reads one of these files; `Ok(None)` when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, TraceError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TraceError::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TraceError::Invalid {
            path: path.to_owned(),
            message: format!("not a valid {}: {e}", file_kind(path)),
        })
}

fn file_kind(path: &Path) -> &'static str {
    match path.file_name().and_then(|n| n.to_str()) {
        Some("run.json") => "run.json (run/1)",
        Some("monitor.json") => "monitor.json (reprise.monitor/1)",
        Some("events.json") => "events.json",
        _ => "reprise JSON file",
    }
}

impl RunInfo {
    /// Reads `run.json` from a run directory; `Ok(None)` when there is none.
    pub fn read(run_dir: &Path) -> Result<Option<RunInfo>, TraceError> {
        read_json(&run_dir.join("run.json"))
    }

    /// An instance with every optional field set, for documentation checks: serialised,
    /// it shows every key the format can hold.
    pub fn example() -> RunInfo {
        let latency = Some(Latency::default());
        let phase = PhaseSummary {
            step_value: Some(1.0),
            errors: BTreeMap::from([("timeout".to_owned(), 1)]),
            queue_ms: latency.clone(),
            ttft_ms: latency.clone(),
            ttft_sched_ms: latency.clone(),
            tpot_ms: latency.clone(),
            itl_ms: latency.clone(),
            e2e_ms: latency.clone(),
            e2e_sched_ms: latency,
            input_token_mismatch_rate: Some(0.0),
            output_token_mismatch_rate: Some(0.0),
            ..PhaseSummary::default()
        };
        RunInfo {
            format: RUN_FORMAT.into(),
            config: RunSettings {
                max_in_flight: Some(1),
                ..RunSettings::default()
            },
            summary: RunSummary {
                overall: phase.clone(),
                phases: vec![phase],
                stopped_early: Some(String::new()),
                events: vec![EventRecord::default()],
                monitor: Some(MonitorSummary {
                    nvml: Some(String::new()),
                    sources: vec![SourceSummary {
                        last_error: Some(String::new()),
                        clock_offset_ms: Some(0.0),
                        ..SourceSummary::default()
                    }],
                    ..MonitorSummary::default()
                }),
                aborted: Some(String::new()),
                intended_s: Some(1.0),
                intended_throughput: Some(1.0),
                sessions: Some(SessionsSummary {
                    delay_ms: Some(Latency::default()),
                    think_error_ms: Some(Latency::default()),
                    ..SessionsSummary::default()
                }),
                ..RunSummary::default()
            },
            distributed: Some(Distributed {
                shard: Some(0),
                residual_ns: Some(0),
                workers: vec![WorkerRun::default()],
                partial: Some(String::new()),
                ..Distributed::default()
            }),
            ..RunInfo::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_info_round_trips_and_reads_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let info = RunInfo::example();
        write_json(&dir.path().join("run.json"), &info).unwrap();
        assert_eq!(RunInfo::read(dir.path()).unwrap(), Some(info));
        // A file of an older version without most fields still reads.
        std::fs::write(
            dir.path().join("run.json"),
            r#"{"format":"run/1","run_id":"r1","config":{"model":"m"}}"#,
        )
        .unwrap();
        let old = RunInfo::read(dir.path()).unwrap().unwrap();
        assert_eq!(
            (old.run_id.as_str(), old.config.model.as_str()),
            ("r1", "m")
        );
        assert_eq!(old.config.queue_limit_ms, 1.0);
        assert!(RunInfo::read(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn a_wrong_type_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run.json"), r#"{"complete":"yes"}"#).unwrap();
        let e = RunInfo::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("run.json") && e.contains("run/1"), "{e}");
    }
}
