//! Live metrics of a running replay, served on `--metrics-listen` for Prometheus
//! ([`Live`], [`serve`]).
//!
//! The writer thread feeds every finished request to an [`Observer`] (histograms of TTFT,
//! ITL, TPOT, E2E and the schedule lag, counters of requests, tokens, late sends and token
//! mismatches); the send path says which phase and step it is in (`Live::on_send`); a
//! ticker turns the sent count into the achieved rate once a second; gauges read at scrape
//! time come from [`Progress`]. Labels are bounded: `run_id`, `worker`, `model`, `phase`,
//! `step`, `status_class`, `error_class` — never a prompt, a session or a URL.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use reprise_live::{Counter, Format, Gauge, Histogram, Labels, Registry, buckets};

use crate::execute::Progress;
use crate::row::Job;
use crate::summary::Sample;
use crate::workload::OpenPlan;

/// The intended request rate over the run, for the `target_rate` gauge.
#[derive(Debug, Clone)]
pub enum RateProfile {
    /// Requests scheduled in each whole second of a listed plan.
    PerSecond(Vec<u32>),
    /// Rate steps: each step's end (seconds from the start) and rate.
    Steps(Vec<(f64, f64)>),
    /// No intended rate (closed loop).
    None,
}

impl RateProfile {
    /// The profile of an open-loop plan.
    pub fn of(plan: &OpenPlan) -> RateProfile {
        match plan {
            OpenPlan::Listed(v) => {
                let mut counts = Vec::new();
                // A closed session's later turns count at their recorded arrivals.
                for p in v.iter().flat_map(crate::workload::Planned::turns) {
                    let s = p.offset.as_secs() as usize;
                    if counts.len() <= s {
                        counts.resize(s + 1, 0u32);
                    }
                    counts[s] += 1;
                }
                RateProfile::PerSecond(counts)
            }
            OpenPlan::Rates(r) => RateProfile::Steps(r.step_ends()),
        }
    }

    /// The intended rate at `t` seconds from the start (0 outside the plan).
    pub fn at(&self, t: f64) -> f64 {
        match self {
            RateProfile::PerSecond(c) => c.get(t.max(0.0) as usize).map_or(0.0, |n| f64::from(*n)),
            RateProfile::Steps(steps) => steps
                .iter()
                .find(|(end, _)| t < *end)
                .map_or(0.0, |(_, rate)| *rate),
            RateProfile::None => 0.0,
        }
    }
}

/// A replay's live metrics.
#[derive(Debug)]
pub struct Live {
    registry: Registry,
    base: Labels,
    latency: Arc<[f64]>,
    lag: Arc<[f64]>,
    profile: RateProfile,
    /// The phase and step of the latest request sent.
    current: Mutex<(String, Option<f64>)>,
    in_flight: Arc<Gauge>,
    target_rate: Arc<Gauge>,
    achieved_rate: Arc<Gauge>,
    step_value: Arc<Gauge>,
    step: Arc<Gauge>,
    sent: Arc<Counter>,
    started: Mutex<Option<Instant>>,
}

impl Live {
    /// Metrics for run `run_id` of `model`, as shard `worker`.
    pub fn new(run_id: &str, worker: u32, model: &str, profile: RateProfile) -> Live {
        let base: Labels = vec![
            ("run_id", run_id.to_owned()),
            ("worker", worker.to_string()),
            ("model", model.to_owned()),
        ];
        let registry = Registry::new();
        let g = |name, help| registry.gauge(name, help, base.clone());
        let in_flight = g(
            "reprise_replay_in_flight",
            "Requests sent and not yet finished.",
        );
        let target_rate = g(
            "reprise_replay_target_rate",
            "Intended request rate now, requests per second (0 in closed loop).",
        );
        let achieved_rate = g(
            "reprise_replay_achieved_rate",
            "Requests sent in the last second, per second.",
        );
        let step_value = g(
            "reprise_replay_step_value",
            "The current step's rate (req/s) or concurrency (users); 0 without steps.",
        );
        let step = g(
            "reprise_replay_step",
            "Index of the phase or step being sent, from 0 in the order they begin.",
        );
        let sent = registry.counter(
            "reprise_replay_requests_sent",
            "Requests sent.",
            base.clone(),
        );
        Live {
            registry,
            base,
            latency: Arc::from(buckets::latency()),
            lag: Arc::from(buckets::lag()),
            profile,
            current: Mutex::new((String::new(), None)),
            in_flight,
            target_rate,
            achieved_rate,
            step_value,
            step,
            sent,
            started: Mutex::new(None),
        }
    }

    /// Metrics for a prepared run (shard 0).
    pub fn for_run(config: &crate::ReplayConfig, pacing: &crate::Pacing) -> Live {
        let profile = match pacing {
            crate::Pacing::Open(plan) => RateProfile::of(plan),
            crate::Pacing::Closed { .. } => RateProfile::None,
        };
        // The workers of a distributed replay share the coordinator run's id as `run_id`
        // and tell themselves apart by `worker` (their shard), so dashboards add them up.
        let run_id = config
            .distributed
            .as_ref()
            .map_or(config.run_id.as_str(), |d| d.coordinator_id.as_str());
        Live::new(run_id, config.shard.index, &config.shape.model, profile)
    }

    /// The figures of the live view, read now.
    pub fn snapshot(&self, progress: &Progress) -> Snapshot {
        let hist = |name: &str, bounds: &Arc<[f64]>| {
            self.registry
                .histogram_sum(name)
                .map_or_else(|| vec![0; bounds.len() + 1], |(_, c)| c)
        };
        let (phase, step_value) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Snapshot {
            at: Instant::now(),
            sent: progress.sent.load(Ordering::Relaxed),
            finished: progress.finished.load(Ordering::Relaxed),
            failed: progress.failed.load(Ordering::Relaxed),
            planned: progress.planned.load(Ordering::Relaxed),
            target_rate: self.target_rate.get(),
            achieved_rate: self.achieved_rate.get(),
            phase,
            step: self.step.get() as u64,
            step_value,
            latency_bounds: self.latency.clone(),
            lag_bounds: self.lag.clone(),
            ttft: hist("reprise_replay_ttft_seconds", &self.latency),
            itl: hist("reprise_replay_itl_seconds", &self.latency),
            e2e: hist("reprise_replay_e2e_seconds", &self.latency),
            lag: hist("reprise_replay_schedule_lag_seconds", &self.lag),
            by_error: self
                .registry
                .counter_by("reprise_replay_requests", "error_class")
                .into_iter()
                .filter(|(class, _)| !class.is_empty())
                .collect(),
            late: self
                .registry
                .counter_by("reprise_replay_late_sends", "run_id")
                .iter()
                .map(|(_, n)| n)
                .sum(),
        }
    }

    /// Marks the run's start (the clock's zero), for the target rate.
    pub fn start(&self, t0: Instant) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0);
    }

    /// A request is being sent: counts it and follows its phase and step.
    pub(crate) fn on_send(&self, job: &Job) {
        self.sent.inc();
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.0 != job.planned_phase || cur.1 != job.step_value {
            let phase = |p: &str| {
                let mut l = self.base.clone();
                l.push(("phase", p.to_owned()));
                self.registry.gauge(
                    "reprise_replay_phase",
                    "1 for the phase being sent, 0 for those before.",
                    l,
                )
            };
            if !cur.0.is_empty() {
                phase(&cur.0).set(0.0);
                self.step.set(self.step.get() + 1.0);
            }
            phase(&job.planned_phase).set(1.0);
            self.step_value.set(job.step_value.unwrap_or(0.0));
            *cur = (job.planned_phase.clone(), job.step_value);
        }
    }

    /// Sets the in-flight gauge from the run's progress; the requests sent so far.
    fn refresh_in_flight(&self, progress: &Progress) -> u64 {
        let sent = progress.sent.load(Ordering::Relaxed);
        let finished = progress.finished.load(Ordering::Relaxed);
        self.in_flight.set(sent.saturating_sub(finished) as f64);
        sent
    }

    /// Refreshes the gauges read from the run's progress; `dt` since the last tick.
    fn tick(&self, progress: &Progress, last_sent: &mut u64, dt: f64) {
        let sent = self.refresh_in_flight(progress);
        if dt > 0.0 {
            self.achieved_rate
                .set(sent.saturating_sub(*last_sent) as f64 / dt);
        }
        *last_sent = sent;
        if let Some(t0) = *self.started.lock().unwrap_or_else(|e| e.into_inner()) {
            self.target_rate
                .set(self.profile.at(t0.elapsed().as_secs_f64()));
        }
    }

    /// The exposition text.
    pub fn render(&self, format: Format) -> String {
        self.registry.render(format)
    }

    /// The writer thread's side.
    pub fn observer(self: &Arc<Self>, queue_limit_ms: f64) -> Observer {
        Observer {
            live: self.clone(),
            late_us: (queue_limit_ms * 1000.0) as u64,
            series: Vec::new(),
            requests: Vec::new(),
        }
    }
}

/// The live view's figures at one instant: counts from the run's progress, gauges, and each
/// histogram summed over phases (cumulative counts; see [`reprise_live::quantile`]).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When read.
    pub at: Instant,
    /// Requests sent.
    pub sent: u64,
    /// Requests finished.
    pub finished: u64,
    /// Requests failed.
    pub failed: u64,
    /// Requests planned (0 when unknown).
    pub planned: u64,
    /// Intended rate now.
    pub target_rate: f64,
    /// Requests sent in the last second.
    pub achieved_rate: f64,
    /// The phase being sent (empty before the first send).
    pub phase: String,
    /// Its index.
    pub step: u64,
    /// The step's rate or concurrency.
    pub step_value: Option<f64>,
    /// Bounds of the latency histograms, seconds.
    pub latency_bounds: Arc<[f64]>,
    /// Bounds of the schedule-lag histogram, seconds.
    pub lag_bounds: Arc<[f64]>,
    /// TTFT, cumulative counts.
    pub ttft: Vec<u64>,
    /// ITL, cumulative counts.
    pub itl: Vec<u64>,
    /// E2E, cumulative counts.
    pub e2e: Vec<u64>,
    /// Schedule lag, cumulative counts.
    pub lag: Vec<u64>,
    /// Failed requests by error class.
    pub by_error: Vec<(String, u64)>,
    /// Late sends.
    pub late: u64,
}

/// Per phase and step: the histograms and counters.
#[derive(Debug)]
struct Series {
    ttft: Arc<Histogram>,
    itl: Arc<Histogram>,
    tpot: Arc<Histogram>,
    e2e: Arc<Histogram>,
    lag: Arc<Histogram>,
    prompt_tokens: Arc<Counter>,
    output_tokens: Arc<Counter>,
    late: Arc<Counter>,
    mismatches: Arc<Counter>,
}

/// The request counter of one phase, step, status class and error class.
#[derive(Debug)]
struct RequestCounter {
    phase: String,
    step: Option<u64>,
    class: &'static str,
    error: String,
    counter: Arc<Counter>,
}

/// Feeds finished requests into the metrics (owned by the writer thread).
#[derive(Debug)]
pub struct Observer {
    live: Arc<Live>,
    late_us: u64,
    /// By phase and step (few: one a step), found by comparison, so that a request costs
    /// no allocation.
    series: Vec<(String, Option<u64>, Series)>,
    /// By phase, step, status class and error class.
    requests: Vec<RequestCounter>,
}

fn step_label(step: Option<f64>) -> String {
    step.map_or_else(String::new, |v| format!("{v}"))
}

fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

impl Observer {
    /// Counts one finished request, given its HTTP status.
    pub fn observe(&mut self, status: Option<u16>, sample: &Sample) {
        let live = &self.live;
        let step = sample.step_value.map(f64::to_bits);
        let labels = || {
            let mut l = live.base.clone();
            l.push(("phase", sample.phase.clone()));
            l.push(("step", step_label(sample.step_value)));
            l
        };
        let i = match self
            .series
            .iter()
            .position(|(p, st, _)| *p == sample.phase && *st == step)
        {
            Some(i) => i,
            None => {
                let r = &live.registry;
                let h = |name, help, bounds| r.histogram(name, help, labels(), bounds);
                let c = |name, help| r.counter(name, help, labels());
                let series = Series {
                    ttft: h(
                        "reprise_replay_ttft_seconds",
                        "Time to first token, from the send.",
                        &live.latency,
                    ),
                    itl: h(
                        "reprise_replay_itl_seconds",
                        "Gaps between content events.",
                        &live.latency,
                    ),
                    tpot: h(
                        "reprise_replay_tpot_seconds",
                        "Time per output token after the first.",
                        &live.latency,
                    ),
                    e2e: h(
                        "reprise_replay_e2e_seconds",
                        "Send to last byte.",
                        &live.latency,
                    ),
                    lag: h(
                        "reprise_replay_schedule_lag_seconds",
                        "Client queue: sent minus scheduled.",
                        &live.lag,
                    ),
                    prompt_tokens: c("reprise_replay_prompt_tokens", "Prompt tokens sent."),
                    output_tokens: c("reprise_replay_output_tokens", "Output tokens received."),
                    late: c(
                        "reprise_replay_late_sends",
                        "Requests sent later than the queue limit after their scheduled time.",
                    ),
                    mismatches: c(
                        "reprise_replay_token_mismatches",
                        "Successful requests whose prompt or output token count differs from the trace's.",
                    ),
                };
                self.series.push((sample.phase.clone(), step, series));
                self.series.len() - 1
            }
        };
        let s = &self.series[i].2;
        if let Some(v) = sample.ttft_us {
            s.ttft.observe_us(v);
        }
        for gap in &sample.itl_us {
            s.itl.observe_us(u64::from(*gap));
        }
        if let Some(v) = sample.tpot_us.filter(|_| sample.ok) {
            s.tpot.observe_us(v);
        }
        if let Some(v) = sample.e2e_us {
            s.e2e.observe_us(v);
        }
        if let Some(q) = sample.queue_us {
            s.lag.observe_us(q);
            if q > self.late_us {
                s.late.inc();
            }
        }
        s.prompt_tokens.add(sample.n_in);
        s.output_tokens.add(sample.n_out);
        if sample.input_mismatch == Some(true) || sample.output_mismatch == Some(true) {
            s.mismatches.inc();
        }
        let class = status_class(status);
        let error = sample.error_kind.as_deref().unwrap_or_default();
        if let Some(r) = self.requests.iter().find(|r| {
            r.phase == sample.phase && r.step == step && r.class == class && r.error == error
        }) {
            r.counter.inc();
            return;
        }
        let mut l = labels();
        l.push(("status_class", class.to_owned()));
        l.push(("error_class", error.to_owned()));
        let c = live.registry.counter(
            "reprise_replay_requests",
            "Requests finished, by status class and error class.",
            l,
        );
        c.inc();
        self.requests.push(RequestCounter {
            phase: sample.phase.clone(),
            step,
            class,
            error: error.to_owned(),
            counter: c,
        });
    }
}

/// Binds the metrics address (before the run starts, so that a port in use is an error
/// up front).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Refreshes the gauges once a second, until the task is dropped.
pub async fn tick_forever(live: Arc<Live>, progress: Arc<Progress>) {
    let mut last_sent = 0;
    let mut last = Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        live.tick(&progress, &mut last_sent, dt);
    }
}

/// Serves `/metrics` on `listener` until the task is dropped. A scraper's connection is
/// served on a task of its own, so a slow or vanished scraper holds nothing else.
pub async fn serve(listener: tokio::net::TcpListener, live: Arc<Live>, progress: Arc<Progress>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (live, progress) = (live.clone(), progress.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (live, progress) = (live.clone(), progress.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(&live, &progress, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer<B>(live: &Live, progress: &Progress, req: &Request<B>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            // In flight as of this scrape, not the last tick.
            live.refresh_in_flight(progress);
            let format = Format::from_accept(
                req.headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            Response::builder()
                .header(hyper::header::CONTENT_TYPE, format.content_type())
                .body(Full::new(Bytes::from(live.render(format))))
                .expect("static headers")
        }
        "/health" => Response::new(Full::new(Bytes::from_static(b"ok\n"))),
        _ => Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found: try /metrics\n")))
            .expect("static status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_trace::TraceRecord;

    fn job(phase: &str, step: Option<f64>) -> Job {
        Job {
            planned_phase: phase.into(),
            step_value: step,
            request: TraceRecord::new("r", reprise_trace::Timestamp(0)),
            scheduled: Instant::now(),
            body: Vec::new(),
            target: 0,
            turn: None,
        }
    }

    fn sample(phase: &str, ok: bool) -> (Option<u16>, Sample) {
        let status = Some(if ok { 200 } else { 503 });
        let sample = Sample {
            phase: phase.into(),
            ok,
            error_kind: (!ok).then(|| "http_5xx".to_owned()),
            queue_us: Some(if ok { 200 } else { 5_000 }),
            ttft_us: ok.then_some(120_000),
            e2e_us: ok.then_some(400_000),
            tpot_us: ok.then_some(20_000),
            itl_us: if ok { vec![20_000, 21_000] } else { Vec::new() },
            n_in: 100,
            n_out: if ok { 16 } else { 0 },
            input_mismatch: ok.then_some(true),
            ..Sample::default()
        };
        (status, sample)
    }

    #[test]
    fn finished_requests_fill_histograms_and_counters_by_phase_and_class() {
        let live = Arc::new(Live::new("r1", 0, "m", RateProfile::None));
        let mut obs = live.observer(1.0);
        for ok in [true, true, false] {
            let (status, s) = sample("measure", ok);
            obs.observe(status, &s);
        }
        let text = live.render(Format::Prometheus);
        let base = r#"run_id="r1",worker="0",model="m",phase="measure",step="""#;
        for line in [
            format!("reprise_replay_ttft_seconds_count{{{base}}} 2"),
            format!("reprise_replay_itl_seconds_count{{{base}}} 4"),
            format!("reprise_replay_schedule_lag_seconds_count{{{base}}} 3"),
            format!("reprise_replay_late_sends_total{{{base}}} 1"),
            format!("reprise_replay_prompt_tokens_total{{{base}}} 300"),
            format!("reprise_replay_output_tokens_total{{{base}}} 32"),
            format!("reprise_replay_token_mismatches_total{{{base}}} 2"),
            format!(
                "reprise_replay_requests_total{{{base},status_class=\"2xx\",error_class=\"\"}} 2"
            ),
            format!(
                "reprise_replay_requests_total{{{base},status_class=\"5xx\",error_class=\"http_5xx\"}} 1"
            ),
            // 120 ms lies in the bucket whose bound is 0.1202 (log-spaced).
            format!("reprise_replay_ttft_seconds_bucket{{{base},le=\"0.1096\"}} 0"),
            format!("reprise_replay_ttft_seconds_bucket{{{base},le=\"0.1202\"}} 2"),
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "missing {line}\n{text}"
            );
        }
    }

    #[test]
    fn a_distributed_worker_labels_its_metrics_with_the_coordinated_run_and_its_shard() {
        let mut config = crate::ReplayConfig::new(vec!["http://a".into()], "m", "/tmp/x");
        config.run_id = "own".into();
        config.shard = crate::shard::Shard::new(2, 3).unwrap();
        config.distributed = Some(reprise_trace::run::Distributed {
            coordinator_id: "coord-1".into(),
            ..Default::default()
        });
        let pacing = crate::Pacing::Open(crate::workload::OpenPlan::Listed(Vec::new()));
        let text = Live::for_run(&config, &pacing).render(Format::Prometheus);
        assert!(text.contains(r#"run_id="coord-1""#), "{text}");
        assert!(text.contains(r#"worker="2""#), "{text}");
        assert!(!text.contains(r#"run_id="own""#), "{text}");
    }

    #[test]
    fn the_phase_gauge_follows_what_is_sent() {
        let live = Live::new("r1", 0, "m", RateProfile::None);
        live.on_send(&job("warmup", None));
        live.on_send(&job("rate=5", Some(5.0)));
        live.on_send(&job("rate=5", Some(5.0)));
        let text = live.render(Format::Prometheus);
        assert!(text.contains(
            r#"reprise_replay_phase{run_id="r1",worker="0",model="m",phase="warmup"} 0.0"#
        ));
        assert!(text.contains(
            r#"reprise_replay_phase{run_id="r1",worker="0",model="m",phase="rate=5"} 1.0"#
        ));
        assert!(
            text.contains(r#"reprise_replay_step_value{run_id="r1",worker="0",model="m"} 5.0"#)
        );
        assert!(text.contains(r#"reprise_replay_step{run_id="r1",worker="0",model="m"} 1.0"#));
        assert!(
            text.contains(
                r#"reprise_replay_requests_sent_total{run_id="r1",worker="0",model="m"} 3"#
            )
        );
    }

    #[test]
    fn rate_profiles_give_the_intended_rate_at_each_instant() {
        let p = RateProfile::PerSecond(vec![3, 0, 7]);
        assert_eq!(p.at(0.5), 3.0);
        assert_eq!(p.at(1.2), 0.0);
        assert_eq!(p.at(2.9), 7.0);
        assert_eq!(p.at(9.0), 0.0);
        let s = RateProfile::Steps(vec![(10.0, 5.0), (20.0, 10.0)]);
        assert_eq!(s.at(0.0), 5.0);
        assert_eq!(s.at(15.0), 10.0);
        assert_eq!(s.at(25.0), 0.0);
    }
}
