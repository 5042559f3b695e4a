//! Workloads: what to send and when. Open-loop plans are computed up front as absolute
//! offsets from the start; closed-loop users and concurrency ramps are driven by completions.

use std::path::Path;
use std::sync::Arc;
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
    /// The session's next turn, sent when this one allows (closed-session replay).
    pub then: Option<Box<Chain>>,
}

/// A session's next turn and what it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// When the turn may go, relative to the turn before it.
    pub after: After,
    /// The turn (its `offset` is its recorded arrival / speed, for reference).
    pub next: Planned,
}

/// What a session's turn waits for (closed-session replay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    /// The previous turn's response to end, then this think time (divided by the speed).
    End(Duration),
    /// The previous turn's response to end, and not before its recorded arrival: the think
    /// time is unknown (the trace has no end of the previous turn, or has this turn arrive
    /// before it ended, as an agent's parallel calls do).
    EndOrRecorded,
}

impl After {
    /// When the turn goes, given the previous turn's end and its own recorded instant:
    /// never before that end.
    pub fn deadline(
        self,
        previous_end: std::time::Instant,
        recorded: std::time::Instant,
    ) -> std::time::Instant {
        match self {
            After::End(think) => previous_end + think,
            After::EndOrRecorded => previous_end.max(recorded),
        }
    }
}

impl Planned {
    /// This request and the session turns chained after it.
    pub fn turns(&self) -> impl Iterator<Item = &Planned> {
        std::iter::successors(Some(self), |p| p.then.as_deref().map(|c| &c.next))
    }
}

/// How a trace's sessions are replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// A session's first turn at its recorded time, each next turn after the previous
    /// turn's response has ended plus its think time ([`After`]).
    Closed,
    /// Every turn at its recorded time.
    Open,
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
    /// How sessions are replayed; `None`: closed when the trace has sessions.
    pub sessions: Option<SessionMode>,
}

impl Default for TraceWindow {
    fn default() -> Self {
        TraceWindow {
            speed: 1.0,
            start: None,
            duration: None,
            limit: None,
            length_scale: 1.0,
            sessions: None,
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

/// Reads a trace/1 dataset and sorts it by arrival (out-of-order input is allowed); the
/// turns of sessions are numbered and their think times derived where the file lacks them.
pub fn load_trace(path: &Path) -> Result<LoadedTrace, ReplayError> {
    let reader = DatasetReader::<TraceRecord>::open(path)?;
    let block_tokens = reader
        .metadata()
        .get(META_BLOCK_TOKENS)
        .and_then(|v| v.parse().ok());
    let mut requests = reader.read_all()?;
    requests.sort_by_key(|r| r.arrival);
    reprise_trace::sessions::derive(&mut requests);
    Ok(LoadedTrace {
        requests,
        block_tokens,
    })
}

/// The open-loop plan of a trace window: offsets from the window's first request / speed.
pub fn trace_plan(trace: &LoadedTrace, window: &TraceWindow) -> Result<Vec<Planned>, ReplayError> {
    if !(window.speed.is_finite() && window.speed > 0.0) {
        return Err(ReplayError::Config("the speed must be positive".into()));
    }
    let scale = window.length_scale;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(ReplayError::Config(
            "the length scale must be positive".into(),
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
            then: None,
        });
    }
    let has_sessions = plan.iter().any(|p| p.request.session_id.is_some());
    if has_sessions && window.sessions.unwrap_or(SessionMode::Closed) == SessionMode::Closed {
        plan = chain_sessions(plan, window.speed);
    }
    Ok(plan)
}

/// Closed sessions: each session's turns (in turn order) chained after its first, which
/// keeps its place in the plan; what each turn waits for is [`After`].
fn chain_sessions(plan: Vec<Planned>, speed: f64) -> Vec<Planned> {
    let mut sessions: std::collections::HashMap<String, Vec<Planned>> =
        std::collections::HashMap::new();
    let mut heads: Vec<Planned> = Vec::new();
    for p in plan {
        match p.request.session_id.clone() {
            Some(s) => sessions.entry(s).or_default().push(p),
            None => heads.push(p),
        }
    }
    let scaled = |us: u64| Duration::from_nanos((us as f64 * 1000.0 / speed).round() as u64);
    for (_, mut turns) in sessions {
        turns.sort_by_key(|p| (p.request.turn, p.request.arrival));
        let mut chain: Option<Box<Chain>> = None;
        while let Some(mut turn) = turns.pop() {
            turn.then = chain.take();
            if turns.is_empty() {
                heads.push(turn);
                break;
            }
            let after = match turn.request.think_us {
                Some(think) => After::End(scaled(think)),
                None => After::EndOrRecorded,
            };
            chain = Some(Box::new(Chain { after, next: turn }));
        }
    }
    heads.sort_by_key(|p| p.offset);
    heads
}

/// The conversations of a plan's sessions (chained or not), for prompts that repeat them
/// ([`crate::prompt::Conversations`]); lengths as the requests are sent.
pub fn conversations(plan: &[Planned]) -> crate::prompt::Conversations {
    let mut sessions: std::collections::BTreeMap<&str, Vec<&TraceRecord>> =
        std::collections::BTreeMap::new();
    for p in plan.iter().flat_map(Planned::turns) {
        if let Some(s) = p.request.session_id.as_deref() {
            sessions.entry(s).or_default().push(&p.request);
        }
    }
    let mut out = crate::prompt::Conversations::default();
    for (_, mut turns) in sessions {
        if turns.len() < 2 {
            continue;
        }
        turns.sort_by_key(|r| (r.turn, r.arrival));
        let ids: Vec<String> = turns.iter().map(|r| r.request_id.clone()).collect();
        let lengths = turns
            .iter()
            .map(|r| {
                (
                    r.input_tokens.unwrap_or(16),
                    r.output_tokens.or(r.max_tokens).unwrap_or(128).max(1),
                )
            })
            .collect();
        out.add(
            &ids,
            crate::prompt::Conversation {
                first_id: turns[0].request_id.clone(),
                first_hashes: turns[0].prefix_hashes.clone(),
                turns: lengths,
            },
        );
    }
    out
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

/// The open-loop plan of synthetic load: rate steps back to back, listed.
pub fn rate_plan(
    steps: &[RateStep],
    process: Process,
    sizes: &Sizes,
    seed: u64,
) -> Result<Vec<Planned>, ReplayError> {
    Ok(RatePlan::new(steps.to_vec(), process, sizes.clone(), seed)?
        .iter()
        .collect())
}

/// Synthetic load generated as it is sent: rate steps back to back. However long the run,
/// the plan takes no memory (a day at 1,000 req/s would be 86 million listed requests).
#[derive(Debug, Clone)]
pub struct RatePlan {
    steps: Arc<[RateStep]>,
    process: Process,
    sizes: Arc<Sizes>,
    seed: u64,
    /// At most this many requests (`--requests N` at a rate).
    limit: Option<u64>,
    /// The part of the sequence this plan sends: every `share.1`-th request from the
    /// `share.0`-th ([`crate::shard`]); (0, 1) for all of it.
    share: (u64, u64),
}

impl RatePlan {
    /// Checks the rates and the process's parameters.
    pub fn new(
        steps: Vec<RateStep>,
        process: Process,
        sizes: Sizes,
        seed: u64,
    ) -> Result<RatePlan, ReplayError> {
        for step in &steps {
            if !(step.rate.is_finite() && step.rate > 0.0) {
                return Err(ReplayError::Config(format!(
                    "rate must be positive, got {}",
                    step.rate
                )));
            }
        }
        if let Process::Gamma { cv } = process
            && !(cv.is_finite() && cv > 0.0)
        {
            return Err(ReplayError::Config(
                "the gamma process's coefficient of variation must be positive".into(),
            ));
        }
        Ok(RatePlan {
            steps: steps.into(),
            process,
            sizes: Arc::new(sizes),
            seed,
            limit: None,
            share: (0, 1),
        })
    }

    /// A single step at `rate` that ends after exactly `requests` requests (vLLM's
    /// `--num-prompts` at `--request-rate`).
    pub fn counted(
        rate: f64,
        requests: u64,
        process: Process,
        sizes: Sizes,
        seed: u64,
    ) -> Result<RatePlan, ReplayError> {
        let step = RateStep {
            rate,
            // Long enough for any count: the count ends the step.
            duration: Duration::from_secs(u64::from(u32::MAX)),
            label: "measure".into(),
        };
        RatePlan::new(vec![step], process, sizes, seed)?.limited(requests)
    }

    /// The same plan ending after at most `requests` requests (whichever comes first: the
    /// count or the end of the last step).
    pub fn limited(mut self, requests: u64) -> Result<RatePlan, ReplayError> {
        if requests == 0 {
            return Err(ReplayError::Config(
                "the number of requests must be positive".into(),
            ));
        }
        self.limit = Some(requests);
        Ok(self)
    }

    /// How long the load is meant to last: the steps' durations, or, for a single step
    /// with a count, the count over the rate when that comes first.
    pub fn intended_duration(&self) -> Duration {
        let steps: Duration = self.steps.iter().map(|s| s.duration).sum();
        match (self.limit, &*self.steps) {
            (Some(n), [step]) => steps.min(Duration::from_secs_f64(n as f64 / step.rate)),
            _ => steps,
        }
    }

    /// The part `index` of `count` of the sequence: every count-th request from the
    /// index-th (a shard's; the whole sequence is drawn alike by every shard).
    pub fn share(mut self, index: u32, count: u32) -> RatePlan {
        self.share = (u64::from(index), u64::from(count.max(1)));
        self
    }

    /// The requests this plan sends: its share of [`RatePlan::iter`].
    pub fn shared_iter(&self) -> impl Iterator<Item = Planned> + Send + use<> {
        let (first, every) = self.share;
        self.iter().skip(first as usize).step_by(every as usize)
    }

    /// The whole sequence, in order (the same ones on every call), whatever the share.
    pub fn iter(&self) -> RateIter {
        RateIter {
            plan: self.clone(),
            rng: StdRng::seed_from_u64(self.seed),
            step: 0,
            step_start: 0.0,
            k: 0,
            t: 0.0,
            i: 0,
        }
    }

    /// Each step's end (seconds from the start) and rate.
    pub fn step_ends(&self) -> Vec<(f64, f64)> {
        let mut end = 0.0;
        self.steps
            .iter()
            .map(|s| {
                end += s.duration.as_secs_f64();
                (end, s.rate / self.share.1 as f64)
            })
            .collect()
    }

    /// Requests expected (exact for evenly spaced arrivals, the mean for random ones).
    pub fn expected_len(&self) -> u64 {
        let by_time: u64 = self
            .steps
            .iter()
            .map(|s| (s.rate * s.duration.as_secs_f64()).ceil() as u64)
            .sum();
        let all = self.limit.map_or(by_time, |n| n.min(by_time));
        let (first, every) = self.share;
        (all + every - 1 - first.min(all + every - 1)) / every
    }
}

/// The requests of a [`RatePlan`], drawn one at a time.
#[derive(Debug)]
pub struct RateIter {
    plan: RatePlan,
    rng: StdRng,
    /// Current step, its start (s from the run's start), the index within it (evenly
    /// spaced arrivals are computed, not accumulated, to stay exact) and the last arrival.
    step: usize,
    step_start: f64,
    k: u64,
    t: f64,
    /// Requests drawn so far.
    i: u64,
}

impl Iterator for RateIter {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.plan.limit.is_some_and(|n| self.i >= n) {
            return None;
        }
        loop {
            let step = self.plan.steps.get(self.step)?;
            let end = self.step_start + step.duration.as_secs_f64();
            let t = match self.plan.process {
                Process::Fixed => {
                    let t = self.step_start + self.k as f64 / step.rate;
                    (t < end - 1e-9).then_some(t)
                }
                Process::Poisson => {
                    let gap =
                        Exp::new(step.rate).map_or(f64::INFINITY, |d| d.sample(&mut self.rng));
                    let t = self.t + gap;
                    (t < end).then_some(t)
                }
                Process::Gamma { cv } => {
                    let shape = 1.0 / (cv * cv);
                    let gap = Gamma::new(shape, 1.0 / (step.rate * shape))
                        .map_or(f64::INFINITY, |d| d.sample(&mut self.rng));
                    let t = self.t + gap;
                    (t < end).then_some(t)
                }
            };
            let Some(t) = t else {
                // The next step starts where this one ends.
                self.step += 1;
                self.step_start = end;
                self.t = end;
                self.k = 0;
                continue;
            };
            self.k += 1;
            self.t = t;
            let request = synthetic_request(self.i, &self.plan.sizes);
            self.i += 1;
            return Some(Planned {
                then: None,
                offset: Duration::from_secs_f64(t),
                phase: step.label.clone(),
                step_value: Some(step.rate),
                request,
            });
        }
    }
}

/// An open-loop plan: listed (a trace's requests) or generated as it is sent (rates).
#[derive(Debug, Clone)]
pub enum OpenPlan {
    /// Every request, in order.
    Listed(Vec<Planned>),
    /// Drawn as the run goes.
    Rates(RatePlan),
}

impl From<Vec<Planned>> for OpenPlan {
    fn from(v: Vec<Planned>) -> OpenPlan {
        OpenPlan::Listed(v)
    }
}

impl From<RatePlan> for OpenPlan {
    fn from(p: RatePlan) -> OpenPlan {
        OpenPlan::Rates(p)
    }
}

impl OpenPlan {
    /// Requests planned (expected, for random arrivals).
    pub fn expected_len(&self) -> u64 {
        match self {
            OpenPlan::Listed(v) => v.iter().map(|p| p.turns().count() as u64).sum(),
            OpenPlan::Rates(p) => p.expected_len(),
        }
    }

    /// How long the load is meant to last: a trace window's last offset (its span at the
    /// replay's speed), or the rate plan's [`RatePlan::intended_duration`].
    pub fn intended_duration(&self) -> Duration {
        match self {
            // A session's later turns go by their recorded arrivals here.
            OpenPlan::Listed(v) => v
                .iter()
                .flat_map(Planned::turns)
                .map(|p| p.offset)
                .max()
                .unwrap_or(Duration::ZERO),
            OpenPlan::Rates(p) => p.intended_duration(),
        }
    }

    /// Splits the plan among `n` senders: the i-th request goes to sender i mod n.
    pub fn deal(self, n: usize) -> Vec<Box<dyn Iterator<Item = Planned> + Send>> {
        let n = n.max(1);
        match self {
            OpenPlan::Listed(v) => {
                let mut shares: Vec<Vec<Planned>> = (0..n).map(|_| Vec::new()).collect();
                for (i, p) in v.into_iter().enumerate() {
                    shares[i % n].push(p);
                }
                shares
                    .into_iter()
                    .map(|s| Box::new(s.into_iter()) as Box<dyn Iterator<Item = Planned> + Send>)
                    .collect()
            }
            // Each sender draws the whole sequence and keeps its share: drawing costs far
            // less than sending.
            OpenPlan::Rates(p) => (0..n)
                .map(|k| {
                    Box::new(p.shared_iter().skip(k).step_by(n))
                        as Box<dyn Iterator<Item = Planned> + Send>
                })
                .collect(),
        }
    }
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

    fn session_row(id: &str, session: &str, at: f64, think_ms: Option<u64>) -> TraceRecord {
        let mut r = TraceRecord::new(id, Timestamp::from_secs_f64(1000.0 + at));
        r.session_id = Some(session.to_owned());
        r.think_us = think_ms.map(|t| t * 1000);
        r.input_tokens = Some(10);
        r
    }

    fn loaded(mut requests: Vec<TraceRecord>) -> LoadedTrace {
        requests.sort_by_key(|r| r.arrival);
        reprise_trace::sessions::derive(&mut requests);
        LoadedTrace {
            requests,
            block_tokens: None,
        }
    }

    #[test]
    fn closed_sessions_chain_later_turns_behind_the_first() {
        let t = loaded(vec![
            session_row("a1", "a", 0.0, None),
            TraceRecord::new("x", Timestamp::from_secs_f64(1000.5)),
            session_row("a2", "a", 2.0, Some(1000)),
            session_row("b1", "b", 1.0, None),
            session_row("a3", "a", 4.0, None),
        ]);
        let w = TraceWindow {
            speed: 2.0,
            ..TraceWindow::default()
        };
        let plan = trace_plan(&t, &w).unwrap();
        let heads: Vec<_> = plan.iter().map(|p| p.request.request_id.as_str()).collect();
        assert_eq!(heads, ["a1", "x", "b1"]);
        let a: Vec<_> = plan[0]
            .turns()
            .map(|p| p.request.request_id.as_str())
            .collect();
        assert_eq!(a, ["a1", "a2", "a3"]);
        let chain = plan[0].then.as_ref().unwrap();
        // The think time is divided by the speed; a turn without one waits for its
        // predecessor's end and its recorded time.
        assert_eq!(chain.after, After::End(Duration::from_millis(500)));
        assert_eq!(chain.next.offset, Duration::from_secs(1));
        assert_eq!(
            chain.next.then.as_ref().unwrap().after,
            After::EndOrRecorded
        );
        let listed = OpenPlan::from(plan.clone());
        assert_eq!(listed.expected_len(), 5);
        assert_eq!(listed.intended_duration(), Duration::from_secs(2));
        // Open sessions: every turn listed at its recorded time.
        let open = trace_plan(
            &t,
            &TraceWindow {
                sessions: Some(SessionMode::Open),
                ..w
            },
        )
        .unwrap();
        assert_eq!(open.len(), 5);
        assert!(open.iter().all(|p| p.then.is_none()));
        // The conversations are the same in both modes.
        assert_eq!(conversations(&plan), conversations(&open));
        assert_eq!(conversations(&plan).len(), 3, "a's three turns (b has one)");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Whatever the trace and however long the server takes, a closed session's turn is
        /// never due before its predecessor's end, and is due exactly a think time after it
        /// when the trace knows the think time; every row is planned once.
        #[test]
        fn no_turn_is_due_before_its_predecessors_end(
            rows in proptest::collection::vec(
                (0u8..5, 0u32..20_000, proptest::option::of(0u64..3_000), 1u64..5_000),
                1..40,
            ),
            speed in 0.5f64..8.0,
        ) {
            let records: Vec<TraceRecord> = rows
                .iter()
                .enumerate()
                .map(|(i, &(s, at_ms, think, _))| {
                    session_row(&format!("r{i}"), &format!("s{s}"), f64::from(at_ms) / 1000.0, think)
                })
                .collect();
            let service: std::collections::HashMap<String, Duration> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("r{i}"), Duration::from_millis(r.3)))
                .collect();
            let plan = trace_plan(&loaded(records), &TraceWindow { speed, ..TraceWindow::default() }).unwrap();
            let t0 = std::time::Instant::now();
            let mut planned = 0;
            for head in &plan {
                // Walk the chain as the sender does: each turn ends `service` after its send.
                let mut sent = t0 + head.offset;
                let mut turn = head;
                planned += 1;
                while let Some(chain) = &turn.then {
                    let end = sent + service[&turn.request.request_id];
                    let due = chain.after.deadline(end, t0 + chain.next.offset);
                    proptest::prop_assert!(due >= end);
                    if let Some(think) = chain.next.request.think_us {
                        let want = Duration::from_nanos((think as f64 * 1000.0 / speed).round() as u64);
                        proptest::prop_assert_eq!(due, end + want);
                    }
                    proptest::prop_assert!(chain.next.request.turn > turn.request.turn);
                    sent = due;
                    turn = &chain.next;
                    planned += 1;
                }
            }
            proptest::prop_assert_eq!(planned, rows.len());
        }
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

    #[test]
    fn generated_plans_deal_out_the_listed_sequence() {
        let steps = vec![
            RateStep {
                rate: 50.0,
                duration: Duration::from_secs(2),
                label: "rate=50".into(),
            },
            RateStep {
                rate: 200.0,
                duration: Duration::from_secs(1),
                label: "rate=200".into(),
            },
        ];
        for process in [Process::Fixed, Process::Poisson, Process::Gamma { cv: 2.0 }] {
            let sizes = Sizes::FromTrace(vec![(10, 1), (20, 2), (30, 3)]);
            let plan = RatePlan::new(steps.clone(), process, sizes, 7).unwrap();
            let listed: Vec<Planned> = plan.iter().collect();
            // Drawn twice, the same requests.
            assert_eq!(plan.iter().count(), listed.len());
            assert_eq!(plan.expected_len(), 300);
            let n = listed.len() as f64;
            assert!(
                (n - 300.0).abs() < 5.0 * 300f64.sqrt() * 2.0,
                "{process:?}: {n}"
            );
            assert!(listed.windows(2).all(|w| w[0].offset <= w[1].offset));
            let shares = OpenPlan::from(plan).deal(3);
            let mut merged: Vec<(Duration, String)> = shares
                .into_iter()
                .flat_map(|s| s.map(|p| (p.offset, p.request.request_id)))
                .collect();
            merged.sort();
            let want: Vec<(Duration, String)> = listed
                .iter()
                .map(|p| (p.offset, p.request.request_id.clone()))
                .collect();
            assert_eq!(merged, want, "{process:?}");
            let fifty = listed.iter().filter(|p| p.phase == "rate=50").count();
            if process == Process::Fixed {
                assert_eq!((fifty, listed.len()), (100, 300));
                assert_eq!(listed[100].offset, Duration::from_secs(2));
            }
            assert_eq!(listed[1].request.input_tokens, Some(20));
        }
        assert!(
            RatePlan::new(
                steps,
                Process::Gamma { cv: 0.0 },
                Sizes::FromTrace(vec![]),
                0
            )
            .is_err()
        );
    }

    #[test]
    fn counted_plans_send_exactly_n_at_the_rate() {
        for process in [Process::Fixed, Process::Poisson, Process::Gamma { cv: 2.0 }] {
            let plan =
                RatePlan::counted(100.0, 250, process, Sizes::FromTrace(vec![(5, 1)]), 3).unwrap();
            assert_eq!(plan.expected_len(), 250);
            assert_eq!(plan.intended_duration(), Duration::from_millis(2500));
            let listed: Vec<Planned> = plan.iter().collect();
            assert_eq!(listed.len(), 250, "{process:?}");
            assert!(listed.iter().all(|p| p.phase == "measure"));
            let shares = OpenPlan::from(plan).deal(2);
            assert_eq!(shares.into_iter().map(Iterator::count).sum::<usize>(), 250);
        }
        let fixed = RatePlan::counted(10.0, 3, Process::Fixed, Sizes::FromTrace(vec![]), 0)
            .unwrap()
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>();
        assert_eq!(fixed, [0, 100, 200].map(Duration::from_millis).to_vec());
        assert!(RatePlan::counted(10.0, 0, Process::Fixed, Sizes::FromTrace(vec![]), 0).is_err());
        assert!(RatePlan::counted(0.0, 5, Process::Fixed, Sizes::FromTrace(vec![]), 0).is_err());
    }

    #[test]
    fn intended_durations_of_plans() {
        let t = trace(&[0.0, 4.0, 10.0]);
        let window = TraceWindow {
            speed: 2.0,
            ..TraceWindow::default()
        };
        let listed = OpenPlan::from(trace_plan(&t, &window).unwrap());
        assert_eq!(listed.intended_duration(), Duration::from_secs(5));
        let steps = vec![
            RateStep {
                rate: 1.0,
                duration: Duration::from_secs(3),
                label: "a".into(),
            },
            RateStep {
                rate: 2.0,
                duration: Duration::from_secs(4),
                label: "b".into(),
            },
        ];
        let rates = RatePlan::new(steps, Process::Fixed, Sizes::FromTrace(vec![]), 0).unwrap();
        assert_eq!(rates.intended_duration(), Duration::from_secs(7));
    }
}
