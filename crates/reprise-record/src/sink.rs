//! Where finished exchanges go, shared by the proxy (failed exchanges) and the response
//! body (finished streams): to the observation workers when they keep up, else straight
//! to the writer without tokenizing; to nowhere, counted, when the writer is behind.
//! Nothing here blocks the forwarding path.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};

use reprise_trace::TraceRecord;
use tokio::sync::Notify;

use crate::counters::Counters;
use crate::observe::{Exchange, ObserveOptions, to_record};

/// The recorder's outlets and counters.
pub(crate) struct Sink {
    /// What is derived from each exchange.
    pub(crate) observe: ObserveOptions,
    /// Bodies up to this size are kept for observation.
    pub(crate) max_observed_body: usize,
    pub(crate) counters: Arc<Counters>,
    /// To the observation workers (`None` once shutting down).
    pub(crate) obs_tx: Mutex<Option<mpsc::SyncSender<Exchange>>>,
    /// To the writer (`None` once shutting down).
    pub(crate) row_tx: Mutex<Option<mpsc::SyncSender<TraceRecord>>>,
    /// Notified when the last exchange in flight ends.
    pub(crate) idle: Notify,
}

impl Sink {
    /// Counts an exchange in.
    pub(crate) fn begin(&self) {
        self.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands a finished exchange to the workers, or writes it without tokenizing when they
    /// are behind. Never blocks.
    pub(crate) fn submit(&self, x: Exchange) {
        let full = {
            let tx = self.obs_tx.lock().unwrap_or_else(|e| e.into_inner());
            match tx.as_ref() {
                Some(t) => match t.try_send(x) {
                    Ok(()) => None,
                    Err(mpsc::TrySendError::Full(x) | mpsc::TrySendError::Disconnected(x)) => {
                        Some(x)
                    }
                },
                None => Some(x),
            }
        };
        if let Some(x) = full {
            self.counters.backlog.fetch_add(1, Ordering::Relaxed);
            self.write_row(to_record(x, &self.observe, true));
        }
    }

    /// Hands a row to the writer, or counts it dropped when the writer is behind.
    pub(crate) fn write_row(&self, row: TraceRecord) {
        let tx = self.row_tx.lock().unwrap_or_else(|e| e.into_inner());
        let sent = tx.as_ref().is_some_and(|t| t.try_send(row).is_ok());
        if !sent {
            let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::error!("recording is behind: {} rows dropped so far", n + 1);
            }
        }
    }

    /// Counts an exchange out.
    pub(crate) fn done(&self) {
        if self.counters.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::salt::Salt;

    /// A sink with channels of the given sizes and their receivers.
    pub(crate) fn sink(
        obs: usize,
        rows: usize,
    ) -> (Sink, mpsc::Receiver<Exchange>, mpsc::Receiver<TraceRecord>) {
        let (obs_tx, obs_rx) = mpsc::sync_channel(obs);
        let (row_tx, row_rx) = mpsc::sync_channel(rows);
        let sink = Sink {
            observe: ObserveOptions {
                block_tokens: 16,
                record_content: false,
                salt: Salt::from_bytes(&[1; 32]),
            },
            max_observed_body: 1 << 20,
            counters: Arc::new(Counters::default()),
            obs_tx: Mutex::new(Some(obs_tx)),
            row_tx: Mutex::new(Some(row_tx)),
            idle: Notify::new(),
        };
        (sink, obs_rx, row_rx)
    }

    fn exchange(id: &str) -> Exchange {
        Exchange {
            request_id: id.into(),
            status: 200,
            ..Exchange::default()
        }
    }

    #[test]
    fn workers_first_then_the_writer_then_counted_drops() {
        let (sink, obs_rx, row_rx) = sink(1, 1);
        sink.submit(exchange("a"));
        // Workers full: written without tokenizing, counted as backlog.
        sink.submit(exchange("b"));
        // Writer full too: dropped and counted, never blocking.
        sink.submit(exchange("c"));
        assert_eq!(obs_rx.try_recv().unwrap().request_id, "a");
        assert_eq!(row_rx.try_recv().unwrap().request_id, "b");
        let c = &sink.counters;
        assert_eq!(c.backlog.load(Ordering::Relaxed), 2);
        assert_eq!(c.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn in_flight_counts_in_and_out() {
        let (sink, _o, _r) = sink(1, 1);
        sink.begin();
        sink.begin();
        sink.done();
        assert_eq!(sink.counters.in_flight.load(Ordering::Relaxed), 1);
        assert_eq!(sink.counters.forwarded.load(Ordering::Relaxed), 2);
        sink.done();
        assert_eq!(sink.counters.in_flight.load(Ordering::Relaxed), 0);
    }
}
