//! # reprise-sim — a simulated OpenAI-compatible LLM server
//!
//! The embedded default target of reprise: it behaves like vLLM under load without a GPU.
//!
//! - [`engine::Engine`]: continuous batching in discrete steps — chunked prefill within a
//!   token budget, one decode token per running sequence per step, `max_num_seqs`, a KV
//!   cache in blocks with preemption, and prefix caching (cached prompt blocks skip prefill);
//! - [`profile::Profile`]: limits and a roofline step-time model, with built-in profiles
//!   derived from published hardware and model figures (`docs/sim.md`) and JSON files;
//! - [`driver`]: the engine thread, which sleeps each step's duration on the real clock
//!   (scaled by `speedup`) and delivers tokens;
//! - [`server`]: HTTP/1.1 with `/v1/chat/completions`, `/v1/completions` (SSE framed as
//!   vLLM does, `stream_options.include_usage`, `usage`), `/v1/models`, `/health`,
//!   `/tokenize`, `/metrics` (vLLM names plus a simulated GPU in DCGM-exporter names) and
//!   `/admin/faults`, `/admin/reload`;
//! - [`faults::Faults`]: errors, resets, cut and stalled streams, malformed SSE, reloads.
//!
//! [`SimServer::start`] runs it inside the caller's tokio runtime (tests and `replay --target
//! sim` need no second process); `reprise sim` runs it standalone.

pub mod body;
pub mod driver;
pub mod engine;
pub mod faults;
pub mod metrics;
pub mod profile;
pub mod server;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::rngs::StdRng;

pub use faults::Faults;
pub use metrics::Metrics;
pub use profile::Profile;

/// How to run a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Engine profile.
    pub profile: Profile,
    /// Time compression: every step, stall and pause lasts `1/speedup` of its modelled time.
    pub speedup: f64,
    /// Seed of output lengths, faults and prefix-hash salt (same requests, same run).
    pub seed: u64,
    /// Initial faults.
    pub faults: Faults,
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
}

impl SimConfig {
    /// A config for a profile on 127.0.0.1 with a free port, no faults, speedup 1.
    pub fn new(profile: Profile) -> Self {
        SimConfig {
            profile,
            speedup: 1.0,
            seed: 0,
            faults: Faults::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Why a simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding the address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
}

/// A running simulator. Dropping it (or [`SimServer::shutdown`]) stops accepting
/// connections; the engine thread ends when the last request is done.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    state: Arc<server::State>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Binds and starts serving in the current tokio runtime.
    pub async fn start(config: SimConfig) -> Result<SimServer, SimError> {
        config.profile.check().map_err(SimError::Config)?;
        config.faults.check().map_err(SimError::Config)?;
        if !(config.speedup.is_finite() && config.speedup > 0.0) {
            return Err(SimError::Config("speedup must be positive".into()));
        }
        // Load the tokenizer's tables now, not in the first request's TTFT.
        let _ = tokio::task::spawn_blocking(|| {
            use reprise_tokenizer::Tokenizer;
            reprise_tokenizer::Cl100k.count("warm up")
        })
        .await;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let p = &config.profile;
        let metrics = Arc::new(Metrics::new(&p.model, p.gpu_memory_bytes, p.weights_bytes));
        let (engine, _thread) =
            driver::spawn(config.profile.clone(), config.speedup, metrics.clone());
        let state = Arc::new(server::State {
            profile: config.profile.clone(),
            speedup: config.speedup,
            seed: config.seed,
            engine,
            metrics: metrics.clone(),
            faults: Mutex::new(config.faults.clone()),
            fault_rng: Mutex::new(StdRng::seed_from_u64(config.seed ^ 0xFA17)),
            next_id: AtomicU64::new(0),
        });
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(server::serve(listener, state.clone(), rx));
        tracing::info!(
            "reprise sim listening on http://{addr} (profile {})",
            config.profile.name
        );
        Ok(SimServer {
            addr,
            metrics,
            state,
            shutdown,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Live metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The served model id.
    pub fn model(&self) -> &str {
        &self.state.profile.model
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
