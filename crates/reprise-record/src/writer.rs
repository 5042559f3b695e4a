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

/// Writes rows until every sender is gone, then closes the files. `ready` is called once
/// the writer has rehearsed a part (see [`rehearsal`]), before any row is taken.
pub(crate) fn writer_loop(
    config: RecordConfig,
    rows: mpsc::Receiver<Vec<TraceRecord>>,
    counters: Arc<Counters>,
    ready: impl FnOnce(),
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
        Ok(mut w) => {
            if let Err(e) = w.rehearse(rehearsal(&config, REHEARSAL_ROWS)) {
                tracing::warn!("rehearsing a part for {}: {e}", config.out.display());
            }
            Some(w)
        }
        Err(e) => {
            tracing::error!("recording to {}: {e}", config.out.display());
            None
        }
    };
    ready();
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

/// Rows in the start-up rehearsal: a part's worth at a few thousand requests a second.
/// On the proxy bench it took the recording threads' page faults over 10,000 requests from
/// 319-353 to 8-13 (8,192 rows: 17-37); it takes ~120 ms in a debug build.
const REHEARSAL_ROWS: usize = 2048;

/// A batch of rows shaped like a capture's (a 1,024-token prompt in `block_tokens` blocks,
/// 128 streamed tokens, the usual parameters, content when it is recorded), each unlike
/// the one before as real rows are, for [`DatasetWriter::rehearse`]: the writer then meets
/// its first traffic with its memory already in place. Measured on the proxy bench (a
/// 2-core virtual machine): the writer's page faults in its first seconds, 2 MiB huge pages
/// at up to 4 ms each, were most of the recording threads' faults.
fn rehearsal(config: &RecordConfig, rows: usize) -> impl Iterator<Item = TraceRecord> + '_ {
    let blocks = (1024 / config.observe.block_tokens.max(1)).max(1);
    (0..rows as u64).map(move |i| {
        // A cheap mix, so that no column is one repeated value.
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
        let mut r = TraceRecord::new(
            format!("rehearsal-{i:08}"),
            reprise_trace::Timestamp(1_700_000_000_000_000_000 + (i * 997_331) as i64),
        );
        r.session_id = Some(format!("{:016x}", x % 4096));
        r.model = "rehearsal-model".to_owned();
        r.input_tokens = Some(1024 + (x % 64) as u32);
        r.input_tokens_source = "tokenizer:cl100k".to_owned();
        r.output_tokens = Some(128);
        r.max_tokens = Some(256);
        r.prefix_hashes = Some((0..blocks as u64).map(|b| (x % 64) ^ (b << 7)).collect());
        r.params = Some(format!(
            r#"{{"max_tokens":256,"stream":true,"temperature":0.{}}}"#,
            x % 10
        ));
        r.status = Some(200);
        r.ttft_us = Some(20_000 + x % 5_000);
        r.e2e_us = Some(900_000 + x % 90_000);
        r.itl_us = Some((0..127).map(|k| 6_000 + ((x + k) % 800) as u32).collect());
        if config.observe.record_content {
            r.prompt = Some("rehearsal ".repeat(400));
            r.completion = Some("token ".repeat(128));
        }
        r
    })
}
