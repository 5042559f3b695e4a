//! The samplers together for a run's duration: GPUs through NVML, Prometheus endpoints,
//! the host — each on its own thread at a set interval, so a hung driver call or a slow
//! endpoint delays nothing else — feeding one writer thread that owns `gpu.parquet` and
//! `server.parquet` and, at the end, writes `monitor.json` (what was sampled, failed
//! scrapes and gaps per source, clock-offset estimates).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use reprise_trace::{DatasetWriter, GpuSample, Output, ServerSample, Timestamp, WriterOptions};

use crate::MonitorError;
use crate::gpu::{NvmlSampler, from_dcgm};
use crate::host::HostSampler;
use crate::scrape::{Offsets, Scrape, scrape};

/// What to sample.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Where `gpu.parquet`, `server.parquet` and `monitor.json` go.
    pub out_dir: PathBuf,
    /// Sampling interval (default 500 ms).
    pub interval: Duration,
    /// Sample GPUs through NVML.
    pub gpu: bool,
    /// Sample this host (CPU, memory, network, this process).
    pub host: bool,
    /// Prometheus endpoints to scrape.
    pub scrape: Vec<String>,
    /// Per-scrape timeout (default 2 s).
    pub scrape_timeout: Duration,
    /// Known clock offsets of scraped hosts (their clock minus ours, ms), applied to the
    /// timestamps their expositions carry; by source URL.
    pub clock_offsets_ms: BTreeMap<String, f64>,
    /// The run's wall-clock anchor (ns since the epoch, and the instant it was read), so
    /// that samples and requests share one clock.
    pub anchor: Option<(i64, Instant)>,
    /// The host name written in gpu/1 rows.
    pub host_name: String,
}

impl MonitorConfig {
    /// Defaults: 500 ms, host on, GPU and scrapes off.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        MonitorConfig {
            out_dir: out_dir.into(),
            interval: Duration::from_millis(500),
            gpu: false,
            host: true,
            scrape: Vec::new(),
            scrape_timeout: Duration::from_secs(2),
            clock_offsets_ms: BTreeMap::new(),
            anchor: None,
            host_name: host_name(),
        }
    }
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub use reprise_trace::run::{MonitorSummary, SourceSummary};

enum Msg {
    Gpu(Vec<GpuSample>),
    Server(Vec<ServerSample>),
    Host,
    Scrape(Box<Scrape>),
    Nvml(String),
}

/// A running monitor; [`Monitor::stop`] ends it and closes its files.
#[derive(Debug)]
pub struct Monitor {
    stop: Arc<AtomicBool>,
    samplers: Vec<(JoinHandle<()>, Receiver<()>)>,
    tx: Option<SyncSender<Msg>>,
    writer: Option<JoinHandle<Result<MonitorSummary, MonitorError>>>,
}

/// A shared wall clock: the anchor plus monotonic time since it.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall0: i64,
    mono0: Instant,
}

impl Clock {
    fn now_ns(&self) -> i64 {
        // The anchor may lie a little in the future (a replay starts its clock ahead).
        let now = Instant::now();
        match now.checked_duration_since(self.mono0) {
            Some(d) => self.wall0 + d.as_nanos() as i64,
            None => self.wall0 - (self.mono0 - now).as_nanos() as i64,
        }
    }
}

/// Sleeps until `deadline` or until `stop` is set, in slices of at most 50 ms.
fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

fn spawn_sampler(
    name: &str,
    stop: Arc<AtomicBool>,
    body: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
) -> Result<(JoinHandle<()>, Receiver<()>), MonitorError> {
    let (done_tx, done_rx) = sync_channel(1);
    let h = std::thread::Builder::new()
        .name(format!("monitor-{name}"))
        .spawn(move || {
            body(stop);
            let _ = done_tx.send(());
        })
        .map_err(|e| MonitorError::Io {
            path: PathBuf::from(name),
            source: e,
        })?;
    Ok((h, done_rx))
}

impl Monitor {
    /// Starts the samplers asked for.
    pub fn start(cfg: MonitorConfig) -> Result<Monitor, MonitorError> {
        std::fs::create_dir_all(&cfg.out_dir).map_err(|source| MonitorError::Io {
            path: cfg.out_dir.clone(),
            source,
        })?;
        let clock = match cfg.anchor {
            Some((wall0, mono0)) => Clock { wall0, mono0 },
            None => Clock {
                wall0: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i64),
                mono0: Instant::now(),
            },
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<Msg>(4096);
        let out_dir = cfg.out_dir.clone();
        let interval = cfg.interval.max(Duration::from_millis(10));
        let started_ns = clock.now_ns();
        let sources: Vec<String> = cfg.scrape.clone();
        let writer = std::thread::Builder::new()
            .name("monitor-writer".into())
            .spawn(move || write_loop(rx, &out_dir, interval, started_ns, clock, &sources))
            .map_err(|source| MonitorError::Io {
                path: cfg.out_dir.clone(),
                source,
            })?;
        let mut samplers = Vec::new();
        if cfg.gpu {
            let tx = tx.clone();
            let host = cfg.host_name.clone();
            samplers.push(spawn_sampler("gpu", stop.clone(), move |stop| {
                let nvml = match NvmlSampler::open(&host) {
                    Ok(n) => n,
                    Err(why) => {
                        tracing::warn!("no GPU sampling: {why}");
                        let _ = tx.send(Msg::Nvml(why));
                        return;
                    }
                };
                let _ = tx.send(Msg::Nvml(format!("{} GPU(s) through NVML", nvml.gpus())));
                let mut next = Instant::now();
                while sleep_until(next, &stop) {
                    let rows = nvml.sample(Timestamp(clock.now_ns()));
                    if tx.send(Msg::Gpu(rows)).is_err() {
                        return;
                    }
                    next += interval;
                }
            })?);
        }
        if cfg.host {
            let tx = tx.clone();
            samplers.push(spawn_sampler("host", stop.clone(), move |stop| {
                let mut host = HostSampler::new();
                let mut next = Instant::now();
                while sleep_until(next, &stop) {
                    let time = Timestamp(clock.now_ns());
                    let rows: Vec<ServerSample> = host
                        .sample()
                        .into_iter()
                        .map(|r| ServerSample {
                            time,
                            source: "host".into(),
                            metric: r.metric.into(),
                            labels: r.labels,
                            value: r.value,
                        })
                        .collect();
                    if tx.send(Msg::Server(rows)).is_err() || tx.send(Msg::Host).is_err() {
                        return;
                    }
                    next += interval;
                }
            })?);
        }
        if !cfg.scrape.is_empty() {
            let tx = tx.clone();
            let cfg2 = cfg.clone();
            samplers.push(spawn_sampler("scrape", stop.clone(), move |stop| {
                scrape_loop(cfg2, clock, interval, stop, tx)
            })?);
        }
        Ok(Monitor {
            stop,
            samplers,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Stops sampling, closes the files and returns what was done. A sampler stuck in a
    /// driver call for more than 2 s is left behind rather than waited for.
    pub fn stop(mut self) -> Result<MonitorSummary, MonitorError> {
        self.stop.store(true, Ordering::Relaxed);
        for (handle, done) in self.samplers.drain(..) {
            if done.recv_timeout(Duration::from_secs(2)).is_ok() {
                let _ = handle.join();
            } else {
                tracing::warn!("a monitor sampler did not stop within 2 s; left behind");
            }
        }
        self.tx.take();
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(MonitorError::Other(
                "the monitor's writer thread panicked".into(),
            )),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn scrape_loop(
    cfg: MonitorConfig,
    clock: Clock,
    interval: Duration,
    stop: Arc<AtomicBool>,
    tx: SyncSender<Msg>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("monitor: no runtime for scraping: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let client = match reprise_net::client_builder()
            .connect_timeout(cfg.scrape_timeout)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("monitor: no HTTP client: {e}");
                return;
            }
        };
        let in_flight: Vec<Arc<AtomicBool>> = cfg
            .scrape
            .iter()
            .map(|_| Arc::new(AtomicBool::new(false)))
            .collect();
        let mut next = tokio::time::Instant::now();
        loop {
            // Wake at the tick, checking the stop flag at least every 50 ms.
            while tokio::time::Instant::now() < next {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let left = next - tokio::time::Instant::now();
                tokio::time::sleep(left.min(Duration::from_millis(50))).await;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            for (url, busy) in cfg.scrape.iter().zip(&in_flight) {
                // One scrape per source at a time: a slow endpoint skips ticks.
                if busy.swap(true, Ordering::AcqRel) {
                    continue;
                }
                let (client, url, busy, tx) =
                    (client.clone(), url.clone(), busy.clone(), tx.clone());
                let offset_ms = cfg.clock_offsets_ms.get(&url).copied();
                let timeout = cfg.scrape_timeout;
                tokio::spawn(async move {
                    let mut s = scrape(&client, &url, timeout, || clock.now_ns()).await;
                    if let (Some(off), Ok(samples)) = (offset_ms, s.outcome.as_mut()) {
                        // Their timestamps are on their clock: bring them onto ours.
                        for x in samples.iter_mut() {
                            if let Some(t) = x.timestamp_ms.as_mut() {
                                *t -= off as i64;
                            }
                        }
                    }
                    let _ = tx.send(Msg::Scrape(Box::new(s)));
                    busy.store(false, Ordering::Release);
                });
            }
            next += interval;
        }
    });
}

struct Writers {
    dir: PathBuf,
    gpu: Option<DatasetWriter<GpuSample>>,
    server: Option<DatasetWriter<ServerSample>>,
}

impl Writers {
    fn gpu(&mut self) -> Result<&mut DatasetWriter<GpuSample>, MonitorError> {
        if self.gpu.is_none() {
            self.gpu = Some(create(&self.dir.join("gpu.parquet"))?);
        }
        Ok(self.gpu.as_mut().expect("just created"))
    }

    fn server(&mut self) -> Result<&mut DatasetWriter<ServerSample>, MonitorError> {
        if self.server.is_none() {
            self.server = Some(create(&self.dir.join("server.parquet"))?);
        }
        Ok(self.server.as_mut().expect("just created"))
    }
}

fn create<R: reprise_trace::Row>(path: &Path) -> Result<DatasetWriter<R>, MonitorError> {
    DatasetWriter::<R>::create(Output::File(path.to_owned()), WriterOptions::default())
        .map_err(|e| MonitorError::Trace(e.to_string()))
}

fn write_loop(
    rx: Receiver<Msg>,
    dir: &Path,
    interval: Duration,
    started_ns: i64,
    clock: Clock,
    sources: &[String],
) -> Result<MonitorSummary, MonitorError> {
    let mut w = Writers {
        dir: dir.to_owned(),
        gpu: None,
        server: None,
    };
    let mut summary = MonitorSummary {
        format: reprise_trace::run::MONITOR_FORMAT.into(),
        interval_ms: interval.as_millis() as u64,
        started_ns,
        sources: sources
            .iter()
            .map(|s| SourceSummary {
                source: s.clone(),
                ..SourceSummary::default()
            })
            .collect(),
        ..MonitorSummary::default()
    };
    let mut offsets: BTreeMap<String, Offsets> = BTreeMap::new();
    // Per source: when the current run of failures began (for gaps).
    let mut failing_since: BTreeMap<String, i64> = BTreeMap::new();
    let mut first_error: Option<MonitorError> = None;
    let mut keep = |r: Result<(), MonitorError>| {
        if let Err(e) = r {
            tracing::error!("monitor: {e}");
            first_error.get_or_insert(e);
        }
    };
    for msg in rx {
        match msg {
            Msg::Nvml(s) => summary.nvml = Some(s),
            Msg::Host => summary.host_samples += 1,
            Msg::Gpu(rows) => {
                summary.gpu_rows += rows.len() as u64;
                keep(write_all(w.gpu(), &rows));
            }
            Msg::Server(rows) => {
                summary.server_rows += rows.len() as u64;
                summary.host_rows += rows.len() as u64;
                keep(write_all(w.server(), &rows));
            }
            Msg::Scrape(s) => {
                let time = Timestamp(s.time_ns);
                let src = summary
                    .sources
                    .iter_mut()
                    .find(|x| x.source == s.source)
                    .expect("a configured source");
                if let Some(o) = s.date_offset_ms {
                    offsets.entry(s.source.clone()).or_default().add(o);
                }
                let mut rows = Vec::new();
                let (up, err_kind) = match &s.outcome {
                    Ok(samples) => {
                        src.ok += 1;
                        if let Some(since) = failing_since.remove(&s.source) {
                            src.gaps.push((since, s.time_ns));
                        }
                        rows.extend(samples.iter().map(|x| ServerSample {
                            time: x.timestamp_ms.map_or(time, |ms| Timestamp(ms * 1_000_000)),
                            source: s.source.clone(),
                            metric: x.name.clone(),
                            labels: x.labels_json(),
                            value: x.value,
                        }));
                        let gpus = from_dcgm(samples, time, &host_of(&s.source));
                        if !gpus.is_empty() {
                            summary.gpu_rows += gpus.len() as u64;
                            keep(write_all(w.gpu(), &gpus));
                        }
                        (1.0, None)
                    }
                    Err(e) => {
                        src.failed += 1;
                        *src.errors.entry(e.kind.to_owned()).or_insert(0) += 1;
                        src.last_error = Some(format!("{}: {}", e.kind, e.message));
                        failing_since.entry(s.source.clone()).or_insert(s.time_ns);
                        tracing::debug!("scrape of {} failed: {}", s.source, e.message);
                        (0.0, Some(e.kind))
                    }
                };
                let labels = match err_kind {
                    Some(k) => serde_json::json!({ "error": k }).to_string(),
                    None => "{}".into(),
                };
                rows.push(ServerSample {
                    time,
                    source: s.source.clone(),
                    metric: "reprise_scrape_up".into(),
                    labels: labels.clone(),
                    value: up,
                });
                rows.push(ServerSample {
                    time,
                    source: s.source.clone(),
                    metric: "reprise_scrape_duration_seconds".into(),
                    labels,
                    value: s.duration_s,
                });
                summary.server_rows += rows.len() as u64;
                keep(write_all(w.server(), &rows));
            }
        }
    }
    summary.finished_ns = clock.now_ns();
    for src in &mut summary.sources {
        if let Some(since) = failing_since.remove(&src.source) {
            src.gaps.push((since, summary.finished_ns));
        }
        src.clock_offset_ms = offsets.get(&src.source).and_then(Offsets::estimate);
    }
    if let Some(g) = w.gpu.take() {
        keep(
            g.close()
                .map(|_| ())
                .map_err(|e| MonitorError::Trace(e.to_string())),
        );
    }
    if let Some(s) = w.server.take() {
        keep(
            s.close()
                .map(|_| ())
                .map_err(|e| MonitorError::Trace(e.to_string())),
        );
    }
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    let path = dir.join("monitor.json");
    keep(std::fs::write(&path, json).map_err(|source| MonitorError::Io { path, source }));
    match first_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

fn write_all<R: reprise_trace::Row>(
    w: Result<&mut DatasetWriter<R>, MonitorError>,
    rows: &[R],
) -> Result<(), MonitorError> {
    let w = w?;
    for r in rows {
        w.write(r).map_err(|e| MonitorError::Trace(e.to_string()))?;
    }
    Ok(())
}

/// The host part of a URL (for DCGM rows without a `Hostname` label).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', ':']).next().unwrap_or(rest).to_owned()
}
