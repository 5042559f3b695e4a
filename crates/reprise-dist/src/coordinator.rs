//! `reprise coordinate`: N workers register (each with its shard, the digests of its trace
//! and arguments, and its clock offset), and once all have, the coordinator announces the
//! common start `T0 = now + margin` on its clock. It then waits for their ends and says
//! what happened ([`CoordinatorReport`]).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Notify;

use crate::DistError;
use crate::protocol::{
    DoneReport, ErrorReply, Registered, Registration, StartReply, Status, TimeReply,
};

/// How a coordinator runs.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Workers (shards) expected.
    pub workers: u32,
    /// Time from the last registration to the start.
    pub margin: Duration,
    /// How long to wait for every worker to register.
    pub register_timeout: Duration,
    /// How long to wait for every worker's end after the start at most.
    pub run_timeout: Duration,
    /// How long after the longest worker's workload (its intended duration) to wait for
    /// its end: a worker that has not reported by then is taken for dead.
    pub grace: Duration,
    /// A skew bound above this is warned about.
    pub warn_skew: Duration,
    /// A skew bound above this refuses to start (`--max-skew-ms`).
    pub max_skew: Option<Duration>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            workers: 1,
            margin: Duration::from_secs(3),
            register_timeout: Duration::from_secs(300),
            run_timeout: Duration::from_secs(7 * 24 * 3600),
            grace: Duration::from_secs(600),
            warn_skew: Duration::from_millis(5),
            max_skew: None,
        }
    }
}

/// What a coordinated run did.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorReport {
    /// The final status (also written to `coordinator.json` by the binary).
    pub status: Status,
    /// Every worker reported a complete end.
    pub complete: bool,
}

/// The coordinator's clock: one wall-clock anchor, monotonic from there.
#[derive(Debug, Clone, Copy)]
struct CoordClock {
    t0: Instant,
    wall0_ns: i64,
}

impl CoordClock {
    fn new() -> Self {
        CoordClock {
            t0: Instant::now(),
            wall0_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
        }
    }

    fn now_ns(&self) -> i64 {
        self.wall0_ns + self.t0.elapsed().as_nanos() as i64
    }
}

struct State {
    status: Status,
    warning: Option<String>,
    skew_bound_ns: i64,
}

struct Shared {
    clock: CoordClock,
    config: CoordinatorConfig,
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new coordinator run's id: its start time and process id, in hex.
fn new_id(clock: &CoordClock) -> String {
    format!("coord-{:x}-{:x}", clock.wall0_ns, std::process::id())
}

/// Serves the API on `listener` until every worker has ended (or the run timed out);
/// an error when the run never started (a worker missing, the skew bound exceeded).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: CoordinatorConfig,
) -> Result<CoordinatorReport, DistError> {
    if config.workers == 0 {
        return Err(DistError::Config("--workers must be at least 1".into()));
    }
    let clock = CoordClock::new();
    let shared = Arc::new(Shared {
        clock,
        state: Mutex::new(State {
            status: Status {
                coordinator_id: new_id(&clock),
                workers: config.workers,
                ..Status::default()
            },
            warning: None,
            skew_bound_ns: 0,
        }),
        config,
        changed: Notify::new(),
    });
    let server = tokio::spawn(accept_loop(listener, shared.clone()));
    let result = run(&shared).await;
    // Workers still waiting get their answer before the server goes.
    shared.changed.notify_waiters();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.abort();
    result
}

async fn run(shared: &Arc<Shared>) -> Result<CoordinatorReport, DistError> {
    let config = shared.config.clone();
    // 1. Every worker registers.
    let deadline = tokio::time::Instant::now() + config.register_timeout;
    loop {
        let notified = shared.changed.notified();
        {
            let state = shared.lock();
            if state.status.registered.len() as u32 == config.workers {
                break;
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let mut state = shared.lock();
            let missing: Vec<String> = (0..config.workers)
                .filter(|k| !state.status.registered.iter().any(|r| r.shard == *k))
                .map(|k| k.to_string())
                .collect();
            let why = format!(
                "shard{} {} of {} never registered within {} s: the run does not start",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
                config.workers,
                config.register_timeout.as_secs()
            );
            state.status.failure = Some(why.clone());
            shared.changed.notify_waiters();
            return Err(DistError::NotStarted(why));
        }
    }
    // 2. The skew bound, then the start.
    {
        let mut state = shared.lock();
        let mut u: Vec<i64> = state
            .status
            .registered
            .iter()
            .map(|r| r.uncertainty_ns.max(0))
            .collect();
        u.sort_unstable_by(|a, b| b.cmp(a));
        let bound = u.iter().take(2).sum::<i64>();
        state.skew_bound_ns = bound;
        let ms = bound as f64 / 1e6;
        if let Some(max) = config.max_skew
            && bound as u128 > max.as_nanos()
        {
            let why = format!(
                "the workers' start skew could reach {ms:.3} ms (their clock offsets' uncertainties), above --max-skew-ms {}: the run does not start",
                max.as_secs_f64() * 1e3
            );
            state.status.failure = Some(why.clone());
            shared.changed.notify_waiters();
            return Err(DistError::NotStarted(why));
        }
        if bound as u128 > config.warn_skew.as_nanos() {
            let w = format!(
                "the workers' start skew could reach {ms:.3} ms, above {} ms (slow or busy network between workers and coordinator)",
                config.warn_skew.as_secs_f64() * 1e3
            );
            tracing::warn!("{w}");
            state.warning = Some(w);
        }
        let t0 = shared.clock.now_ns() + config.margin.as_nanos() as i64;
        state.status.t0_ns = Some(t0);
        tracing::info!(
            "all {} workers registered: start at {t0} (in {:.1} s)",
            config.workers,
            config.margin.as_secs_f64()
        );
        shared.changed.notify_waiters();
    }
    // 3. Every worker ends, or the run times out: a week at most, or the longest workload
    // and the grace time after it when every worker said how long its workload lasts.
    let longest = {
        let state = shared.lock();
        let all_known = state.status.registered.iter().all(|r| r.intended_ns > 0);
        all_known.then(|| {
            Duration::from_nanos(
                state
                    .status
                    .registered
                    .iter()
                    .map(|r| r.intended_ns)
                    .max()
                    .unwrap_or(0),
            )
        })
    };
    let wait = longest.map_or(config.run_timeout, |l| {
        (l + config.grace).min(config.run_timeout)
    });
    let deadline = tokio::time::Instant::now() + config.margin + wait;
    loop {
        let notified = shared.changed.notified();
        if shared.lock().status.done.len() as u32 == config.workers {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    let state = shared.lock();
    let complete = state.status.done.len() as u32 == config.workers
        && state.status.done.iter().all(|d| d.complete);
    Ok(CoordinatorReport {
        status: state.status.clone(),
        complete,
    })
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(req, &shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(value).unwrap_or_default(),
        )))
        .expect("static headers")
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorReply {
            error: message.into(),
        },
    )
}

async fn body<T: for<'de> serde::Deserialize<'de>>(
    req: Request<hyper::body::Incoming>,
) -> Result<T, Response<Full<Bytes>>> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("not the expected JSON: {e}"),
        )
    })
}

async fn answer(req: Request<hyper::body::Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/v1/time") => json(
            StatusCode::OK,
            &TimeReply {
                now_ns: shared.clock.now_ns(),
            },
        ),
        (Method::POST, "/v1/register") => match body::<Registration>(req).await {
            Ok(r) => register(shared, r),
            Err(e) => e,
        },
        (Method::GET, "/v1/start") => {
            let shard = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("shard=")))
                .and_then(|v| v.parse::<u32>().ok());
            start(shared, shard).await
        }
        (Method::POST, "/v1/done") => match body::<DoneReport>(req).await {
            Ok(d) => {
                let mut state = shared.lock();
                state.status.done.retain(|x| x.shard != d.shard);
                state.status.done.push(d);
                state.status.done.sort_by_key(|x| x.shard);
                drop(state);
                shared.changed.notify_waiters();
                json(StatusCode::OK, &serde_json::json!({}))
            }
            Err(e) => e,
        },
        (Method::GET, "/v1/status") => json(StatusCode::OK, &shared.lock().status),
        _ => error(
            StatusCode::NOT_FOUND,
            "not found: the API is /v1/time, /v1/register, /v1/start, /v1/done, /v1/status",
        ),
    }
}

fn register(shared: &Shared, r: Registration) -> Response<Full<Bytes>> {
    let workers = shared.config.workers;
    let mut state = shared.lock();
    let conflict = if state.status.t0_ns.is_some() || state.status.failure.is_some() {
        Some("the run has already started (or failed): too late to register".to_owned())
    } else if r.shards != workers {
        Some(format!(
            "shard {} says there are {} shards; this coordinator runs {workers}",
            r.shard, r.shards
        ))
    } else if r.shard >= workers {
        Some(format!(
            "shard {}/{}: shards are numbered 0 to {}",
            r.shard,
            r.shards,
            workers - 1
        ))
    } else if let Some(first) = state.status.registered.iter().find(|x| x.shard == r.shard) {
        Some(format!(
            "shard {} registered twice (host {}, then host {})",
            r.shard, first.host, r.host
        ))
    } else if let Some(first) = state.status.registered.first() {
        if first.trace_digest != r.trace_digest {
            Some(format!(
                "shard {}'s trace (digest {}) differs from shard {}'s (digest {}): every worker must replay the same trace",
                r.shard, r.trace_digest, first.shard, first.trace_digest
            ))
        } else if first.args_digest != r.args_digest {
            Some(format!(
                "shard {}'s workload arguments (digest {}) differ from shard {}'s (digest {}): every worker must be given the same load, window, seed and model",
                r.shard, r.args_digest, first.shard, first.args_digest
            ))
        } else {
            None
        }
    } else {
        None
    };
    if let Some(why) = conflict {
        tracing::warn!("refused a registration: {why}");
        return error(StatusCode::CONFLICT, why);
    }
    tracing::info!(
        "shard {}/{} registered from {} ({} requests, clock offset {:.3} ms ± {:.3} ms)",
        r.shard,
        r.shards,
        r.host,
        r.planned,
        r.offset_ns as f64 / 1e6,
        r.uncertainty_ns as f64 / 1e6
    );
    state.status.registered.push(r);
    state.status.registered.sort_by_key(|x| x.shard);
    let id = state.status.coordinator_id.clone();
    drop(state);
    shared.changed.notify_waiters();
    json(StatusCode::OK, &Registered { coordinator_id: id })
}

async fn start(shared: &Shared, shard: Option<u32>) -> Response<Full<Bytes>> {
    let Some(shard) = shard else {
        return error(StatusCode::BAD_REQUEST, "GET /v1/start?shard=K");
    };
    loop {
        let notified = shared.changed.notified();
        {
            let state = shared.lock();
            if let Some(why) = &state.status.failure {
                return error(StatusCode::SERVICE_UNAVAILABLE, why.clone());
            }
            if !state.status.registered.iter().any(|r| r.shard == shard) {
                return error(
                    StatusCode::CONFLICT,
                    format!("shard {shard} has not registered"),
                );
            }
            if let Some(t0) = state.status.t0_ns {
                return json(
                    StatusCode::OK,
                    &StartReply {
                        coordinator_id: state.status.coordinator_id.clone(),
                        t0_ns: t0,
                        skew_bound_ns: state.skew_bound_ns,
                        warning: state.warning.clone(),
                    },
                );
            }
        }
        notified.await;
    }
}
