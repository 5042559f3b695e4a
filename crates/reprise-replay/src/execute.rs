//! The executor: [`run`] sets up the run's clock, clients, samplers and writer thread,
//! runs the open loop (`open`) or the closed loop (`closed`) and the run's
//! events beside them, and writes the run directory ([`crate::write`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::closed::ClosedLoop;
use crate::live::{self, Live};
use crate::prepare::MetricsEndpoint;
use crate::send::{Done, SendCtx, endpoint_urls, header_map, lean_targets, reqwest_if_needed};
use crate::summary::Summarizer;
use crate::{Pacing, ReplayConfig, ReplayError, RunSummary, closed, events, open, write};

/// Raises this process's soft limit on open files to its hard limit (every open stream is
/// a socket, and the soft limit is often 1,024) and returns the limit now in force, or
/// `None` where it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        // `None` is unlimited.
        let mut limit = getrlimit(Resource::Nofile);
        if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
            && current < maximum
        {
            limit.current = Some(maximum);
            if setrlimit(Resource::Nofile, limit).is_err() {
                limit = getrlimit(Resource::Nofile);
            }
        }
        limit.current.or(Some(u64::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Shared between the executor, the progress view and the writer.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Requests finished (any outcome).
    pub finished: AtomicU64,
    /// Requests failed.
    pub failed: AtomicU64,
    /// Planned requests (open loop), 0 when unknown.
    pub planned: AtomicU64,
    /// Running TTFT median of the measured requests, µs (0 until known).
    pub ttft_p50_us: AtomicU64,
    /// Running TTFT p99, µs.
    pub ttft_p99_us: AtomicU64,
    /// Requests that found every connection of their sender busy and waited for one.
    pub connection_waits: AtomicU64,
}

/// Open files kept back from the connection budget: result and sample files, the
/// metrics endpoint, the runtime's own descriptors.
const FILES_RESERVED: u64 = 256;

/// The default bound on open connections: what the open-files limit in force leaves after
/// 256 open files (FILES_RESERVED), halved when the servers run in this process (`sim` targets, whose
/// accepted sockets count against the same limit). At least 16.
pub fn connection_budget(servers_in_process: bool) -> usize {
    #[cfg(unix)]
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    #[cfg(not(unix))]
    let limit = 8_192u64;
    budget_from(limit, servers_in_process)
}

fn budget_from(open_files: u64, servers_in_process: bool) -> usize {
    let free = open_files.saturating_sub(FILES_RESERVED);
    let per_connection = if servers_in_process { 2 } else { 1 };
    // Beyond a million connections the bound is moot: one port range to a target holds
    // about 28,000.
    (free / per_connection).clamp(16, 1 << 20) as usize
}

/// What every request task shares: the run's configuration, clock, stop flag and count of
/// requests sent (for the warm-up), and the request path.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) config: Arc<ReplayConfig>,
    pub(crate) clock: Arc<Clock>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) ctx: Arc<SendCtx>,
}

/// Runs a replay to the end (or until `stop` is set), writing the run directory.
pub async fn run(
    config: ReplayConfig,
    pacing: Pacing,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Result<RunSummary, ReplayError> {
    run_with(config, pacing, stop, progress, None).await
}

/// Live metrics for [`run_with`]: what is counted, and where it is served.
#[derive(Debug)]
pub struct LiveRun {
    /// The metrics, also read by a live view.
    pub live: Arc<Live>,
    /// Where `/metrics` is served, if anywhere.
    pub endpoint: Option<MetricsEndpoint>,
}

/// [`run`], counting live metrics (and serving them on the endpoint while it runs and for
/// its linger time after).
pub async fn run_with(
    config: ReplayConfig,
    pacing: Pacing,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    live: Option<LiveRun>,
) -> Result<RunSummary, ReplayError> {
    let Some(LiveRun { live, endpoint }) = live else {
        return run_inner(config, pacing, stop, progress, None).await;
    };
    let listener = match endpoint {
        Some(e) => Some((
            tokio::net::TcpListener::from_std(e.listener)
                .map_err(|e| ReplayError::Config(format!("serving metrics: {e}")))?,
            e.linger,
        )),
        None => None,
    };
    let server = listener.map(|(listener, linger)| {
        let task = tokio::spawn(live::serve(listener, live.clone(), progress.clone()));
        (task, linger)
    });
    let ticker = tokio::spawn(live::tick_forever(live.clone(), progress.clone()));
    let result = run_inner(config, pacing, stop, progress, Some(live)).await;
    if let Some((task, linger)) = server {
        // Scrapers take the final values.
        tokio::time::sleep(linger).await;
        task.abort();
    }
    ticker.abort();
    result
}

async fn run_inner(
    config: ReplayConfig,
    pacing: Pacing,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    live: Option<Arc<Live>>,
) -> Result<RunSummary, ReplayError> {
    if config.targets.is_empty() {
        return Err(ReplayError::Config("no target".into()));
    }
    let open_loop = matches!(pacing, Pacing::Open(_));
    let mut config = config;
    if config.max_connections.is_none() {
        config.max_connections = Some(connection_budget(false));
    }
    let writer = write::create(&config)?;
    let requests_file = config.run_dir.join("requests.parquet");
    let headers = header_map(&config.headers)?;
    let urls = endpoint_urls(&config)?;
    let client = reqwest_if_needed(&config, &urls)?;

    // Each sender thread's client (see `send::http_client`), built before the clock starts:
    // a client with TLS set up takes milliseconds to build.
    let sender_clients = match &pacing {
        Pacing::Open(plan) => {
            let senders = match config.senders {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            }
            .clamp(1, plan.expected_len().max(1) as usize);
            (0..senders)
                .map(|_| reqwest_if_needed(&config, &urls))
                .collect::<Result<Vec<_>, _>>()?
        }
        Pacing::Closed { .. } => Vec::new(),
    };

    let clock = Arc::new(match config.start {
        Some((t0, wall0_ns)) => Clock { t0, wall0_ns },
        None => Clock::new(Duration::from_millis(20)),
    });
    if let Some(l) = &live {
        l.start(clock.t0);
    }
    // The samplers share the run's clock: their rows line up with the requests'.
    let monitor = match &config.monitor {
        Some(m) => {
            let mut m = m.clone();
            m.out_dir = config.run_dir.clone();
            m.anchor = Some((clock.wall0_ns, clock.t0));
            Some(
                reprise_monitor::Monitor::start(m)
                    .map_err(|e| ReplayError::Config(format!("monitor: {e}")))?,
            )
        }
        None => None,
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
    let summary = Arc::new(Mutex::new(Summarizer::default()));
    let aborted: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let config = Arc::new(config);
    let writer_thread = write::spawn(
        writer,
        done_rx,
        write::Sink {
            clock: *clock,
            config: config.clone(),
            summary: summary.clone(),
            progress: progress.clone(),
            stop: stop.clone(),
            aborted: aborted.clone(),
            live: live.as_ref().map(|l| l.observer(config.queue_limit_ms)),
        },
    )?;

    // After a stop, requests in flight get `drain` to finish; then they are cancelled, each
    // still ending in its row.
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    let drain_watch = {
        let (stop, drain) = (stop.clone(), config.drain);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(drain).await;
            let _ = cancel_tx.send(true);
            // Held until the run ends, so that waiting receivers see the value.
            std::future::pending::<()>().await;
        })
    };
    let ctx = Arc::new(SendCtx {
        client: client.clone(),
        lean: lean_targets(&config, &urls),
        urls: urls.clone(),
        headers,
        done_tx: done_tx.clone(),
        // The open loop bounds connections where it paces (`open`); users of the closed
        // loop wait here for a connection beyond the bound.
        limiter: match &pacing {
            Pacing::Open(_) => config.max_in_flight,
            Pacing::Closed { .. } => match (config.max_in_flight, config.max_connections) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
        timeouts: config.timeouts,
        stream: config.shape.stream,
        progress: progress.clone(),
        cancel,
        live,
    });
    let shared = Shared {
        config: config.clone(),
        clock: clock.clone(),
        stop: stop.clone(),
        sent: Arc::new(AtomicU64::new(0)),
        ctx,
    };

    // HTTP events go through reqwest: a client only when there are events.
    let event_client = match (&client, config.events.is_empty()) {
        (_, true) => None,
        (Some(c), false) => Some(c.clone()),
        (None, false) => Some(crate::send::http_client()?),
    };
    let events_task = {
        let (events, clock, client, stop) =
            (config.events.clone(), *clock, event_client, stop.clone());
        tokio::spawn(async move {
            let mut records = Vec::new();
            for e in events {
                tokio::time::sleep_until(tokio::time::Instant::from_std(clock.t0 + e.offset)).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                tracing::info!("event at {:?}: {}", e.offset, e.describe());
                let Some(client) = &client else { break };
                let (ok, detail) = events::execute(client, &e.action).await;
                records.push(events::EventRecord {
                    offset_s: e.offset.as_secs_f64(),
                    action: e.describe(),
                    started_ns: clock.wall(started).0,
                    finished_ns: clock.wall(Instant::now()).0,
                    ok,
                    detail,
                });
            }
            records
        })
    };
    let (mut complete, stopped_early) = match pacing {
        Pacing::Open(plan) => (open::run(plan, sender_clients, &urls, &shared).await?, None),
        Pacing::Closed {
            users,
            step_duration,
            requests_per_step,
            think,
            requests,
        } => {
            let plan = ClosedLoop {
                users,
                step_duration,
                requests_per_step,
                think,
                requests,
            };
            let ended = closed::run(plan, &shared, &summary, config.stop_rule).await?;
            (ended.complete, ended.stopped_early)
        }
    };
    // In-flight requests were awaited where they were sent: the open loop drains its own
    // (bounded by `drain` after a stop), a closed-loop step waits for its users.
    drop(shared);
    drain_watch.abort();
    if stop.load(Ordering::Relaxed) {
        complete = false;
    }
    drop(done_tx);
    let written = writer_thread
        .join()
        .map_err(|_| ReplayError::Config("the result writer panicked".into()))
        .and_then(|r| r);
    let recorded = match written {
        Ok(rows) => rows,
        Err(e) => {
            // The results could not be kept: the samplers and events stop with the run.
            events_task.abort();
            if let Some(m) = monitor {
                let _ = m.stop();
            }
            return Err(e);
        }
    };
    let summary = summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let overall = summary.overall();
    let intended_s = config.intended.map(|d| d.as_secs_f64());
    // Events still waiting when the workload ended did not happen; those done are kept.
    let mut events_task = events_task;
    let event_records =
        match tokio::time::timeout(Duration::from_millis(100), &mut events_task).await {
            Ok(Ok(r)) => r,
            _ => {
                events_task.abort();
                Vec::new()
            }
        };
    write::events(&config, &event_records)?;
    let monitor = match monitor {
        Some(m) => match m.stop() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("monitor: {e}");
                None
            }
        },
        None => None,
    };
    let run_summary = RunSummary {
        run_id: config.run_id.clone(),
        complete,
        recorded,
        aborted: aborted.lock().unwrap_or_else(|e| e.into_inner()).take(),
        targets: config.target_labels().to_vec(),
        intended_s,
        intended_throughput: intended_s
            .filter(|s| *s > 0.0)
            .map(|s| overall.ok as f64 / s),
        phases: summary.phases(),
        sessions: summary.sessions(),
        // The schedule is the open loop's; a closed loop's users send when they are ready.
        client: open_loop
            .then(|| {
                summary.client(
                    &overall,
                    config.max_connections,
                    progress.connection_waits.load(Ordering::Relaxed),
                )
            })
            .flatten(),
        overall,
        stopped_early,
        requests_file,
        events: event_records,
        monitor,
    };
    let info = write::run_info(&config, &clock, &run_summary);
    if config.distributed.is_some() {
        // A shard's histograms, for an exact merge of the summaries without the rows.
        reprise_trace::run::write_json(&config.run_dir.join("histograms.json"), &summary.export())?;
    }
    reprise_trace::run::write_json(&config.run_dir.join("run.json"), &info)?;
    Ok(run_summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_budget_leaves_room_for_files_and_in_process_servers() {
        assert_eq!(budget_from(20_000, false), 19_744);
        assert_eq!(budget_from(20_000, true), 9_872);
        assert_eq!(budget_from(1_024, false), 768);
        // A tiny limit still allows some connections; an unlimited one is capped.
        assert_eq!(budget_from(100, false), 16);
        assert_eq!(budget_from(u64::MAX, false), 1 << 20);
    }
}
