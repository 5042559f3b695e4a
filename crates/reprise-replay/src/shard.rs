//! One load split over N load generators, deterministically and offline: [`Shard`] K of N
//! keeps its part of the plan that every worker deals alike ([`Pacing::shard`]).
//!
//! - Open loop (a trace window, rates, rate ramps): request i of the plan goes to shard
//!   i mod N, except a session's turns, which go by a hash of the session id so that a
//!   conversation never splits. Every shard deals the same plan (rates are drawn from the
//!   same seed), so the shards are disjoint, their union is the unsharded plan, and each
//!   request keeps its scheduled offset: the superposition is the asked process exactly,
//!   whatever it is (Poisson, fixed, gamma).
//! - Closed loop: the users of each step are split evenly (the first `users mod N` shards
//!   take one more); a step's request count likewise.

use std::fmt;

use crate::workload::{OpenPlan, Planned};
use crate::{Pacing, ReplayError};

/// Shard `index` of `count` (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u32,
    /// Shards in all.
    pub count: u32,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The whole load.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`, checked.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 {
            return Err("the number of shards must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard {index}/{count}: shards are numbered 0 to {} (K/N with K < N)",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// Parses `K/N`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (k, n) = text
            .split_once('/')
            .ok_or_else(|| format!("shard `{text}`: expected K/N, e.g. 0/3"))?;
        let num = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("shard `{text}`: `{s}` is not a number"))
        };
        Shard::new(num(k)?, num(n)?)
    }

    /// Whether this shard owns plan entry `i` (its session, if any, decides).
    fn owns(&self, i: usize, p: &Planned) -> bool {
        let n = u64::from(self.count);
        let owner = match p.request.session_id.as_deref() {
            // FNV-1a: every worker computes it alike, on any platform and build.
            Some(s) => crate::prompt::fnv(s) % n,
            None => i as u64 % n,
        };
        owner == u64::from(self.index)
    }

    /// This shard's part of `total` (users or requests): an even split, the first
    /// `total mod N` shards taking one more.
    pub fn part_of(&self, total: u64) -> u64 {
        let n = u64::from(self.count);
        total / n + u64::from(u64::from(self.index) < total % n)
    }
}

impl Pacing {
    /// This shard's part of the pacing (see the module's documentation). A closed-loop
    /// step with fewer users than shards cannot be split: an error naming it.
    pub fn shard(self, shard: Shard) -> Result<Pacing, ReplayError> {
        if shard == Shard::WHOLE {
            return Ok(self);
        }
        Ok(match self {
            Pacing::Open(OpenPlan::Listed(v)) => Pacing::Open(OpenPlan::Listed(
                v.into_iter()
                    .enumerate()
                    .filter(|(i, p)| shard.owns(*i, p))
                    .map(|(_, p)| p)
                    .collect(),
            )),
            Pacing::Open(OpenPlan::Rates(p)) => {
                Pacing::Open(OpenPlan::Rates(p.share(shard.index, shard.count)))
            }
            Pacing::Closed {
                users,
                step_duration,
                requests_per_step,
                think,
                requests,
            } => {
                if let Some(u) = users.iter().find(|&&u| (u as u64) < u64::from(shard.count)) {
                    return Err(ReplayError::Config(format!(
                        "{u} users cannot be split over {} shards: give each shard at least one",
                        shard.count
                    )));
                }
                Pacing::Closed {
                    users: users
                        .iter()
                        .map(|&u| shard.part_of(u as u64) as usize)
                        .collect(),
                    step_duration,
                    requests_per_step: requests_per_step.map(|r| shard.part_of(r).max(1)),
                    think,
                    requests,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{
        LoadedTrace, Process, RatePlan, RateStep, Sizes, TraceWindow, trace_plan,
    };
    use proptest::prelude::*;
    use reprise_trace::{Timestamp, TraceRecord};
    use std::time::Duration;

    #[test]
    fn shards_parse_and_refuse_what_cannot_be() {
        assert_eq!(Shard::parse("2/3"), Ok(Shard { index: 2, count: 3 }));
        assert_eq!(
            Shard::parse("3/3").unwrap_err(),
            "shard 3/3: shards are numbered 0 to 2 (K/N with K < N)"
        );
        assert!(Shard::parse("1/0").unwrap_err().contains("at least 1"));
        assert!(
            Shard::parse("x/2")
                .unwrap_err()
                .contains("`x` is not a number")
        );
        assert!(Shard::parse("2").unwrap_err().contains("expected K/N"));
        let parts: Vec<u64> = (0..3)
            .map(|k| Shard::new(k, 3).unwrap().part_of(10))
            .collect();
        assert_eq!(parts, [4, 3, 3]);
    }

    fn listed(p: Pacing) -> Vec<Planned> {
        match p {
            Pacing::Open(OpenPlan::Listed(v)) => v,
            Pacing::Open(OpenPlan::Rates(r)) => r.shared_iter().collect(),
            Pacing::Closed { .. } => panic!("open"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Shards are disjoint, their union is the unsharded plan with identical scheduled
        /// offsets, and a session's turns stay on one shard.
        #[test]
        fn shards_partition_a_trace_plan(
            rows in proptest::collection::vec((0u32..100_000, proptest::option::of(0u8..6)), 1..80),
            n in 1u32..6,
            closed in any::<bool>(),
        ) {
            let mut requests: Vec<TraceRecord> = rows
                .iter()
                .enumerate()
                .map(|(i, &(ms, s))| {
                    let mut r = TraceRecord::new(format!("r{i}"), Timestamp(i64::from(ms) * 1_000_000));
                    r.session_id = s.map(|s| format!("s{s}"));
                    r
                })
                .collect();
            requests.sort_by_key(|r| r.arrival);
            reprise_trace::sessions::derive(&mut requests);
            let trace = LoadedTrace { requests, block_tokens: None };
            let window = TraceWindow {
                sessions: Some(if closed {
                    crate::workload::SessionMode::Closed
                } else {
                    crate::workload::SessionMode::Open
                }),
                ..TraceWindow::default()
            };
            let whole = trace_plan(&trace, &window).unwrap();
            let flat = |v: &[Planned]| -> Vec<(String, Duration)> {
                let mut out: Vec<_> = v
                    .iter()
                    .flat_map(Planned::turns)
                    .map(|p| (p.request.request_id.clone(), p.offset))
                    .collect();
                out.sort();
                out
            };
            let mut union = Vec::new();
            let mut session_owner = std::collections::HashMap::new();
            for k in 0..n {
                let part = listed(Pacing::Open(whole.clone().into()).shard(Shard::new(k, n).unwrap()).unwrap());
                for p in part.iter().flat_map(Planned::turns) {
                    if let Some(s) = &p.request.session_id {
                        prop_assert_eq!(*session_owner.entry(s.clone()).or_insert(k), k);
                    }
                }
                union.extend(flat(&part));
            }
            union.sort();
            let before = union.len();
            union.dedup();
            prop_assert_eq!(before, union.len(), "disjoint");
            prop_assert_eq!(union, flat(&whole));
        }
    }

    #[test]
    fn rate_shards_interleave_the_one_sequence() {
        for process in [Process::Poisson, Process::Fixed, Process::Gamma { cv: 2.0 }] {
            let plan = RatePlan::new(
                vec![RateStep {
                    rate: 300.0,
                    duration: Duration::from_secs(20),
                    label: "measure".into(),
                }],
                process,
                Sizes::Fixed {
                    input: 1,
                    output: 1,
                },
                9,
            )
            .unwrap();
            let whole: Vec<Duration> = plan.iter().map(|p| p.offset).collect();
            let mut union = Vec::new();
            for k in 0..3 {
                let part = listed(
                    Pacing::Open(plan.clone().into())
                        .shard(Shard::new(k, 3).unwrap())
                        .unwrap(),
                );
                let expected = Pacing::Open(plan.clone().into())
                    .shard(Shard::new(k, 3).unwrap())
                    .unwrap();
                if let Pacing::Open(p) = expected {
                    assert_eq!(p.expected_len(), Shard::new(k, 3).unwrap().part_of(6000));
                }
                union.extend(part.into_iter().map(|p| p.offset));
            }
            union.sort();
            assert_eq!(union, whole, "{process:?}");
        }
    }

    #[test]
    fn the_superposition_of_poisson_shards_is_poisson_at_the_full_rate() {
        let plan = RatePlan::new(
            vec![RateStep {
                rate: 200.0,
                duration: Duration::from_secs(300),
                label: "measure".into(),
            }],
            Process::Poisson,
            Sizes::Fixed {
                input: 1,
                output: 1,
            },
            4,
        )
        .unwrap();
        let mut secs: Vec<f64> = (0..4)
            .flat_map(|k| {
                listed(
                    Pacing::Open(plan.clone().into())
                        .shard(Shard::new(k, 4).unwrap())
                        .unwrap(),
                )
            })
            .map(|p| p.offset.as_secs_f64())
            .collect();
        secs.sort_by(f64::total_cmp);
        let rate = secs.len() as f64 / 300.0;
        assert!((rate - 200.0).abs() < 6.0, "{rate}");
        let cv = reprise_trace::stats::interarrival_cv(&secs).unwrap();
        assert!((cv - 1.0).abs() < 0.05, "{cv}");
        let idc = reprise_trace::stats::index_of_dispersion(&secs, 1.0).unwrap();
        assert!((idc - 1.0).abs() < 0.3, "{idc}");
    }

    #[test]
    fn closed_loop_users_split_evenly_and_too_few_are_refused() {
        let closed = |users: Vec<usize>| Pacing::Closed {
            users,
            step_duration: Some(Duration::from_secs(1)),
            requests_per_step: Some(10),
            think: Duration::ZERO,
            requests: Vec::new(),
        };
        let parts: Vec<(Vec<usize>, Option<u64>)> = (0..3)
            .map(
                |k| match closed(vec![8, 3]).shard(Shard::new(k, 3).unwrap()).unwrap() {
                    Pacing::Closed {
                        users,
                        requests_per_step,
                        ..
                    } => (users, requests_per_step),
                    Pacing::Open(_) => panic!("closed"),
                },
            )
            .collect();
        assert_eq!(
            parts,
            [
                (vec![3, 1], Some(4)),
                (vec![3, 1], Some(3)),
                (vec![2, 1], Some(3))
            ]
        );
        let e = closed(vec![2])
            .shard(Shard::new(0, 3).unwrap())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "2 users cannot be split over 3 shards: give each shard at least one"
        );
    }
}
