//! `reprise synth fit|gen|check|plain`: workload models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use reprise_synth::generator::{GenOptions, Mode};
use reprise_synth::model::FitOptions;
use reprise_synth::{Lengths, check, load, load_model, model, plain_model, save_model};

/// Fit a workload model to a trace, generate rescaled workloads, check their fidelity.
#[derive(Debug, Subcommand)]
pub enum SynthCommand {
    /// Fit a model (arrivals, sizes, prefixes, sessions) to a trace/1 dataset.
    Fit(FitArgs),
    /// Generate a workload (trace/1) from a model, at any load.
    Gen(GenArgs),
    /// Compare a generated workload with its source: pass/fail per figure (exit 1 on fail).
    Check(CheckArgs),
    /// Generate a workload without a trace: Poisson or gamma arrivals, lengths from a law.
    Plain(PlainArgs),
}

/// `synth fit`.
#[derive(Debug, Parser)]
pub struct FitArgs {
    /// The trace (file or part directory).
    trace: PathBuf,
    /// Where the model goes (JSON).
    #[arg(short, long)]
    out: PathBuf,
    /// Rate window in seconds (rates per window form the profile; the law covers what is
    /// faster).
    #[arg(long, default_value_t = 60.0)]
    rate_window: f64,
    /// Seed for spreading quantized timestamps and for subsamples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Lengths in generation: `empirical` (the trace's pairs, resampled) or `parametric`
    /// (a bivariate lognormal per model, correlation kept).
    #[arg(long, value_enum, default_value = "empirical")]
    sizes: SizesArg,
    /// Relative jitter of generated lengths, e.g. 0.05 (empirical sizes only).
    #[arg(long, default_value_t = 0.0)]
    smoothing: f64,
}

/// How lengths are generated.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SizesArg {
    /// Resample the trace's (input, output) pairs.
    Empirical,
    /// A bivariate lognormal fitted per model.
    Parametric,
}

/// How --scale is applied.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// K independent streams (more users): capacity planning. Keeps time scales and
    /// burstiness; each stream's prefixes and sessions are its own.
    Superpose,
    /// The same users K times faster (time compressed): think times shrink and bursts
    /// concentrate — what replaying a trace at --speed K does.
    Compress,
    /// Fewer users (K ≤ 1): each request kept with probability K.
    Thin,
    /// The fitted rate profile times K in one stream (the law's burstiness kept per stream).
    Model,
}

/// `synth gen`.
#[derive(Debug, Parser)]
#[command(
    after_help = "Which --mode answers which question:\n  superpose  \"will we hold 2x the users?\" (default; capacity planning)\n  compress   \"what does the same traffic do at 2x speed?\" (= replay --speed 2)\n  thin       \"a smaller share of today's traffic\"\n  model      \"the fitted rate curve, scaled\" (one stream, smooth)"
)]
pub struct GenArgs {
    /// The model (from `synth fit`).
    model: PathBuf,
    /// Output: a .parquet file or a part directory.
    #[arg(short, long)]
    out: PathBuf,
    /// Seconds to generate (default: the source's span).
    #[arg(long)]
    duration: Option<f64>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Load factor.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// How the factor is applied.
    #[arg(long, value_enum, default_value = "superpose")]
    mode: ModeArg,
    /// What-if: a target mean rate (req/s) instead of --scale.
    #[arg(long, help_heading = "What-if")]
    rate: Option<f64>,
    /// What-if: burstiness as the CV of the gaps (1 = Poisson; gamma law).
    #[arg(long, help_heading = "What-if")]
    cv: Option<f64>,
    /// What-if: prompt and output lengths times this.
    #[arg(long, default_value_t = 1.0, help_heading = "What-if")]
    length_scale: f64,
    /// What-if: share of requests reusing an earlier prefix.
    #[arg(long, help_heading = "What-if")]
    prefix_share: Option<f64>,
    /// What-if: only this part of the source (seconds from its start), e.g. 1800..3600.
    #[arg(long, value_name = "FROM..TO", help_heading = "What-if")]
    window: Option<String>,
}

/// `synth check`.
#[derive(Debug, Parser)]
pub struct CheckArgs {
    /// The source trace.
    source: PathBuf,
    /// The generated workload.
    generated: PathBuf,
    /// The load factor the workload was generated at (rates compared to K x the source).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// How it was scaled: with `compress`, burstiness is compared with the source's at K
    /// times the window (as replaying at --speed K would give).
    #[arg(long, value_enum, default_value = "superpose")]
    mode: ModeArg,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `synth plain`.
#[derive(Debug, Parser)]
pub struct PlainArgs {
    /// Output: a .parquet file or a part directory.
    #[arg(short, long)]
    out: PathBuf,
    /// Mean rate, requests/s.
    #[arg(long)]
    rate: f64,
    /// CV of the gaps (1 = Poisson, above = burstier, gamma law).
    #[arg(long, default_value_t = 1.0)]
    cv: f64,
    /// Seconds to generate.
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Prompt lengths: N, or lognormal:MEAN,CV.
    #[arg(long, default_value = "lognormal:1000,1.0")]
    input: String,
    /// Output lengths: N, or lognormal:MEAN,CV.
    #[arg(long, default_value = "lognormal:200,0.8")]
    output: String,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn lengths(text: &str, flag: &str) -> Result<Lengths> {
    if let Some(rest) = text.strip_prefix("lognormal:") {
        let (m, cv) = rest
            .split_once(',')
            .with_context(|| format!("{flag} {text}: expected lognormal:MEAN,CV"))?;
        let (mean, cv): (f64, f64) = (
            m.trim()
                .parse()
                .with_context(|| format!("{flag}: mean `{m}`"))?,
            cv.trim()
                .parse()
                .with_context(|| format!("{flag}: cv `{cv}`"))?,
        );
        if !(mean >= 1.0 && cv > 0.0) {
            bail!("{flag} {text}: mean must be at least 1 and cv positive");
        }
        return Ok(Lengths::Lognormal { mean, cv });
    }
    Ok(Lengths::Fixed(text.parse().with_context(|| {
        format!("{flag} {text}: expected a token count or lognormal:MEAN,CV")
    })?))
}

fn window(text: &str) -> Result<(f64, f64)> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--window {text}: expected FROM..TO seconds"))?;
    Ok((
        a.trim()
            .parse()
            .with_context(|| format!("--window: `{a}`"))?,
        b.trim()
            .parse()
            .with_context(|| format!("--window: `{b}`"))?,
    ))
}

/// Runs a synth subcommand.
pub fn run(command: SynthCommand) -> Result<ExitCode> {
    // The library names a setting whose value is unusable; the flag is named here.
    run_command(command).map_err(|e| match e.downcast_ref::<reprise_synth::SynthError>() {
        Some(reprise_synth::SynthError::Setting { setting, message }) => {
            anyhow::anyhow!("--{setting} {message}")
        }
        _ => e,
    })
}

fn run_command(command: SynthCommand) -> Result<ExitCode> {
    match command {
        SynthCommand::Fit(a) => {
            let (rows, block_tokens) = load(&a.trace)?;
            let m = model::fit(
                &rows,
                &FitOptions {
                    window_s: a.rate_window,
                    block_tokens,
                    seed: a.seed,
                    smoothing: a.smoothing.clamp(0.0, 0.5),
                    parametric_sizes: matches!(a.sizes, SizesArg::Parametric),
                },
            )
            .with_context(|| a.trace.display().to_string())?;
            save_model(&m, &a.out)?;
            let arr = &m.arrivals;
            let conversations = m.sessions.as_ref().is_some_and(|c| !c.turns.is_empty());
            println!(
                "{} requests over {:.0} s: mean rate {:.3} req/s{}, gap CV {:.2}{}",
                m.source.rows,
                m.source.span_s,
                arr.mean_rate,
                if conversations {
                    " of openers (first turns and requests without a session)"
                } else {
                    ""
                },
                arr.cv,
                arr.quantum_s
                    .map(|q| format!(", timestamps quantized to {q} s (spread before fitting)"))
                    .unwrap_or_default()
            );
            println!("law of rate-normalized gaps (by AIC):");
            for c in &arr.candidates {
                println!(
                    "  {:<12} AIC {:>14.1}  KS {:.4}  CV {:.3}",
                    c.fit.name(),
                    c.aic,
                    c.ks,
                    c.fit.cv()
                );
            }
            for (w, idc) in &arr.idc {
                if let Some(v) = idc {
                    println!("  index of dispersion @{w:.0} s: {v:.2}");
                }
            }
            if let Some(c) = m.sessions.as_ref().filter(|c| !c.turns.is_empty()) {
                let q = |v: &[f64], i: usize| {
                    v.get(i)
                        .map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"))
                };
                println!(
                    "sessions: {:.0}% of requests, {:.2} turns per session (at most {}), think time p50 {} s, p90 {} s, {} new tokens a later turn (p50)",
                    c.with_session * 100.0,
                    c.requests_per_session,
                    c.turns.last().map_or(0, |t| t.0),
                    q(&c.think_s, 50),
                    q(&c.think_s, 90),
                    q(&c.growth, 50)
                );
            }
            println!("model written to {}", a.out.display());
            Ok(ExitCode::SUCCESS)
        }
        SynthCommand::Gen(a) => {
            let m = load_model(&a.model)?;
            let opts = GenOptions {
                duration_s: a.duration,
                seed: a.seed,
                scale: a.scale,
                mode: match a.mode {
                    ModeArg::Superpose => Mode::Superpose,
                    ModeArg::Compress => Mode::Compress,
                    ModeArg::Thin => Mode::Thin,
                    ModeArg::Model => Mode::Model,
                },
                rate: a.rate,
                cv: a.cv,
                length_scale: a.length_scale,
                prefix_share: a.prefix_share,
                window: a.window.as_deref().map(window).transpose()?,
            };
            let s = reprise_synth::generate_to(&m, &opts, &a.out)?;
            println!(
                "{} requests over {:.0} s ({:.3} req/s, load x{:.3}) written to {}",
                s.requests,
                s.duration_s,
                s.requests as f64 / s.duration_s,
                s.scale,
                a.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        SynthCommand::Check(a) => {
            let (source, _) = load(&a.source)?;
            let (generated, _) = load(&a.generated)?;
            let report = check::check_mode(
                &source,
                &generated,
                a.scale,
                matches!(a.mode, ModeArg::Compress),
            );
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check::render(&report));
            }
            Ok(if report.pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        SynthCommand::Plain(a) => {
            let m = plain_model(
                a.rate,
                a.cv,
                lengths(&a.input, "--input")?,
                lengths(&a.output, "--output")?,
                a.seed,
            )?;
            let opts = GenOptions {
                duration_s: Some(a.duration),
                seed: a.seed,
                ..GenOptions::default()
            };
            let s = reprise_synth::generate_to(&m, &opts, &a.out)?;
            println!(
                "{} requests over {:.0} s written to {}",
                s.requests,
                s.duration_s,
                a.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
