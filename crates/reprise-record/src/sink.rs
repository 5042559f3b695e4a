//! Where finished exchanges go, shared by the proxy (failed exchanges) and the response
//! body (finished streams): to the observation workers when they keep up, else straight
//! to the writer without tokenizing; to nowhere, counted, when the writer is behind.
//! Nothing here blocks the forwarding path.
//!
//! Exchanges go to the workers in batches: what has gathered when the recorder's tick calls
//! [`Sink::flush`] (every 50 ms), or [`BATCH`] of them at once in a burst. One channel send,
//! and at most one thread woken, per batch rather than per exchange, and in the tick's task
//! rather than in an exchange's: at 15,000 exchanges a second the per-exchange hand-off cost
//! the forwarding thread a futex wake each time (3.4 futex calls per request across the
//! process under strace), and a hand-off every 32 exchanges still showed in the proxy's
//! TTFT p99 (300-490 µs added, against 153-167 µs with the tick doing it).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use reprise_trace::TraceRecord;
use tokio::sync::Notify;

use crate::counters::Counters;
use crate::observe::{Exchange, ObserveOptions, to_record};

/// Exchanges gathered before a batch goes to the workers without waiting for the tick.
pub(crate) const BATCH: usize = 1024;

/// Rows from the workers (or the forwarding path's fallback) to the writer.
pub(crate) type Rows = Vec<TraceRecord>;

/// The workers' channel and the batch gathering for it.
pub(crate) struct Outlet {
    /// `None` once shutting down.
    pub(crate) tx: Option<mpsc::SyncSender<Vec<Exchange>>>,
    /// Ended exchanges not yet handed on.
    pub(crate) batch: Vec<Exchange>,
    /// Hand on when the batch holds this many.
    pub(crate) size: usize,
    /// Most exchanges waiting for the workers (`--queue`); past it rows are written without
    /// tokenizing.
    pub(crate) max_waiting: u64,
}

impl Outlet {
    /// An outlet that hands on batches of `size` and lets at most `max_waiting` exchanges
    /// wait for the workers.
    pub(crate) fn new(
        tx: mpsc::SyncSender<Vec<Exchange>>,
        size: usize,
        max_waiting: usize,
    ) -> Outlet {
        Outlet {
            tx: Some(tx),
            batch: Vec::new(),
            size: size.max(1),
            max_waiting: max_waiting.max(1) as u64,
        }
    }
}

/// The recorder's outlets and counters.
pub(crate) struct Sink {
    /// What is derived from each exchange.
    pub(crate) observe: ObserveOptions,
    /// Bodies up to this size are kept for observation.
    pub(crate) max_observed_body: usize,
    pub(crate) counters: Arc<Counters>,
    /// To the observation workers.
    pub(crate) obs: Mutex<Outlet>,
    /// To the writer (`None` once shutting down).
    pub(crate) row_tx: Mutex<Option<mpsc::SyncSender<Rows>>>,
    /// Notified when the last exchange in flight ends.
    pub(crate) idle: Notify,
}

impl Sink {
    /// Counts an exchange in.
    pub(crate) fn begin(&self) {
        self.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends an exchange: its row (`None` when it is not recorded) into the batch for the
    /// workers, and the exchange counted out. Never blocks on a full queue. After
    /// [`Sink::close`] nothing is handed on: such an exchange was counted among those
    /// abandoned at the cut.
    ///
    /// All of it happens under the workers' channel lock, so that [`Sink::close`] sees every
    /// exchange either ended (its row gathered or handed on) or in flight, never both or
    /// neither.
    pub(crate) fn end(&self, x: Option<Exchange>) {
        let mut obs = self.obs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(x) = x
            && obs.tx.is_some()
        {
            obs.batch.push(x);
            if obs.batch.len() >= obs.size {
                self.hand_on(&mut obs);
            }
        }
        if self.counters.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Hands on what has gathered (the recorder's tick calls this, so that a row waits for
    /// its batch at most a tick).
    pub(crate) fn flush(&self) {
        let mut obs = self.obs.lock().unwrap_or_else(|e| e.into_inner());
        if !obs.batch.is_empty() {
            self.hand_on(&mut obs);
        }
    }

    /// The batch to the workers, or, when they are behind (more than `--queue` exchanges
    /// waiting), its rows written without tokenizing.
    fn hand_on(&self, obs: &mut Outlet) {
        // The next batch starts with room for as many as this one: grown from empty, its
        // doublings moved up to half a batch of exchanges (hundreds of KiB) on the
        // forwarding path of the one exchange that found it full.
        let room = obs.batch.len().min(obs.size);
        let batch = std::mem::replace(&mut obs.batch, Vec::with_capacity(room));
        let Some(tx) = obs.tx.as_ref() else { return };
        let n = batch.len() as u64;
        let waiting = &self.counters.waiting;
        let sent = if waiting.load(Ordering::Acquire) + n <= obs.max_waiting {
            waiting.fetch_add(n, Ordering::AcqRel);
            tx.try_send(batch).inspect_err(|_| {
                waiting.fetch_sub(n, Ordering::AcqRel);
            })
        } else {
            Err(mpsc::TrySendError::Full(batch))
        };
        match sent {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(batch) | mpsc::TrySendError::Disconnected(batch)) => {
                self.counters
                    .backlog
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let rows: Rows = batch
                    .into_iter()
                    .map(|x| to_record(x, &self.observe, true))
                    .collect();
                self.counters.latency.observe_all(&rows);
                self.write_rows(rows);
            }
        }
    }

    /// Hands rows to the writer, or counts them dropped when the writer is behind.
    pub(crate) fn write_rows(&self, rows: Rows) {
        let n = rows.len() as u64;
        if n == 0 {
            return;
        }
        let tx = self.row_tx.lock().unwrap_or_else(|e| e.into_inner());
        let sent = tx.as_ref().is_some_and(|t| t.try_send(rows).is_ok());
        if !sent {
            let before = self.counters.dropped.fetch_add(n, Ordering::Relaxed);
            if (before + n).ilog2() != before.checked_ilog2().unwrap_or(u32::MAX) {
                tracing::error!("recording is behind: {} rows dropped so far", before + n);
            }
        }
    }

    /// The cut at shutdown: what has gathered is handed on, and no row after it. Returns
    /// the exchanges still in flight at the cut (never recorded).
    pub(crate) fn close(&self) -> u64 {
        let mut obs = self.obs.lock().unwrap_or_else(|e| e.into_inner());
        if !obs.batch.is_empty() {
            self.hand_on(&mut obs);
        }
        obs.tx.take();
        let abandoned = self.counters.in_flight.load(Ordering::Acquire);
        self.row_tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        abandoned
    }
}

/// An exchange from its arrival until its response body is handed over to the client (the
/// body's [`crate::body::Tap`] then owns its end). Every way out ends the exchange exactly
/// once: in a row when it is recorded, counted out of `in_flight`, counted `skipped` when
/// filters or sampling left it out. A handler dropped on the way — the client went away
/// while the proxy read its request or waited for the upstream — still makes its row, classed
/// `client_disconnect`.
pub(crate) struct Pending {
    sink: Arc<Sink>,
    x: Option<Exchange>,
    record: bool,
    started: Instant,
}

impl Pending {
    /// Counts an exchange in.
    pub(crate) fn begin(sink: Arc<Sink>, x: Exchange, record: bool, started: Instant) -> Pending {
        sink.begin();
        Pending {
            sink,
            x: Some(x),
            record,
            started,
        }
    }

    /// The exchange so far.
    pub(crate) fn exchange(&mut self) -> &mut Exchange {
        self.x.get_or_insert_with(Exchange::default)
    }

    /// Whether a row is made.
    pub(crate) fn record(&self) -> bool {
        self.record
    }

    /// Leaves the exchange out of the recording (filters, sampling).
    pub(crate) fn skip(&mut self) {
        self.record = false;
    }

    /// Ends the exchange here: the proxy answered `status` itself, for reason `class`.
    pub(crate) fn fail(mut self, status: u16, class: &str) {
        let x = self.exchange();
        x.status = status;
        x.failure = Some(class.to_owned());
        self.end();
    }

    /// Hands the exchange over to the response body, which ends it.
    pub(crate) fn hand_over(mut self) -> (Exchange, bool) {
        let x = self.x.take().unwrap_or_default();
        if !self.record {
            self.sink.counters.skipped.fetch_add(1, Ordering::Relaxed);
        }
        (x, self.record)
    }

    fn end(&mut self) {
        let Some(mut x) = self.x.take() else { return };
        x.e2e.get_or_insert(self.started.elapsed());
        if !self.record {
            self.sink.counters.skipped.fetch_add(1, Ordering::Relaxed);
        }
        self.sink.end(self.record.then_some(x));
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(x) = self.x.as_mut() {
            x.failure
                .get_or_insert_with(|| "client_disconnect".to_owned());
        }
        self.end();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::salt::Salt;

    /// One receiving end of a batched channel, read an item at a time.
    pub(crate) struct Flat<T>(mpsc::Receiver<Vec<T>>, std::cell::RefCell<Vec<T>>);

    impl<T> Flat<T> {
        pub(crate) fn try_recv(&self) -> Result<T, mpsc::TryRecvError> {
            let mut held = self.1.borrow_mut();
            while held.is_empty() {
                let mut next = self.0.try_recv()?;
                next.reverse();
                *held = next;
            }
            Ok(held.pop().expect("not empty"))
        }
    }

    /// A sink that hands on every exchange at once (batches of one), with channels of the
    /// given sizes, and their receivers.
    pub(crate) fn sink(obs: usize, rows: usize) -> (Sink, Flat<Exchange>, Flat<TraceRecord>) {
        batched(obs, rows, 1)
    }

    /// A sink with batches of `batch`.
    pub(crate) fn batched(
        obs: usize,
        rows: usize,
        batch: usize,
    ) -> (Sink, Flat<Exchange>, Flat<TraceRecord>) {
        // The channel holds any number of batches; `obs` exchanges may wait.
        let (obs_tx, obs_rx) = mpsc::sync_channel(obs.max(1));
        let (row_tx, row_rx) = mpsc::sync_channel(rows);
        let sink = Sink {
            observe: ObserveOptions {
                block_tokens: 16,
                record_content: false,
                salt: Salt::from_bytes(&[1; 32]),
            },
            max_observed_body: 1 << 20,
            counters: Arc::new(Counters::default()),
            obs: Mutex::new(Outlet::new(obs_tx, batch, obs)),
            row_tx: Mutex::new(Some(row_tx)),
            idle: Notify::new(),
        };
        (
            sink,
            Flat(obs_rx, Default::default()),
            Flat(row_rx, Default::default()),
        )
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
        for id in ["a", "b", "c"] {
            sink.begin();
            sink.end(Some(exchange(id)));
        }
        // "a" went to the workers; with them full, "b" was written without tokenizing
        // (backlog); with the writer full too, "c" was dropped and counted, never blocking.
        assert_eq!(obs_rx.try_recv().unwrap().request_id, "a");
        assert_eq!(row_rx.try_recv().unwrap().request_id, "b");
        let c = &sink.counters;
        assert_eq!(c.backlog.load(Ordering::Relaxed), 2);
        assert_eq!(c.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn exchanges_go_on_in_batches_and_the_tick_and_the_cut_hand_on_the_rest() {
        let (sink, obs_rx, row_rx) = batched(100, 4, 3);
        for i in 0..7 {
            sink.begin();
            sink.end(Some(exchange(&format!("x{i}"))));
        }
        // Two full batches went on; the seventh waits for the tick.
        let ids = |rx: &Flat<Exchange>| {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|x| x.request_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&obs_rx), ["x0", "x1", "x2", "x3", "x4", "x5"]);
        sink.flush();
        assert_eq!(ids(&obs_rx), ["x6"]);
        sink.flush();
        assert!(obs_rx.try_recv().is_err());
        // One more gathers, then the cut hands it on before closing.
        sink.begin();
        sink.end(Some(exchange("last")));
        assert_eq!(sink.close(), 0);
        assert_eq!(ids(&obs_rx), ["last"]);
        assert!(row_rx.try_recv().is_err());
        assert_eq!(sink.counters.backlog.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_writes_the_whole_batch_without_tokenizing() {
        let (sink, obs_rx, row_rx) = batched(2, 8, 2);
        for i in 0..4 {
            sink.begin();
            sink.end(Some(exchange(&format!("x{i}"))));
        }
        assert_eq!(obs_rx.try_recv().unwrap().request_id, "x0");
        assert_eq!(obs_rx.try_recv().unwrap().request_id, "x1");
        assert!(obs_rx.try_recv().is_err());
        assert_eq!(row_rx.try_recv().unwrap().request_id, "x2");
        assert_eq!(row_rx.try_recv().unwrap().request_id, "x3");
        assert_eq!(sink.counters.backlog.load(Ordering::Relaxed), 2);
        assert_eq!(sink.counters.dropped.load(Ordering::Relaxed), 0);
        // Two wait for the workers (the test's receiver takes none up).
        assert_eq!(sink.counters.waiting.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_dropped_handler_still_ends_its_exchange_in_a_row() {
        let (sink, obs_rx, _rows) = sink(4, 4);
        let sink = Arc::new(sink);
        let pending = Pending::begin(sink.clone(), exchange("gone"), true, Instant::now());
        assert_eq!(sink.counters.in_flight.load(Ordering::Relaxed), 1);
        drop(pending);
        let x = obs_rx.try_recv().unwrap();
        assert_eq!(
            (x.request_id.as_str(), x.failure.as_deref()),
            ("gone", Some("client_disconnect"))
        );
        assert!(x.e2e.is_some());
        assert_eq!(sink.counters.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn every_way_out_counts_once() {
        let (sink, obs_rx, _rows) = sink(8, 8);
        let sink = Arc::new(sink);
        let begin =
            |id: &str, record| Pending::begin(sink.clone(), exchange(id), record, Instant::now());
        // The proxy answers itself: a row with the status and class.
        begin("refused", true).fail(413, "request_too_large");
        let x = obs_rx.try_recv().unwrap();
        assert_eq!(
            (x.status, x.failure.as_deref()),
            (413, Some("request_too_large"))
        );
        // Left out by a filter, however it ends: no row, counted skipped.
        let mut p = begin("filtered", true);
        p.skip();
        drop(p);
        begin("filtered-2", false).fail(502, "connect");
        // Handed over: the body owns its end (and counts it out).
        let (x, record) = begin("streamed", true).hand_over();
        assert_eq!((x.request_id.as_str(), record), ("streamed", true));
        let (_, record) = begin("streamed-skipped", false).hand_over();
        assert!(!record);
        assert!(obs_rx.try_recv().is_err());
        let c = &sink.counters;
        assert_eq!(c.forwarded.load(Ordering::Relaxed), 5);
        assert_eq!(c.skipped.load(Ordering::Relaxed), 3);
        // Two still in flight: the handed-over ones, until their bodies end.
        assert_eq!(c.in_flight.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn in_flight_counts_in_and_out() {
        let (sink, _o, _r) = sink(1, 1);
        sink.begin();
        sink.begin();
        sink.end(None);
        assert_eq!(sink.counters.in_flight.load(Ordering::Relaxed), 1);
        assert_eq!(sink.counters.forwarded.load(Ordering::Relaxed), 2);
        sink.end(None);
        assert_eq!(sink.counters.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn after_the_cut_nothing_is_handed_on_and_nothing_counted_twice() {
        let (sink, obs_rx, row_rx) = sink(4, 4);
        sink.begin();
        sink.begin();
        sink.end(Some(exchange("before")));
        // One exchange still in flight at the cut: abandoned, never recorded.
        assert_eq!(sink.close(), 1);
        sink.end(Some(exchange("after")));
        assert_eq!(obs_rx.try_recv().unwrap().request_id, "before");
        assert!(obs_rx.try_recv().is_err() && row_rx.try_recv().is_err());
        let c = &sink.counters;
        assert_eq!(
            (
                c.dropped.load(Ordering::Relaxed),
                c.backlog.load(Ordering::Relaxed)
            ),
            (0, 0)
        );
        assert_eq!(c.in_flight.load(Ordering::Relaxed), 0);
    }
}
