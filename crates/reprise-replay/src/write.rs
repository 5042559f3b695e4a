//! The run directory: one writer thread turns finished requests into `result/1` rows
//! ([`crate::row::row`]) streamed to `requests.parquet` and into summary samples, so memory
//! stays flat however long the run; at the end, `run.json` ([`RunInfo`], `run/1`) and
//! `events.json`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reprise_protocol::openai::Api;
use reprise_trace::run::{ClockInfo, EventRecord, RUN_FORMAT, RunInfo, RunSettings, write_json};
use reprise_trace::{DatasetWriter, Output, ResultRecord, WriterOptions};

use crate::clock::Clock;
use crate::row::{RowContext, row};
use crate::send::{Done, tokenizer_label, wrong_target};
use crate::summary::{Summarizer, TurnSample};
use crate::{Progress, ReplayConfig, ReplayError, RunSummary};

/// Metadata key of the results: the target's prefix-cache capacity, tokens.
pub const META_SERVER_CACHE_TOKENS: &str = "reprise.server_cache_tokens";

/// Opens `requests.parquet` in the run directory (created).
pub(crate) fn create(config: &ReplayConfig) -> Result<DatasetWriter<ResultRecord>, ReplayError> {
    std::fs::create_dir_all(&config.run_dir).map_err(|e| ReplayError::Io {
        path: config.run_dir.clone(),
        source: e,
    })?;
    let options = WriterOptions {
        batch_rows: 1024,
        ..WriterOptions::default()
    }
    .with_meta("reprise.run_id", config.run_id.clone())
    .with_meta("reprise.tokenizer", tokenizer_label(config));
    // The trace's prefix-block size, so that the analyzer can tell what its hashes imply.
    let options = match config.prompts.block_tokens {
        Some(b) => options.with_meta(reprise_trace::writer::META_BLOCK_TOKENS, b.to_string()),
        None => options,
    };
    // The server's prefix-cache size, when known, for the analyzer's LRU figure.
    let options = match config.server_cache_tokens {
        Some(t) => options.with_meta(META_SERVER_CACHE_TOKENS, t.to_string()),
        None => options,
    };
    let mut writer = DatasetWriter::<ResultRecord>::create(
        Output::File(config.run_dir.join("requests.parquet")),
        options,
    )?;
    // Held from the start: connections beyond the open-files limit fail as the client's
    // errors, never take the results file's descriptor.
    writer.open_now()?;
    Ok(writer)
}

/// How soon the writer thread looks again for finished requests after finding none…
const WRITER_POLL: Duration = Duration::from_millis(2);
/// …doubling while it keeps finding none, up to this.
const WRITER_POLL_MAX: Duration = Duration::from_millis(32);

/// What the writer thread shares with the executor.
pub(crate) struct Sink {
    pub(crate) clock: Clock,
    pub(crate) config: Arc<ReplayConfig>,
    pub(crate) summary: Arc<Mutex<Summarizer>>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) stop: Arc<AtomicBool>,
    /// Set, with `stop`, when a request shows the target is wrong (fail-fast).
    pub(crate) aborted: Arc<Mutex<Option<String>>>,
    /// Live metrics, when served.
    pub(crate) live: Option<crate::live::Observer>,
}

/// Starts the writer thread; it ends when every sender of `done` is dropped and returns
/// the rows written.
pub(crate) fn spawn(
    writer: DatasetWriter<ResultRecord>,
    done: std::sync::mpsc::Receiver<Done>,
    sink: Sink,
) -> Result<std::thread::JoinHandle<Result<u64, ReplayError>>, ReplayError> {
    let thread = std::thread::Builder::new().name("reprise-writer".into());
    let body = move || {
        let Sink {
            clock,
            config,
            summary,
            progress,
            stop,
            aborted,
            mut live,
        } = sink;
        let ctx = RowContext {
            run_id: config.run_id.clone(),
            shard: config.shard.index,
            targets: config.targets.clone(),
            backend: config.shape.backend,
        };
        let mut rows = 0u64;
        let mut last_progress = Instant::now();
        let mut any_ok = false;
        let mut writer = Some(writer);
        let mut failure = None;
        let mut unwritten = 0u64;
        // Polled, not waited on: a receiver blocked in `recv` is woken by every request that
        // ends (a futex call on the sender's thread, a context switch here), which at
        // thousands of requests a second costs more than the rows. Polling every
        // WRITER_POLL takes them in batches, a few milliseconds late at most.
        // An idle queue is looked at less and less often (up to WRITER_POLL_MAX), so that a
        // slow run does not pay hundreds of wake-ups a second for nothing.
        let mut poll = WRITER_POLL;
        let incoming = std::iter::from_fn(|| {
            loop {
                match done.try_recv() {
                    Ok(d) => {
                        poll = WRITER_POLL;
                        return Some(d);
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        std::thread::sleep(poll);
                        poll = (poll * 2).min(WRITER_POLL_MAX);
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
                }
            }
        });
        for done in incoming {
            let (record, sample) = row(&done.job, &done.measured, &clock, &ctx);
            any_ok |= sample.ok;
            if config.fail_fast && !any_ok {
                let mut aborted = aborted.lock().unwrap_or_else(|e| e.into_inner());
                if aborted.is_none()
                    && let Some(why) = wrong_target(
                        &done.measured,
                        &config.target_labels()[done.job.target],
                        config.shape.api.path(),
                    )
                {
                    *aborted = Some(why);
                    stop.store(true, Ordering::Relaxed);
                }
            }
            if !sample.ok {
                progress.failed.fetch_add(1, Ordering::Relaxed);
            }
            {
                let mut summary = summary.lock().unwrap_or_else(|e| e.into_inner());
                summary.add(&sample);
                if let Some(t) = &done.job.turn {
                    summary.add_turn(&TurnSample {
                        first: t.first,
                        last: t.last,
                        after_end: t.after_end,
                        delay_ns: signed_ns(done.job.scheduled, t.recorded),
                        queue_us: done.measured.sent.map(|s| {
                            s.saturating_duration_since(done.job.scheduled).as_micros() as u64
                        }),
                        cancelled: done.measured.error_kind == Some("cancelled"),
                    });
                }
            }
            if let Some(live) = live.as_mut() {
                live.observe(record.status, &sample);
            }
            match writer.as_mut().map(|w| w.write(&record)) {
                Some(Ok(())) => rows += 1,
                Some(Err(e)) => {
                    // The results cannot be kept (a full disk, say): stop sending, count
                    // what is not written, and say so at the end.
                    tracing::error!("{e}: stopping the run");
                    stop.store(true, Ordering::Relaxed);
                    failure = Some(e);
                    if let Some(w) = writer.take() {
                        w.abort();
                    }
                    unwritten += rows + 1;
                    rows = 0;
                }
                None => unwritten += 1,
            }
            // Rows reach the file a row group (65,536 rows) at a time. No flush here:
            // ending a row group every tick made tiny groups whose footer metadata stayed
            // in memory until the end (+5 MiB a minute at 1,000 req/s).
            if last_progress.elapsed() > Duration::from_millis(500) {
                last_progress = Instant::now();
                if let Some(t) = summary
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .overall()
                    .ttft_ms
                {
                    progress
                        .ttft_p50_us
                        .store((t.p50 * 1000.0) as u64, Ordering::Relaxed);
                    progress
                        .ttft_p99_us
                        .store((t.p99 * 1000.0) as u64, Ordering::Relaxed);
                }
            }
        }
        if let Some(w) = writer
            && let Err(e) = w.close()
        {
            failure = Some(e);
            unwritten += rows;
        }
        match failure {
            None => Ok(rows),
            Some(e) => Err(ReplayError::Unwritten {
                cause: e,
                rows: unwritten,
            }),
        }
    };
    thread
        .spawn(body)
        .map_err(|e| ReplayError::Config(format!("starting the result writer: {e}")))
}

/// `a − b` in nanoseconds, negative when `a` is earlier.
fn signed_ns(a: Instant, b: Instant) -> i64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_nanos() as i64,
        None => -(b.duration_since(a).as_nanos() as i64),
    }
}

/// Writes `events.json` (when the run had events).
pub(crate) fn events(config: &ReplayConfig, records: &[EventRecord]) -> Result<(), ReplayError> {
    if config.events.is_empty() {
        return Ok(());
    }
    Ok(write_json(&config.run_dir.join("events.json"), &records)?)
}

/// `run.json` for a finished run.
pub fn run_info(config: &ReplayConfig, clock: &Clock, summary: &RunSummary) -> RunInfo {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    RunInfo {
        format: RUN_FORMAT.into(),
        run_id: config.run_id.clone(),
        tool: "reprise".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        command: config.command.clone(),
        host,
        complete: summary.complete,
        clock: ClockInfo {
            anchor_wall_ns: clock.wall0_ns,
            note: "all times are this wall-clock anchor plus a monotonic-clock offset".into(),
        },
        config: RunSettings {
            targets: config.targets.clone(),
            target_names: config.target_labels().to_vec(),
            api: match config.shape.api {
                Api::Chat => "chat",
                Api::Completions => "completions",
            }
            .into(),
            backend: format!("{:?}", config.shape.backend).to_lowercase(),
            model: config.shape.model.clone(),
            stream: config.shape.stream,
            header_names: config.headers.iter().map(|(k, _)| k.clone()).collect(),
            timeout_s: config.timeouts.request.as_secs_f64(),
            token_timeout_s: config.timeouts.gap.as_secs_f64(),
            max_in_flight: config.max_in_flight,
            max_connections: config.max_connections,
            warmup: config.warmup,
            queue_limit_ms: config.queue_limit_ms,
            tokenizer: tokenizer_label(config),
        },
        summary: summary.clone(),
        distributed: config.distributed.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_info_names_headers_but_never_their_values() {
        let mut config = ReplayConfig::new(vec!["http://a".into()], "m", "/tmp/x");
        config.headers = vec![("authorization".into(), "Bearer secret".into())];
        config.run_id = "r".into();
        let clock = Clock::new(Duration::ZERO);
        let info = run_info(&config, &clock, &RunSummary::default());
        let text = serde_json::to_string(&info).unwrap();
        assert!(!text.contains("secret") && text.contains("\"authorization\""));
        assert_eq!(info.format, "run/1");
        assert_eq!(info.config.api, "chat");
        assert_eq!(info.config.backend, "vllm");
        assert_eq!(info.clock.anchor_wall_ns, clock.wall0_ns);
    }
}
