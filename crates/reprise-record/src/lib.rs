//! # reprise-record — a capture reverse proxy for LLM-serving traffic
//!
//! [`Recorder::start`] listens, forwards every request to the upstream and streams every
//! response back chunk by chunk as it arrives (no buffering, no re-chunking, `TCP_NODELAY`),
//! and records one trace/1 row per exchange: arrival, TTFT, inter-token gaps, E2E, status,
//! token counts (the upstream's `usage`, else the embedded tokenizer), salted prefix-block
//! hashes and session ids, non-content parameters.
//!
//! The forwarding path only stamps times and splits SSE events (`chunk_facts`, no JSON tree);
//! parsing the request, tokenizing and hashing happen afterwards on worker threads
//! ([`observe`]), and rows go through a bounded channel to a writer thread that finishes a
//! Parquet part file every flush interval, so a `kill -9` loses at most that interval.
//! When the workers fall behind, the row is written with what is known (no tokenizer) and
//! counted; when the writer falls behind, the row is dropped and counted: forwarding never
//! waits on recording. Credentials and content are never written unless asked for content
//! (`record_content`); header values are never written at all.

mod body;
pub mod observe;
pub mod salt;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use rand::RngExt;
use reprise_protocol::openai::{Usage, chunk_facts, content_of, error_body};
use reprise_protocol::sse::SseParser;
use reprise_trace::{DatasetWriter, Output, Timestamp, TraceRecord, WriterOptions};
use tokio::sync::Notify;

use body::ProxyBody;
use observe::{Exchange, ObserveOptions, to_record};

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
}

/// How a recorder runs.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The admin port (`/metrics`, `/health`), if any.
    pub admin: Option<SocketAddr>,
    /// The server requests go to (`http(s)://host:port`, optionally with a path prefix).
    pub upstream: String,
    /// Output directory of part files.
    pub out: PathBuf,
    /// What is derived from each exchange.
    pub observe: ObserveOptions,
    /// Header whose value (salted and hashed) becomes `session_id`; else the `user` field.
    pub session_header: Option<String>,
    /// Fraction of requests recorded (all are forwarded).
    pub sample: f64,
    /// Record only paths starting with one of these (all when empty).
    pub paths: Vec<String>,
    /// Record only these models (all when empty).
    pub models: Vec<String>,
    /// A part file is finished (made valid) this often when rows arrived.
    pub flush_interval: Duration,
    /// A part file holds at most this many rows.
    pub part_max_rows: u64,
    /// Request and response bodies up to this size are kept for observation; bigger ones
    /// pass through and are recorded with what is known.
    pub max_observed_body: usize,
    /// Time to connect to the upstream and get its response head.
    pub upstream_timeout: Duration,
    /// Observation worker threads.
    pub workers: usize,
    /// Exchanges waiting for a worker before rows are written without tokenizing.
    pub queue: usize,
    /// How long `shutdown` waits for exchanges in flight.
    pub drain: Duration,
}

impl RecordConfig {
    /// Defaults for the given addresses and output.
    pub fn new(
        listen: SocketAddr,
        upstream: impl Into<String>,
        out: PathBuf,
        salt: salt::Salt,
    ) -> Self {
        RecordConfig {
            listen,
            admin: None,
            upstream: upstream.into(),
            out,
            observe: ObserveOptions {
                block_tokens: 16,
                record_content: false,
                salt,
            },
            session_header: None,
            sample: 1.0,
            paths: Vec::new(),
            models: Vec::new(),
            flush_interval: Duration::from_secs(1),
            part_max_rows: 1_000_000,
            max_observed_body: 16 << 20,
            upstream_timeout: Duration::from_secs(600),
            workers: 2,
            queue: 10_000,
            drain: Duration::from_secs(30),
        }
    }
}

/// Counters, also served on the admin port's `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests forwarded.
    pub forwarded: AtomicU64,
    /// Requests left out by sampling or filters.
    pub skipped: AtomicU64,
    /// Rows written.
    pub recorded: AtomicU64,
    /// Rows written without tokenizing because the workers were behind.
    pub backlog: AtomicU64,
    /// Rows lost because the writer was behind.
    pub dropped: AtomicU64,
    /// Rows lost because writing failed (disk full, unwritable directory).
    pub failed: AtomicU64,
    /// Exchanges that failed upstream (the row carries the class).
    pub upstream_errors: AtomicU64,
    /// Exchanges in flight.
    pub in_flight: AtomicU64,
}

impl Counters {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, v) in [
            ("forwarded", "Requests forwarded.", &self.forwarded),
            (
                "skipped",
                "Requests not recorded (sampling, filters).",
                &self.skipped,
            ),
            ("recorded", "Rows written.", &self.recorded),
            (
                "backlog",
                "Rows written without tokenizing (workers behind).",
                &self.backlog,
            ),
            ("dropped", "Rows lost: writer behind.", &self.dropped),
            ("failed", "Rows lost: write errors.", &self.failed),
            (
                "upstream_errors",
                "Exchanges that failed upstream.",
                &self.upstream_errors,
            ),
        ] {
            out.push_str(&format!(
                "# HELP reprise_record_{name}_total {help}\n# TYPE reprise_record_{name}_total counter\nreprise_record_{name}_total {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP reprise_record_in_flight Exchanges in flight.\n# TYPE reprise_record_in_flight gauge\nreprise_record_in_flight {}\n",
            self.in_flight.load(Ordering::Relaxed)
        ));
        out
    }
}

/// What a stopped recorder wrote.
#[derive(Debug, Clone, Default)]
pub struct RecordSummary {
    /// Rows written.
    pub recorded: u64,
    /// Rows lost (writer behind or write errors).
    pub lost: u64,
    /// Part files written.
    pub files: Vec<PathBuf>,
}

/// The client to the upstream: hyper's own for `http://` (no layer between the proxy and
/// the connection pool), reqwest for `https://` (rustls).
enum UpstreamClient {
    Plain(Box<hyper_util::client::legacy::Client<HttpConnector, http_body_util::Full<Bytes>>>),
    Tls(reqwest::Client),
}

/// An upstream response body, from either client.
enum UpstreamBody {
    Plain(Incoming),
    Tls(reqwest::Body),
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, String>>> {
        // Errors become their messages (the tap classes them as a broken stream).
        match self.get_mut() {
            UpstreamBody::Plain(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| e.to_string()))),
            UpstreamBody::Tls(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| e.to_string()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Plain(b) => b.is_end_stream(),
            UpstreamBody::Tls(b) => b.is_end_stream(),
        }
    }
}

/// An error's message with its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let next = c.to_string();
        if !msg.contains(&next) {
            msg.push_str(": ");
            msg.push_str(&next);
        }
        src = c.source();
    }
    msg
}

struct Shared {
    config: RecordConfig,
    client: UpstreamClient,
    upstream: reqwest::Url,
    counters: Arc<Counters>,
    obs_tx: Mutex<Option<std_mpsc::SyncSender<Exchange>>>,
    row_tx: Mutex<Option<std_mpsc::SyncSender<TraceRecord>>>,
    next_id: AtomicU64,
    run_tag: String,
    idle: Notify,
    stopping: AtomicBool,
}

/// A running capture proxy.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<SharedHandle>,
    accept: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<RecordSummary>>,
}

/// `Shared` behind a Debug-able handle.
struct SharedHandle(Shared);

impl std::fmt::Debug for SharedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("upstream", &self.0.upstream.as_str())
            .finish_non_exhaustive()
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn forwardable(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(&name.as_str()) && name != header::UPGRADE
}

fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::text(error_body(
        message,
        "proxy_error",
        None,
        Some(status.as_u16()),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn wall_now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
    )
}

/// Whether this request is recorded: path and model filters, then sampling.
fn wanted(config: &RecordConfig, path: &str, body: Option<&Bytes>) -> bool {
    if !config.paths.is_empty() && !config.paths.iter().any(|p| path.starts_with(p.as_str())) {
        return false;
    }
    if !config.models.is_empty() {
        let model = body
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned));
        if !model.is_some_and(|m| config.models.contains(&m)) {
            return false;
        }
    }
    config.sample >= 1.0 || rand::rng().random::<f64>() < config.sample
}

impl Shared {
    /// Hands a finished exchange to the workers, or writes it without tokenizing when they
    /// are behind. Never blocks.
    fn submit(&self, x: Exchange) {
        let full = {
            let tx = self.obs_tx.lock().unwrap_or_else(|e| e.into_inner());
            match tx.as_ref() {
                Some(t) => match t.try_send(x) {
                    Ok(()) => None,
                    Err(
                        std_mpsc::TrySendError::Full(x) | std_mpsc::TrySendError::Disconnected(x),
                    ) => Some(x),
                },
                None => Some(x),
            }
        };
        if let Some(x) = full {
            self.counters.backlog.fetch_add(1, Ordering::Relaxed);
            self.write_row(to_record(x, &self.config.observe, true));
        }
    }

    fn write_row(&self, row: TraceRecord) {
        let tx = self.row_tx.lock().unwrap_or_else(|e| e.into_inner());
        let sent = tx.as_ref().is_some_and(|t| t.try_send(row).is_ok());
        if !sent {
            let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::error!("recording is behind: {} rows dropped so far", n + 1);
            }
        }
    }

    fn done(&self) {
        if self.counters.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

async fn handle(shared: Arc<SharedHandle>, req: Request<Incoming>) -> Response<ProxyBody> {
    let s = &shared.0;
    let started = Instant::now();
    let arrival = wall_now();
    s.counters.in_flight.fetch_add(1, Ordering::AcqRel);
    s.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // The request body: kept whole up to the observation limit (it is JSON to parse); a
    // bigger one is refused with a clear answer rather than held in memory.
    let body = match Limited::new(body, s.config.max_observed_body)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            s.done();
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_big {
                json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "reprise record: request body over {} bytes",
                        s.config.max_observed_body
                    ),
                )
            } else {
                json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("reprise record: reading the request: {e}"),
                )
            };
        }
    };
    let record = wanted(&s.config, &path, Some(&body));
    if !record {
        s.counters.skipped.fetch_add(1, Ordering::Relaxed);
    }
    let session_header = s
        .config
        .session_header
        .as_ref()
        .and_then(|h| parts.headers.get(h.as_str()))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut x = Exchange {
        request_id: format!(
            "{}-{:08}",
            s.run_tag,
            s.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        arrival,
        path: path.clone(),
        body: Some(body.clone()),
        session_header,
        ..Exchange::default()
    };

    let mut url = s.upstream.clone();
    let base_path = url.path().trim_end_matches('/').to_owned();
    let (p, q) = path_and_query
        .split_once('?')
        .map_or((path_and_query.as_str(), None), |(p, q)| (p, Some(q)));
    url.set_path(&format!("{base_path}{p}"));
    url.set_query(q);
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (k, v) in &parts.headers {
        if forwardable(k) && k != header::HOST && k != header::CONTENT_LENGTH {
            headers.append(k.clone(), v.clone());
        }
    }
    let sent = match &s.client {
        UpstreamClient::Plain(client) => {
            let mut request = Request::builder()
                .method(parts.method.clone())
                .uri(url.as_str())
                .body(http_body_util::Full::new(body));
            if let Ok(r) = request.as_mut() {
                *r.headers_mut() = headers;
            }
            match request {
                Ok(request) => {
                    tokio::time::timeout(s.config.upstream_timeout, client.request(request))
                        .await
                        .map(|r| {
                            r.map(|r| r.map(UpstreamBody::Plain))
                                .map_err(|e| (false, chain(&e)))
                        })
                }
                Err(e) => Ok(Err((false, e.to_string()))),
            }
        }
        UpstreamClient::Tls(client) => {
            let request = client
                .request(parts.method.clone(), url)
                .headers(headers)
                .body(body);
            tokio::time::timeout(s.config.upstream_timeout, request.send())
                .await
                .map(|r| {
                    r.map(|r| hyper::Response::<reqwest::Body>::from(r).map(UpstreamBody::Tls))
                        .map_err(|e| (e.is_timeout(), chain(&e)))
                })
        }
    };
    let response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err((timeout, msg))) => {
            let (status, class) = if timeout {
                (StatusCode::GATEWAY_TIMEOUT, "timeout")
            } else {
                (StatusCode::BAD_GATEWAY, "connect")
            };
            return fail(
                &shared,
                x,
                record,
                started,
                status,
                class,
                &format!("reprise record: upstream {}: {msg}", s.upstream),
            );
        }
        Err(_) => {
            return fail(
                &shared,
                x,
                record,
                started,
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                &format!(
                    "reprise record: upstream {} sent no response within {:?}",
                    s.upstream, s.config.upstream_timeout
                ),
            );
        }
    };
    x.status = response.status().as_u16();
    x.streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut out = Response::builder().status(response.status());
    if let Some(h) = out.headers_mut() {
        for (k, v) in response.headers() {
            if forwardable(k) {
                h.append(k.clone(), v.clone());
            }
        }
    }
    let upstream_body = response.into_body();
    let tap = Tap {
        shared: shared.clone(),
        inner: upstream_body,
        x: Some(x),
        record,
        started,
        parser: SseParser::new(),
        kept: Vec::new(),
        last_content: None,
        completion: String::new(),
    };
    out.body(ProxyBody::Stream(Box::new(tap)))
        .unwrap_or_else(|e| json_error(StatusCode::BAD_GATEWAY, &format!("reprise record: {e}")))
}

#[allow(
    clippy::too_many_arguments,
    reason = "a failed exchange's row needs everything measured so far"
)]
fn fail(
    shared: &Arc<SharedHandle>,
    mut x: Exchange,
    record: bool,
    started: Instant,
    status: StatusCode,
    class: &str,
    message: &str,
) -> Response<ProxyBody> {
    let s = &shared.0;
    tracing::warn!("{message}");
    s.counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
    x.status = status.as_u16();
    x.failure = Some(class.to_owned());
    x.e2e = Some(started.elapsed());
    if record {
        s.submit(x);
    }
    s.done();
    json_error(status, message)
}

/// The upstream body on its way to the client: every frame is passed on as it is polled
/// (no task, channel or copy in between) and looked at after it has been handed over; the
/// exchange is submitted when the body ends, fails, or is dropped by a departed client.
pub(crate) struct Tap {
    shared: Arc<SharedHandle>,
    inner: UpstreamBody,
    x: Option<Exchange>,
    record: bool,
    started: Instant,
    parser: SseParser,
    kept: Vec<u8>,
    last_content: Option<Instant>,
    completion: String,
}

impl Tap {
    fn observe(&mut self, chunk: &Bytes) {
        let now = Instant::now();
        let s = &self.shared.0;
        if !self.record {
            return;
        }
        let Some(x) = self.x.as_mut() else { return };
        if x.streamed {
            let (started, last_content, completion) =
                (self.started, &mut self.last_content, &mut self.completion);
            let content = s.config.observe.record_content;
            let _ = self.parser.feed(chunk, |event| {
                if event.is_done() {
                    return;
                }
                let Ok(f) = chunk_facts(&event.data) else {
                    return;
                };
                if f.has_content {
                    match *last_content {
                        None => x.ttft = Some(now - started),
                        Some(prev) => x
                            .itl_us
                            .push((now - prev).as_micros().min(u128::from(u32::MAX)) as u32),
                    }
                    *last_content = Some(now);
                    x.content_events += 1;
                    if content && let Ok(v) = serde_json::from_str::<serde_json::Value>(&event.data)
                    {
                        completion.push_str(&content_of(&v));
                    }
                }
                if f.usage.is_some() {
                    x.usage = f.usage;
                }
            });
        } else if self.kept.len() + chunk.len() <= s.config.max_observed_body {
            self.kept.extend_from_slice(chunk);
        }
    }

    /// Ends the exchange (once): measures E2E, reads a plain body's usage, submits the row.
    fn finish(&mut self, failure: Option<&str>) {
        let Some(mut x) = self.x.take() else { return };
        let s = &self.shared.0;
        if let Some(f) = failure {
            x.failure = Some(f.to_owned());
            if f == "broken_stream" {
                s.counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        x.e2e = Some(self.started.elapsed());
        if self.record {
            let content = s.config.observe.record_content;
            if !x.streamed
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.kept)
            {
                x.usage = Usage::from_value(&v);
                x.ttft = x.e2e.filter(|_| x.status == 200);
                if content {
                    let text = v["choices"][0]["message"]["content"]
                        .as_str()
                        .or(v["choices"][0]["text"].as_str())
                        .unwrap_or_default();
                    self.completion.push_str(text);
                }
            }
            if content {
                x.completion = Some(std::mem::take(&mut self.completion));
            }
            if x.failure.is_none() && x.status >= 400 {
                x.failure = Some(
                    if x.status >= 500 {
                        "http_5xx"
                    } else {
                        "http_4xx"
                    }
                    .into(),
                );
            }
            s.submit(x);
        }
        s.done();
    }
}

impl http_body::Body for Tap {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.finish(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(Some("broken_stream"));
                Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.observe(&data);
                }
                // A sized body is not polled past its length: it ends here.
                if self.inner.is_end_stream() {
                    self.finish(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the connection broke).
        let failure = (!self.inner.is_end_stream()).then_some("client_disconnect");
        self.finish(failure);
    }
}

fn writer_loop(
    config: RecordConfig,
    rows: std_mpsc::Receiver<TraceRecord>,
    counters: Arc<Counters>,
) -> RecordSummary {
    let options = WriterOptions {
        part_max_rows: Some(config.part_max_rows),
        ..WriterOptions::default()
    }
    .with_meta(reprise_trace::writer::META_SOURCE, "capture")
    .with_meta(
        reprise_trace::writer::META_BLOCK_TOKENS,
        config.observe.block_tokens.to_string(),
    )
    .with_meta(reprise_trace::writer::META_TOKENIZER, "cl100k")
    .with_meta("reprise.salt_id", config.observe.salt.id())
    .with_meta("reprise.upstream", config.upstream.clone());
    let open =
        || DatasetWriter::<TraceRecord>::create(Output::Dir(config.out.clone()), options.clone());
    let mut summary = RecordSummary::default();
    let mut writer = match open() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!("recording to {}: {e}", config.out.display());
            None
        }
    };
    let mut dirty = false;
    let mut last_flush = Instant::now();
    let keep = |writer: &mut Option<DatasetWriter<TraceRecord>>,
                r: Result<(), reprise_trace::TraceError>,
                lost: u64| {
        if let Err(e) = r {
            tracing::error!(
                "recording to {}: {e} ({lost} rows lost)",
                config.out.display()
            );
            counters.failed.fetch_add(lost, Ordering::Relaxed);
            if let Some(w) = writer.take() {
                w.abort();
            }
            false
        } else {
            true
        }
    };
    let mut pending = 0u64;
    loop {
        let msg = rows.recv_timeout(config.flush_interval.min(Duration::from_millis(200)));
        let closed = matches!(msg, Err(std_mpsc::RecvTimeoutError::Disconnected));
        if let Ok(row) = msg {
            if writer.is_none() {
                writer = open().ok();
            }
            match writer.as_mut() {
                Some(w) => {
                    let r = w.write(&row);
                    pending += 1;
                    if keep(&mut writer, r, pending) {
                        dirty = true;
                    } else {
                        pending = 0;
                    }
                }
                None => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if dirty && (closed || last_flush.elapsed() >= config.flush_interval) {
            if let Some(w) = writer.as_mut() {
                let r = w.finish_part();
                if keep(&mut writer, r, pending) {
                    counters.recorded.fetch_add(pending, Ordering::Relaxed);
                    summary.recorded += pending;
                }
            }
            pending = 0;
            dirty = false;
            last_flush = Instant::now();
        }
        if closed {
            break;
        }
    }
    if let Some(w) = writer {
        match w.close() {
            Ok(s) => summary.files = s.files,
            Err(e) => tracing::error!("recording to {}: {e}", config.out.display()),
        }
    }
    summary.lost =
        counters.dropped.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed);
    summary
}

async fn serve<F, Fut>(listener: tokio::net::TcpListener, shared: Arc<SharedHandle>, f: F)
where
    F: Fn(Arc<SharedHandle>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.0.stopping.load(Ordering::Relaxed) {
            break;
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(f(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn admin(shared: Arc<SharedHandle>, req: Request<Incoming>) -> Response<ProxyBody> {
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(ProxyBody::text(shared.0.counters.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/health" => Response::new(ProxyBody::text("ok\n")),
        _ => json_error(StatusCode::NOT_FOUND, "not found: /metrics, /health"),
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
        let upstream = reqwest::Url::parse(&config.upstream)
            .map_err(|e| RecordError::Config(format!("--upstream `{}`: {e}", config.upstream)))?;
        if !matches!(upstream.scheme(), "http" | "https") {
            return Err(RecordError::Config(format!(
                "--upstream `{}`: must be http:// or https://",
                config.upstream
            )));
        }
        if !(config.sample > 0.0 && config.sample <= 1.0) {
            return Err(RecordError::Config("--sample must be in (0, 1]".into()));
        }
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
        let client = if upstream.scheme() == "http" {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(Duration::from_secs(10)));
            UpstreamClient::Plain(Box::new(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_timer(hyper_util::rt::TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(3))
                    .build(connector),
            ))
        } else {
            UpstreamClient::Tls(
                reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .pool_idle_timeout(Duration::from_secs(3))
                    .connect_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| RecordError::Config(format!("HTTP client: {e}")))?,
            )
        };
        let counters = Arc::new(Counters::default());
        let (obs_tx, obs_rx) = std_mpsc::sync_channel::<Exchange>(config.queue.max(1));
        let (row_tx, row_rx) = std_mpsc::sync_channel::<TraceRecord>(65_536);
        let writer = {
            let (config, counters) = (config.clone(), counters.clone());
            std::thread::Builder::new()
                .name("reprise-record-writer".into())
                .spawn(move || writer_loop(config, row_rx, counters))
                .map_err(|e| RecordError::Config(format!("starting the writer: {e}")))?
        };
        let obs_rx = Arc::new(Mutex::new(obs_rx));
        let mut workers = Vec::new();
        for i in 0..config.workers.max(1) {
            let (rx, tx, opts) = (obs_rx.clone(), row_tx.clone(), config.observe.clone());
            let counters = counters.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("reprise-record-obs{i}"))
                    .spawn(move || {
                        loop {
                            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok(x) = next else { break };
                            if tx.try_send(to_record(x, &opts, false)).is_err() {
                                counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                    .map_err(|e| RecordError::Config(format!("starting a worker: {e}")))?,
            );
        }
        let run_tag = format!(
            "{:x}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        );
        let addr = listener.local_addr().map_err(|source| RecordError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(SharedHandle(Shared {
            config,
            client,
            upstream,
            counters,
            obs_tx: Mutex::new(Some(obs_tx)),
            row_tx: Mutex::new(Some(row_tx)),
            next_id: AtomicU64::new(0),
            run_tag,
            idle: Notify::new(),
            stopping: AtomicBool::new(false),
        }));
        let mut accept = vec![tokio::spawn(serve(listener, shared.clone(), handle))];
        if let Some(l) = admin_listener {
            accept.push(tokio::spawn(serve(l, shared.clone(), admin)));
        }
        Ok(Recorder {
            addr,
            admin_addr,
            shared,
            accept,
            workers,
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
        &self.shared.0.counters
    }

    /// Stops accepting, waits (up to the drain time) for exchanges in flight, then writes
    /// and closes everything.
    pub async fn shutdown(mut self) -> RecordSummary {
        let s = &self.shared.0;
        s.stopping.store(true, Ordering::Relaxed);
        for a in &self.accept {
            a.abort();
        }
        let deadline = tokio::time::Instant::now() + s.config.drain;
        while s.counters.in_flight.load(Ordering::Acquire) > 0 {
            let idle = s.idle.notified();
            if s.counters.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    "{} exchanges still in flight after {:?}: not recorded",
                    s.counters.in_flight.load(Ordering::Relaxed),
                    s.config.drain
                );
                break;
            }
        }
        s.obs_tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        s.row_tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let workers = std::mem::take(&mut self.workers);
        let writer = self.writer.take();
        tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
            writer.and_then(|w| w.join().ok()).unwrap_or_default()
        })
        .await
        .unwrap_or_default()
    }
}
