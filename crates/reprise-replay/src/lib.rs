//! # reprise-replay — reproduce a workload against a target and measure it
//!
//! - [`workload`]: what to send — a trace window at N x speed, or synthetic load (fixed,
//!   Poisson, Gamma) at a rate or a rate ramp — as an open-loop plan of absolute offsets;
//!   closed-loop users and concurrency ramps are [`Pacing::Closed`].
//! - [`prompt::PromptBuilder`]: prompts with exactly `input_tokens` tokens, equal prefixes
//!   for equal `prefix_hashes`.
//! - [`client`]: one request, measured per `docs/metrics.md` (SSE events stamped on
//!   arrival; errors classified; a failure is a row).
//! - [`run`]: the executor. Open-loop requests are released by a pacer thread at absolute
//!   deadlines `t0 + offset` (a precise OS sleep, then a short spin: tokio's timer is 1 ms
//!   grained), never by chaining sleeps; every request records `scheduled`, `sent` and
//!   `queue = sent − scheduled`. Results stream to `requests.parquet` (result/1) through one
//!   writer thread, so memory stays flat; [`summary`] keeps HDR histograms for the summary.

pub mod client;
pub mod events;
pub mod gate;
pub mod h1;
pub mod pace;
pub mod prompt;
pub mod sizing;
pub mod summary;
pub mod target;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reprise_protocol::openai::Api;
use reprise_trace::{DatasetWriter, Output, ResultRecord, Timestamp, TraceRecord, WriterOptions};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::{Measured, RequestShape, Timeouts};
use crate::prompt::PromptBuilder;
use crate::summary::{PhaseSummary, Sample, Summarizer};
use crate::workload::Planned;

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
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// How requests are paced.
#[derive(Debug, Clone)]
pub enum Pacing {
    /// Open loop: send each planned request at its offset, whatever the responses do.
    Open(workload::OpenPlan),
    /// Closed loop: `users` clients each send, wait for the response, think, repeat — for
    /// each step of `users` (a concurrency ramp when several).
    Closed {
        /// Users per step.
        users: Vec<usize>,
        /// Length of each step (or the run, with one step).
        step_duration: Option<Duration>,
        /// Stop each step after this many requests.
        requests_per_step: Option<u64>,
        /// Pause between a response and the next request of the same user.
        think: Duration,
        /// The requests, taken in order and cycled.
        requests: Vec<TraceRecord>,
    },
}

/// When a stress ramp stops early.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopRule {
    /// Stop after a step whose error rate exceeds this (0..1).
    pub max_error_rate: Option<f64>,
    /// Stop after a step whose P99 TTFT exceeds this, ms.
    pub max_p99_ttft_ms: Option<f64>,
}

/// Everything a replay needs.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Base URLs (round-robin when several), e.g. `http://127.0.0.1:8000`.
    pub targets: Vec<String>,
    /// Request shape (API, backend dialect, model, streaming).
    pub shape: RequestShape,
    /// Extra headers (e.g. authorization); never written to results.
    pub headers: Vec<(String, String)>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Optional cap on requests in flight (reported; open loop has none by default).
    pub max_in_flight: Option<usize>,
    /// The first this many requests are phase `warmup`, excluded from the summary.
    pub warmup: u64,
    /// Prompt construction.
    pub prompts: PromptBuilder,
    /// Run directory (created).
    pub run_dir: PathBuf,
    /// Run id.
    pub run_id: String,
    /// A queue p99 above this flags the run as "client could not keep up", ms.
    pub queue_limit_ms: f64,
    /// Early stop of ramps.
    pub stop_rule: StopRule,
    /// How long to wait for in-flight requests after a stop (Ctrl-C).
    pub drain: Duration,
    /// The exact command line, for run.json.
    pub command: Vec<String>,
    /// Events to run at offsets (recorded in run.json and events.json).
    pub events: Vec<events::RunEvent>,
    /// Prompt words per request id, when prompts were sized by the server's or a local
    /// tokenizer ([`sizing`]); otherwise a prompt has `input_tokens` words (cl100k tokens).
    pub prompt_words: Option<Arc<sizing::PromptSizing>>,
    /// Open-loop sender threads, each pacing and sending every n-th request on a runtime of
    /// its own (0: one per CPU). One holds about [`SENDER_HOLDS_REQ_PER_S`] with
    /// sub-millisecond queues.
    pub senders: usize,
    /// Which HTTP client sends.
    pub http: HttpClient,
    /// Samplers to run beside the replay (GPU, scrapes, host), into the run directory.
    pub monitor: Option<reprise_monitor::MonitorConfig>,
    /// Stop the run at the first request answered 404 or refused a connection while no
    /// request has succeeded yet: the target is wrong, not overloaded
    /// ([`RunSummary::aborted`] says why).
    pub fail_fast: bool,
    /// What the targets are, as the user named them (`sim:PROFILE` or the URL), for the
    /// summary and run.json; `targets` is used when empty.
    pub target_names: Vec<String>,
    /// How long the workload was meant to last ([`workload::OpenPlan::intended_duration`]),
    /// for throughput over the intended duration beside the measured span.
    pub intended: Option<Duration>,
}

impl ReplayConfig {
    /// A configuration with the defaults of `reprise replay`: OpenAI chat, vLLM dialect,
    /// streaming, 60 s per request and 30 s between chunks, no warm-up, queue limit 1 ms,
    /// one sender, the automatic HTTP client, no monitoring.
    pub fn new(targets: Vec<String>, model: &str, run_dir: impl Into<PathBuf>) -> Self {
        ReplayConfig {
            targets,
            shape: RequestShape {
                api: Api::Chat,
                backend: client::Backend::Vllm,
                model: model.to_owned(),
                stream: true,
            },
            headers: Vec::new(),
            timeouts: Timeouts {
                request: Duration::from_secs(60),
                gap: Duration::from_secs(30),
            },
            max_in_flight: None,
            warmup: 0,
            prompts: PromptBuilder {
                block_tokens: None,
                salt: 1,
            },
            run_dir: run_dir.into(),
            run_id: "run".into(),
            queue_limit_ms: 1.0,
            stop_rule: StopRule::default(),
            drain: Duration::from_secs(5),
            command: Vec::new(),
            events: Vec::new(),
            prompt_words: None,
            senders: 1,
            http: HttpClient::Auto,
            monitor: None,
            fail_fast: false,
            target_names: Vec::new(),
            intended: None,
        }
    }

    /// The targets as named for people: `target_names`, else the base URLs.
    pub fn target_labels(&self) -> &[String] {
        if self.target_names.is_empty() {
            &self.targets
        } else {
            &self.target_names
        }
    }
}

/// Which HTTP client sends the requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpClient {
    /// The lean HTTP/1.1 client ([`h1`]) for `http://` targets when no proxy is set in the
    /// environment; `reqwest` for the others.
    #[default]
    Auto,
    /// `reqwest` for every target.
    Reqwest,
}

/// Raises this process's soft limit on open files to its hard limit (every open stream is
/// a socket, and the soft limit is often 1,024) and returns the limit now in force, or
/// `None` where it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        // `None` is unlimited.
        let mut limit = getrlimit(Resource::Nofile);
        if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
            && current < maximum
        {
            limit.current = Some(maximum);
            if setrlimit(Resource::Nofile, limit).is_err() {
                limit = getrlimit(Resource::Nofile);
            }
        }
        limit.current.or(Some(u64::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Whether a proxy is configured in the environment (which `reqwest` honours).
fn proxy_in_env() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
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
    /// Steps skipped by the stop rule.
    pub stopped_early: Option<String>,
    /// The requests file.
    pub requests_file: PathBuf,
    /// Events that ran.
    pub events: Vec<events::EventRecord>,
    /// What the samplers did (GPU, scrapes and their failures, host), when any ran.
    pub monitor: Option<reprise_monitor::MonitorSummary>,
    /// Why the run was stopped before any request succeeded (with
    /// [`ReplayConfig::fail_fast`]): the target refused connections or answered 404.
    pub aborted: Option<String>,
    /// The targets, as named (`sim:PROFILE` or URLs).
    pub targets: Vec<String>,
    /// How long the workload was meant to last, seconds.
    pub intended_s: Option<f64>,
    /// Successful measured requests per second of the intended duration.
    pub intended_throughput: Option<f64>,
}

/// Why a failed request means the target is wrong rather than busy: a 404 on the API path
/// or a refused connection. `None` for any other outcome.
fn wrong_target(m: &Measured, target: &str, api_path: &str) -> Option<String> {
    if m.status == Some(404) {
        return Some(format!(
            "target {target} answered 404 Not Found on {api_path} before any request succeeded: \
             check the base URL (requests go to {target}{api_path}) or --api"
        ));
    }
    let error = m.error.as_deref().unwrap_or_default();
    (m.error_kind == Some("connect") && error.to_ascii_lowercase().contains("refused")).then(|| {
        format!("target {target} refused the connection before any request succeeded: {error}")
    })
}

struct Job {
    planned_phase: String,
    step_value: Option<f64>,
    request: TraceRecord,
    scheduled: Instant,
    body: Vec<u8>,
    target: usize,
}

struct Done {
    job: Job,
    measured: Measured,
}

/// Shared between the executor, the progress view and the writer.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Requests finished (any outcome).
    pub finished: AtomicU64,
    /// Requests failed.
    pub failed: AtomicU64,
    /// Planned requests (open loop), 0 when unknown.
    pub planned: AtomicU64,
    /// Running TTFT median of the measured requests, µs (0 until known).
    pub ttft_p50_us: AtomicU64,
    /// Running TTFT p99, µs.
    pub ttft_p99_us: AtomicU64,
}

struct Clock {
    t0: Instant,
    wall0_ns: i64,
}

impl Clock {
    fn new(lead: Duration) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        Clock {
            t0: Instant::now() + lead,
            wall0_ns: wall + lead.as_nanos() as i64,
        }
    }
    fn wall(&self, t: Instant) -> Timestamp {
        let ns = if t >= self.t0 {
            self.wall0_ns + (t - self.t0).as_nanos() as i64
        } else {
            self.wall0_ns - (self.t0 - t).as_nanos() as i64
        };
        Timestamp(ns)
    }
    fn since_start_ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_nanos() as u64
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn between(a: Option<Instant>, b: Option<Instant>) -> Option<u64> {
    Some(us(b?.saturating_duration_since(a?)))
}

/// Turns a finished request into its result row and summary sample.
fn finish(d: &Done, clock: &Clock, config: &ReplayConfig) -> (ResultRecord, Sample) {
    let m = &d.measured;
    let scheduled = Some(d.job.scheduled);
    let ok = m.error_kind.is_none();
    let ttft = between(m.sent, m.first_token);
    let e2e = between(m.sent, m.done);
    let n_out = m
        .usage
        .map(|u| u.completion_tokens)
        .unwrap_or(m.n_out_counted);
    let tpot = match (ttft, e2e) {
        (Some(t), Some(e)) if n_out > 1 && ok => Some(e.saturating_sub(t) / u64::from(n_out - 1)),
        _ => None,
    };
    let itl: Vec<u32> = m
        .content_times
        .windows(2)
        .map(|w| us(w[1].saturating_duration_since(w[0])).min(u64::from(u32::MAX)) as u32)
        .collect();
    let request = d.job.request.clone();
    let record = ResultRecord {
        request: request.clone(),
        run_id: config.run_id.clone(),
        target: config.targets[d.job.target].clone(),
        phase: d.job.planned_phase.clone(),
        step_value: d.job.step_value,
        shard: 0,
        scheduled: clock.wall(d.job.scheduled),
        sent: m.sent.map(|t| clock.wall(t)),
        first_chunk: m.first_chunk.map(|t| clock.wall(t)),
        first_token: m.first_token.map(|t| clock.wall(t)),
        done: m.done.map(|t| clock.wall(t)),
        queue_us: between(scheduled, m.sent),
        ttft_us: ttft,
        e2e_us: e2e,
        ttft_sched_us: between(scheduled, m.first_token),
        e2e_sched_us: between(scheduled, m.done),
        tpot_us: tpot,
        itl_us: (!itl.is_empty()).then(|| itl.clone()),
        n_in_usage: m.usage.map(|u| u.prompt_tokens),
        n_out_usage: m.usage.map(|u| u.completion_tokens),
        n_out_counted: Some(m.n_out_counted),
        status: m.status,
        error_kind: m.error_kind.map(str::to_owned),
        error: m.error.clone(),
    };
    let sample = Sample {
        phase: record.phase.clone(),
        step_value: record.step_value,
        ok,
        error_kind: record.error_kind.clone(),
        sent_ns: m.sent.map(|t| clock.since_start_ns(t)),
        done_ns: m.done.map(|t| clock.since_start_ns(t)),
        queue_us: record.queue_us,
        ttft_us: if ok { ttft } else { None },
        ttft_sched_us: if ok { record.ttft_sched_us } else { None },
        e2e_us: if ok { e2e } else { None },
        e2e_sched_us: if ok { record.e2e_sched_us } else { None },
        tpot_us: tpot,
        itl_us: if ok { itl } else { Vec::new() },
        n_in: u64::from(
            m.usage
                .map(|u| u.prompt_tokens)
                .or(request.input_tokens)
                .unwrap_or(0),
        ),
        n_out: u64::from(n_out),
        input_mismatch: match (m.usage, request.input_tokens) {
            (Some(u), Some(want)) if ok => Some(u.prompt_tokens != want),
            _ => None,
        },
        output_mismatch: match (m.usage, request.output_tokens) {
            (Some(u), Some(want))
                if ok
                    && config.shape.backend != client::Backend::Openai
                    && config.shape.backend != client::Backend::Tgi =>
            {
                Some(u.completion_tokens != want)
            }
            _ => None,
        },
    };
    (record, sample)
}

fn build_body(config: &ReplayConfig, request: &TraceRecord) -> Vec<u8> {
    let input = config
        .prompt_words
        .as_ref()
        .and_then(|m| m.words.get(&request.request_id).copied())
        .unwrap_or(request.input_tokens.unwrap_or(16));
    let output = request
        .output_tokens
        .or(request.max_tokens)
        .unwrap_or(128)
        .max(1);
    let prompt = match &request.prompt {
        Some(p) => p.clone(),
        None => config
            .prompts
            .build(&request.request_id, input, request.prefix_hashes.as_deref()),
    };
    config.shape.body(&prompt, output).to_string().into_bytes()
}

/// What sized the prompts: `cl100k` (the embedded default), `server` or `hf:<name>`.
fn tokenizer_label(config: &ReplayConfig) -> String {
    config
        .prompt_words
        .as_ref()
        .map_or_else(|| "cl100k".to_owned(), |s| s.by.clone())
}

/// The phase of the next request sent: the first `config.warmup` are warm-up.
fn phase_for(sent: &AtomicU64, config: &ReplayConfig, planned: &str) -> String {
    if sent.fetch_add(1, Ordering::Relaxed) < config.warmup {
        "warmup".to_owned()
    } else {
        planned.to_owned()
    }
}

/// The HTTP client requests go through. A client's pooled connections belong to the
/// runtime that opened them (their dispatch task runs there), so every runtime that sends
/// builds a client of its own: a connection opened by a sender thread whose runtime has
/// finished would fail the next request that picks it ("dispatch task is gone").
fn http_client() -> Result<reqwest::Client, ReplayError> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        // Below common servers' keep-alive timeouts (uvicorn, as in vLLM, and llama.cpp's
        // HTTP server close idle connections after 5 s): an idle connection is dropped here
        // first, rather than reused just as the server closes it, which fails the request.
        .pool_idle_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ReplayError::Client(e.to_string()))
}

/// What a request task needs besides its job.
#[derive(Clone)]
struct SendCtx {
    client: reqwest::Client,
    /// Per URL, the lean client's target (and pool) when it sends to that URL; empty or
    /// `None` means `reqwest`. Like `client`, of the runtime that sends.
    lean: Vec<Option<Arc<h1::Target>>>,
    urls: Vec<reqwest::Url>,
    headers: reqwest::header::HeaderMap,
    done_tx: std::sync::mpsc::Sender<Done>,
    limiter: Option<Arc<Semaphore>>,
    timeouts: Timeouts,
    stream: bool,
    progress: Arc<Progress>,
}

async fn send_job(mut job: Job, ctx: Arc<SendCtx>) {
    let _permit = match &ctx.limiter {
        Some(l) => l.clone().acquire_owned().await.ok(),
        None => None,
    };
    ctx.progress.sent.fetch_add(1, Ordering::Relaxed);
    let body = std::mem::take(&mut job.body);
    let transport = match ctx.lean.get(job.target).and_then(Option::as_deref) {
        Some(target) => client::Transport::H1(target),
        None => client::Transport::Reqwest {
            client: &ctx.client,
            url: &ctx.urls[job.target],
            headers: &ctx.headers,
        },
    };
    let measured = client::send(
        transport,
        bytes::Bytes::from(body),
        ctx.stream,
        ctx.timeouts,
    )
    .await;
    ctx.progress.finished.fetch_add(1, Ordering::Relaxed);
    let _ = ctx.done_tx.send(Done { job, measured });
}

/// The open loop, on the pacer's own runtime: each request spawned at its deadline, then
/// the requests in flight awaited (bounded by the drain time after a stop). `false` when
/// stopped early or not drained.
#[allow(
    clippy::too_many_arguments,
    reason = "one sender's share, its place in the deal and the run's shared state"
)]
async fn open_loop(
    plan: Box<dyn Iterator<Item = Planned> + Send>,
    first: usize,
    stride: usize,
    config: Arc<ReplayConfig>,
    clock: Arc<Clock>,
    stop: Arc<AtomicBool>,
    sent_counter: Arc<AtomicU64>,
    ctx: Arc<SendCtx>,
) -> bool {
    let n_targets = config.targets.len();
    let mut tasks = tokio::task::JoinSet::new();
    let mut complete = true;
    let mut pacer = pace::Pacer::new();
    for (j, p) in plan.enumerate() {
        let i = first + j * stride;
        let body = build_body(&config, &p.request);
        let deadline = clock.t0 + p.offset;
        pacer.until(deadline).await;
        if stop.load(Ordering::Relaxed) {
            complete = false;
            break;
        }
        let phase = phase_for(&sent_counter, &config, &p.phase);
        let job = Job {
            planned_phase: phase,
            step_value: p.step_value,
            request: p.request,
            scheduled: deadline,
            body,
            target: i % n_targets,
        };
        tasks.spawn(send_job(job, ctx.clone()));
        // Reap finished tasks as we go (costs only what finished).
        while tasks.try_join_next().is_some() {}
    }
    let drain_deadline = Instant::now() + config.drain;
    loop {
        let next = if stop.load(Ordering::Relaxed) {
            let left = drain_deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, tasks.join_next()).await {
                Ok(n) => n,
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        } else {
            tasks.join_next().await
        };
        if next.is_none() {
            break;
        }
    }
    tasks.abort_all();
    complete
}

/// Runs a replay to the end (or until `stop` is set), writing the run directory.
pub async fn run(
    config: ReplayConfig,
    pacing: Pacing,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Result<RunSummary, ReplayError> {
    if config.targets.is_empty() {
        return Err(ReplayError::Config("no target".into()));
    }
    std::fs::create_dir_all(&config.run_dir).map_err(|e| ReplayError::Io {
        path: config.run_dir.clone(),
        source: e,
    })?;
    let requests_file = config.run_dir.join("requests.parquet");
    let writer_opts = WriterOptions {
        batch_rows: 1024,
        ..WriterOptions::default()
    }
    .with_meta("reprise.run_id", config.run_id.clone())
    .with_meta("reprise.tokenizer", tokenizer_label(&config));
    let mut writer =
        DatasetWriter::<ResultRecord>::create(Output::File(requests_file.clone()), writer_opts)?;

    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &config.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ReplayError::Config(format!("header `{k}`: {e}")))?;
        let mut value = reqwest::header::HeaderValue::from_str(v)
            .map_err(|e| ReplayError::Config(format!("header `{k}`: {e}")))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let client = http_client()?;
    let api_path = config.shape.api.path();
    // Parsed once: reqwest would parse a string URL on every request.
    let urls = config
        .targets
        .iter()
        .map(|t| {
            let text = format!("{}{api_path}", t.trim_end_matches('/'));
            reqwest::Url::parse(&text)
                .map_err(|e| ReplayError::Config(format!("target `{t}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Each sender thread's client (see `http_client`), built before the clock starts: a
    // client with TLS set up takes milliseconds to build.
    let mut sender_clients = match &pacing {
        Pacing::Open(plan) => {
            let senders = match config.senders {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            }
            .clamp(1, plan.expected_len().max(1) as usize);
            (0..senders)
                .map(|_| http_client())
                .collect::<Result<Vec<_>, _>>()?
        }
        Pacing::Closed { .. } => Vec::new(),
    };

    let clock = Arc::new(Clock::new(Duration::from_millis(20)));
    // The samplers share the run's clock: their rows line up with the requests'.
    let monitor = match &config.monitor {
        Some(m) => {
            let mut m = m.clone();
            m.out_dir = config.run_dir.clone();
            m.anchor = Some((clock.wall0_ns, clock.t0));
            Some(
                reprise_monitor::Monitor::start(m)
                    .map_err(|e| ReplayError::Config(format!("monitor: {e}")))?,
            )
        }
        None => None,
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
    let summary = Arc::new(Mutex::new(Summarizer::default()));
    let aborted: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let config = Arc::new(config);

    // The writer thread: result rows to Parquet, samples to the summary.
    let writer_thread = {
        let (clock, config, summary, progress, stop, aborted) = (
            clock.clone(),
            config.clone(),
            summary.clone(),
            progress.clone(),
            stop.clone(),
            aborted.clone(),
        );
        std::thread::spawn(move || -> Result<u64, ReplayError> {
            let mut rows = 0u64;
            let mut last_flush = Instant::now();
            let mut any_ok = false;
            for done in done_rx {
                let (record, sample) = finish(&done, &clock, &config);
                any_ok |= sample.ok;
                if config.fail_fast && !any_ok {
                    let mut aborted = aborted.lock().unwrap_or_else(|e| e.into_inner());
                    if aborted.is_none()
                        && let Some(why) = wrong_target(
                            &done.measured,
                            &config.target_labels()[done.job.target],
                            config.shape.api.path(),
                        )
                    {
                        *aborted = Some(why);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                if !sample.ok {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                }
                summary
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .add(&sample);
                writer.write(&record)?;
                rows += 1;
                // Rows reach the file a row group (65,536 rows) at a time. No flush here:
                // ending a row group every tick made tiny groups whose footer metadata
                // stayed in memory until the end (+5 MiB a minute at 1,000 req/s).
                if last_flush.elapsed() > Duration::from_millis(500) {
                    last_flush = Instant::now();
                    if let Some(t) = summary
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .overall()
                        .ttft_ms
                    {
                        progress
                            .ttft_p50_us
                            .store((t.p50 * 1000.0) as u64, Ordering::Relaxed);
                        progress
                            .ttft_p99_us
                            .store((t.p99 * 1000.0) as u64, Ordering::Relaxed);
                    }
                }
            }
            writer.close()?;
            Ok(rows)
        })
    };

    let limiter = config.max_in_flight.map(|n| Arc::new(Semaphore::new(n)));
    let sent_counter = Arc::new(AtomicU64::new(0));
    // The lean client's targets, built afresh for each runtime that sends.
    let lean_targets = {
        let lean = config.http == HttpClient::Auto && !proxy_in_env();
        let (urls, headers) = (urls.clone(), config.headers.clone());
        move || -> Vec<Option<Arc<h1::Target>>> {
            urls.iter()
                .map(|u| {
                    lean.then(|| h1::Target::new(u, &headers))
                        .flatten()
                        .map(Arc::new)
                })
                .collect()
        }
    };
    let ctx = Arc::new(SendCtx {
        client: client.clone(),
        lean: lean_targets(),
        urls: urls.clone(),
        headers: headers.clone(),
        done_tx: done_tx.clone(),
        limiter: limiter.clone(),
        timeouts: config.timeouts,
        stream: config.shape.stream,
        progress: progress.clone(),
    });

    let events_task = {
        let (events, clock, client, stop) = (
            config.events.clone(),
            clock.clone(),
            client.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut records = Vec::new();
            for e in events {
                tokio::time::sleep_until(tokio::time::Instant::from_std(clock.t0 + e.offset)).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                tracing::info!("event at {:?}: {}", e.offset, e.describe());
                let (ok, detail) = events::execute(&client, &e.action).await;
                records.push(events::EventRecord {
                    offset_s: e.offset.as_secs_f64(),
                    action: e.describe(),
                    started_ns: clock.wall(started).0,
                    finished_ns: clock.wall(Instant::now()).0,
                    ok,
                    detail,
                });
            }
            records
        })
    };
    let mut complete = true;
    let mut stopped_early = None;
    match pacing {
        Pacing::Open(plan) => {
            progress
                .planned
                .store(plan.expected_len(), Ordering::Relaxed);
            // Sender threads pace and send: each has a runtime of its own that waits for its
            // requests' deadlines while polling its connections (`pace::Pacer`) and spawns
            // each request's task on itself at the deadline, so no wake-up of another thread
            // stands between a deadline and its send, and responses are read as they arrive.
            // Requests are dealt out in turn (the i-th to sender i mod n).
            let senders = sender_clients.len();
            let shares = plan.deal(senders);
            let mut pacers = Vec::new();
            for (k, share) in shares.into_iter().enumerate() {
                let (config, clock, stop, sent_counter) = (
                    config.clone(),
                    clock.clone(),
                    stop.clone(),
                    sent_counter.clone(),
                );
                // A pool of this runtime's own (see `http_client`).
                let ctx = Arc::new(SendCtx {
                    client: sender_clients.pop().expect("one client per sender"),
                    lean: lean_targets(),
                    ..SendCtx::clone(&ctx)
                });
                pacers.push(
                    std::thread::Builder::new()
                        .name(format!("reprise-pacer{k}"))
                        .spawn(move || -> Result<bool, ReplayError> {
                            let rt = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .map_err(|e| {
                                    ReplayError::Config(format!("starting the pacer: {e}"))
                                })?;
                            Ok(rt.block_on(open_loop(
                                share,
                                k,
                                senders,
                                config,
                                clock,
                                stop,
                                sent_counter,
                                ctx,
                            )))
                        })
                        .map_err(|e| ReplayError::Config(format!("starting the pacer: {e}")))?,
                );
            }
            let joined = tokio::task::spawn_blocking(move || {
                pacers.into_iter().map(|p| p.join()).collect::<Vec<_>>()
            })
            .await
            .map_err(|_| ReplayError::Config("the pacer panicked".into()))?;
            for j in joined {
                complete &= j.map_err(|_| ReplayError::Config("the pacer panicked".into()))??;
            }
        }
        Pacing::Closed {
            users,
            step_duration,
            requests_per_step,
            think,
            requests,
        } => {
            if requests.is_empty() {
                return Err(ReplayError::Config("no requests to send".into()));
            }
            let requests = Arc::new(requests);
            let next = Arc::new(AtomicU64::new(0));
            let ramp = users.len() > 1;
            for (si, &n_users) in users.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    complete = false;
                    break;
                }
                let label = if ramp {
                    format!("concurrency={n_users}")
                } else {
                    "measure".to_owned()
                };
                let step_end = step_duration.map(|d| Instant::now() + d);
                let step_count = Arc::new(AtomicU64::new(0));
                let mut users_set = tokio::task::JoinSet::new();
                for u in 0..n_users {
                    let (config, requests, next, stop, step_count, label, ctx, sent_counter) = (
                        config.clone(),
                        requests.clone(),
                        next.clone(),
                        stop.clone(),
                        step_count.clone(),
                        label.clone(),
                        ctx.clone(),
                        sent_counter.clone(),
                    );
                    users_set.spawn(async move {
                        loop {
                            if stop.load(Ordering::Relaxed)
                                || step_end.is_some_and(|e| Instant::now() >= e)
                            {
                                break;
                            }
                            if requests_per_step
                                .is_some_and(|r| step_count.fetch_add(1, Ordering::Relaxed) >= r)
                            {
                                break;
                            }
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let request = requests[(i % requests.len() as u64) as usize].clone();
                            let job = Job {
                                planned_phase: phase_for(&sent_counter, &config, &label),
                                step_value: Some(n_users as f64),
                                body: build_body(&config, &request),
                                request,
                                // Closed loop: a user means to send now.
                                scheduled: Instant::now(),
                                target: (u + i as usize) % ctx.urls.len(),
                            };
                            send_job(job, ctx.clone()).await;
                            if !think.is_zero() {
                                tokio::time::sleep(think).await;
                            }
                        }
                    });
                }
                while users_set.join_next().await.is_some() {}
                // The stop rule looks at the finished step.
                if ramp && si + 1 < users.len() {
                    // Let the writer catch up with this step's rows.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let step = summary
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .phase(&label);
                    if let Some(step) = step {
                        let rule = config.stop_rule;
                        let too_many_errors =
                            rule.max_error_rate.is_some_and(|m| step.error_rate > m);
                        let too_slow = rule
                            .max_p99_ttft_ms
                            .is_some_and(|m| step.ttft_ms.as_ref().is_some_and(|t| t.p99 > m));
                        if too_many_errors || too_slow {
                            stopped_early = Some(format!(
                                "stopped after {label}: error rate {:.1}%, P99 TTFT {} ms",
                                step.error_rate * 100.0,
                                step.ttft_ms
                                    .as_ref()
                                    .map_or("-".into(), |t| format!("{:.1}", t.p99))
                            ));
                            break;
                        }
                    }
                }
            }
        }
    }
    // In-flight requests were awaited where they were sent: the open loop drains its own
    // (bounded by `drain` after a stop), a closed-loop step waits for its users.
    drop(ctx);
    if stop.load(Ordering::Relaxed) {
        complete = false;
    }
    drop(done_tx);
    let recorded = writer_thread
        .join()
        .map_err(|_| ReplayError::Config("the result writer panicked".into()))??;
    let summary = summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let overall = summary.overall();
    let intended_s = config.intended.map(|d| d.as_secs_f64());
    let run_summary = RunSummary {
        run_id: config.run_id.clone(),
        complete,
        recorded,
        aborted: aborted.lock().unwrap_or_else(|e| e.into_inner()).take(),
        targets: config.target_labels().to_vec(),
        intended_s,
        intended_throughput: intended_s
            .filter(|s| *s > 0.0)
            .map(|s| overall.ok as f64 / s),
        overall,
        phases: summary.phases(),
        stopped_early,
        requests_file,
        events: Vec::new(),
        monitor: None,
    };
    // Events still waiting when the workload ended did not happen; those done are kept.
    let mut events_task = events_task;
    let event_records =
        match tokio::time::timeout(Duration::from_millis(100), &mut events_task).await {
            Ok(Ok(r)) => r,
            _ => {
                events_task.abort();
                Vec::new()
            }
        };
    if !config.events.is_empty() {
        let path = config.run_dir.join("events.json");
        let text = serde_json::to_string_pretty(&event_records)
            .map_err(|e| ReplayError::Config(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| ReplayError::Io { path, source: e })?;
    }
    let monitor = match monitor {
        Some(m) => match m.stop() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("monitor: {e}");
                None
            }
        },
        None => None,
    };
    let run_summary = RunSummary {
        events: event_records,
        monitor,
        ..run_summary
    };
    write_run_json(&config, &clock, &run_summary)?;
    Ok(run_summary)
}

fn write_run_json(
    config: &ReplayConfig,
    clock: &Clock,
    summary: &RunSummary,
) -> Result<(), ReplayError> {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let run = serde_json::json!({
        "format": "run/1",
        "run_id": config.run_id,
        "tool": "reprise",
        "version": env!("CARGO_PKG_VERSION"),
        "command": config.command,
        "host": host,
        "complete": summary.complete,
        "clock": {
            "anchor_wall_ns": clock.wall0_ns,
            "note": "all times are this wall-clock anchor plus a monotonic-clock offset"
        },
        "config": {
            "targets": config.targets,
            "target_names": config.target_labels(),
            "api": match config.shape.api { Api::Chat => "chat", Api::Completions => "completions" },
            "backend": format!("{:?}", config.shape.backend).to_lowercase(),
            "model": config.shape.model,
            "stream": config.shape.stream,
            "header_names": config.headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            "timeout_s": config.timeouts.request.as_secs_f64(),
            "token_timeout_s": config.timeouts.gap.as_secs_f64(),
            "max_in_flight": config.max_in_flight,
            "warmup": config.warmup,
            "queue_limit_ms": config.queue_limit_ms,
            "tokenizer": tokenizer_label(config),
        },
        "summary": summary,
    });
    let path = config.run_dir.join("run.json");
    let text =
        serde_json::to_string_pretty(&run).map_err(|e| ReplayError::Config(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| ReplayError::Io { path, source: e })
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
