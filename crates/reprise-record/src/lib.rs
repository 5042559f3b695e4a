//! # reprise-record — a capture reverse proxy for LLM-serving traffic
//!
//! [`Recorder::start`] listens, forwards every request to the upstream and streams every
//! response back chunk by chunk as it arrives (no buffering, no re-chunking, `TCP_NODELAY`),
//! and records one trace/1 row per exchange: arrival, TTFT, inter-token gaps, E2E, status,
//! token counts (the upstream's `usage`, else the embedded tokenizer), salted prefix-block
//! hashes and session ids, non-content parameters.
//!
//! The forwarding path (plain `http://` upstreams through `reprise-net`'s lean HTTP/1.1
//! client) only stamps each read of the response and keeps it; measuring the SSE events,
//! parsing the request, tokenizing and hashing happen afterwards on worker threads
//! ([`observe`]), handed over in batches by a 50 ms tick, and rows go through a bounded
//! channel to a writer thread that finishes a Parquet part file every flush interval, so a
//! `kill -9` loses at most that interval.
//! When the workers fall behind, the row is written with what is known (no tokenizer) and
//! counted; when the writer falls behind, the row is dropped and counted: forwarding never
//! waits on recording. Credentials and content are never written unless asked for content
//! (`record_content`); header values are never written at all.
//!
//! Modules, each importing only those before it: [`config`] (settings and their checks),
//! [`counters`], `upstream` (the client to the server and its body), `sink` (where
//! finished exchanges go: workers, writer, counted drops), `body` (the response body and
//! the `Tap` that measures it), `proxy` (the forwarding path and its decisions), `admin`
//! (`/metrics`, `/health`), `server` (the proxy's own HTTP/1.1 server for its clients'
//! common requests; hyper serves the rest, and the admin port), `writer` (part files),
//! [`observe`] (rows from exchanges, on worker threads) and [`salt`]; this file holds the
//! lifecycle ([`Recorder`]).

mod admin;
mod body;
pub mod config;
mod conns;
pub mod counters;
pub mod observe;
mod proxy;
pub mod salt;
mod server;
mod sink;
mod upstream;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::Notify;

use body::ProxyBody;
use observe::{Exchange, to_record};
use proxy::Shared;
use sink::Sink;
use upstream::UpstreamClient;
use writer::writer_loop;

pub use config::{Limits, RecordConfig};
pub use counters::{Counters, RecordSummary};
pub use reprise_os::Priority;

/// Errors starting or stopping a recorder.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The listen or admin address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The output could not be created.
    #[error("{0}")]
    Output(#[from] reprise_trace::TraceError),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
    /// A named setting has an unusable value. `setting` is the option's name as the
    /// binary spells its flag (`upstream`, `max-header-bytes`), so that it can name the flag.
    #[error("{setting} {message}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// What is wrong with its value.
        message: String,
    },
}

/// Reads `data` as a client's request head the way the proxy's own server does, with a
/// head limit of `max` bytes: the length of a complete head it would serve itself, or
/// `None` (incomplete, left to hyper, too large, or invalid). The entry point of the
/// `h1_request` fuzz target and its corpus test (untrusted input: clients send these bytes).
#[doc(hidden)]
pub fn parse_request_head(data: &[u8], max: usize) -> Option<usize> {
    server::head_len(data, max)
}

/// Nice value of the observation workers by default ([`RecordConfig::worker_priority`]).
/// The writer runs at nice 0 (the proxy's), with the shortest slice: its part every flush
/// interval is what a crash can count on.
pub const RECORDING_NICE: i32 = 10;

/// Sets the calling recording thread's scheduling priority (the shortest time slice and, for
/// the workers, a lower one), so that on a busy machine the forwarding thread is not kept
/// waiting behind recording: with the recording threads
/// at the proxy's priority, added TTFT p99 was 1.5x nginx's with recording on and 1.14x
/// with it off. Recording that falls behind is counted, never waited for. Best effort: a
/// failure is logged and changes nothing else.
fn yield_to_forwarding(priority: reprise_os::Priority) {
    if let Err(e) = reprise_os::lower_this_thread(priority) {
        tracing::debug!("recording thread stays at its priority ({priority}): {e}");
    }
}

/// What the observation workers share: the batches of exchanges to observe, and where their
/// rows go.
struct Observer {
    rx: Mutex<std_mpsc::Receiver<Vec<Exchange>>>,
    tx: std_mpsc::SyncSender<sink::Rows>,
    opts: observe::ObserveOptions,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl Observer {
    /// Observes a batch and hands its rows to the writer (counted dropped when it is full).
    fn observe(&self, batch: Vec<Exchange>) {
        let counters = &self.counters;
        counters
            .waiting
            .fetch_sub(batch.len() as u64, Ordering::AcqRel);
        let rows: sink::Rows = batch
            .into_iter()
            .map(|x| to_record(x, &self.opts, false))
            .collect();
        counters.latency.observe_all(&rows);
        let n = rows.len() as u64;
        if self.tx.try_send(rows).is_err() {
            counters.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// After the cut (the batches' sender dropped): observes batches beside the workers
    /// until none is left or every worker has ended. A worker waiting in `recv` holds the
    /// receiver's lock, so the lock is only tried.
    fn help_until_drained(&self, workers: &[std::thread::JoinHandle<()>]) {
        use std::sync::TryLockError;
        use std_mpsc::TryRecvError;
        loop {
            let next = match self.rx.try_lock() {
                Ok(rx) => rx.try_recv(),
                Err(TryLockError::Poisoned(e)) => e.into_inner().try_recv(),
                Err(TryLockError::WouldBlock) => Err(TryRecvError::Empty),
            };
            match next {
                Ok(batch) => self.observe(batch),
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {
                    if workers.iter().all(std::thread::JoinHandle::is_finished) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

/// How often exchanges gathered for the observation workers are handed on.
const TICK: Duration = Duration::from_millis(50);

/// A running capture proxy.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    accept: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// What the workers share; the shutdown helps them with it.
    observer: Option<Arc<Observer>>,
    writer: Option<std::thread::JoinHandle<RecordSummary>>,
}

/// What a listener serves.
#[derive(Clone, Copy)]
enum Listener {
    /// The proxy: `server`'s own HTTP/1.1 path, hyper for what it leaves.
    Proxy,
    /// `/metrics` and `/health`, through hyper.
    Admin,
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, kind: Listener) {
    let limits = shared.config.limits;
    let table = conns::Table::new(limits.max_connections);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (or another transient failure): pause rather
                // than spin on a listener that stays readable.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the connection limit, the connection idle longest makes room.
        let Some(entry) = table
            .admit(|| {
                shared
                    .sink
                    .counters
                    .idle_closed
                    .fetch_add(1, Ordering::Relaxed);
            })
            .await
        else {
            break;
        };
        if shared.stopping.load(Ordering::Relaxed) {
            break;
        }
        let _ = stream.set_nodelay(true);
        let (shared, table) = (shared.clone(), table.clone());
        tokio::spawn(async move {
            match kind {
                Listener::Proxy => {
                    let mut stream = stream;
                    let served = server::connection(&mut stream, &shared, &table, &entry.conn);
                    if let server::Handled::Unusual(read) = served.await {
                        let io = server::Rewind::new(read, stream);
                        with_hyper(io, shared, &table, &entry, proxy::handle).await;
                    }
                }
                Listener::Admin => with_hyper(stream, shared, &table, &entry, admin::admin).await,
            }
            drop(entry);
        });
    }
}

/// Serves a connection through hyper with handler `f`, until it closes or is asked to
/// (`conns`).
async fn with_hyper<I, F, Fut>(
    io: I,
    shared: Arc<Shared>,
    table: &Arc<conns::Table>,
    entry: &conns::Entry,
    f: F,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Arc<Shared>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let limits = shared.config.limits;
    let (conn, table) = (entry.conn.clone(), table.clone());
    let svc = hyper::service::service_fn(move |req| {
        let (shared, busy) = (shared.clone(), table.busy(&conn));
        async move {
            let response = f(shared, req).await;
            Ok::<_, std::convert::Infallible>(
                response.map(|body| conns::Marked { body, _busy: busy }),
            )
        }
    });
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(serving);
    tokio::select! {
        _ = serving.as_mut() => {}
        _ = entry.conn.close.notified() => {
            // Closes at once when idle; an exchange begun meanwhile is finished.
            serving.as_mut().graceful_shutdown();
            let _ = serving.await;
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, RecordError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RecordError::Bind { addr, source })
}

impl Recorder {
    /// Binds, opens the output and starts forwarding (on the current tokio runtime).
    pub async fn start(config: RecordConfig) -> Result<Recorder, RecordError> {
        let upstream = config.check()?;
        std::fs::create_dir_all(&config.out).map_err(|e| {
            RecordError::Config(format!("cannot create {}: {e}", config.out.display()))
        })?;
        // Load the tokenizer's tables now rather than on the first request (they take a
        // while to build), so the first rows are not late.
        tokio::task::spawn_blocking(|| {
            use reprise_tokenizer::Tokenizer;
            reprise_tokenizer::Cl100k.count("warm up")
        })
        .await
        .map_err(|e| RecordError::Config(format!("loading the tokenizer: {e}")))?;
        let listener = bind(config.listen).await?;
        let admin_listener = match config.admin {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let client = UpstreamClient::for_url(&upstream)?;
        let counters = Arc::new(Counters::default());
        // Both channels carry batches. The workers' is bounded in exchanges by the sink's
        // count of those waiting (`--queue`), the writer's in rows by its batches of at most
        // BATCH.
        let (obs_tx, obs_rx) = std_mpsc::sync_channel::<Vec<Exchange>>(config.queue.max(1));
        let (row_tx, row_rx) = std_mpsc::sync_channel::<sink::Rows>(65_536 / sink::BATCH);
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<()>(1);
        let writer = {
            let (config, counters) = (config.clone(), counters.clone());
            std::thread::Builder::new()
                .name("reprise-record-writer".into())
                .spawn(move || {
                    // The proxy's nice value, with the shortest slice: at nice 10, three busy
                    // loops on the two cores starved it of the CPU a part takes, and a kill -9
                    // found no part written after several flush intervals (tests/e2e/torture.rs).
                    yield_to_forwarding(reprise_os::Priority::Nice(0));
                    writer_loop(config, row_rx, counters, move || {
                        let _ = ready_tx.send(());
                    })
                })
                .map_err(|e| RecordError::Config(format!("starting the writer: {e}")))?
        };
        // Traffic is taken only once the writer has rehearsed a part (writer::rehearsal).
        tokio::task::spawn_blocking(move || ready_rx.recv())
            .await
            .map_err(|e| RecordError::Config(format!("starting the writer: {e}")))?
            .map_err(|_| RecordError::Config("the writer stopped while starting".into()))?;
        let observer = Arc::new(Observer {
            rx: Mutex::new(obs_rx),
            tx: row_tx.clone(),
            opts: config.observe.clone(),
            counters: counters.clone(),
        });
        let mut workers = Vec::new();
        for i in 0..config.workers.max(1) {
            let observer = observer.clone();
            let priority = config.worker_priority;
            workers.push(
                std::thread::Builder::new()
                    .name(format!("reprise-record-obs{i}"))
                    .spawn(move || {
                        // The tokenizer's tables are built at the proxy's priority: at nice 10
                        // on a busy machine, building them held the first rows back past a
                        // flush interval (a kill -9 then found none written).
                        reprise_tokenizer::warm_up();
                        yield_to_forwarding(priority);
                        loop {
                            let next = observer.rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok(batch) = next else { break };
                            observer.observe(batch);
                        }
                    })
                    .map_err(|e| RecordError::Config(format!("starting a worker: {e}")))?,
            );
        }
        // Unique across restarts, even two within one second: request ids never repeat.
        let run_tag = format!(
            "{:x}{:04x}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros()),
            std::process::id() & 0xffff
        );
        let addr = listener.local_addr().map_err(|source| RecordError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let sink = Arc::new(Sink {
            observe: config.observe.clone(),
            max_observed_body: config.max_observed_body,
            counters,
            obs: Mutex::new(sink::Outlet::new(obs_tx, sink::BATCH, config.queue)),
            row_tx: Mutex::new(Some(row_tx)),
            idle: Notify::new(),
        });
        let shared = Arc::new(Shared {
            config,
            client,
            base_path: upstream.path().trim_end_matches('/').to_owned(),
            upstream,
            sink,
            next_id: AtomicU64::new(0),
            run_tag,
            stopping: AtomicBool::new(false),
        });
        let mut accept = vec![tokio::spawn(serve(
            listener,
            shared.clone(),
            Listener::Proxy,
        ))];
        if let Some(l) = admin_listener {
            accept.push(tokio::spawn(serve(l, shared.clone(), Listener::Admin)));
        }
        // The tick: hands on the exchanges gathered for the workers (a row waits at most a
        // tick for its batch), and is a timer always pending: tokio wakes its driver (an
        // eventfd write) whenever a timer is registered due before every other one, or with
        // no other one pending — each exchange's header-read and upstream timeouts on an
        // otherwise idle wheel.
        let ticking = shared.sink.clone();
        accept.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                ticking.flush();
            }
        }));
        Ok(Recorder {
            addr,
            admin_addr,
            shared,
            accept,
            workers,
            observer: Some(observer),
            writer: Some(writer),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.sink.counters
    }

    /// Stops accepting, waits (up to the drain time) for exchanges in flight, then writes
    /// and closes everything.
    pub async fn shutdown(mut self) -> RecordSummary {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::Relaxed);
        let s = &shared.sink;
        for a in &self.accept {
            a.abort();
        }
        let deadline = tokio::time::Instant::now() + shared.config.drain;
        while s.counters.in_flight.load(Ordering::Acquire) > 0 {
            let idle = s.idle.notified();
            if s.counters.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    "{} exchanges still in flight after {:?}: not recorded",
                    s.counters.in_flight.load(Ordering::Relaxed),
                    shared.config.drain
                );
                break;
            }
        }
        // What is still in flight at the cut is never recorded: its rows would come after
        // the files are closed.
        let abandoned = s.close();
        let workers = std::mem::take(&mut self.workers);
        let observer = self.observer.take();
        let writer = self.writer.take();
        let mut summary = tokio::task::spawn_blocking(move || {
            // The workers may be idle-class on a machine busy with other work: what waits
            // for them is observed here too, at this thread's priority, so that the cut
            // never waits for idle CPU time.
            if let Some(observer) = observer {
                observer.help_until_drained(&workers);
            }
            for w in workers {
                let _ = w.join();
            }
            writer.and_then(|w| w.join().ok()).unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        let c = &s.counters;
        summary.forwarded = c.forwarded.load(Ordering::Relaxed);
        summary.skipped = c.skipped.load(Ordering::Relaxed);
        summary.dropped = c.dropped.load(Ordering::Relaxed);
        summary.failed = c.failed.load(Ordering::Relaxed);
        summary.abandoned = abandoned;
        summary.lost = summary.dropped + summary.failed + abandoned;
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer(
        rx: std_mpsc::Receiver<Vec<Exchange>>,
    ) -> (Observer, std_mpsc::Receiver<sink::Rows>) {
        let (tx, rows) = std_mpsc::sync_channel(16);
        let observer = Observer {
            rx: Mutex::new(rx),
            tx,
            opts: observe::ObserveOptions {
                block_tokens: 4,
                record_content: false,
                salt: salt::Salt::from_bytes(b"t"),
            },
            counters: Arc::new(Counters::default()),
        };
        (observer, rows)
    }

    fn batch(ids: &[&str]) -> Vec<Exchange> {
        ids.iter()
            .map(|id| Exchange {
                request_id: (*id).into(),
                path: "/v1/completions".into(),
                body: Some(bytes::Bytes::from_static(
                    br#"{"model":"m","prompt":"one two three"}"#,
                )),
                status: 200,
                ..Exchange::default()
            })
            .collect()
    }

    /// At the cut, what no worker took is observed by the shutdown itself: whole rows
    /// (tokenized), every batch, in order.
    #[test]
    fn the_shutdown_observes_what_the_workers_left() {
        let (tx, rx) = std_mpsc::sync_channel(8);
        let (observer, rows) = observer(rx);
        observer.counters.waiting.store(3, Ordering::Relaxed);
        tx.send(batch(&["a", "b"])).unwrap();
        tx.send(batch(&["c"])).unwrap();
        drop(tx);
        observer.help_until_drained(&[]);
        let ids: Vec<(String, Option<u32>)> = rows
            .try_iter()
            .flatten()
            .map(|r| (r.request_id, r.input_tokens))
            .collect();
        assert_eq!(
            ids,
            [("a", Some(3)), ("b", Some(3)), ("c", Some(3))].map(|(id, n)| (id.to_owned(), n))
        );
        assert_eq!(observer.counters.waiting.load(Ordering::Relaxed), 0);
    }

    /// A worker still holding the batches' lock does not stop the shutdown from ending once
    /// every worker has: the lock is only tried.
    #[test]
    fn the_shutdown_stops_helping_when_the_workers_have_ended() {
        let (tx, rx) = std_mpsc::sync_channel::<Vec<Exchange>>(8);
        let (observer, _rows) = observer(rx);
        let ended = std::thread::spawn(|| {});
        while !ended.is_finished() {
            std::thread::yield_now();
        }
        let guard = observer.rx.lock().unwrap();
        // The channel is still open and its lock held: only the ended workers let it return.
        std::thread::scope(|s| {
            s.spawn(|| observer.help_until_drained(std::slice::from_ref(&ended)));
        });
        drop(guard);
        drop(tx);
    }
}
