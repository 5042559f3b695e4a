//! What a replay is told: [`ReplayConfig`] (targets, request shape, limits, output) and
//! [`Pacing`] (the open-loop plan, or closed-loop users), the executor's two inputs, and the
//! ramp's [`StopRule`]. Built by [`crate::prepare()`] from a [`crate::Spec`], or directly by
//! tests and benches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reprise_protocol::openai::Api;
use reprise_trace::TraceRecord;

use crate::client::{self, RequestShape, Timeouts};
use crate::prompt::PromptBuilder;
use crate::summary::PhaseSummary;
use crate::{events, sizing, workload};

/// How requests are paced.
#[derive(Debug, Clone)]
pub enum Pacing {
    /// Open loop: send each planned request at its offset, whatever the responses do.
    Open(workload::OpenPlan),
    /// Closed loop: `users` clients each send, wait for the response, think, repeat — for
    /// each step of `users` (a concurrency ramp when several).
    Closed {
        /// Users per step.
        users: Vec<usize>,
        /// Length of each step (or the run, with one step).
        step_duration: Option<Duration>,
        /// Stop each step after this many requests.
        requests_per_step: Option<u64>,
        /// Pause between a response and the next request of the same user.
        think: Duration,
        /// The requests, taken in order and cycled.
        requests: Vec<TraceRecord>,
    },
}

/// When a stress ramp stops early.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StopRule {
    /// Stop after a step whose error rate exceeds this (0..1).
    pub max_error_rate: Option<f64>,
    /// Stop after a step whose P99 TTFT exceeds this, ms.
    pub max_p99_ttft_ms: Option<f64>,
}

/// Everything a replay needs.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Base URLs (round-robin when several), e.g. `http://127.0.0.1:8000`.
    pub targets: Vec<String>,
    /// Request shape (API, backend dialect, model, streaming).
    pub shape: RequestShape,
    /// Extra headers (e.g. authorization); never written to results.
    pub headers: Vec<(String, String)>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Optional cap on requests in flight (reported; open loop has none by default).
    pub max_in_flight: Option<usize>,
    /// Most connections open at once, all senders together: in the open loop a request
    /// that finds every connection busy waits for one (and is late, counted in `queue`)
    /// rather than opening more than the process can hold. `None`: from the open-files
    /// limit ([`crate::connection_budget`]).
    pub max_connections: Option<usize>,
    /// The first this many requests are phase `warmup`, excluded from the summary.
    pub warmup: u64,
    /// Prompt construction.
    pub prompts: PromptBuilder,
    /// Run directory (created).
    pub run_dir: PathBuf,
    /// Run id.
    pub run_id: String,
    /// A queue p99 above this flags the run as "client could not keep up", ms.
    pub queue_limit_ms: f64,
    /// Early stop of ramps.
    pub stop_rule: StopRule,
    /// How long to wait for in-flight requests after a stop (Ctrl-C).
    pub drain: Duration,
    /// The exact command line, for run.json.
    pub command: Vec<String>,
    /// Events to run at offsets (recorded in run.json and events.json).
    pub events: Vec<events::RunEvent>,
    /// Prompt words per request id, when prompts were sized by the server's or a local
    /// tokenizer ([`crate::sizing`]); otherwise a prompt has `input_tokens` words (cl100k tokens).
    pub prompt_words: Option<Arc<sizing::PromptSizing>>,
    /// Open-loop sender threads, each pacing and sending every n-th request on a runtime of
    /// its own (0: one per CPU). One holds about [`crate::SENDER_HOLDS_REQ_PER_S`] with
    /// sub-millisecond queues.
    pub senders: usize,
    /// Which HTTP client sends.
    pub http: HttpClient,
    /// Samplers to run beside the replay (GPU, scrapes, host), into the run directory.
    pub monitor: Option<reprise_monitor::MonitorConfig>,
    /// Stop the run at the first request answered 404 or refused a connection while no
    /// request has succeeded yet: the target is wrong, not overloaded
    /// ([`crate::RunSummary::aborted`] says why).
    pub fail_fast: bool,
    /// What the targets are, as the user named them (`sim:PROFILE` or the URL), for the
    /// summary and run.json; `targets` is used when empty.
    pub target_names: Vec<String>,
    /// How long the workload was meant to last ([`workload::OpenPlan::intended_duration`]),
    /// for throughput over the intended duration beside the measured span.
    pub intended: Option<Duration>,
    /// How the trace's sessions are replayed, when it has sessions.
    pub sessions: Option<workload::SessionMode>,
    /// The target's prefix-cache capacity in tokens, when known (the in-process
    /// simulator's profile): written to the results for the analyzer's LRU figure.
    pub server_cache_tokens: Option<u64>,
    /// This load generator's shard of a distributed replay ([`crate::shard`]).
    pub shard: crate::shard::Shard,
    /// A start given from outside (a coordinator): the monotonic instant and its time on
    /// the run's clock, ns since the epoch. Otherwise the run starts 20 ms after the
    /// executor is ready, on this host's clock.
    pub start: Option<(std::time::Instant, i64)>,
    /// What `run.json` says of the distributed replay this run is a shard of.
    pub distributed: Option<reprise_trace::run::Distributed>,
}

impl ReplayConfig {
    /// A configuration with the defaults of `reprise replay`: OpenAI chat, vLLM dialect,
    /// streaming, 60 s per request and 30 s between chunks, no warm-up, queue limit 1 ms,
    /// one sender, the automatic HTTP client, no monitoring.
    pub fn new(targets: Vec<String>, model: &str, run_dir: impl Into<PathBuf>) -> Self {
        ReplayConfig {
            targets,
            shape: RequestShape {
                api: Api::Chat,
                backend: client::Backend::Vllm,
                model: model.to_owned(),
                stream: true,
            },
            headers: Vec::new(),
            timeouts: Timeouts {
                request: Duration::from_secs(60),
                gap: Duration::from_secs(30),
            },
            max_in_flight: None,
            max_connections: None,
            warmup: 0,
            prompts: PromptBuilder::new(None, 1),
            run_dir: run_dir.into(),
            run_id: "run".into(),
            queue_limit_ms: 1.0,
            stop_rule: StopRule::default(),
            drain: Duration::from_secs(5),
            command: Vec::new(),
            events: Vec::new(),
            prompt_words: None,
            senders: 1,
            http: HttpClient::Auto,
            monitor: None,
            fail_fast: false,
            target_names: Vec::new(),
            intended: None,
            sessions: None,
            server_cache_tokens: None,
            shard: crate::shard::Shard::WHOLE,
            start: None,
            distributed: None,
        }
    }

    /// The targets as named for people: `target_names`, else the base URLs.
    pub fn target_labels(&self) -> &[String] {
        if self.target_names.is_empty() {
            &self.targets
        } else {
            &self.target_names
        }
    }
}

/// Which HTTP client sends the requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpClient {
    /// The lean HTTP/1.1 client ([`crate::h1`]) for `http://` targets when no proxy is set in the
    /// environment; `reqwest` for the others.
    #[default]
    Auto,
    /// `reqwest` for every target.
    Reqwest,
}

impl StopRule {
    /// Whether a finished ramp step breaks the rule: the line that says why, or `None` to
    /// go on to the next step.
    pub fn verdict(&self, label: &str, step: &PhaseSummary) -> Option<String> {
        let too_many_errors = self.max_error_rate.is_some_and(|m| step.error_rate > m);
        let too_slow = self
            .max_p99_ttft_ms
            .is_some_and(|m| step.ttft_ms.as_ref().is_some_and(|t| t.p99 > m));
        (too_many_errors || too_slow).then(|| {
            format!(
                "stopped after {label}: error rate {:.1}%, P99 TTFT {} ms",
                step.error_rate * 100.0,
                step.ttft_ms
                    .as_ref()
                    .map_or("-".into(), |t| format!("{:.1}", t.p99))
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Latency;

    fn step(error_rate: f64, p99: Option<f64>) -> PhaseSummary {
        PhaseSummary {
            error_rate,
            ttft_ms: p99.map(|p99| Latency {
                p99,
                ..Latency::default()
            }),
            ..PhaseSummary::default()
        }
    }

    #[test]
    fn stop_rule_stops_on_errors_or_slow_ttft_only() {
        let rule = StopRule {
            max_error_rate: Some(0.05),
            max_p99_ttft_ms: Some(500.0),
        };
        assert_eq!(rule.verdict("c=1", &step(0.05, Some(500.0))), None);
        assert_eq!(
            rule.verdict("concurrency=8", &step(0.06, None)).as_deref(),
            Some("stopped after concurrency=8: error rate 6.0%, P99 TTFT - ms")
        );
        assert_eq!(
            rule.verdict("c=2", &step(0.0, Some(612.34))).as_deref(),
            Some("stopped after c=2: error rate 0.0%, P99 TTFT 612.3 ms")
        );
        // No rule, no stop.
        assert_eq!(
            StopRule::default().verdict("c", &step(1.0, Some(1e9))),
            None
        );
    }

    #[test]
    fn labels_fall_back_to_urls() {
        let mut c = ReplayConfig::new(vec!["http://a".into()], "m", "/tmp/x");
        assert_eq!(c.target_labels(), ["http://a"]);
        c.target_names = vec!["sim:p".into()];
        assert_eq!(c.target_labels(), ["sim:p"]);
    }
}
