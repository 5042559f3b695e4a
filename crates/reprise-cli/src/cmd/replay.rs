//! `reprise replay`: reproduce a trace or a synthetic workload against a target.

use std::path::{Path, PathBuf};
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
use reprise_replay::prompt::PromptBuilder;
use reprise_replay::sizing::{Sizer, size_prompts};
use reprise_replay::summary::render;
use reprise_replay::target::{DEFAULT_SIM_PROFILE, Target, check_reachable, parse_target};
use reprise_replay::workload::{
    OpenPlan, Process, RatePlan, RateStep, Sizes, TraceWindow, load_trace, synthetic_request,
    trace_plan,
};
use reprise_replay::{Pacing, Progress, ReplayConfig, StopRule, new_run_id, run};
use reprise_sim::{Profile, SimConfig, SimServer};

/// Named load-test scenarios (presets over the flags below).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scenario {
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
/// (result/1) with RUN_DIR/run.json. Ctrl-C stops sending, waits --drain seconds for
/// in-flight requests, writes everything and marks the run incomplete.
#[derive(Debug, Parser)]
#[command(
    after_help = "Modes (the first that applies): --ramp; --concurrency (closed loop); --rate (synthetic open loop); TRACE (open-loop replay).\n\nExit status: 0 the run did what was asked; 1 it ran but failed a gate (every measured request failed, --max-error-rate, --max-queue-p99-ms); 2 it could not run (bad arguments, unreadable input, a target that refuses connections or answers 404 before any request succeeds).\n\nExamples:\n  reprise replay traces/azure-conv-2023.parquet --target sim --speed 10 --duration 600 --sim-speedup 10\n  reprise replay traces/azure-conv-2023.parquet --target http://localhost:8000 --speed 2\n  reprise replay --target sim --rate 20 --process gamma --cv 2 --run-for 60 --input-tokens 1000 --output-tokens 200\n  reprise replay traces/azure-conv-2023.parquet --target sim --scenario stress --ramp concurrency:8,32,128 --step-duration 20"
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
    /// Sample the GPUs of this host through NVML during the run (gpu.parquet); without
    /// NVML, one line says so and the run goes on.
    #[arg(long, help_heading = "Monitoring")]
    gpu: bool,
    /// Scrape this Prometheus endpoint during the run (server.parquet; DCGM-exporter
    /// series also go to gpu.parquet). Repeatable. `target` scrapes every target's
    /// /metrics (the sim's included).
    #[arg(long, value_name = "URL", help_heading = "Monitoring")]
    scrape: Vec<String>,
    /// Sampling interval of GPUs, scrapes and the host.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 500,
        help_heading = "Monitoring"
    )]
    monitor_interval_ms: u64,
    /// Time limit of one scrape.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 2000,
        help_heading = "Monitoring"
    )]
    scrape_timeout_ms: u64,
    /// Do not sample this host's CPU, memory and network (sampled by default, so that a
    /// saturated load generator shows).
    #[arg(long, help_heading = "Monitoring")]
    no_host_metrics: bool,
    /// A scraped host's clock minus this one's, applied to timestamps its exposition
    /// carries (`URL=MS`; repeatable). Estimated from `Date` headers into run.json either way.
    #[arg(long, value_name = "URL=MS", help_heading = "Monitoring")]
    clock_offset: Vec<String>,
    /// Replay at most this many requests of the trace.
    #[arg(long, help_heading = "Trace window")]
    limit: Option<u64>,
    /// Multiply the trace's prompt and output lengths by this (e.g. 0.1 for a test server
    /// far smaller than production; rounded, at least 1 token).
    #[arg(long, default_value_t = 1.0)]
    length_scale: f64,
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
    scenario: Option<Scenario>,
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
    /// Run directory (default runs/<run id>). An existing run there is not overwritten
    /// without --force.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite the run already in --out.
    #[arg(long)]
    force: bool,
    /// Seed of synthetic arrivals.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    /// After Ctrl-C, wait this long for in-flight requests, seconds.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    if !(s.is_finite() && s >= 0.0) {
        bail!("{what} must be a non-negative number of seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

/// A strictly positive, finite number, or a one-line error naming the flag.
fn positive(v: f64, flag: &str, unit: &str) -> Result<f64> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a positive number of {unit}, got {v}");
    }
    Ok(v)
}

fn parse_ramp(text: &str) -> Result<(bool, Vec<f64>)> {
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
        "rate" => Ok((false, values)),
        "concurrency" => Ok((true, values)),
        other => bail!("--ramp kind `{other}`: expected rate or concurrency"),
    }
}

/// The load the flags ask for, after scenario presets (the first that applies).
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// `--ramp` (or the stress scenario): closed when `true`.
    Ramp(bool, Vec<f64>),
    /// `--concurrency` users.
    Closed(usize),
    /// `--rate` requests/s.
    Rate(f64),
    /// Replay of TRACE.
    Trace,
}

/// Resolves the mode and refuses flags that belong to another mode, naming the flag to use
/// instead; numbers that cannot be meant (zero or negative rates and lengths) are refused.
fn resolve_mode(args: &Args) -> Result<(Mode, Option<f64>, StopRule)> {
    let mut ramp = args.ramp.as_deref().map(parse_ramp).transpose()?;
    let mut concurrency = args.concurrency;
    let mut run_for = args.run_for;
    let mut stop_rule = StopRule {
        max_error_rate: args.stop_error_rate,
        max_p99_ttft_ms: args.stop_p99_ttft_ms,
    };
    match args.scenario {
        Some(Scenario::Baseline) => {
            concurrency = Some(1);
            run_for = run_for.or(Some(60.0));
        }
        Some(Scenario::Load) => {
            concurrency = concurrency.or(Some(100));
            run_for = run_for.or(Some(300.0));
        }
        Some(Scenario::Stress) => {
            ramp = ramp.or(Some((true, vec![100.0, 200.0, 500.0, 1000.0, 2000.0])));
            if stop_rule.max_error_rate.is_none() && stop_rule.max_p99_ttft_ms.is_none() {
                stop_rule.max_error_rate = Some(0.05);
            }
        }
        Some(Scenario::Soak) => {
            concurrency = concurrency.or(Some(50));
            run_for = run_for.or(Some(86_400.0));
        }
        None => {}
    }
    if let Some(s) = run_for {
        positive(s, "--run-for", "seconds")?;
    }
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    if concurrency == Some(0) {
        bail!("--concurrency must be at least 1");
    }
    if let Some(r) = args.rate {
        positive(r, "--rate", "requests per second")?;
    }
    positive(args.step_duration, "--step-duration", "seconds")?;
    positive(args.length_scale, "--length-scale", "times")?;
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
    let mode = match (ramp, concurrency, args.rate) {
        (Some((closed, values)), _, _) => Mode::Ramp(closed, values),
        (None, Some(users), _) => Mode::Closed(users),
        (None, None, Some(rate)) => Mode::Rate(rate),
        (None, None, None) if args.trace.is_some() => Mode::Trace,
        (None, None, None) => {
            bail!("nothing to send: give a TRACE, --rate, --concurrency, --ramp or --scenario")
        }
    };
    let trace_flags = [
        ("--speed", args.speed.is_some()),
        ("--start", args.start.is_some()),
        ("--duration", args.duration.is_some()),
        ("--limit", args.limit.is_some()),
    ];
    if mode == Mode::Trace {
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
    match &mode {
        Mode::Rate(_) if run_for.is_none() && args.requests.is_none() => {
            bail!("--rate needs a length: --run-for SECONDS or --requests N")
        }
        Mode::Closed(_) if run_for.is_none() && args.requests.is_none() => {
            bail!("closed loop needs a length: --run-for SECONDS or --requests N")
        }
        Mode::Ramp(false, _) if args.requests.is_some() => {
            bail!("--requests does not apply to a rate ramp: each step lasts --step-duration")
        }
        Mode::Ramp(..) if run_for.is_some() => {
            bail!("--run-for does not apply to a ramp: each step lasts --step-duration")
        }
        _ => {}
    }
    Ok((mode, run_for, stop_rule))
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

async fn replay(args: Args, sim_runtime: tokio::runtime::Handle) -> Result<ExitCode> {
    // Everything the flags say is checked before anything starts.
    let (mode, run_for, stop_rule) = resolve_mode(&args)?;
    let speed = positive(args.speed.unwrap_or(1.0), "--speed", "times")?;
    if let Some(d) = args.duration {
        positive(d, "--duration", "seconds")?;
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
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
    let run_id = new_run_id();
    let run_dir = run_directory(&args, &run_id)?;

    // Ctrl-C is handled from the start: it stops sending and the run is written.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nstopping: no new requests; waiting for those in flight");
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    // Targets: start the in-process simulator where asked; a URL must accept connections.
    let mut sims = Vec::new();
    let mut targets = Vec::new();
    let mut target_names = Vec::new();
    for p in &parsed {
        match &p.target {
            Target::Sim { profile } => {
                let profile = Profile::named(profile).ok_or_else(|| {
                    anyhow!(
                        "--target sim:{profile}: unknown simulator profile (built-ins: {})",
                        Profile::names().join(", ")
                    )
                })?;
                let mut config = SimConfig::new(profile);
                config.speedup = args.sim_speedup;
                config.seed = args.seed;
                let sim = sim_runtime.spawn(SimServer::start(config)).await??;
                targets.push(sim.base_url());
                sims.push(sim);
            }
            Target::Url { base } => {
                check_reachable(&p.target, Duration::from_secs(10))
                    .await
                    .map_err(|e| anyhow!("--{e}"))?;
                targets.push(base.clone());
            }
        }
        target_names.push(p.target.to_string());
    }
    let model = match (&args.model, sims.first()) {
        (Some(m), _) => m.clone(),
        (None, Some(sim)) => sim.model().to_owned(),
        (None, None) => discover_model(&targets[0]).await?,
    };

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

    // The workload.
    let trace = match &args.trace {
        Some(p) => Some(load_trace(p)?),
        None => None,
    };
    let block_tokens = trace.as_ref().and_then(|t| t.block_tokens);
    let sizes = match &trace {
        Some(t) => Sizes::from_trace(t),
        None => Sizes::Fixed {
            input: args.input_tokens,
            output: args.output_tokens,
        },
    };
    let closed_requests = |n: u64| -> Vec<reprise_trace::TraceRecord> {
        match &trace {
            Some(t) if !t.requests.is_empty() => t.requests.clone(),
            _ => (0..n.max(1))
                .map(|i| synthetic_request(i, &sizes))
                .collect(),
        }
    };
    let step = secs(args.step_duration, "--step-duration")?;
    let think = Duration::from_millis(args.think_time_ms);
    let pacing = match mode {
        Mode::Ramp(true, values) => Pacing::Closed {
            users: values.iter().map(|v| *v as usize).collect(),
            step_duration: if args.requests.is_some() {
                None
            } else {
                Some(step)
            },
            requests_per_step: args.requests,
            think,
            requests: closed_requests(1024),
        },
        Mode::Ramp(false, values) => {
            let steps: Vec<RateStep> = values
                .iter()
                .map(|&r| RateStep {
                    rate: r,
                    duration: step,
                    label: format!("rate={r}"),
                })
                .collect();
            Pacing::Open(RatePlan::new(steps, process(&args), sizes, args.seed)?.into())
        }
        Mode::Closed(users) => Pacing::Closed {
            users: vec![users],
            step_duration: run_for.map(|s| secs(s, "--run-for")).transpose()?,
            requests_per_step: args.requests,
            think,
            requests: closed_requests(1024),
        },
        Mode::Rate(rate) => {
            let plan = match run_for {
                Some(s) => RatePlan::new(
                    vec![RateStep {
                        rate,
                        duration: secs(s, "--run-for")?,
                        label: "measure".into(),
                    }],
                    process(&args),
                    sizes,
                    args.seed,
                )?,
                // resolve_mode asks a rate for --run-for or --requests.
                None => RatePlan::counted(
                    rate,
                    args.requests.unwrap_or(1),
                    process(&args),
                    sizes,
                    args.seed,
                )?,
            };
            let plan = match (run_for, args.requests) {
                (Some(_), Some(n)) => plan.limited(n)?,
                _ => plan,
            };
            Pacing::Open(plan.into())
        }
        Mode::Trace => {
            let t = trace.as_ref().expect("trace mode has a trace");
            let window = TraceWindow {
                speed,
                start: args.start.map(|s| secs(s, "--start")).transpose()?,
                duration: args.duration.map(|s| secs(s, "--duration")).transpose()?,
                limit: args.limit,
                length_scale: args.length_scale,
            };
            let plan = trace_plan(t, &window)?;
            if plan.is_empty() {
                bail!(
                    "{}: no request in the window asked for (--start/--duration/--limit)",
                    args.trace.as_deref().unwrap_or(Path::new("")).display()
                );
            }
            Pacing::Open(plan.into())
        }
    };
    let intended = match &pacing {
        Pacing::Open(plan) => Some(plan.intended_duration()),
        Pacing::Closed {
            users,
            step_duration: Some(d),
            ..
        } => Some(*d * users.len() as u32),
        Pacing::Closed { .. } => None,
    };

    let mut events = Vec::new();
    for e in &args.event_http {
        events.push(
            RunEvent::parse_http(e, &targets[0]).map_err(|m| anyhow!("--event-http `{e}`: {m}"))?,
        );
    }
    for e in &args.event_cmd {
        events.push(RunEvent::parse_command(e).map_err(|m| anyhow!("--event-cmd `{e}`: {m}"))?);
    }
    events.sort_by_key(|e| e.offset);
    let config = ReplayConfig {
        targets,
        shape: RequestShape {
            api,
            backend: match args.backend {
                BackendArg::Vllm => Backend::Vllm,
                BackendArg::Sglang => Backend::Sglang,
                BackendArg::Llamacpp => Backend::Llamacpp,
                BackendArg::Tgi => Backend::Tgi,
                BackendArg::Openai => Backend::Openai,
            },
            model,
            stream: !args.no_stream,
        },
        headers,
        timeouts: Timeouts {
            request: secs(args.timeout, "--timeout")?,
            gap: secs(args.token_timeout, "--token-timeout")?,
        },
        max_in_flight: args.max_in_flight,
        warmup: args.warmup,
        prompts: PromptBuilder {
            block_tokens,
            salt: args.seed,
        },
        run_dir: run_dir.clone(),
        run_id,
        queue_limit_ms: args.queue_limit_ms,
        stop_rule,
        drain: secs(args.drain, "--drain")?,
        command: std::env::args().collect(),
        events,
        prompt_words: None,
        senders: args.senders,
        http: match args.http_client {
            HttpClientArg::Auto => reprise_replay::HttpClient::Auto,
            HttpClientArg::Reqwest => reprise_replay::HttpClient::Reqwest,
        },
        monitor: None,
        fail_fast: true,
        target_names,
        intended,
    };
    let monitor = super::monitor::config_from(
        &config.run_dir,
        &super::monitor::Sampling {
            gpu: args.gpu,
            host: !args.no_host_metrics,
            scrape: args.scrape.clone(),
            interval_ms: args.monitor_interval_ms,
            scrape_timeout_ms: args.scrape_timeout_ms,
            clock_offset: args.clock_offset.clone(),
        },
        &config.targets,
    )?;
    let mut config = config;
    config.monitor = monitor;
    let sizer = match args.tokenizer.as_str() {
        "cl100k" => None,
        "server" => Some(Sizer::Server {
            base: config.targets[0].clone(),
            model: config.shape.model.clone(),
            api: config.shape.api,
        }),
        path => Some(
            Sizer::local(std::path::Path::new(path)).map_err(|e| anyhow!("--tokenizer: {e}"))?,
        ),
    };
    if let Some(sizer) = sizer {
        let requests: Vec<reprise_trace::TraceRecord> = match &pacing {
            Pacing::Open(OpenPlan::Listed(plan)) => {
                plan.iter().map(|p| p.request.clone()).collect()
            }
            // Drawn once here to be sized; the run draws them again as it goes.
            Pacing::Open(OpenPlan::Rates(plan)) => plan.iter().map(|p| p.request).collect(),
            Pacing::Closed { requests, .. } => requests.clone(),
        };
        let started = Instant::now();
        let (sizing, report) = size_prompts(&sizer, &config.prompts, &requests)
            .await
            .map_err(|e| anyhow!("--tokenizer {}: {e}", args.tokenizer))?;
        eprintln!(
            "sized {} prompts with {} in {:.1} s: {} exact{}",
            report.requests,
            match &sizer {
                Sizer::Server { base, .. } => format!("{base}/tokenize"),
                Sizer::Local(_) => sizing.by.clone(),
            },
            started.elapsed().as_secs_f64(),
            report.exact,
            if report.exact < report.requests {
                format!(
                    ", {} at the closest reachable count (e.g. shorter than the chat template)",
                    report.requests - report.exact
                )
            } else {
                String::new()
            }
        );
        config.prompt_words = Some(Arc::new(sizing));
    }

    let bar = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
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
    let summary = run(config, pacing, stop, progress).await;
    ctrl_c.abort();
    ticker.abort();
    bar.finish_and_clear();
    let summary = summary?;
    for sim in sims {
        let _ = sim_runtime.spawn(sim.shutdown()).await;
    }
    if let Some(why) = &summary.aborted {
        // The target is wrong, not busy: nothing was measured worth reading.
        bail!(
            "{why} (run stopped; {} requests recorded in {})",
            summary.recorded,
            run_dir.display()
        );
    }
    println!("target {}", summary.targets.join(", "));
    print!(
        "{}",
        render(
            &summary.overall,
            &summary.phases,
            args.queue_limit_ms,
            summary.intended_s
        )
    );
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
    let failed = judge(
        &summary.overall,
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
        };
        eprintln!("FAILED ({flag}): {}", f.message);
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn process(args: &Args) -> Process {
    match args.process {
        ProcessArg::Poisson => Process::Poisson,
        ProcessArg::Fixed => Process::Fixed,
        ProcessArg::Gamma => Process::Gamma { cv: args.cv },
    }
}

async fn discover_model(base: &str) -> Result<String> {
    let url = format!("{base}/v1/models");
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("{url}: cannot list models (pass --model)"))?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "{url} answered {status}: check the base URL in --target (requests go to {base}/v1/...), or pass --model"
        );
    }
    let body: serde_json::Value = response
        .bytes()
        .await
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice(&b)?))
        .with_context(|| format!("{url}: not a model list (pass --model)"))?;
    body["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{url}: no model listed (pass --model)"))
}
