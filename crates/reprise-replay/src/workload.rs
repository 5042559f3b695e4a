//! Workloads: what to send and when. Open-loop plans are computed up front as absolute
//! offsets from the start; closed-loop users and concurrency ramps are driven by completions.

use std::path::Path;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp, Gamma};
use reprise_trace::writer::META_BLOCK_TOKENS;
use reprise_trace::{DatasetReader, Timestamp, TraceRecord};

use crate::ReplayError;

/// One request of an open-loop plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// When to send it, from the run's start (already divided by the speed).
    pub offset: Duration,
    /// Phase label: `measure`, or a step label such as `rate=20`.
    pub phase: String,
    /// The step's rate or concurrency.
    pub step_value: Option<f64>,
    /// The source request.
    pub request: TraceRecord,
}

/// Which part of a trace to replay, and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceWindow {
    /// Time compression: offsets are divided by it.
    pub speed: f64,
    /// Skip the trace's first seconds (trace time).
    pub start: Option<Duration>,
    /// Keep this much trace time after `start`.
    pub duration: Option<Duration>,
    /// At most this many requests.
    pub limit: Option<u64>,
    /// Prompt and output lengths multiplied by this (rounded, at least 1 token), for a
    /// server smaller than the trace's; prefix blocks past a shortened prompt are dropped.
    pub length_scale: f64,
}

impl Default for TraceWindow {
    fn default() -> Self {
        TraceWindow {
            speed: 1.0,
            start: None,
            duration: None,
            limit: None,
            length_scale: 1.0,
        }
    }
}

/// A trace read for replay: its requests (sorted by arrival) and block size.
#[derive(Debug, Clone)]
pub struct LoadedTrace {
    /// Requests in arrival order.
    pub requests: Vec<TraceRecord>,
    /// `reprise.block_tokens`, when the trace has prefix hashes.
    pub block_tokens: Option<usize>,
}

/// Reads a trace/1 dataset and sorts it by arrival (out-of-order input is allowed).
pub fn load_trace(path: &Path) -> Result<LoadedTrace, ReplayError> {
    let reader = DatasetReader::<TraceRecord>::open(path)?;
    let block_tokens = reader
        .metadata()
        .get(META_BLOCK_TOKENS)
        .and_then(|v| v.parse().ok());
    let mut requests = reader.read_all()?;
    requests.sort_by_key(|r| r.arrival);
    Ok(LoadedTrace {
        requests,
        block_tokens,
    })
}

/// The open-loop plan of a trace window: offsets from the window's first request / speed.
pub fn trace_plan(trace: &LoadedTrace, window: &TraceWindow) -> Result<Vec<Planned>, ReplayError> {
    if !(window.speed.is_finite() && window.speed > 0.0) {
        return Err(ReplayError::Config("--speed must be positive".into()));
    }
    let scale = window.length_scale;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(ReplayError::Config(
            "--length-scale must be positive".into(),
        ));
    }
    let scaled = |n: Option<u32>| n.map(|n| ((f64::from(n) * scale).round() as u32).max(1));
    let Some(first) = trace.requests.first() else {
        return Ok(Vec::new());
    };
    let from = first.arrival.0 + window.start.map_or(0, |d| d.as_nanos() as i64);
    let until = window.duration.map(|d| from + d.as_nanos() as i64);
    let mut plan = Vec::new();
    for r in &trace.requests {
        if r.arrival.0 < from {
            continue;
        }
        if until.is_some_and(|u| r.arrival.0 >= u) {
            break;
        }
        if window.limit.is_some_and(|l| plan.len() as u64 >= l) {
            break;
        }
        let offset_ns = ((r.arrival.0 - from) as f64 / window.speed).round() as u64;
        let mut request = r.clone();
        if scale != 1.0 {
            request.input_tokens = scaled(r.input_tokens);
            request.output_tokens = scaled(r.output_tokens);
            request.max_tokens = scaled(r.max_tokens);
        }
        plan.push(Planned {
            offset: Duration::from_nanos(offset_ns),
            phase: "measure".into(),
            step_value: None,
            request,
        });
    }
    Ok(plan)
}

/// How inter-arrival gaps are drawn at a given rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Process {
    /// Evenly spaced.
    Fixed,
    /// Exponential gaps (a Poisson process).
    Poisson,
    /// Gamma gaps with this coefficient of variation (vLLM's `--burstiness` is 1/cv²):
    /// cv > 1 is burstier than Poisson, cv < 1 more regular.
    Gamma {
        /// Coefficient of variation of the gaps.
        cv: f64,
    },
}

/// Request sizes for synthetic load.
#[derive(Debug, Clone)]
pub enum Sizes {
    /// Every request the same.
    Fixed {
        /// Prompt tokens.
        input: u32,
        /// Output tokens.
        output: u32,
    },
    /// Cycle through (input, output) pairs taken from a trace, in order.
    FromTrace(Vec<(u32, u32)>),
}

impl Sizes {
    /// Sizes of the `i`-th synthetic request.
    pub fn get(&self, i: u64) -> (u32, u32) {
        match self {
            Sizes::Fixed { input, output } => (*input, *output),
            Sizes::FromTrace(v) if !v.is_empty() => v[(i % v.len() as u64) as usize],
            Sizes::FromTrace(_) => (128, 128),
        }
    }

    /// The sizes of a trace's requests (rows without both sizes are skipped).
    pub fn from_trace(trace: &LoadedTrace) -> Sizes {
        Sizes::FromTrace(
            trace
                .requests
                .iter()
                .filter_map(|r| Some((r.input_tokens?, r.output_tokens.or(r.max_tokens)?)))
                .collect(),
        )
    }
}

/// A synthetic request numbered `i`.
pub fn synthetic_request(i: u64, sizes: &Sizes) -> TraceRecord {
    let (input, output) = sizes.get(i);
    let mut r = TraceRecord::new(format!("syn-{i:08}"), Timestamp(0));
    r.input_tokens = Some(input);
    r.output_tokens = Some(output);
    r.input_tokens_source = "synthetic".into();
    r
}

/// One step of a rate ramp (or the single step of a constant-rate run).
#[derive(Debug, Clone, PartialEq)]
pub struct RateStep {
    /// Requests per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
    /// Phase label.
    pub label: String,
}

/// The open-loop plan of synthetic load: rate steps back to back.
pub fn rate_plan(
    steps: &[RateStep],
    process: Process,
    sizes: &Sizes,
    seed: u64,
) -> Result<Vec<Planned>, ReplayError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plan = Vec::new();
    let mut step_start = 0.0f64;
    let mut i = 0u64;
    for step in steps {
        if !(step.rate.is_finite() && step.rate > 0.0) {
            return Err(ReplayError::Config(format!(
                "rate must be positive, got {}",
                step.rate
            )));
        }
        let end = step_start + step.duration.as_secs_f64();
        let mut offsets = Vec::new();
        match process {
            Process::Fixed => {
                // Evenly spaced from the step's start, computed (not accumulated) to stay exact.
                let mut k = 0u64;
                loop {
                    let t = step_start + k as f64 / step.rate;
                    if t >= end - 1e-9 {
                        break;
                    }
                    offsets.push(t);
                    k += 1;
                }
            }
            Process::Poisson | Process::Gamma { .. } => {
                let mut t = step_start;
                loop {
                    let gap = match process {
                        Process::Gamma { cv } => {
                            if !(cv.is_finite() && cv > 0.0) {
                                return Err(ReplayError::Config("--cv must be positive".into()));
                            }
                            let shape = 1.0 / (cv * cv);
                            Gamma::new(shape, 1.0 / (step.rate * shape))
                                .map_err(|e| ReplayError::Config(e.to_string()))?
                                .sample(&mut rng)
                        }
                        _ => Exp::new(step.rate)
                            .map_err(|e| ReplayError::Config(e.to_string()))?
                            .sample(&mut rng),
                    };
                    t += gap;
                    if t >= end {
                        break;
                    }
                    offsets.push(t);
                }
            }
        }
        for t in offsets {
            plan.push(Planned {
                offset: Duration::from_secs_f64(t),
                phase: step.label.clone(),
                step_value: Some(step.rate),
                request: synthetic_request(i, sizes),
            });
            i += 1;
        }
        step_start = end;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(arrivals_s: &[f64]) -> LoadedTrace {
        let mut requests: Vec<_> = arrivals_s
            .iter()
            .enumerate()
            .map(|(i, &t)| TraceRecord::new(format!("{i}"), Timestamp::from_secs_f64(1000.0 + t)))
            .collect();
        requests.sort_by_key(|r| r.arrival);
        LoadedTrace {
            requests,
            block_tokens: None,
        }
    }

    #[test]
    fn trace_offsets_are_absolute_and_scaled() {
        let t = trace(&[3.0, 0.0, 1.0, 2.5]);
        let plan = trace_plan(
            &t,
            &TraceWindow {
                speed: 2.0,
                ..Default::default()
            },
        )
        .unwrap();
        let offs: Vec<f64> = plan.iter().map(|p| p.offset.as_secs_f64()).collect();
        assert_eq!(offs, [0.0, 0.5, 1.25, 1.5]);
        let w = TraceWindow {
            start: Some(Duration::from_secs(1)),
            duration: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let ids: Vec<_> = trace_plan(&t, &w)
            .unwrap()
            .into_iter()
            .map(|p| p.request.request_id)
            .collect();
        assert_eq!(ids, ["2", "3"]);
        let w = TraceWindow {
            limit: Some(1),
            ..Default::default()
        };
        assert_eq!(trace_plan(&t, &w).unwrap().len(), 1);
    }

    #[test]
    fn length_scale_shrinks_sizes_to_at_least_one_token() {
        let mut t = trace(&[0.0, 1.0]);
        t.requests[0].input_tokens = Some(1234);
        t.requests[0].output_tokens = Some(4);
        t.requests[1].input_tokens = Some(3);
        let w = TraceWindow {
            length_scale: 0.1,
            ..Default::default()
        };
        let sizes: Vec<_> = trace_plan(&t, &w)
            .unwrap()
            .into_iter()
            .map(|p| (p.request.input_tokens, p.request.output_tokens))
            .collect();
        assert_eq!(sizes, [(Some(123), Some(1)), (Some(1), None)]);
        let w = TraceWindow {
            length_scale: 0.0,
            ..Default::default()
        };
        assert!(trace_plan(&t, &w).is_err());
    }

    fn cv_of(plan: &[Planned]) -> f64 {
        let secs: Vec<f64> = plan.iter().map(|p| p.offset.as_secs_f64()).collect();
        reprise_trace::stats::interarrival_cv(&secs).expect("gaps")
    }

    #[test]
    fn poisson_plans_have_the_rate_and_cv_of_poisson() {
        let steps = [RateStep {
            rate: 200.0,
            duration: Duration::from_secs(50),
            label: "measure".into(),
        }];
        let plan = rate_plan(
            &steps,
            Process::Poisson,
            &Sizes::Fixed {
                input: 1,
                output: 1,
            },
            7,
        )
        .unwrap();
        let n = plan.len() as f64;
        assert!((n / 50.0 - 200.0).abs() < 6.0, "rate {}", n / 50.0);
        let cv = cv_of(&plan);
        assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
        let bursty = rate_plan(
            &steps,
            Process::Gamma { cv: 3.0 },
            &Sizes::Fixed {
                input: 1,
                output: 1,
            },
            7,
        )
        .unwrap();
        let cv = cv_of(&bursty);
        assert!((cv - 3.0).abs() < 0.4, "cv {cv}");
    }

    #[test]
    fn ramps_label_each_step() {
        let steps: Vec<RateStep> = [10.0, 20.0]
            .iter()
            .map(|&r| RateStep {
                rate: r,
                duration: Duration::from_secs(1),
                label: format!("rate={r}"),
            })
            .collect();
        let plan = rate_plan(
            &steps,
            Process::Fixed,
            &Sizes::Fixed {
                input: 5,
                output: 6,
            },
            0,
        )
        .unwrap();
        assert_eq!(plan.iter().filter(|p| p.phase == "rate=10").count(), 10);
        assert_eq!(plan.iter().filter(|p| p.phase == "rate=20").count(), 20);
        assert_eq!(plan[10].offset, Duration::from_secs(1));
        assert_eq!(plan[0].request.input_tokens, Some(5));
    }
}
