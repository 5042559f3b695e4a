//! The load a replay applies, typed: [`Load`] (a trace window, a rate, a rate ramp, closed
//! loop users or a concurrency ramp), the named [`Scenario`] presets over it, and
//! [`Load::pacing`], which turns it into the executor's [`Pacing`] once.
//!
//! To add a load mode: a variant here, its arm in [`Load::pacing`] (an open-loop plan of
//! offsets, or closed-loop users), and its flags in the binary's `cmd/replay.rs`; the
//! executor needs no change unless the mode is neither open nor closed.

use std::path::PathBuf;
use std::time::Duration;

use crate::workload::{
    LoadedTrace, Process, RatePlan, RateStep, Sizes, TraceWindow, synthetic_request, trace_plan,
};
use crate::{Pacing, ReplayError, StopRule};

/// Synthetic requests a closed loop cycles through when no trace gives them.
const CLOSED_LOOP_REQUESTS: u64 = 1024;

/// What to send, and how it is paced.
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    /// Open-loop replay of a trace window at its timestamps / speed.
    Trace(TraceWindow),
    /// Synthetic open-loop load at a rate, for a time, a count, or whichever ends first.
    Rate {
        /// Requests per second.
        rate: f64,
        /// Inter-arrival law.
        process: Process,
        /// Wall-clock length.
        run_for: Option<Duration>,
        /// Exact number of requests.
        requests: Option<u64>,
    },
    /// Open-loop rate steps back to back (`rate=R` phases).
    RateRamp {
        /// Each step's rate.
        rates: Vec<f64>,
        /// Each step's length.
        step: Duration,
        /// Inter-arrival law.
        process: Process,
    },
    /// Closed loop: `users` users, each sending back to back.
    Closed {
        /// Users.
        users: usize,
        /// Wall-clock length.
        run_for: Option<Duration>,
        /// Requests (whichever ends first with `run_for`).
        requests: Option<u64>,
        /// Pause between a response and the user's next request.
        think: Duration,
    },
    /// Closed-loop steps of increasing concurrency (`concurrency=N` phases).
    ClosedRamp {
        /// Users per step.
        users: Vec<usize>,
        /// Each step's length (unless `requests_per_step` is given).
        step: Duration,
        /// Requests per step.
        requests_per_step: Option<u64>,
        /// Pause between a response and the user's next request.
        think: Duration,
    },
}

/// Where request sizes come from: a trace's rows, or fixed synthetic sizes.
#[derive(Debug, Clone)]
pub struct Requests<'a> {
    /// The trace (required for [`Load::Trace`]; else its rows give the sizes).
    pub trace: Option<&'a LoadedTrace>,
    /// The trace's path, for messages.
    pub trace_path: Option<PathBuf>,
    /// Sizes of synthetic requests without a trace: (input, output) tokens.
    pub synthetic: (u32, u32),
    /// Seed of synthetic arrivals.
    pub seed: u64,
}

impl Load {
    /// The executor's pacing for this load, dealt once: an open-loop plan of offsets, or
    /// closed-loop users with the requests they cycle through.
    pub fn pacing(&self, from: &Requests<'_>) -> Result<Pacing, ReplayError> {
        let sizes = match from.trace {
            Some(t) => Sizes::from_trace(t),
            None => Sizes::Fixed {
                input: from.synthetic.0,
                output: from.synthetic.1,
            },
        };
        let closed_requests = || -> Vec<reprise_trace::TraceRecord> {
            match from.trace {
                Some(t) if !t.requests.is_empty() => t.requests.clone(),
                _ => (0..CLOSED_LOOP_REQUESTS)
                    .map(|i| synthetic_request(i, &sizes))
                    .collect(),
            }
        };
        Ok(match self {
            Load::Trace(window) => {
                let trace = from
                    .trace
                    .ok_or_else(|| ReplayError::Config("trace replay needs a trace".into()))?;
                let plan = trace_plan(trace, window)?;
                if plan.is_empty() {
                    return Err(ReplayError::EmptyWindow {
                        path: from.trace_path.clone().unwrap_or_default(),
                    });
                }
                Pacing::Open(plan.into())
            }
            Load::Rate {
                rate,
                process,
                run_for,
                requests,
            } => {
                let plan = match run_for {
                    Some(d) => RatePlan::new(
                        vec![RateStep {
                            rate: *rate,
                            duration: *d,
                            label: "measure".into(),
                        }],
                        *process,
                        sizes,
                        from.seed,
                    )?,
                    None => RatePlan::counted(
                        *rate,
                        requests.ok_or_else(|| {
                            ReplayError::Config("a rate needs a length or a count".into())
                        })?,
                        *process,
                        sizes,
                        from.seed,
                    )?,
                };
                let plan = match (run_for, requests) {
                    (Some(_), Some(n)) => plan.limited(*n)?,
                    _ => plan,
                };
                Pacing::Open(plan.into())
            }
            Load::RateRamp {
                rates,
                step,
                process,
            } => {
                let steps = rates
                    .iter()
                    .map(|&r| RateStep {
                        rate: r,
                        duration: *step,
                        label: format!("rate={r}"),
                    })
                    .collect();
                Pacing::Open(RatePlan::new(steps, *process, sizes, from.seed)?.into())
            }
            Load::Closed {
                users,
                run_for,
                requests,
                think,
            } => Pacing::Closed {
                users: vec![*users],
                step_duration: *run_for,
                requests_per_step: *requests,
                think: *think,
                requests: closed_requests(),
            },
            Load::ClosedRamp {
                users,
                step,
                requests_per_step,
                think,
            } => Pacing::Closed {
                users: users.clone(),
                step_duration: if requests_per_step.is_some() {
                    None
                } else {
                    Some(*step)
                },
                requests_per_step: *requests_per_step,
                think: *think,
                requests: closed_requests(),
            },
        })
    }
}

impl Pacing {
    /// How long the workload is meant to last: the open-loop plan's span, or the closed
    /// loop's steps when they are timed (`None` when only counted).
    pub fn intended_duration(&self) -> Option<Duration> {
        match self {
            Pacing::Open(plan) => Some(plan.intended_duration()),
            Pacing::Closed {
                users,
                step_duration: Some(d),
                ..
            } => Some(*d * users.len() as u32),
            Pacing::Closed { .. } => None,
        }
    }
}

/// Named load-test scenarios: presets over the load's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Single-request performance: closed loop, concurrency 1, 60 s.
    Baseline,
    /// Expected peak: closed loop at the given concurrency (default 100), 300 s.
    Load,
    /// Beyond the limit: concurrency ramp 100, 200, 500, 1000, 2000 (or the given ramp),
    /// stopping once the error rate passes 5% (unless a stop rule is given).
    Stress,
    /// Long run: closed loop at concurrency 50 (or the given one) for 24 h (or the given
    /// length).
    Soak,
}

/// A step ramp as asked for: rates (open loop) or concurrencies (closed loop).
#[derive(Debug, Clone, PartialEq)]
pub struct Ramp {
    /// Closed loop (`concurrency:`) rather than rates (`rate:`).
    pub closed: bool,
    /// The steps' values.
    pub values: Vec<f64>,
}

/// The load knobs a scenario presets; what the user gave wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Knobs {
    /// A step ramp.
    pub ramp: Option<Ramp>,
    /// Closed-loop users.
    pub concurrency: Option<usize>,
    /// Wall-clock length, seconds.
    pub run_for: Option<f64>,
    /// When a ramp stops early.
    pub stop_rule: StopRule,
}

impl Scenario {
    /// The knobs with this scenario's presets filled in where `given` is silent.
    pub fn preset(self, given: Knobs) -> Knobs {
        let mut k = given;
        match self {
            Scenario::Baseline => {
                k.concurrency = Some(1);
                k.run_for = k.run_for.or(Some(60.0));
            }
            Scenario::Load => {
                k.concurrency = k.concurrency.or(Some(100));
                k.run_for = k.run_for.or(Some(300.0));
            }
            Scenario::Stress => {
                k.ramp = k.ramp.or(Some(Ramp {
                    closed: true,
                    values: vec![100.0, 200.0, 500.0, 1000.0, 2000.0],
                }));
                if k.stop_rule.max_error_rate.is_none() && k.stop_rule.max_p99_ttft_ms.is_none() {
                    k.stop_rule.max_error_rate = Some(0.05);
                }
            }
            Scenario::Soak => {
                k.concurrency = k.concurrency.or(Some(50));
                k.run_for = k.run_for.or(Some(86_400.0));
            }
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_trace::{Timestamp, TraceRecord};

    fn trace(arrivals_s: &[f64]) -> LoadedTrace {
        LoadedTrace {
            requests: arrivals_s
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let mut r = TraceRecord::new(format!("r{i}"), Timestamp((s * 1e9) as i64));
                    r.input_tokens = Some(10);
                    r.output_tokens = Some(5);
                    r
                })
                .collect(),
            block_tokens: None,
        }
    }

    fn from(trace: Option<&LoadedTrace>) -> Requests<'_> {
        Requests {
            trace,
            trace_path: Some("t.parquet".into()),
            synthetic: (512, 128),
            seed: 7,
        }
    }

    #[test]
    fn a_trace_window_is_listed_once_and_an_empty_one_is_an_error() {
        let t = trace(&[0.0, 1.0, 2.0]);
        let window = TraceWindow {
            speed: 2.0,
            ..TraceWindow::default()
        };
        let pacing = Load::Trace(window).pacing(&from(Some(&t))).unwrap();
        assert_eq!(pacing.intended_duration(), Some(Duration::from_secs(1)));
        let empty = TraceWindow {
            start: Some(Duration::from_secs(10)),
            ..TraceWindow::default()
        };
        let e = Load::Trace(empty).pacing(&from(Some(&t))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.parquet: no request in the window asked for"
        );
        assert!(
            Load::Trace(TraceWindow::default())
                .pacing(&from(None))
                .is_err()
        );
    }

    #[test]
    fn rates_are_timed_counted_or_both() {
        let load = |run_for: Option<u64>, requests| Load::Rate {
            rate: 10.0,
            process: Process::Fixed,
            run_for: run_for.map(Duration::from_secs),
            requests,
        };
        let timed = load(Some(3), None).pacing(&from(None)).unwrap();
        assert_eq!(timed.intended_duration(), Some(Duration::from_secs(3)));
        let counted = load(None, Some(5)).pacing(&from(None)).unwrap();
        assert_eq!(
            counted.intended_duration(),
            Some(Duration::from_millis(500))
        );
        let both = load(Some(3), Some(5)).pacing(&from(None)).unwrap();
        let Pacing::Open(plan) = both else {
            panic!("a rate is open loop")
        };
        assert_eq!(plan.expected_len(), 5);
        assert!(load(None, None).pacing(&from(None)).is_err());
    }

    #[test]
    fn closed_loops_cycle_the_trace_or_synthetic_requests() {
        let t = trace(&[0.0, 1.0]);
        let closed = Load::Closed {
            users: 4,
            run_for: None,
            requests: Some(10),
            think: Duration::ZERO,
        };
        let Pacing::Closed { requests, .. } = closed.pacing(&from(Some(&t))).unwrap() else {
            panic!("closed")
        };
        assert_eq!(requests.len(), 2);
        let ramp = Load::ClosedRamp {
            users: vec![1, 2],
            step: Duration::from_secs(5),
            requests_per_step: None,
            think: Duration::ZERO,
        };
        let pacing = ramp.pacing(&from(None)).unwrap();
        assert_eq!(pacing.intended_duration(), Some(Duration::from_secs(10)));
        let Pacing::Closed { requests, .. } = pacing else {
            panic!("closed")
        };
        assert_eq!(requests.len(), CLOSED_LOOP_REQUESTS as usize);
        assert_eq!(requests[0].input_tokens, Some(512));
    }

    #[test]
    fn scenarios_preset_what_the_user_left_open() {
        let stress = Scenario::Stress.preset(Knobs::default());
        assert_eq!(stress.ramp.as_ref().map(|r| r.values.len()), Some(5));
        assert_eq!(stress.stop_rule.max_error_rate, Some(0.05));
        let mine = Knobs {
            stop_rule: StopRule {
                max_p99_ttft_ms: Some(100.0),
                ..StopRule::default()
            },
            ..Knobs::default()
        };
        assert_eq!(Scenario::Stress.preset(mine).stop_rule.max_error_rate, None);
        let load = Scenario::Load.preset(Knobs {
            concurrency: Some(7),
            ..Knobs::default()
        });
        assert_eq!((load.concurrency, load.run_for), (Some(7), Some(300.0)));
        // Baseline is one user whatever was given.
        let base = Scenario::Baseline.preset(Knobs {
            concurrency: Some(9),
            ..Knobs::default()
        });
        assert_eq!((base.concurrency, base.run_for), (Some(1), Some(60.0)));
        assert_eq!(
            Scenario::Soak.preset(Knobs::default()).run_for,
            Some(86_400.0)
        );
    }
}
