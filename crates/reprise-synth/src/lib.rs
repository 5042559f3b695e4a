//! # reprise-synth — fit production traces, generate rescaled workloads, check fidelity
//!
//! - [`model::fit`]: a [`model::WorkloadModel`] (versioned JSON) of a trace/1 dataset: the
//!   arrival process (rate per window, the maximum-likelihood law of the rate-normalized gaps
//!   among exponential, gamma, Weibull and lognormal by AIC with KS distances, burstiness as
//!   CV and index of dispersion; quantized timestamps detected and spread), the joint
//!   (input, output) lengths per model, prefix sharing and sessions. [`dist`] holds the laws
//!   and their fits.
//! - [`bursts`]: the arrival processes — renewal, or, when the trace holds clusters a
//!   renewal process cannot, bursts copied from the trace (at Poisson starts or alternating
//!   with silences) or a Hawkes process — chosen on held-back parts of the trace.
//! - [`generator::generate`]: a workload from a model at any load — `superpose` (more users),
//!   `compress` (the same users faster), `thin`, `model` (the rate profile scaled) — with
//!   what-if overrides (rate, burstiness, lengths, prefix sharing, a time window).
//! - [`check::check`]: the fidelity report of a generated workload against its source.
//! - [`plain_model`]: a model from parameters alone, for users without production data.

pub mod bursts;
pub mod check;
pub mod dist;
pub mod generator;
pub mod model;

use std::path::Path;

use rand::SeedableRng;
use rand_distr::Distribution;
use reprise_trace::writer::{META_BLOCK_TOKENS, META_SOURCE};
use reprise_trace::{DatasetReader, DatasetWriter, Output, TraceRecord, WriterOptions};

use crate::dist::Law;
use crate::generator::{GenOptions, GenSummary};
use crate::model::{Arrivals, SizeGroup, SizeModel, Source, WorkloadModel};

/// Errors of fitting, generating and checking.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The trace cannot be fitted (too few requests, all at one instant, ...).
    #[error("cannot fit: {0}")]
    Degenerate(String),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
    /// A named setting has an unusable value. `setting` is the option's name as the
    /// binaries spell their flags (`scale`, `length-scale`), so that they can name the flag.
    #[error("{setting} {message}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// Reading or writing a trace.
    #[error("{0}")]
    Trace(#[from] reprise_trace::TraceError),
    /// Reading or writing a model file.
    #[error("{path}: {message}")]
    Model {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Writing the output.
    #[error("writing the workload: {0}")]
    Output(String),
}

/// Reads a trace/1 dataset in arrival order, with its `reprise.block_tokens`.
pub fn load(path: &Path) -> Result<(Vec<TraceRecord>, Option<usize>), SynthError> {
    let reader = DatasetReader::<TraceRecord>::open(path)?;
    let block = reader
        .metadata()
        .get(META_BLOCK_TOKENS)
        .and_then(|v| v.parse().ok());
    let mut rows = reader.read_all()?;
    rows.sort_by_key(|r| r.arrival.0);
    Ok((rows, block))
}

/// Writes a model as pretty JSON.
pub fn save_model(model: &WorkloadModel, path: &Path) -> Result<(), SynthError> {
    let fail = |message: String| SynthError::Model {
        path: path.display().to_string(),
        message,
    };
    let text = serde_json::to_string_pretty(model).map_err(|e| fail(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| fail(e.to_string()))
}

/// Reads a model file, checking its format.
pub fn load_model(path: &Path) -> Result<WorkloadModel, SynthError> {
    let fail = |message: String| SynthError::Model {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let format = serde_json::from_slice::<serde_json::Value>(&text)
        .map_err(|e| fail(format!("not JSON: {e}")))?
        .get("format")
        .and_then(|f| f.as_str().map(str::to_owned));
    if !format
        .as_deref()
        .is_some_and(|f| model::MODEL_FORMATS_READ.contains(&f))
    {
        return Err(fail(format!(
            "not a {} model (format {:?})",
            model::MODEL_FORMATS_READ.join(" or "),
            format
        )));
    }
    let m: WorkloadModel =
        serde_json::from_slice(&text).map_err(|e| fail(format!("bad model: {e}")))?;
    if m.sizes.groups.iter().any(|g| g.pairs.is_empty()) || m.sizes.groups.is_empty() {
        return Err(fail("the model has no sizes".into()));
    }
    Ok(m)
}

/// Generates a workload into a trace/1 file or part directory; the options go into the
/// output's metadata.
pub fn generate_to(
    model: &WorkloadModel,
    opts: &GenOptions,
    out: &Path,
) -> Result<GenSummary, SynthError> {
    let mut options = WriterOptions::default()
        .with_meta(META_SOURCE, "synth")
        .with_meta(
            "reprise.synth.mode",
            format!("{:?}", opts.mode).to_lowercase(),
        )
        .with_meta("reprise.synth.scale", opts.scale.to_string())
        .with_meta("reprise.synth.seed", opts.seed.to_string())
        .with_meta("reprise.synth.length_scale", opts.length_scale.to_string());
    for (k, v) in [
        ("rate", opts.rate.map(|v| v.to_string())),
        ("cv", opts.cv.map(|v| v.to_string())),
        ("prefix_share", opts.prefix_share.map(|v| v.to_string())),
        ("duration_s", opts.duration_s.map(|v| v.to_string())),
        ("window", opts.window.map(|(a, b)| format!("{a}..{b}"))),
    ] {
        if let Some(v) = v {
            options = options.with_meta(format!("reprise.synth.{k}"), v);
        }
    }
    if let Some(p) = &model.prefixes {
        options = options.with_meta(META_BLOCK_TOKENS, p.block_tokens.to_string());
    }
    let mut writer = DatasetWriter::<TraceRecord>::create(Output::from_path(out), options)?;
    // Drawing and writing run on two threads, rows handed over in batches; the writer hands
    // each batch back, so the rows are freed (and the buffers reused) on the drawing side.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<TraceRecord>>(8);
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<Vec<TraceRecord>>(16);
    let writer_thread = std::thread::spawn(move || {
        for batch in rx {
            for r in &batch {
                if let Err(e) = writer.write(r) {
                    return (writer, Some(e));
                }
            }
            let _ = back_tx.try_send(batch);
        }
        (writer, None)
    });
    let mut batch = Vec::with_capacity(4096);
    let result = generator::generate(model, opts, |r| {
        batch.push(r);
        if batch.len() == 4096 {
            let mut next = back_rx
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(4096));
            next.clear();
            tx.send(std::mem::replace(&mut batch, next))
                .map_err(|_| "the writer stopped".to_owned())?;
        }
        Ok::<_, String>(())
    });
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    drop(tx);
    let written = writer_thread
        .join()
        .map_err(|_| SynthError::Output("the writer thread panicked".into()))?;
    match (result, written) {
        (Ok(summary), (writer, None)) => {
            writer.close()?;
            Ok(summary)
        }
        (_, (writer, Some(e))) => {
            writer.abort();
            Err(e.into())
        }
        (Err(e), (writer, None)) => {
            writer.abort();
            Err(e)
        }
    }
}

/// A length law for [`plain_model`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lengths {
    /// Always this many tokens.
    Fixed(u32),
    /// Lognormal with this mean and coefficient of variation.
    Lognormal {
        /// Mean tokens.
        mean: f64,
        /// Coefficient of variation.
        cv: f64,
    },
}

impl Lengths {
    fn sample(&self, rng: &mut rand::rngs::StdRng) -> u32 {
        match *self {
            Lengths::Fixed(n) => n.max(1),
            Lengths::Lognormal { mean, cv } => {
                let sigma2 = (1.0 + cv * cv).ln();
                let mu = mean.ln() - sigma2 / 2.0;
                rand_distr::LogNormal::new(mu, sigma2.sqrt())
                    .map_or(mean, |d| d.sample(rng))
                    .round()
                    .max(1.0) as u32
            }
        }
    }
}

/// A model from parameters alone: a constant `rate` with gaps of the given CV (1 = Poisson,
/// else gamma), independent input and output lengths, over `span_s`.
pub fn plain_model(
    rate: f64,
    cv: f64,
    input: Lengths,
    output: Lengths,
    seed: u64,
) -> Result<WorkloadModel, SynthError> {
    if !(rate.is_finite() && rate > 0.0 && cv.is_finite() && cv > 0.0) {
        return Err(SynthError::Setting {
            setting: if rate.is_finite() && rate > 0.0 {
                "cv"
            } else {
                "rate"
            },
            message: format!("must be positive (rate {rate}, cv {cv})"),
        });
    }
    let law = if (cv - 1.0).abs() < 1e-12 {
        Law::Exponential { mean: 1.0 }
    } else {
        Law::Gamma {
            k: 1.0 / (cv * cv),
            theta: cv * cv,
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pairs = (0..50_000)
        .map(|_| [input.sample(&mut rng), output.sample(&mut rng)])
        .collect();
    Ok(WorkloadModel {
        format: model::MODEL_FORMAT.to_owned(),
        source: Source {
            rows: 0,
            span_s: 3600.0,
            start_ns: 0,
        },
        arrivals: Arrivals {
            mean_rate: rate,
            quantum_s: None,
            window_s: 3600.0,
            rates: vec![rate],
            law,
            candidates: Vec::new(),
            cv,
            idc: Vec::new(),
            daily: None,
            clusters: None,
            hawkes: None,
            selection: None,
        },
        sizes: SizeModel {
            groups: vec![SizeGroup {
                model: String::new(),
                endpoint: reprise_trace::formats::DEFAULT_ENDPOINT.to_owned(),
                weight: 1.0,
                lognormal: None,
                pairs,
            }],
            smoothing: 0.0,
            parametric: false,
        },
        prefixes: None,
        sessions: None,
    })
}
