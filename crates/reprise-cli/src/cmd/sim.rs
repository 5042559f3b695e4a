//! `reprise sim`: the simulated LLM server, standalone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use reprise_sim::{Faults, Profile, SimConfig, SimServer};

/// Run the simulated OpenAI-compatible LLM server.
///
/// It behaves like vLLM under load: continuous batching in steps (chunked prefill, one decode
/// token per running sequence), max_num_seqs, a KV cache in blocks with preemption, prefix
/// caching, and a roofline step-time model per profile. It serves /v1/chat/completions,
/// /v1/completions (SSE as vLLM frames it), /v1/models, /health, /tokenize, /metrics (vLLM
/// names and a simulated GPU in DCGM names), and /admin/faults, /admin/reload.
#[derive(Debug, Parser)]
#[command(
    after_help = "Built-in profiles: llama-8b-h100, llama-70b-4xh100, small-t4, instant (see docs/sim.md).\n\nExamples:\n  reprise sim --profile llama-8b-h100\n  reprise sim --profile small-t4 --speedup 10 --error-rate 0.01 --error-status 503\n  curl -s localhost:8000/admin/faults -d '{\"cut_rate\": 0.1}'\n  curl -s localhost:8000/admin/reload -d '{\"seconds\": 5}'"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Built-in profile.
    #[arg(long, default_value = "llama-8b-h100", conflicts_with = "profile_file")]
    profile: String,
    /// JSON profile: a full profile, or `{"base": "<built-in>", ...overrides}`.
    #[arg(long, value_name = "FILE")]
    profile_file: Option<PathBuf>,
    /// Print the chosen profile as JSON and exit.
    #[arg(long)]
    print_profile: bool,
    /// Serve under this model id instead of the profile's.
    #[arg(long)]
    model: Option<String>,
    /// Run this many times faster than modelled (steps, stalls and reloads all shrink).
    #[arg(long, default_value_t = 1.0)]
    speedup: f64,
    /// Seed of output lengths and faults.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Override max_num_seqs.
    #[arg(long)]
    max_num_seqs: Option<usize>,
    /// Override the KV-cache capacity, tokens.
    #[arg(long)]
    kv_capacity: Option<u64>,
    /// Share of requests answered with --error-status.
    #[arg(long, default_value_t = 0.0, help_heading = "Faults")]
    error_rate: f64,
    /// Status of injected errors.
    #[arg(long, default_value_t = 500, help_heading = "Faults")]
    error_status: u16,
    /// Share of requests whose connection is closed before a response.
    #[arg(long, default_value_t = 0.0, help_heading = "Faults")]
    reset_rate: f64,
    /// Share of streams cut after --cut-after tokens.
    #[arg(long, default_value_t = 0.0, help_heading = "Faults")]
    cut_rate: f64,
    /// Tokens before a cut.
    #[arg(long, default_value_t = 4, help_heading = "Faults")]
    cut_after: u32,
    /// Share of streams that stall for --stall-ms after --stall-after tokens.
    #[arg(long, default_value_t = 0.0, help_heading = "Faults")]
    stall_rate: f64,
    /// Stall length, ms.
    #[arg(long, default_value_t = 1000, help_heading = "Faults")]
    stall_ms: u64,
    /// Tokens before a stall.
    #[arg(long, default_value_t = 2, help_heading = "Faults")]
    stall_after: u32,
    /// Share of streams with one malformed SSE event.
    #[arg(long, default_value_t = 0.0, help_heading = "Faults")]
    malformed_rate: f64,
}

impl Args {
    fn config(&self) -> Result<SimConfig> {
        let mut profile = match &self.profile_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
                Profile::from_json(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?
            }
            None => Profile::named(&self.profile).ok_or_else(|| {
                anyhow!(
                    "unknown profile `{}` (built-ins: {})",
                    self.profile,
                    Profile::names().join(", ")
                )
            })?,
        };
        if let Some(m) = &self.model {
            profile.model = m.clone();
        }
        if let Some(n) = self.max_num_seqs {
            profile.max_num_seqs = n;
        }
        if let Some(k) = self.kv_capacity {
            profile.kv_capacity_tokens = k;
        }
        profile
            .check()
            .map_err(|e| anyhow!("profile `{}`: {e}", profile.name))?;
        let faults = Faults {
            error_rate: self.error_rate,
            error_status: self.error_status,
            reset_rate: self.reset_rate,
            cut_rate: self.cut_rate,
            cut_after_tokens: self.cut_after,
            stall_rate: self.stall_rate,
            stall_ms: self.stall_ms,
            stall_after_tokens: self.stall_after,
            malformed_rate: self.malformed_rate,
        };
        faults.check().map_err(anyhow::Error::msg)?;
        Ok(SimConfig {
            profile,
            speedup: self.speedup,
            seed: self.seed,
            faults,
            listen: self.listen,
        })
    }
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> Result<ExitCode> {
    let config = args.config()?;
    if args.print_profile {
        println!("{}", serde_json::to_string_pretty(&config.profile)?);
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let profile = config.profile.clone();
        let speedup = config.speedup;
        let server = SimServer::start(config).await?;
        eprintln!(
            "reprise sim: {} ({}) serving model `{}` on {} (speedup {speedup}); Ctrl-C stops",
            profile.name,
            profile.description,
            profile.model,
            server.base_url()
        );
        super::common::shutdown_signal().await;
        eprintln!("reprise sim: stopping");
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
