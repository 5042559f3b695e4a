//! # reprise — record real LLM-serving traffic and reproduce it anywhere
//!
//! The command-line entry point. Each subcommand lives in `cmd/<name>.rs` with an `Args`
//! struct (clap derive) and a `run()` that turns arguments into a library config and calls
//! the library: no business logic here. This binary never links polars; the analyzer is the
//! separate `reprise-analyze` binary, launched by `reprise analyze|compare|export`.

mod cmd;

use std::process::ExitCode;

/// Every request of a replay allocates (its body, its events, its row) and frees on
/// another thread (the writer); mimalloc does that with less work than glibc's allocator
/// (docs/replay.md, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Record real LLM-serving traffic and reproduce it anywhere.
///
/// reprise is one pipeline over one Parquet format (trace/1): import public traces, inspect
/// them, record production traffic with a capture proxy, replay traces (or synthetic load)
/// against a server or the built-in simulator, fit workload models and generate rescaled
/// workloads from them, and analyze and compare runs (with the separate `reprise-analyze`
/// binary). Run `reprise <command> --help` for each command.
///
/// Exit status, for every command: 0 it did what was asked; 1 it ran but failed a gate
/// (a replay whose measured requests all failed or that broke --max-error-rate or
/// --max-queue-p99-ms, `trace validate` finding errors, `synth check` out of tolerance,
/// `compare --fail-on`, a recorder that lost rows); 2 it could not run (bad arguments,
/// unreadable input, an unusable target).
#[derive(Debug, Parser)]
#[command(
    name = "reprise",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert a public trace (Azure, Mooncake, BurstGPT) or any CSV/JSONL table to trace/1.
    Import(Box<cmd::import::Args>),
    /// Record production traffic: a capture reverse proxy writing trace/1.
    Record(Box<cmd::record::Args>),
    /// Replay a trace open-loop at N x speed, or generate load, against a target or the sim.
    Replay(Box<cmd::replay::Args>),
    /// Start N replay workers (`replay --shard K/N --coordinator URL`) on one timeline.
    Coordinate(Box<cmd::coordinate::Args>),
    /// Merge the workers' runs of a distributed replay into one run.
    Merge(Box<cmd::merge::Args>),
    /// Run the simulated OpenAI-compatible LLM server (continuous batching, KV cache, faults).
    Sim(Box<cmd::sim::Args>),
    /// Sample GPUs (NVML), Prometheus endpoints and this host; import nvidia-smi/DCGM logs.
    Monitor(Box<cmd::monitor::Args>),
    /// Fit workload models to traces, generate rescaled workloads, check their fidelity.
    #[command(subcommand)]
    Synth(cmd::synth::SynthCommand),
    /// Inspect, validate or export a trace/1 dataset.
    #[command(subcommand)]
    Trace(cmd::trace::TraceCommand),
    /// Analyze run directories (runs the separate `reprise-analyze` binary).
    #[command(disable_help_flag = true)]
    Analyze(cmd::analyze::Passthrough),
    /// Compare runs A/B (runs the separate `reprise-analyze` binary).
    #[command(disable_help_flag = true)]
    Compare(cmd::analyze::Passthrough),
    /// Export run results (runs the separate `reprise-analyze` binary).
    #[command(disable_help_flag = true)]
    Export(cmd::analyze::Passthrough),
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // Streams, proxied connections and simulated clients are sockets: allow as many as the
    // hard limit does.
    let files = reprise_replay::raise_open_files_limit();
    tracing::debug!("open files limit: {files:?}");
    let result = match cli.command {
        Command::Import(args) => cmd::import::run(*args),
        Command::Record(args) => cmd::record::run(*args),
        Command::Replay(args) => cmd::replay::run_cmd(*args),
        Command::Coordinate(args) => cmd::coordinate::run(*args),
        Command::Merge(args) => cmd::merge::run(*args),
        Command::Sim(args) => cmd::sim::run(*args),
        Command::Monitor(args) => cmd::monitor::run(*args),
        Command::Synth(command) => cmd::synth::run(command),
        Command::Trace(command) => cmd::trace::run(command),
        Command::Analyze(args) => cmd::analyze::run("analyze", args),
        Command::Compare(args) => cmd::analyze::run("compare", args),
        Command::Export(args) => cmd::analyze::run("export", args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", one_line(&err));
            // Could not run (bad arguments, unreadable input, unusable target): 2, as
            // clap's own usage errors. 1 is kept for runs that failed a gate.
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each cause once: a library error whose message
/// already quotes its source (`path: No such file or directory`) is not followed by that
/// source again.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || e.to_string().contains("Broken pipe")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn errors_name_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let lib = reprise_trace::TraceError::Io {
            path: "/x.parquet".into(),
            source: io,
        };
        let err = anyhow::Error::new(lib).context("reading the trace");
        assert_eq!(
            one_line(&err),
            "reading the trace: /x.parquet: No such file"
        );
        let plain = anyhow::anyhow!("a").context("b");
        assert_eq!(one_line(&plain), "b: a");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
