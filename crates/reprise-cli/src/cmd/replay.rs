//! `reprise replay`: reproduce a trace or a synthetic workload against a target.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use reprise_protocol::openai::Api;
use reprise_replay::client::{Backend, RequestShape, Timeouts};
use reprise_replay::events::RunEvent;
use reprise_replay::gate::{Gate, Gates, judge};
use reprise_replay::live::Live;
use reprise_replay::prepare::SizedPrompts;
use reprise_replay::prompt::PromptBuilder;
use reprise_replay::shard::Shard;
use reprise_replay::summary::{fmt_ms, render, render_client, render_sessions};
use reprise_replay::target::{DEFAULT_SIM_PROFILE, parse_target};
use reprise_replay::workload::{Process, SessionMode, TraceWindow};
use reprise_replay::{
    HttpClient, Knobs, LiveRun, Load, PrepareError, Progress, Ramp, ReplayConfig, RunSummary,
    SizerChoice, Spec, StopRule, new_run_id, prepare, run_with, stop_sims,
};

use super::common::{MonitorArgs, monitor_error, positive, secs, shutdown_signal};
use super::tui;

/// Named load-test scenarios (presets over the flags below).
/// `--sessions`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum SessionsArg {
    Closed,
    Open,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScenarioArg {
    /// Single-request performance: closed loop, concurrency 1, 60 s.
    Baseline,
    /// Expected peak: closed loop at --concurrency (default 100), 300 s.
    Load,
    /// Beyond the limit: concurrency ramp 100,200,500,1000,2000 (or --ramp), 60 s a step,
    /// stopping once the error rate passes 5% (or --stop-error-rate / --stop-p99-ttft-ms).
    Stress,
    /// Long run: closed loop at concurrency 50 (or --concurrency) for 24 h (or --run-for).
    Soak,
}

/// Inter-arrival law of synthetic open-loop load.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProcessArg {
    /// Exponential gaps (Poisson arrivals).
    Poisson,
    /// Evenly spaced.
    Fixed,
    /// Gamma gaps with coefficient of variation --cv (vLLM's burstiness = 1/cv²).
    Gamma,
}

/// API used for requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApiArg {
    /// /v1/chat/completions.
    Chat,
    /// /v1/completions.
    Completions,
}

/// HTTP client.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum HttpClientArg {
    /// The lean HTTP/1.1 client for http:// targets (unless HTTP_PROXY or ALL_PROXY is
    /// set); reqwest for https://.
    Auto,
    /// reqwest for every target.
    Reqwest,
}

/// Target server dialect (how output lengths are forced).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendArg {
    /// vLLM: max_tokens + min_tokens + ignore_eos.
    Vllm,
    /// SGLang: max_tokens + min_tokens + ignore_eos.
    Sglang,
    /// llama.cpp llama-server: max_tokens + ignore_eos.
    Llamacpp,
    /// TGI: max_tokens only.
    Tgi,
    /// Plain OpenAI API: max_tokens / max_completion_tokens only.
    Openai,
}

/// Replay a trace open-loop at N x speed, or generate load, against a target.
///
/// Open loop by default: every request is sent at its absolute deadline (t0 + offset/speed),
/// whatever the responses do; latencies are reported from `sent` and from `scheduled` (the
/// coordinated-omission-free view). Prompts have exactly the trace's input tokens (cl100k),
/// requests with equal prefix hashes share exactly that prefix, and output lengths are forced
/// (max_tokens + ignore_eos/min_tokens where the backend supports them); the summary reports
/// how often the server's usage disagreed. Results stream to RUN_DIR/requests.parquet
/// (result/1) with RUN_DIR/run.json. Ctrl-C or SIGTERM stops sending, waits --drain seconds for
/// in-flight requests, writes everything and marks the run incomplete.
#[derive(Debug, Parser)]
#[command(
    after_help = "Modes (the first that applies): --ramp; --concurrency (closed loop); --rate (synthetic open loop); TRACE (open-loop replay).\n\nExit status: 0 the run did what was asked; 1 it ran but failed a gate (every measured request failed, the client fell behind its schedule by a queue p99 over 1 s, --max-error-rate, --max-queue-p99-ms); 2 it could not run (bad arguments, unreadable input, a target that refuses connections or answers 404 before any request succeeds).\n\nExamples:\n  reprise replay traces/azure-conv-2023.parquet --target sim --speed 10 --duration 600 --sim-speedup 10\n  reprise replay traces/azure-conv-2023.parquet --target http://localhost:8000 --speed 2\n  reprise replay --target sim --rate 20 --process gamma --cv 2 --run-for 60 --input-tokens 1000 --output-tokens 200\n  reprise replay traces/azure-conv-2023.parquet --target sim --scenario stress --ramp concurrency:8,32,128 --step-duration 20"
)]
pub struct Args {
    /// trace/1 dataset to replay (or to take request sizes from, in other modes).
    trace: Option<PathBuf>,
    /// Target: a base URL (`http://host:8000`), an SDK base (`.../v1`) or a full endpoint
    /// (`.../v1/chat/completions`, which also sets the API), or `sim[:PROFILE]` for the
    /// in-process simulator; repeat for round-robin. Default: the built-in simulator (said
    /// on stderr).
    #[arg(long, value_name = "URL|sim[:PROFILE]")]
    target: Vec<String>,
    /// Speed of the in-process simulator (time compression of its engine).
    #[arg(long, default_value_t = 1.0)]
    sim_speedup: f64,
    /// Model id (default: the simulator's, or the first of the target's /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// API to use (default: the one a target URL names, else chat).
    #[arg(long, value_enum)]
    api: Option<ApiArg>,
    /// Target dialect.
    #[arg(long, value_enum, default_value = "vllm")]
    backend: BackendArg,
    /// How prompts are sized: `cl100k` (embedded, exact for servers counting with it),
    /// `server` (the target's own POST /tokenize, chat template included, as vLLM and
    /// llama.cpp expose it) or a path to a Hugging Face `tokenizer.json` (or a model folder
    /// holding one; loaded locally, BOS/EOS as its post-processor adds them, no chat
    /// template).
    #[arg(long, default_value = "cl100k", value_name = "cl100k|server|PATH")]
    tokenizer: String,
    /// Ask for non-streamed responses (no TTFT/ITL then).
    #[arg(long)]
    no_stream: bool,
    /// Time compression of the trace [default: 1].
    #[arg(long, help_heading = "Trace window")]
    speed: Option<f64>,
    /// Skip the trace's first seconds.
    #[arg(long, value_name = "SECONDS", help_heading = "Trace window")]
    start: Option<f64>,
    /// Replay this many seconds of trace time.
    #[arg(long, value_name = "SECONDS", help_heading = "Trace window")]
    duration: Option<f64>,
    /// Open-loop sender threads (each paces and sends its share on a runtime of its own;
    /// 0 = one per CPU). One holds about 10,000 req/s with the lean client (queue p99
    /// under 1 ms, docs/replay.md); add more on a machine with spare cores.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// HTTP client: `auto` sends to http:// targets with reprise's lean HTTP/1.1 client
    /// (request heads formatted once, responses parsed in place), `reqwest` uses reqwest
    /// for all (https:// always does).
    #[arg(long, value_enum, default_value = "auto")]
    http_client: HttpClientArg,
    /// Serve live Prometheus metrics (histograms of TTFT, ITL, TPOT, E2E and schedule lag;
    /// request, token and error counters; rate, in-flight and phase gauges) on
    /// http://ADDR/metrics while the run goes (docs/live.md). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR", help_heading = "Live metrics")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// After the run, go on serving /metrics this long so that a scraper takes the final
    /// values (set it to at least the scrape interval).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 0.0,
        help_heading = "Live metrics"
    )]
    metrics_linger: f64,
    /// A full-screen live view (rate, latency percentiles, errors, schedule lag) on the
    /// terminal; `q` stops the run like Ctrl-C. Without a terminal, the progress line.
    #[arg(long, help_heading = "Live metrics")]
    tui: bool,
    /// The progress line even where --tui is given (e.g. in an alias).
    #[arg(long, help_heading = "Live metrics")]
    no_tui: bool,
    #[command(flatten)]
    monitoring: MonitorArgs,
    /// Replay at most this many requests of the trace.
    #[arg(long, help_heading = "Trace window")]
    limit: Option<u64>,
    /// Multiply the trace's prompt and output lengths by this (e.g. 0.1 for a test server
    /// far smaller than production; rounded, at least 1 token).
    #[arg(long, default_value_t = 1.0)]
    length_scale: f64,
    /// How a trace's sessions (rows sharing a session_id) are replayed: `closed` (the
    /// default when the trace has sessions) sends a session's first turn at its recorded
    /// time and each next turn after the previous turn's response has ended plus its think
    /// time (divided by --speed), never before; `open` sends every turn at its recorded
    /// time. In both, a turn's prompt repeats its conversation so far.
    #[arg(long, value_enum, value_name = "MODE", help_heading = "Trace window")]
    sessions: Option<SessionsArg>,
    /// Synthetic open-loop load at this many requests/s.
    #[arg(long, help_heading = "Synthetic load")]
    rate: Option<f64>,
    /// Inter-arrival law of synthetic load.
    #[arg(
        long,
        value_enum,
        default_value = "poisson",
        help_heading = "Synthetic load"
    )]
    process: ProcessArg,
    /// Coefficient of variation for --process gamma.
    #[arg(long, default_value_t = 1.0, help_heading = "Synthetic load")]
    cv: f64,
    /// Closed loop: this many users, each sending back to back.
    #[arg(long, help_heading = "Synthetic load")]
    concurrency: Option<usize>,
    /// Closed loop: pause between a response and the user's next request, ms.
    #[arg(
        long = "think-time-ms",
        alias = "think-time",
        value_name = "MS",
        default_value_t = 0,
        help_heading = "Synthetic load"
    )]
    think_time_ms: u64,
    /// Step ramp: `rate:10,20,40` (open loop) or `concurrency:1,4,16` (closed loop).
    #[arg(long, help_heading = "Synthetic load")]
    ramp: Option<String>,
    /// Length of each ramp step, seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30.0,
        help_heading = "Synthetic load"
    )]
    step_duration: f64,
    /// Length of a synthetic (--rate) or closed-loop run, seconds (wall time; for a trace,
    /// --duration is trace time).
    #[arg(long, value_name = "SECONDS", help_heading = "Synthetic load")]
    run_for: Option<f64>,
    /// Send this many requests: at --rate (vLLM's --num-prompts), or per step of a
    /// closed loop; with --run-for, whichever ends first.
    #[arg(long, value_name = "N", help_heading = "Synthetic load")]
    requests: Option<u64>,
    /// Prompt tokens of synthetic requests (without a trace).
    #[arg(long, default_value_t = 512, help_heading = "Synthetic load")]
    input_tokens: u32,
    /// Output tokens of synthetic requests (without a trace).
    #[arg(long, default_value_t = 128, help_heading = "Synthetic load")]
    output_tokens: u32,
    /// A named load-test scenario (presets over the flags): baseline, load, stress, soak.
    #[arg(long, value_enum)]
    scenario: Option<ScenarioArg>,
    /// Stop a ramp after a step whose error rate exceeds this (0..1).
    #[arg(long)]
    stop_error_rate: Option<f64>,
    /// Gate: exit 1 when the measured error rate exceeds this (0..1). Without it, a run
    /// fails its gate only when every measured request failed.
    #[arg(long, value_name = "RATE", help_heading = "Gates (exit status 1)")]
    max_error_rate: Option<f64>,
    /// Gate: exit 1 when the client's queue p99 exceeds this, ms (the load generator could
    /// not keep the schedule).
    #[arg(long, value_name = "MS", help_heading = "Gates (exit status 1)")]
    max_queue_p99_ms: Option<f64>,
    /// Stop a ramp after a step whose P99 TTFT exceeds this, ms.
    #[arg(long)]
    stop_p99_ttft_ms: Option<f64>,
    /// The first N requests are warm-up, excluded from the summary.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Cap requests in flight (reported in run.json; open loop has no cap by default).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Most connections open at once (each request in flight holds one). In the open
    /// loop a request that finds them all busy waits for one and is sent late, counted in
    /// `queue`, rather than failing for want of a file descriptor or a local port. Default:
    /// the open-files limit less 256 (halved for a `sim` target, which runs in this process).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Extra header `Name: value` (repeatable; never written to results).
    #[arg(long)]
    header: Vec<String>,
    /// Environment variable holding an API key, sent as `Authorization: Bearer ...`.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Per-request time limit, seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Longest silence inside a stream (and before the first byte), seconds.
    #[arg(long, default_value_t = 60.0)]
    token_timeout: f64,
    /// Run directory (default `runs/<run id>`). An existing run there is not overwritten
    /// without --force.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite the run already in --out.
    #[arg(long)]
    force: bool,
    /// Seed of synthetic arrivals.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send only shard K of N of the load (K from 0): request i of the plan when i mod N
    /// is K, a session's turns by a hash of its id; closed-loop users split evenly. Every
    /// shard deals the same plan, so the shards' union is the whole load.
    #[arg(long, value_name = "K/N", help_heading = "Distributed replay")]
    shard: Option<String>,
    /// N shards, this one's index from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's
    /// pods need no arguments of their own).
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "shard",
        help_heading = "Distributed replay"
    )]
    shards: Option<u32>,
    /// Start with the other shards at the time `reprise coordinate` at URL announces;
    /// every time in the results is on its clock.
    #[arg(long, value_name = "URL", help_heading = "Distributed replay")]
    coordinator: Option<String>,
    /// How long to keep trying to reach the coordinator (it may start after the workers),
    /// seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30.0,
        help_heading = "Distributed replay"
    )]
    coordinator_wait: f64,
    /// Print the resolved shard plan (requests, span, digests) and exit, sending nothing.
    #[arg(long, help_heading = "Distributed replay")]
    dry_run: bool,
    /// Warn "client could not keep up" when queue p99 exceeds this, ms (a warning; the
    /// gate is --max-queue-p99-ms).
    #[arg(long, value_name = "MS", default_value_t = 1.0)]
    queue_limit_ms: f64,
    /// An HTTP call during the run: `SECONDS=METHOD URL [BODY]`; `{target}` is the first
    /// target's base URL (e.g. `20=POST {target}/admin/reload {"seconds": 5}`). Repeatable.
    #[arg(long, value_name = "SPEC")]
    event_http: Vec<String>,
    /// A command during the run: `SECONDS=COMMAND` (run with sh -c). Repeatable.
    #[arg(long, value_name = "SPEC")]
    event_cmd: Vec<String>,
    /// After Ctrl-C or SIGTERM, wait this long for in-flight requests, then cancel them (each
    /// a row of class `cancelled`), seconds.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
}

fn parse_ramp(text: &str) -> Result<Ramp> {
    let (kind, values) = text
        .split_once(':')
        .ok_or_else(|| anyhow!("--ramp expects rate:A,B,... or concurrency:A,B,..."))?;
    let values: Vec<f64> = values
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| anyhow!("--ramp: `{v}` is not a number"))
        })
        .collect::<Result<_>>()?;
    if values.is_empty() || values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        bail!("--ramp values must be positive");
    }
    match kind {
        "rate" => Ok(Ramp {
            closed: false,
            values,
        }),
        "concurrency" => Ok(Ramp {
            closed: true,
            values,
        }),
        other => bail!("--ramp kind `{other}`: expected rate or concurrency"),
    }
}

/// Resolves the load the flags ask for, after scenario presets (the first that applies:
/// --ramp, --concurrency, --rate, TRACE), and refuses flags that belong to another mode,
/// naming the flag to use instead; numbers that cannot be meant (zero or negative rates
/// and lengths) are refused.
fn resolve_load(args: &Args) -> Result<(Load, StopRule)> {
    let given = Knobs {
        ramp: args.ramp.as_deref().map(parse_ramp).transpose()?,
        concurrency: args.concurrency,
        run_for: args.run_for,
        stop_rule: StopRule {
            max_error_rate: args.stop_error_rate,
            max_p99_ttft_ms: args.stop_p99_ttft_ms,
        },
    };
    let knobs = match args.scenario {
        Some(s) => reprise_replay::Scenario::from(s).preset(given),
        None => given,
    };
    let Knobs {
        ramp,
        concurrency,
        run_for,
        stop_rule,
    } = knobs;
    if let Some(s) = run_for {
        positive(s, "--run-for", "seconds")?;
    }
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    if concurrency == Some(0) {
        bail!("--concurrency must be at least 1");
    }
    if args.max_connections == Some(0) {
        bail!("--max-connections must be at least 1");
    }
    if let Some(r) = args.rate {
        positive(r, "--rate", "requests per second")?;
    }
    positive(args.step_duration, "--step-duration", "seconds")?;
    positive(args.length_scale, "--length-scale", "times")?;
    if matches!(args.process, ProcessArg::Gamma) {
        positive(args.cv, "--cv", "times")?;
    }
    for (v, flag) in [
        (args.max_error_rate, "--max-error-rate"),
        (args.stop_error_rate, "--stop-error-rate"),
    ] {
        if let Some(v) = v
            && !(0.0..=1.0).contains(&v)
        {
            bail!("{flag} is a fraction between 0 and 1, got {v}");
        }
    }
    let speed = positive(args.speed.unwrap_or(1.0), "--speed", "times")?;
    if let Some(d) = args.duration {
        positive(d, "--duration", "seconds")?;
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let trace_flags = [
        ("--speed", args.speed.is_some()),
        ("--start", args.start.is_some()),
        ("--duration", args.duration.is_some()),
        ("--limit", args.limit.is_some()),
    ];
    let trace_mode = ramp.is_none() && concurrency.is_none() && args.rate.is_none();
    if trace_mode {
        if args.trace.is_none() {
            bail!("nothing to send: give a TRACE, --rate, --concurrency, --ramp or --scenario");
        }
        if run_for.is_some() {
            bail!(
                "--run-for is the wall-clock length of synthetic (--rate) or closed-loop (--concurrency) load; to replay part of a trace use --duration SECONDS (trace time) or --limit N"
            );
        }
        if args.requests.is_some() {
            bail!(
                "--requests is for --rate and closed-loop load; to replay the first N requests of a trace use --limit N"
            );
        }
    } else if let Some((flag, _)) = trace_flags.iter().find(|(_, given)| *given) {
        bail!(
            "{flag} is for trace replay (the window of TRACE, in trace time); for --rate, --concurrency or --ramp load use --run-for SECONDS or --requests N"
        );
    }
    let run_for = run_for.map(|s| secs(s, "--run-for")).transpose()?;
    let step = secs(args.step_duration, "--step-duration")?;
    let think = Duration::from_millis(args.think_time_ms);
    let process = match args.process {
        ProcessArg::Poisson => Process::Poisson,
        ProcessArg::Fixed => Process::Fixed,
        ProcessArg::Gamma => Process::Gamma { cv: args.cv },
    };
    let load = match (ramp, concurrency, args.rate) {
        (
            Some(Ramp {
                closed: true,
                values,
            }),
            _,
            _,
        ) => {
            if run_for.is_some() {
                bail!("--run-for does not apply to a ramp: each step lasts --step-duration");
            }
            Load::ClosedRamp {
                users: values.iter().map(|v| *v as usize).collect(),
                step,
                requests_per_step: args.requests,
                think,
            }
        }
        (Some(Ramp { values, .. }), _, _) => {
            if args.requests.is_some() {
                bail!("--requests does not apply to a rate ramp: each step lasts --step-duration");
            }
            if run_for.is_some() {
                bail!("--run-for does not apply to a ramp: each step lasts --step-duration");
            }
            Load::RateRamp {
                rates: values,
                step,
                process,
            }
        }
        (None, Some(users), _) => {
            if run_for.is_none() && args.requests.is_none() {
                bail!("closed loop needs a length: --run-for SECONDS or --requests N");
            }
            Load::Closed {
                users,
                run_for,
                requests: args.requests,
                think,
            }
        }
        (None, None, Some(rate)) => {
            if run_for.is_none() && args.requests.is_none() {
                bail!("--rate needs a length: --run-for SECONDS or --requests N");
            }
            Load::Rate {
                rate,
                process,
                run_for,
                requests: args.requests,
            }
        }
        (None, None, None) => Load::Trace(TraceWindow {
            speed,
            start: args.start.map(|s| secs(s, "--start")).transpose()?,
            duration: args.duration.map(|s| secs(s, "--duration")).transpose()?,
            limit: args.limit,
            length_scale: args.length_scale,
            sessions: args.sessions.map(|m| match m {
                SessionsArg::Closed => SessionMode::Closed,
                SessionsArg::Open => SessionMode::Open,
            }),
        }),
    };
    Ok((load, stop_rule))
}

impl From<ScenarioArg> for reprise_replay::Scenario {
    fn from(s: ScenarioArg) -> Self {
        match s {
            ScenarioArg::Baseline => reprise_replay::Scenario::Baseline,
            ScenarioArg::Load => reprise_replay::Scenario::Load,
            ScenarioArg::Stress => reprise_replay::Scenario::Stress,
            ScenarioArg::Soak => reprise_replay::Scenario::Soak,
        }
    }
}

/// The replay the flags describe, checked before anything starts.
fn spec(args: &Args, run_id: String, run_dir: PathBuf) -> Result<Spec> {
    let (load, stop_rule) = resolve_load(args)?;
    let mut parsed = Vec::new();
    for t in &args.target {
        parsed.push(parse_target(t).map_err(|e| anyhow!("--{e}"))?);
    }
    if parsed.is_empty() {
        parsed.push(parse_target("sim")?);
        eprintln!(
            "no --target given: using the built-in simulator (sim:{DEFAULT_SIM_PROFILE}); pass --target URL for a real server"
        );
    }
    let mut url_api = None;
    for p in &parsed {
        if let Some(api) = p.api {
            if url_api.is_some_and(|a| a != api) {
                bail!("the --target URLs name different APIs; give base URLs and --api");
            }
            url_api = Some(api);
        }
    }
    let api = match (args.api, url_api) {
        (Some(ApiArg::Chat), Some(Api::Completions))
        | (Some(ApiArg::Completions), Some(Api::Chat)) => {
            bail!(
                "--api {} disagrees with the endpoint in --target ({}): drop one of them",
                if args.api == Some(ApiArg::Chat) {
                    "chat"
                } else {
                    "completions"
                },
                url_api.map_or("", |a| a.path())
            )
        }
        (Some(ApiArg::Completions), _) | (None, Some(Api::Completions)) => Api::Completions,
        _ => Api::Chat,
    };
    for note in parsed.iter().filter_map(|p| p.note.as_ref()) {
        eprintln!("{note}");
    }
    let mut headers = Vec::new();
    for h in &args.header {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--header `{h}`: expected `Name: value`"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some(var) = &args.api_key_env {
        let key = std::env::var(var)
            .with_context(|| format!("--api-key-env: environment variable {var} is not set"))?;
        headers.push(("authorization".into(), format!("Bearer {key}")));
    }
    let mut events = Vec::new();
    for e in &args.event_http {
        events.push(
            RunEvent::parse_http_template(e).map_err(|m| anyhow!("--event-http `{e}`: {m}"))?,
        );
    }
    for e in &args.event_cmd {
        events.push(RunEvent::parse_command(e).map_err(|m| anyhow!("--event-cmd `{e}`: {m}"))?);
    }
    let sizer = match args.tokenizer.as_str() {
        "cl100k" => SizerChoice::Cl100k,
        "server" => SizerChoice::Server,
        path => SizerChoice::Local(PathBuf::from(path)),
    };
    let config = ReplayConfig {
        shape: RequestShape {
            api,
            backend: match args.backend {
                BackendArg::Vllm => Backend::Vllm,
                BackendArg::Sglang => Backend::Sglang,
                BackendArg::Llamacpp => Backend::Llamacpp,
                BackendArg::Tgi => Backend::Tgi,
                BackendArg::Openai => Backend::Openai,
            },
            model: String::new(),
            stream: !args.no_stream,
        },
        headers,
        timeouts: Timeouts {
            request: secs(args.timeout, "--timeout")?,
            gap: secs(args.token_timeout, "--token-timeout")?,
        },
        max_in_flight: args.max_in_flight,
        max_connections: args.max_connections,
        warmup: args.warmup,
        prompts: PromptBuilder::new(None, args.seed),
        run_id,
        queue_limit_ms: args.queue_limit_ms,
        stop_rule,
        drain: secs(args.drain, "--drain")?,
        command: std::env::args().collect(),
        senders: args.senders,
        http: match args.http_client {
            HttpClientArg::Auto => HttpClient::Auto,
            HttpClientArg::Reqwest => HttpClient::Reqwest,
        },
        fail_fast: true,
        shard: shard_of(args)?,
        ..ReplayConfig::new(Vec::new(), "", run_dir)
    };
    Ok(Spec {
        targets: parsed.into_iter().map(|p| p.target).collect(),
        sim_speedup: args.sim_speedup,
        model: args.model.clone(),
        load,
        trace: args.trace.clone(),
        synthetic: (args.input_tokens, args.output_tokens),
        seed: args.seed,
        sizer,
        events,
        sampling: Some(args.monitoring.sampling()),
        metrics: match args.metrics_listen {
            Some(addr) => Some((addr, secs(args.metrics_linger, "--metrics-linger")?)),
            None => None,
        },
        config,
    })
}

/// The shard from --shard K/N, or --shards N with the index from JOB_COMPLETION_INDEX.
fn shard_of(args: &Args) -> Result<Shard> {
    match (&args.shard, args.shards) {
        (Some(text), _) => Shard::parse(text).map_err(|e| anyhow!("--shard: {e}")),
        (None, Some(n)) => {
            let index = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
                anyhow!("--shards {n}: JOB_COMPLETION_INDEX is not set (it is in a Kubernetes Indexed Job's pods); give --shard K/N instead")
            })?;
            let k = index.trim().parse::<u32>().map_err(|_| {
                anyhow!("--shards {n}: JOB_COMPLETION_INDEX `{index}` is not a number")
            })?;
            Shard::new(k, n).map_err(|e| anyhow!("--shards {n} (JOB_COMPLETION_INDEX {k}): {e}"))
        }
        (None, None) => Ok(Shard::WHOLE),
    }
}

/// The digest of what a shard sends: the load, window, sizes, seed, model, API, backend
/// and streaming (the same for every worker of one run; targets may differ, e.g. a
/// replica per zone).
fn args_digest(spec: &Spec) -> String {
    let c = &spec.config;
    reprise_dist::digest_text(&format!(
        "{:?}|{:?}|{}|{:?}|{:?}|{:?}|{}",
        spec.load,
        spec.synthetic,
        spec.seed,
        spec.model,
        c.shape.api,
        c.shape.backend,
        c.shape.stream,
    ))
}

/// Joins the coordinated run: registers this shard and waits for the start, which it
/// gives the run (a stop before the start ends the wait).
async fn coordinate_start(
    url: &str,
    prepared: &mut reprise_replay::Prepared,
    digests: &(String, String),
    stop: &Arc<AtomicBool>,
    wait: std::time::Duration,
) -> Result<reprise_dist::worker::Joined> {
    let shard = prepared.config.shard;
    let registration = reprise_dist::protocol::Registration {
        shard: shard.index,
        shards: shard.count,
        trace_digest: digests.0.clone(),
        args_digest: digests.1.clone(),
        host: reprise_dist::worker::host_name(),
        planned: match &prepared.pacing {
            reprise_replay::Pacing::Open(p) => p.expected_len(),
            reprise_replay::Pacing::Closed { .. } => 0,
        },
        intended_ns: prepared.config.intended.map_or(0, |d| d.as_nanos() as u64),
        ..Default::default()
    };
    eprintln!("shard {shard}: joining the coordinator at {url}");
    let stopped = async {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let joined = tokio::select! {
        j = reprise_dist::worker::join(url, registration, &prepared.config.run_dir, wait) => j?,
        () = stopped => bail!("stopped before the coordinated start"),
    };
    if let Some(w) = &joined.warning {
        eprintln!("WARNING: {w}");
    }
    let d = &joined.distributed;
    let wait = joined
        .start
        .saturating_duration_since(std::time::Instant::now());
    eprintln!(
        "shard {shard}: clock offset {:.3} ms ± {:.3} ms; starting in {:.2} s with the other {} shard(s)",
        d.offset_ns as f64 / 1e6,
        d.uncertainty_ns as f64 / 1e6,
        wait.as_secs_f64(),
        shard.count - 1
    );
    if wait.is_zero() {
        eprintln!(
            "WARNING: the coordinated start has passed already: the first requests go late (a larger --margin on the coordinator helps)"
        );
    }
    prepared.config.start = Some((joined.start, d.t0_ns));
    prepared.config.distributed = Some(d.clone());
    Ok(joined)
}

/// After the run: the clock's drift measured, the end reported to the coordinator.
async fn coordinate_end(
    joined: &reprise_dist::worker::Joined,
    summary: &RunSummary,
    run_dir: &std::path::Path,
    progress: &Progress,
) {
    let sent = progress.sent.load(Ordering::Relaxed);
    if let Some(res) = reprise_dist::worker::finish(joined, sent, summary.complete, run_dir).await {
        let bound = joined.distributed.uncertainty_ns.max(1_000_000) * 5;
        if res.abs() > bound {
            eprintln!(
                "WARNING: this host's clock drifted {:.3} ms from the coordinator's during the run",
                res as f64 / 1e6
            );
        }
    }
}

/// A preparation error with the flags it came from.
fn flagged(e: PrepareError, tokenizer: &str) -> anyhow::Error {
    match e {
        PrepareError::UnknownProfile { profile, builtins } => {
            anyhow!("--target sim:{profile}: unknown simulator profile (built-ins: {builtins})")
        }
        PrepareError::Target(e) => anyhow!("--{e}"),
        PrepareError::ModelsUnreachable { url, reason } => {
            anyhow!("{reason}").context(format!("{url}: cannot list models (pass --model)"))
        }
        PrepareError::ModelsStatus { url, base, status } => anyhow!(
            "{url} answered {status}: check the base URL in --target (requests go to {base}/v1/...), or pass --model"
        ),
        PrepareError::NoModel { url, problem } => anyhow!("{url}: {problem} (pass --model)"),
        PrepareError::Tokenizer(e) => anyhow!("--tokenizer: {e}"),
        PrepareError::Sizing(e) => anyhow!("--tokenizer {tokenizer}: {e}"),
        PrepareError::Monitor(e) => monitor_error(e),
        PrepareError::MetricsListen { addr, source } => {
            anyhow!("--metrics-listen {addr}: cannot listen: {source}")
        }
        PrepareError::Replay(reprise_replay::ReplayError::EmptyWindow { path }) => anyhow!(
            "{}: no request in the window asked for (--start/--duration/--limit)",
            path.display()
        ),
        e => anyhow!(e),
    }
}

fn print_sizing(s: &SizedPrompts) {
    let r = &s.report;
    eprintln!(
        "sized {} prompts with {} in {:.1} s: {} exact{}",
        r.requests,
        s.by,
        s.took.as_secs_f64(),
        r.exact,
        if r.exact < r.requests {
            format!(
                ", {} at the closest reachable count (e.g. shorter than the chat template)",
                r.requests - r.exact
            )
        } else {
            String::new()
        }
    );
}

/// How the run is shown while it goes.
enum View {
    /// The progress line.
    Line(indicatif::ProgressBar, tokio::task::JoinHandle<()>),
    /// The full-screen live view.
    Tui(tui::Tui),
}

/// The final figures for the live view's last frame, worded as the summary prints them.
fn final_lines(s: &RunSummary) -> Vec<String> {
    let o = &s.overall;
    let mut lines = vec![format!(
        "requests {} ok, {} failed{}",
        o.ok,
        o.requests - o.ok,
        if s.complete { "" } else { " (run INCOMPLETE)" }
    )];
    let p = |name: &str, l: &Option<reprise_replay::summary::Latency>| {
        format!(
            "{name} p50 {} / p90 {} / p99 {} ms",
            fmt_ms(l, |l| l.p50).trim(),
            fmt_ms(l, |l| l.p90).trim(),
            fmt_ms(l, |l| l.p99).trim()
        )
    };
    lines.push(p("TTFT", &o.ttft_ms));
    lines.push(p("E2E", &o.e2e_ms));
    lines.push(p("queue", &o.queue_ms));
    if let Some(c) = s
        .client
        .as_ref()
        .filter(|c| c.fell_behind || c.client_errors > 0)
    {
        lines.extend(render_client(c).lines().map(str::to_owned));
    }
    lines
}

/// A spinner with the live counts, until aborted.
fn progress_view(progress: Arc<Progress>) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                let sent = progress.sent.load(Ordering::Relaxed);
                let planned = progress.planned.load(Ordering::Relaxed);
                let done = progress.finished.load(Ordering::Relaxed);
                let failed = progress.failed.load(Ordering::Relaxed);
                let rate = sent as f64 / start.elapsed().as_secs_f64().max(1e-3);
                let of = if planned > 0 {
                    format!("/{planned}")
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "sent {sent}{of} ({rate:.1} req/s), done {done}, failed {failed}, in flight {}",
                    sent.saturating_sub(done)
                ));
                bar.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    (bar, ticker)
}

async fn replay(args: Args, sim_runtime: tokio::runtime::Handle) -> Result<ExitCode> {
    // Everything the flags say is checked before anything starts.
    let run_id = new_run_id();
    let spec = spec(&args, run_id.clone(), PathBuf::new())?;
    if args.coordinator.is_some() && args.shard.is_none() && args.shards.is_none() {
        bail!("--coordinator needs this worker's shard: --shard K/N or --shards N");
    }
    let digests = (
        match &spec.trace {
            Some(t) => reprise_dist::digest_path(t)?,
            None => "none".to_owned(),
        },
        args_digest(&spec),
    );
    if args.dry_run {
        let plan = reprise_replay::prepare::plan_only(&spec)?;
        println!(
            "shard {}: {} requests of {} for all shards, {}; trace digest {}, arguments digest {}",
            plan.shard,
            plan.requests,
            plan.all_requests,
            match plan.span {
                Some((a, b)) => format!(
                    "scheduled from {:.3} s to {:.3} s",
                    a.as_secs_f64(),
                    b.as_secs_f64()
                ),
                None => plan.describe.clone(),
            },
            digests.0,
            digests.1
        );
        return Ok(ExitCode::SUCCESS);
    }
    let run_dir = run_directory(&args, &run_id)?;
    let spec = Spec {
        config: ReplayConfig {
            run_dir: run_dir.clone(),
            ..spec.config
        },
        ..spec
    };

    // A signal stops sending from the start; the run is written either way.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            eprintln!("\nstopping: no new requests; waiting for those in flight");
            stop.store(true, Ordering::Relaxed);
        })
    };
    let prepared = prepare(spec, &sim_runtime)
        .await
        .map_err(|e| flagged(e, &args.tokenizer))?;
    if let Some(s) = &prepared.sizing {
        print_sizing(s);
    }
    // A shard of a distributed replay starts when the coordinator says.
    let mut prepared = prepared;
    let coordinated = match &args.coordinator {
        Some(url) => Some(
            coordinate_start(
                url,
                &mut prepared,
                &digests,
                &stop,
                secs(args.coordinator_wait, "--coordinator-wait")?,
            )
            .await
            .map_err(|e| anyhow!("{e}"))?,
        ),
        None => None,
    };

    if let Some(addr) = prepared.metrics.as_ref().and_then(|m| m.addr()) {
        eprintln!("live metrics on http://{addr}/metrics");
    }
    let tui = args.tui && !args.no_tui && {
        let ok = tui::available();
        if !ok {
            eprintln!("--tui: stderr is not a terminal; showing the progress line");
        }
        ok
    };
    let live = (tui || prepared.metrics.is_some())
        .then(|| Arc::new(Live::for_run(&prepared.config, &prepared.pacing)));
    let view = match &live {
        Some(live) if tui => View::Tui(tui::start(
            live.clone(),
            progress.clone(),
            stop.clone(),
            format!("reprise replay {run_id}"),
            prepared.config.intended,
        )?),
        _ => {
            let (bar, ticker) = progress_view(progress.clone());
            View::Line(bar, ticker)
        }
    };
    let progress_done = progress.clone();
    let summary = run_with(
        prepared.config,
        prepared.pacing,
        stop,
        progress,
        live.map(|live| LiveRun {
            live,
            endpoint: prepared.metrics,
        }),
    )
    .await;
    signals.abort();
    match view {
        View::Line(bar, ticker) => {
            ticker.abort();
            bar.finish_and_clear();
        }
        View::Tui(t) => {
            let lines = match &summary {
                Ok(s) => final_lines(s),
                Err(e) => vec![format!("the run failed: {e}")],
            };
            t.finish(tui::Final { lines })?;
        }
    }
    let summary = summary?;
    stop_sims(prepared.sims, &sim_runtime).await;
    if let Some(joined) = &coordinated {
        coordinate_end(joined, &summary, &run_dir, &progress_done).await;
    }
    if let Some(why) = &summary.aborted {
        // The target is wrong, not busy: nothing was measured worth reading.
        bail!(
            "{why} (run stopped; {} requests recorded in {})",
            summary.recorded,
            run_dir.display()
        );
    }
    print_summary(&summary, &run_dir, args.queue_limit_ms);
    let failed = judge(
        &summary.overall,
        summary.client.as_ref(),
        &Gates {
            max_error_rate: args.max_error_rate,
            max_queue_p99_ms: args.max_queue_p99_ms,
        },
    );
    for f in &failed {
        let flag = match f.gate {
            Gate::AllFailed => "default gate",
            Gate::ErrorRate => "--max-error-rate",
            Gate::QueueP99 => "--max-queue-p99-ms",
            Gate::ClientBehind => "default gate",
        };
        eprintln!("FAILED ({flag}): {}", f.message);
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_summary(summary: &RunSummary, run_dir: &std::path::Path, queue_limit_ms: f64) {
    println!("target {}", summary.targets.join(", "));
    print!(
        "{}",
        render(
            &summary.overall,
            &summary.phases,
            queue_limit_ms,
            summary.intended_s
        )
    );
    if let Some(s) = &summary.sessions {
        print!("{}", render_sessions(s));
    }
    if let Some(c) = &summary.client {
        print!("{}", render_client(c));
    }
    if let Some(s) = &summary.stopped_early {
        println!("{s}");
    }
    for e in &summary.events {
        println!(
            "event at {:.1} s: {} -> {} ({})",
            e.offset_s,
            e.action,
            if e.ok { "ok" } else { "FAILED" },
            e.detail
        );
    }
    if !summary.complete {
        println!("run INCOMPLETE (stopped before the end)");
    }
    if let Some(m) = &summary.monitor {
        println!("monitoring: {}", m.describe());
        for src in m.sources.iter().filter(|s| s.failed > 0) {
            println!(
                "  scrapes of {} failed {} of {} ({})",
                src.source,
                src.failed,
                src.failed + src.ok,
                src.last_error.as_deref().unwrap_or("")
            );
        }
    }
    println!(
        "run directory: {} ({} requests recorded)",
        run_dir.display(),
        summary.recorded
    );
}
/// The run directory: `--out` (an existing run there only with `--force`, which removes
/// it first), or a new `runs/<run id>`.
fn run_directory(args: &Args, run_id: &str) -> Result<PathBuf> {
    let Some(out) = &args.out else {
        let base = PathBuf::from("runs").join(run_id);
        // Two runs started within the same second get -2, -3, ...
        let mut dir = base.clone();
        let mut n = 1;
        while dir.exists() {
            n += 1;
            dir = PathBuf::from(format!("{}-{n}", base.display()));
        }
        return Ok(dir);
    };
    if out.is_file() {
        bail!("--out {}: is a file, not a run directory", out.display());
    }
    let occupied = out
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !occupied {
        return Ok(out.clone());
    }
    let is_run = out.join("run.json").exists() || out.join("requests.parquet").exists();
    if !is_run {
        bail!(
            "--out {}: the directory is not empty and holds no run; choose another directory",
            out.display()
        );
    }
    if !args.force {
        bail!(
            "--out {}: a run is already there; pass --force to overwrite it, or choose another directory",
            out.display()
        );
    }
    std::fs::remove_dir_all(out)
        .with_context(|| format!("--out {}: removing the old run", out.display()))?;
    Ok(out.clone())
}

/// Runs a replay. An in-process simulator gets a runtime of its own, so that its work does
/// not delay the client's sends and timestamps.
pub fn run_cmd(args: Args) -> Result<ExitCode> {
    let sim_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("reprise-sim")
        .enable_all()
        .build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("reprise-replay")
        .enable_all()
        .build()?;
    let result = runtime.block_on(replay(args, sim_runtime.handle().clone()));
    drop(runtime);
    sim_runtime.shutdown_background();
    result
}
