//! The writer thread: rows to Parquet part files in the output directory, a part finished
//! (made readable) every flush interval when rows arrived, so a `kill -9` loses at most
//! that interval; write errors are counted as lost rows and the writer reopens on the next
//! row.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reprise_trace::sessions::{SessionTracker, TurnLengths};
use reprise_trace::{DatasetWriter, Output, TraceRecord, WriterOptions};

use crate::config::RecordConfig;
use crate::counters::{Counters, RecordSummary};

/// Writes rows until every sender is gone, then closes the files.
pub(crate) fn writer_loop(
    config: RecordConfig,
    rows: mpsc::Receiver<Vec<TraceRecord>>,
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
    // Turns of a session are numbered, and their think time taken from the previous turn's
    // end, in the order their exchanges finish (their arrival order, unless a turn was sent
    // before the one before it ended).
    let mut sessions = SessionTracker::new(TurnLengths::Cumulative);
    loop {
        let msg = rows.recv_timeout(config.flush_interval.min(Duration::from_millis(200)));
        let closed = matches!(msg, Err(mpsc::RecvTimeoutError::Disconnected));
        for mut row in msg.into_iter().flatten() {
            sessions.observe(&mut row);
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
    summary
}
