//! The engine thread: runs [`Engine`] steps on the real clock and delivers tokens.
//!
//! The engine runs on its own OS thread and sleeps each step's duration with
//! `std::thread::sleep` (tens of microseconds of precision on Linux, where tokio's timer is
//! millisecond-grained). Steps run back to back while there is work; the simulated GPU is
//! busy for exactly that time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::engine::{Emit, Engine, Rejection, SeqId, SeqSpec};
use crate::metrics::Metrics;
use crate::profile::Profile;

/// What the engine tells one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// Accepted into the waiting queue.
    Queued,
    /// Not accepted.
    Rejected(Rejection),
    /// One more token.
    Token,
    /// The last token.
    Last,
}

/// A message to the engine thread.
#[derive(Debug)]
pub enum Msg {
    /// A new request.
    Submit {
        /// The request.
        spec: SeqSpec,
        /// Where its events go.
        events: UnboundedSender<SeqEvent>,
        /// Set at its first admission to the prompt tokens served from the prefix cache
        /// ([`NOT_ADMITTED`] until then), for `usage.prompt_tokens_details.cached_tokens`.
        cached: Arc<AtomicU32>,
    },
    /// Pause the engine (a model reload): no steps for this long (wall clock, already scaled).
    Pause(Duration),
}

/// The value of a request's `cached` count before it is admitted.
pub const NOT_ADMITTED: u32 = u32::MAX;

struct Live {
    events: UnboundedSender<SeqEvent>,
    cached: Arc<AtomicU32>,
    arrived: Instant,
    first: bool,
}

/// Starts the engine thread; it ends when every sender of the returned channel is dropped
/// and the engine is idle.
pub fn spawn(
    profile: Profile,
    speedup: f64,
    metrics: Arc<Metrics>,
) -> (UnboundedSender<Msg>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = std::thread::Builder::new()
        .name("reprise-sim-engine".into())
        .spawn(move || run(Engine::new(profile), speedup, metrics, rx))
        .expect("spawning the engine thread");
    (tx, handle)
}

fn run(mut engine: Engine, speedup: f64, metrics: Arc<Metrics>, mut rx: UnboundedReceiver<Msg>) {
    let mut live: HashMap<SeqId, Live> = HashMap::new();
    let mut paused_until: Option<Instant> = None;
    let mut open = true;
    let profile = engine.profile().clone();
    loop {
        if engine.is_idle() && paused_until.is_none() {
            if !open {
                return;
            }
            match rx.blocking_recv() {
                Some(msg) => handle(msg, &mut engine, &mut live, &mut paused_until, &metrics),
                None => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(msg) => handle(msg, &mut engine, &mut live, &mut paused_until, &metrics),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if let Some(until) = paused_until {
            let now = Instant::now();
            if now < until {
                std::thread::sleep((until - now).min(Duration::from_millis(20)));
                continue;
            }
            paused_until = None;
        }
        if engine.is_idle() {
            continue;
        }
        let start = Instant::now();
        let out = engine.step();
        let secs = out.duration_us / 1e6 / speedup;
        if secs > 0.0 {
            let end = start + Duration::from_secs_f64(secs);
            let now = Instant::now();
            if end > now {
                std::thread::sleep(end - now);
            }
        }
        let now = Instant::now();
        metrics
            .busy_ns
            .fetch_add((now - start).as_nanos() as u64, Ordering::Relaxed);
        metrics.steps.fetch_add(1, Ordering::Relaxed);
        metrics
            .batch_size
            .store(out.batch as u64, Ordering::Relaxed);
        metrics
            .preemptions
            .fetch_add(out.preempted, Ordering::Relaxed);
        metrics
            .prefix_queries
            .fetch_add(out.prefix_queried_tokens, Ordering::Relaxed);
        metrics
            .prefix_hits
            .fetch_add(out.prefix_hit_tokens, Ordering::Relaxed);
        metrics
            .generation_tokens
            .fetch_add(out.emits.len() as u64, Ordering::Relaxed);
        for (id, cached) in out.admitted.iter().zip(&out.cached_tokens) {
            // The first admission counts (a preempted sequence recomputes, as in vLLM).
            if let Some(l) = live.get(id) {
                let _ = l.cached.compare_exchange(
                    NOT_ADMITTED,
                    *cached,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        for emit in out.emits {
            let (id, last) = match emit {
                Emit::Token(id) => (id, false),
                Emit::Last(id) => (id, true),
            };
            let Some(l) = live.get_mut(&id) else { continue };
            if l.first {
                l.first = false;
                metrics
                    .ttft
                    .observe((now - l.arrived).as_secs_f64() * speedup);
            }
            let event = if last {
                SeqEvent::Last
            } else {
                SeqEvent::Token
            };
            let gone = l.events.send(event).is_err();
            if last {
                metrics
                    .e2e
                    .observe((now - l.arrived).as_secs_f64() * speedup);
                live.remove(&id);
            } else if gone {
                // The client went away: free its slot and KV blocks, as vLLM aborts.
                live.remove(&id);
                engine.abort(id);
            }
        }
        publish_gauges(&engine, &profile, &metrics);
    }
}

fn handle(
    msg: Msg,
    engine: &mut Engine,
    live: &mut HashMap<SeqId, Live>,
    paused_until: &mut Option<Instant>,
    metrics: &Metrics,
) {
    match msg {
        Msg::Submit {
            spec,
            events,
            cached,
        } => {
            let id = spec.id;
            let prompt = u64::from(spec.prompt_tokens);
            match engine.submit(spec) {
                Ok(()) => {
                    metrics.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
                    if events.send(SeqEvent::Queued).is_ok() {
                        live.insert(
                            id,
                            Live {
                                events,
                                cached,
                                arrived: Instant::now(),
                                first: true,
                            },
                        );
                    } else {
                        engine.abort(id);
                    }
                }
                Err(r) => {
                    metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = events.send(SeqEvent::Rejected(r));
                }
            }
            metrics
                .waiting
                .store(engine.waiting() as u64, Ordering::Relaxed);
        }
        Msg::Pause(d) => {
            let until = Instant::now() + d;
            *paused_until = Some(paused_until.map_or(until, |p| p.max(until)));
        }
    }
}

fn publish_gauges(engine: &Engine, profile: &Profile, metrics: &Metrics) {
    metrics
        .running
        .store(engine.running() as u64, Ordering::Relaxed);
    if engine.is_idle() {
        metrics.batch_size.store(0, Ordering::Relaxed);
    }
    metrics
        .waiting
        .store(engine.waiting() as u64, Ordering::Relaxed);
    metrics
        .cache_usage_ppm
        .store((engine.cache_usage() * 1e6) as u64, Ordering::Relaxed);
    let kv_bytes =
        engine.used_blocks() * u64::from(profile.block_size) * profile.kv_bytes_per_token;
    metrics
        .fb_used_bytes
        .store(profile.weights_bytes + kv_bytes, Ordering::Relaxed);
}
