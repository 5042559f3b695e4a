//! The first stage of a replay: a [`Spec`] (what the user asked for, checked and typed)
//! becomes [`Prepared`] (what the executor runs): simulators started, URL targets checked,
//! the model resolved, the trace read, the plan dealt once, events bound to the first
//! target, monitoring resolved and prompts sized. Nothing is sent to a target here but
//! `GET /v1/models` (when the model is not given) and `POST /tokenize` (with the server
//! sizer).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reprise_sim::{Profile, SimConfig, SimServer};

use crate::events::RunEvent;
use crate::load::{Load, Requests};
use crate::sizing::{Sizer, SizingReport, size_prompts};
use crate::target::{Target, TargetError, check_reachable};
use crate::workload::{OpenPlan, load_trace};
use crate::{Pacing, ReplayConfig, ReplayError};

/// How prompts are sized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizerChoice {
    /// The embedded cl100k tokenizer (one word, one token).
    Cl100k,
    /// The target's `POST /tokenize`.
    Server,
    /// A local Hugging Face `tokenizer.json` (or a folder holding one).
    Local(PathBuf),
}

/// A replay as asked for. `config` holds everything given directly (shape, headers,
/// limits, output, gates); the rest is resolved by [`prepare`].
#[derive(Debug, Clone)]
pub struct Spec {
    /// The targets, parsed.
    pub targets: Vec<Target>,
    /// Time compression of in-process simulators.
    pub sim_speedup: f64,
    /// The model id, when given (else the simulator's, or the target's first listed).
    pub model: Option<String>,
    /// The load.
    pub load: Load,
    /// The trace: replayed, or giving request sizes to other loads.
    pub trace: Option<PathBuf>,
    /// Prompt and output tokens of synthetic requests without a trace.
    pub synthetic: (u32, u32),
    /// Seed of synthetic arrivals and of the simulators.
    pub seed: u64,
    /// How prompts are sized.
    pub sizer: SizerChoice,
    /// Events, `{target}` standing for the first target's base URL.
    pub events: Vec<RunEvent>,
    /// What to sample beside the run.
    pub sampling: Option<reprise_monitor::Sampling>,
    /// Where to serve live metrics (`/metrics`), and how long to go on serving them after
    /// the run so that a scraper takes the final values.
    pub metrics: Option<(std::net::SocketAddr, Duration)>,
    /// Everything else; `targets`, `target_names`, the model, `prompts.block_tokens`,
    /// `prompt_words`, `intended`, `events` and `monitor` are filled in.
    pub config: ReplayConfig,
}

/// A replay ready to run.
pub struct Prepared {
    /// The executor's configuration.
    pub config: ReplayConfig,
    /// The plan, dealt once.
    pub pacing: Pacing,
    /// Simulators started for `sim` targets (shut them down after the run).
    pub sims: Vec<SimServer>,
    /// How the prompts were sized, when not by cl100k.
    pub sizing: Option<SizedPrompts>,
    /// The live metrics' address, bound.
    pub metrics: Option<MetricsEndpoint>,
}

/// The bound address of a run's live metrics (see [`crate::live`]).
#[derive(Debug)]
pub struct MetricsEndpoint {
    /// The listener, bound before anything else starts.
    pub listener: std::net::TcpListener,
    /// How long `/metrics` is still served after the run.
    pub linger: Duration,
}

impl MetricsEndpoint {
    /// Binds `addr`: a port in use is an error before the run starts.
    pub fn bind(addr: std::net::SocketAddr, linger: Duration) -> Result<Self, PrepareError> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| PrepareError::MetricsListen { addr, source })?;
        Ok(MetricsEndpoint { listener, linger })
    }

    /// The address bound (with the port chosen when asked for port 0).
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// What prompt sizing did, for one line on the terminal.
#[derive(Debug, Clone, PartialEq)]
pub struct SizedPrompts {
    /// What sized them: `URL/tokenize`, or `hf:<name>`.
    pub by: String,
    /// How long it took.
    pub took: Duration,
    /// Requests sized, and how many exactly.
    pub report: SizingReport,
}

/// Why a replay could not be prepared. Messages name what was wrong, not the flags the
/// binary took it from; the binary adds those.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// `sim:PROFILE` with a profile that is not built in.
    #[error("unknown simulator profile `{profile}` (built-ins: {builtins})")]
    UnknownProfile {
        /// The profile asked for.
        profile: String,
        /// The built-in profiles.
        builtins: String,
    },
    /// The simulator did not start.
    #[error("starting the simulator: {0}")]
    Sim(String),
    /// A URL target accepts no connection.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// `GET /v1/models` could not be sent or read.
    #[error("{url}: cannot list models: {reason}")]
    ModelsUnreachable {
        /// The URL.
        url: String,
        /// The cause.
        reason: String,
    },
    /// `GET /v1/models` answered an error status.
    #[error("{url} answered {status}")]
    ModelsStatus {
        /// The URL.
        url: String,
        /// The target's base URL.
        base: String,
        /// Status line, e.g. `404 Not Found`.
        status: String,
    },
    /// `GET /v1/models` answered something that is not a model list, or an empty one.
    #[error("{url}: {problem}")]
    NoModel {
        /// The URL.
        url: String,
        /// `not a model list` or `no model listed`.
        problem: String,
    },
    /// A local tokenizer could not be loaded.
    #[error("{0}")]
    Tokenizer(String),
    /// Prompt sizing failed.
    #[error("{0}")]
    Sizing(String),
    /// Monitoring options that cannot be used.
    #[error(transparent)]
    Monitor(#[from] reprise_monitor::MonitorError),
    /// The live metrics' address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The trace, the plan or the configuration.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Resolves a [`Spec`] into a [`Prepared`] replay. Simulators are started on `sim_runtime`,
/// a runtime of their own, so that their work does not delay the client's sends.
pub async fn prepare(
    spec: Spec,
    sim_runtime: &tokio::runtime::Handle,
) -> Result<Prepared, PrepareError> {
    let Spec {
        targets,
        sim_speedup,
        model,
        load,
        trace,
        synthetic,
        seed,
        sizer,
        events,
        sampling,
        metrics,
        mut config,
    } = spec;
    // The metrics port first: in use, nothing else starts.
    let metrics = metrics
        .map(|(addr, linger)| MetricsEndpoint::bind(addr, linger))
        .transpose()?;
    // Targets: start the in-process simulator where asked; a URL must accept connections.
    let mut sims = Vec::new();
    let mut bases = Vec::new();
    let mut names = Vec::new();
    for target in &targets {
        match target {
            Target::Sim { profile } => {
                let p = Profile::named(profile).ok_or_else(|| PrepareError::UnknownProfile {
                    profile: profile.clone(),
                    builtins: Profile::names().join(", "),
                })?;
                // One simulator's cache is the server's cache; several targets have several.
                config.server_cache_tokens =
                    (targets.len() == 1 && p.prefix_caching).then_some(p.kv_capacity_tokens);
                let mut sim = SimConfig::new(p);
                sim.speedup = sim_speedup;
                sim.seed = seed;
                let server = sim_runtime
                    .spawn(SimServer::start(sim))
                    .await
                    .map_err(|e| PrepareError::Sim(e.to_string()))?
                    .map_err(|e| PrepareError::Sim(e.to_string()))?;
                bases.push(server.base_url());
                sims.push(server);
            }
            Target::Url { base } => {
                check_reachable(target, Duration::from_secs(10)).await?;
                bases.push(base.clone());
            }
        }
        names.push(target.to_string());
    }
    if bases.is_empty() {
        return Err(ReplayError::Config("no target".into()).into());
    }
    if config.max_connections.is_none() {
        config.max_connections = Some(crate::connection_budget(!sims.is_empty()));
    }
    config.shape.model = match (model, sims.first()) {
        (Some(m), _) => m,
        (None, Some(sim)) => sim.model().to_owned(),
        (None, None) => discover_model(&bases[0]).await?,
    };

    // The workload, dealt once.
    let loaded = trace.as_deref().map(load_trace).transpose()?;
    config.prompts.block_tokens = loaded.as_ref().and_then(|t| t.block_tokens);
    let pacing = load.pacing(&Requests {
        trace: loaded.as_ref(),
        trace_path: trace.clone(),
        synthetic,
        seed,
    })?;
    drop(loaded);
    // A shard of a distributed replay keeps its part of the plan every shard deals alike.
    let mut pacing = pacing.shard(config.shard)?;
    // Session turns repeat their conversation (both modes); closed sessions are chained.
    if let Pacing::Open(OpenPlan::Listed(plan)) = &pacing
        && plan.iter().any(|p| p.request.session_id.is_some())
    {
        config.sessions = Some(if plan.iter().any(|p| p.then.is_some()) {
            crate::workload::SessionMode::Closed
        } else {
            crate::workload::SessionMode::Open
        });
        let conversations = crate::workload::conversations(plan);
        if !conversations.is_empty() {
            config.prompts.conversations = Some(std::sync::Arc::new(conversations));
        }
    }
    config.intended = pacing.intended_duration();
    config.events = events
        .into_iter()
        .map(|e| e.bind_target(&bases[0]))
        .collect();
    config.events.sort_by_key(|e| e.offset);
    config.monitor = match &sampling {
        Some(s) => s.config(&config.run_dir, &bases)?,
        None => None,
    };
    config.targets = bases;
    config.target_names = names;

    let sizer = match sizer {
        SizerChoice::Cl100k => None,
        SizerChoice::Server => Some(Sizer::Server {
            base: config.targets[0].clone(),
            model: config.shape.model.clone(),
            api: config.shape.api,
        }),
        SizerChoice::Local(path) => {
            Some(Sizer::local(&path).map_err(|e| PrepareError::Tokenizer(e.to_string()))?)
        }
    };
    let sizing = match sizer {
        None => None,
        Some(sizer) => {
            // Synthetic arrivals are drawn here, once, so that the run sends the very
            // requests that were sized.
            if let Pacing::Open(OpenPlan::Rates(plan)) = &pacing {
                pacing = Pacing::Open(OpenPlan::Listed(plan.shared_iter().collect()));
            }
            let requests: Vec<reprise_trace::TraceRecord> = match &pacing {
                Pacing::Open(OpenPlan::Listed(plan)) => plan
                    .iter()
                    .flat_map(crate::workload::Planned::turns)
                    .map(|p| p.request.clone())
                    .collect(),
                Pacing::Open(OpenPlan::Rates(_)) => Vec::new(),
                Pacing::Closed { requests, .. } => requests.clone(),
            };
            let started = Instant::now();
            let (words, report) = size_prompts(&sizer, &config.prompts, &requests)
                .await
                .map_err(PrepareError::Sizing)?;
            let by = match &sizer {
                Sizer::Server { base, .. } => format!("{base}/tokenize"),
                Sizer::Local(_) => words.by.clone(),
            };
            config.prompt_words = Some(std::sync::Arc::new(words));
            Some(SizedPrompts {
                by,
                took: started.elapsed(),
                report,
            })
        }
    };
    Ok(Prepared {
        config,
        pacing,
        sims,
        sizing,
        metrics,
    })
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("config", &self.config)
            .field("pacing", &self.pacing)
            .field("sims", &self.sims.len())
            .field("sizing", &self.sizing)
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// Stops simulators started by [`prepare`], on the runtime they run on.
pub async fn stop_sims(sims: Vec<SimServer>, sim_runtime: &tokio::runtime::Handle) {
    for sim in sims {
        let _ = sim_runtime.spawn(sim.shutdown()).await;
    }
}

/// The first model a server lists at `GET {base}/v1/models`.
pub async fn discover_model(base: &str) -> Result<String, PrepareError> {
    let url = format!("{base}/v1/models");
    let response = reprise_net::client()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| PrepareError::ModelsUnreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(PrepareError::ModelsStatus {
            url,
            base: base.to_owned(),
            status: status.to_string(),
        });
    }
    let not_a_list = |url: &str| PrepareError::NoModel {
        url: url.to_owned(),
        problem: "not a model list".into(),
    };
    let bytes = response.bytes().await.map_err(|_| not_a_list(&url))?;
    let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| not_a_list(&url))?;
    body["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| PrepareError::NoModel {
            url,
            problem: "no model listed".into(),
        })
}

/// A shard's plan in figures (`replay --dry-run`).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSummary {
    /// The shard.
    pub shard: crate::shard::Shard,
    /// Requests this shard plans (expected, for random arrivals; 0 for a closed loop).
    pub requests: u64,
    /// Requests all shards plan together.
    pub all_requests: u64,
    /// First and last scheduled offsets of an open-loop plan.
    pub span: Option<(Duration, Duration)>,
    /// A closed loop's users, in words.
    pub describe: String,
}

/// The plan of `spec`'s shard, dealt as a run would deal it, without starting or
/// contacting anything (the trace is read; targets are not checked).
pub fn plan_only(spec: &Spec) -> Result<PlanSummary, PrepareError> {
    let loaded = spec.trace.as_deref().map(load_trace).transpose()?;
    let whole = spec.load.pacing(&Requests {
        trace: loaded.as_ref(),
        trace_path: spec.trace.clone(),
        synthetic: spec.synthetic,
        seed: spec.seed,
    })?;
    let count = |p: &Pacing| match p {
        Pacing::Open(plan) => plan.expected_len(),
        Pacing::Closed { .. } => 0,
    };
    let all_requests = count(&whole);
    let shard = spec.config.shard;
    let part = whole.shard(shard)?;
    let (span, describe) = match &part {
        Pacing::Open(OpenPlan::Listed(v)) => {
            let offsets: Vec<Duration> = v
                .iter()
                .flat_map(crate::workload::Planned::turns)
                .map(|p| p.offset)
                .collect();
            let first = offsets.iter().min().copied();
            (first.zip(offsets.iter().max().copied()), String::new())
        }
        Pacing::Open(OpenPlan::Rates(r)) => (
            r.shared_iter()
                .next()
                .map(|p| (p.offset, r.intended_duration())),
            String::new(),
        ),
        Pacing::Closed { users, .. } => (None, format!("closed loop, users per step {users:?}")),
    };
    Ok(PlanSummary {
        shard,
        requests: count(&part),
        all_requests,
        span,
        describe,
    })
}
