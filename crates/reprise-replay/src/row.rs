//! One finished request → its `result/1` row and its summary sample ([`row`]).

use std::time::{Duration, Instant};

use reprise_trace::{ResultRecord, TraceRecord};

use crate::client::{Backend, Measured};
use crate::clock::Clock;
use crate::summary::Sample;

/// A request as the executor sends it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its phase (`warmup`, `measure`, a step label).
    pub planned_phase: String,
    /// The step's rate or concurrency.
    pub step_value: Option<f64>,
    /// The source request.
    pub request: TraceRecord,
    /// When it was meant to be sent.
    pub scheduled: Instant,
    /// The encoded request body (taken when sent).
    pub body: Vec<u8>,
    /// Index of the target it goes to.
    pub target: usize,
    /// Where it stands in its session, in a closed-session replay.
    pub turn: Option<TurnMark>,
}

/// A closed session's turn, for the run's session figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnMark {
    /// When the trace had it arrive (the run's start + its recorded offset).
    pub recorded: Instant,
    /// Its session's first turn.
    pub first: bool,
    /// Its session's last turn.
    pub last: bool,
    /// Sent a think time after the previous turn's end (`scheduled` is that instant).
    pub after_end: bool,
}

/// What a row needs from the run.
#[derive(Debug, Clone)]
pub struct RowContext {
    /// The run's id.
    pub run_id: String,
    /// The load generator's shard (0 unless distributed).
    pub shard: u32,
    /// Base URL of each target, by index.
    pub targets: Vec<String>,
    /// The server dialect.
    pub backend: Backend,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn between(a: Option<Instant>, b: Option<Instant>) -> Option<u64> {
    Some(us(b?.saturating_duration_since(a?)))
}

/// Turns a finished request into its result row and summary sample — a pure function of
/// what was sent and what was measured. The rules (`docs/metrics.md`): latencies from
/// `sent` and from `scheduled`; TTFT to the first content-bearing event; TPOT over
/// `n_out − 1` gaps, with `n_out` from the server's usage or else the client's count;
/// ITL as the gaps between content events; failed requests keep their timestamps in the
/// row but give the summary no latency; token mismatches are judged on successful requests
/// only, and output counts not at all for dialects that cannot force them (OpenAI, TGI).
pub fn row(job: &Job, m: &Measured, clock: &Clock, ctx: &RowContext) -> (ResultRecord, Sample) {
    let scheduled = Some(job.scheduled);
    let ok = m.error_kind.is_none();
    let ttft = between(m.sent, m.first_token);
    let e2e = between(m.sent, m.done);
    let n_out = m
        .usage
        .map(|u| u.completion_tokens)
        .unwrap_or(m.n_out_counted);
    let tpot = match (ttft, e2e) {
        (Some(t), Some(e)) if n_out > 1 && ok => Some(e.saturating_sub(t) / u64::from(n_out - 1)),
        _ => None,
    };
    let itl: Vec<u32> = m
        .content_times
        .windows(2)
        .map(|w| us(w[1].saturating_duration_since(w[0])).min(u64::from(u32::MAX)) as u32)
        .collect();
    let request = &job.request;
    let record = ResultRecord {
        request: request.clone(),
        run_id: ctx.run_id.to_owned(),
        target: ctx.targets[job.target].clone(),
        phase: job.planned_phase.clone(),
        step_value: job.step_value,
        shard: ctx.shard,
        scheduled: clock.wall(job.scheduled),
        sent: m.sent.map(|t| clock.wall(t)),
        first_chunk: m.first_chunk.map(|t| clock.wall(t)),
        first_token: m.first_token.map(|t| clock.wall(t)),
        done: m.done.map(|t| clock.wall(t)),
        queue_us: between(scheduled, m.sent),
        ttft_us: ttft,
        e2e_us: e2e,
        ttft_sched_us: between(scheduled, m.first_token),
        e2e_sched_us: between(scheduled, m.done),
        tpot_us: tpot,
        itl_us: (!itl.is_empty()).then(|| itl.clone()),
        n_in_usage: m.usage.map(|u| u.prompt_tokens),
        n_out_usage: m.usage.map(|u| u.completion_tokens),
        n_cached_usage: m.usage.and_then(|u| u.cached_tokens),
        n_out_counted: Some(m.n_out_counted),
        status: m.status,
        error_kind: m.error_kind.map(str::to_owned),
        error: m.error.clone(),
    };
    let sample = Sample {
        phase: record.phase.clone(),
        step_value: record.step_value,
        ok,
        error_kind: record.error_kind.clone(),
        sent_ns: m.sent.map(|t| clock.since_start_ns(t)),
        done_ns: m.done.map(|t| clock.since_start_ns(t)),
        queue_us: record.queue_us,
        ttft_us: if ok { ttft } else { None },
        ttft_sched_us: if ok { record.ttft_sched_us } else { None },
        e2e_us: if ok { e2e } else { None },
        e2e_sched_us: if ok { record.e2e_sched_us } else { None },
        tpot_us: tpot,
        itl_us: if ok { itl } else { Vec::new() },
        n_in: u64::from(
            m.usage
                .map(|u| u.prompt_tokens)
                .or(request.input_tokens)
                .unwrap_or(0),
        ),
        n_out: u64::from(n_out),
        input_mismatch: match (m.usage, request.input_tokens) {
            (Some(u), Some(want)) if ok => Some(u.prompt_tokens != want),
            _ => None,
        },
        output_mismatch: match (m.usage, request.output_tokens) {
            (Some(u), Some(want))
                if ok && ctx.backend != Backend::Openai && ctx.backend != Backend::Tgi =>
            {
                Some(u.completion_tokens != want)
            }
            _ => None,
        },
    };
    (record, sample)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_protocol::openai::Usage;

    fn setup() -> (Clock, Job, RowContext) {
        let clock = Clock {
            t0: Instant::now(),
            wall0_ns: 1_700_000_000_000_000_000,
        };
        let job = Job {
            planned_phase: "measure".into(),
            step_value: Some(4.0),
            request: {
                let mut r = TraceRecord::new("r1", reprise_trace::Timestamp(0));
                r.input_tokens = Some(100);
                r.output_tokens = Some(4);
                r
            },
            scheduled: clock.t0 + Duration::from_millis(10),
            body: Vec::new(),
            target: 1,
            turn: None,
        };
        let ctx = RowContext {
            run_id: "run-a".into(),
            shard: 0,
            targets: vec!["http://a".into(), "http://b".into()],
            backend: Backend::Vllm,
        };
        (clock, job, ctx)
    }

    fn at(clock: &Clock, ms: u64) -> Option<Instant> {
        Some(clock.t0 + Duration::from_millis(ms))
    }

    /// Sent 2 ms late at 12 ms; first token at 112 ms, then content at 132, 152, 172 ms.
    fn streamed(clock: &Clock, usage: Option<Usage>) -> Measured {
        Measured {
            sent: at(clock, 12),
            first_chunk: at(clock, 100),
            first_token: at(clock, 112),
            content_times: [112, 132, 152, 172]
                .iter()
                .filter_map(|&t| at(clock, t))
                .collect(),
            done: at(clock, 172),
            status: Some(200),
            usage,
            n_out_counted: 4,
            error_kind: None,
            error: None,
        }
    }

    #[test]
    fn latencies_from_sent_and_from_scheduled() {
        let (clock, job, ctx) = setup();
        let (r, s) = row(&job, &streamed(&clock, None), &clock, &ctx);
        assert_eq!(
            (r.run_id.as_str(), r.target.as_str()),
            ("run-a", "http://b")
        );
        assert_eq!(r.scheduled.0, clock.wall0_ns + 10_000_000);
        assert_eq!(r.queue_us, Some(2_000));
        assert_eq!(r.ttft_us, Some(100_000));
        assert_eq!(r.ttft_sched_us, Some(102_000));
        assert_eq!(r.e2e_us, Some(160_000));
        assert_eq!(r.e2e_sched_us, Some(162_000));
        // TPOT = (e2e − ttft) / (n_out − 1) = 60 ms / 3.
        assert_eq!(r.tpot_us, Some(20_000));
        assert_eq!(r.itl_us, Some(vec![20_000, 20_000, 20_000]));
        assert_eq!((r.n_out_counted, r.n_out_usage), (Some(4), None));
        assert!(s.ok);
        assert_eq!((s.ttft_us, s.tpot_us), (Some(100_000), Some(20_000)));
        assert_eq!(s.sent_ns, Some(12_000_000));
        // Without usage, nothing can be judged a mismatch; the trace's prompt size counts.
        assert_eq!((s.input_mismatch, s.output_mismatch), (None, None));
        assert_eq!((s.n_in, s.n_out), (100, 4));
    }

    #[test]
    fn usage_decides_n_out_and_mismatches() {
        let (clock, job, ctx) = setup();
        let usage = Usage::new(101, 7).with_cached(64);
        let (r, s) = row(&job, &streamed(&clock, Some(usage)), &clock, &ctx);
        // TPOT over the server's 7 tokens: 60 ms / 6.
        assert_eq!(r.tpot_us, Some(10_000));
        assert_eq!((r.n_in_usage, r.n_out_usage), (Some(101), Some(7)));
        assert_eq!(r.n_cached_usage, Some(64));
        assert_eq!(
            (s.input_mismatch, s.output_mismatch),
            (Some(true), Some(true))
        );
        assert_eq!((s.n_in, s.n_out), (101, 7));
        // Dialects that cannot force output lengths are not judged on them.
        for backend in [Backend::Openai, Backend::Tgi] {
            let ctx = RowContext {
                backend,
                ..ctx.clone()
            };
            let (_, s) = row(&job, &streamed(&clock, Some(usage)), &clock, &ctx);
            assert_eq!((s.input_mismatch, s.output_mismatch), (Some(true), None));
        }
    }

    #[test]
    fn one_token_has_no_tpot_and_no_gaps() {
        let (clock, job, ctx) = setup();
        let mut m = streamed(&clock, None);
        m.content_times.truncate(1);
        m.done = m.first_token;
        m.n_out_counted = 1;
        let (r, s) = row(&job, &m, &clock, &ctx);
        assert_eq!((r.tpot_us, r.itl_us.clone()), (None, None));
        assert!(s.itl_us.is_empty());
    }

    #[test]
    fn a_failure_keeps_its_times_in_the_row_but_gives_no_latency() {
        let (clock, job, ctx) = setup();
        let mut m = streamed(&clock, None);
        m.status = Some(200);
        m.error_kind = Some("broken_stream");
        m.error = Some("stream ended without [DONE]".into());
        let (r, s) = row(&job, &m, &clock, &ctx);
        assert_eq!(r.error_kind.as_deref(), Some("broken_stream"));
        assert_eq!(r.ttft_us, Some(100_000));
        assert_eq!(r.tpot_us, None);
        assert!(!s.ok);
        assert_eq!((s.ttft_us, s.e2e_us, s.ttft_sched_us), (None, None, None));
        assert!(s.itl_us.is_empty());
        assert_eq!(s.error_kind.as_deref(), Some("broken_stream"));
        // A request never sent has no queue and no latencies at all.
        let (r, _) = row(&job, &Measured::default(), &clock, &ctx);
        assert_eq!((r.sent, r.queue_us, r.ttft_us), (None, None, None));
    }
}
