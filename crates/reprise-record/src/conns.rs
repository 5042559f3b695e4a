//! The client connections open at once, and room for a new one past `--max-connections`.
//!
//! Idle connections must not lock out real clients: with a plain connection cap, 10,000
//! clients that connect and say nothing (or keep-alive connections a pool forgot) would hold
//! every slot for the whole header timeout while a well-behaved client waited in the listen
//! backlog. So, as nginx does with its keep-alive connections when `worker_connections` runs
//! out, a new client past the limit makes the proxy close the connection that has been idle
//! longest: no request on it in flight, the oldest last activity first. A connection busy
//! with an exchange is never cut; when every connection is busy, the new client waits until
//! one ends.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// One client connection, as the table sees it.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    /// Exchanges on it whose response has not finished (HTTP/1.1: 0 or 1).
    busy: AtomicU32,
    /// Nanoseconds from the table's start to the connection's last activity (its accept, or
    /// the end of its last response).
    idle_since: AtomicU64,
    /// Asked to close; it finishes what it is doing and goes.
    asked: AtomicBool,
    /// Woken when asked to close.
    pub(crate) close: Notify,
}

/// The open connections of one listener.
#[derive(Debug)]
pub(crate) struct Table {
    slots: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    start: Instant,
}

/// A connection's place in the table: holds its slot, leaves the table when dropped.
#[derive(Debug)]
pub(crate) struct Entry {
    table: Arc<Table>,
    id: u64,
    pub(crate) conn: Arc<Conn>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.table.open.lock().unwrap().remove(&self.id);
    }
}

impl Table {
    /// A table of at most `limit` connections.
    pub(crate) fn new(limit: usize) -> Arc<Table> {
        Arc::new(Table {
            slots: Arc::new(Semaphore::new(limit)),
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            start: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A slot for a connection just accepted. Past the limit, the connection idle longest
    /// is asked to close (`on_close_idle` counts it) and this waits until a slot is free:
    /// at once when an idle one goes, at the end of an exchange when all are busy.
    pub(crate) async fn admit(self: &Arc<Self>, on_close_idle: impl Fn()) -> Option<Entry> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // While every connection is busy, look again every 10 ms: one that finishes
                // its exchange and stays open for the next becomes the one to close.
                let mut asked = false;
                loop {
                    if !asked && self.close_idlest() {
                        asked = true;
                        on_close_idle();
                    }
                    tokio::select! {
                        slot = self.slots.clone().acquire_owned() => break slot.ok()?,
                        _ = tokio::time::sleep(Duration::from_millis(10)), if !asked => {}
                    }
                }
            }
        };
        let conn = Arc::new(Conn::default());
        conn.idle_since.store(self.now(), Ordering::Relaxed);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().unwrap().insert(id, conn.clone());
        Some(Entry {
            table: self.clone(),
            id,
            conn,
            _slot: slot,
        })
    }

    /// Asks the connection idle longest to close; false when every connection is busy (or
    /// already asked).
    fn close_idlest(&self) -> bool {
        let open = self.open.lock().unwrap();
        let idlest = open
            .values()
            .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.asked.load(Ordering::Relaxed))
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        match idlest {
            Some(c) => {
                c.asked.store(true, Ordering::Relaxed);
                c.close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Marks an exchange started on `conn`; the returned guard marks its end when the
    /// response body is dropped (written whole, or the connection gone).
    pub(crate) fn busy(self: &Arc<Self>, conn: &Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            table: self.clone(),
            conn: conn.clone(),
        }
    }
}

/// An exchange in progress on a connection.
#[derive(Debug)]
pub(crate) struct Busy {
    table: Arc<Table>,
    conn: Arc<Conn>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.table.now(), Ordering::Relaxed);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection marked busy until it is dropped.
#[derive(Debug)]
pub(crate) struct Marked<B> {
    pub(crate) body: B,
    pub(crate) _busy: Busy,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Marked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn past_the_limit_the_connection_idle_longest_is_asked_to_close() {
        rt().block_on(async {
            let t = Table::new(3);
            let a = t.admit(|| panic!("room")).await.unwrap();
            let b = t.admit(|| panic!("room")).await.unwrap();
            let c = t.admit(|| panic!("room")).await.unwrap();
            // a is busy, b finished an exchange after c was accepted: c is the idlest.
            let _busy_a = t.busy(&a.conn);
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop(t.busy(&b.conn));
            let closed = std::sync::atomic::AtomicU32::new(0);
            let waiting = t.admit(|| {
                closed.fetch_add(1, Ordering::Relaxed);
            });
            tokio::pin!(waiting);
            // The new one waits for c to go.
            assert!(
                tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                    .await
                    .is_err()
            );
            assert_eq!(closed.load(Ordering::Relaxed), 1);
            assert!(c.conn.asked.load(Ordering::Relaxed));
            assert!(!b.conn.asked.load(Ordering::Relaxed));
            assert!(!a.conn.asked.load(Ordering::Relaxed));
            tokio::time::timeout(Duration::from_millis(50), c.conn.close.notified())
                .await
                .expect("c was woken");
            drop(c);
            let d = tokio::time::timeout(Duration::from_secs(1), waiting)
                .await
                .expect("admitted once c went")
                .unwrap();
            assert_eq!(t.open.lock().unwrap().len(), 3);
            drop((a, b, d));
            assert!(t.open.lock().unwrap().is_empty());
        });
    }

    #[test]
    fn a_busy_connection_is_never_asked_and_is_asked_once_its_exchange_ends() {
        rt().block_on(async {
            let t = Table::new(1);
            let a = t.admit(|| panic!("room")).await.unwrap();
            let busy = t.busy(&a.conn);
            let closed = std::sync::atomic::AtomicU32::new(0);
            let waiting = t.admit(|| {
                closed.fetch_add(1, Ordering::Relaxed);
            });
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(30), &mut waiting)
                    .await
                    .is_err()
            );
            assert!(!a.conn.asked.load(Ordering::Relaxed));
            assert_eq!(closed.load(Ordering::Relaxed), 0);
            // The exchange ends and the connection stays open (keep-alive): it is the one
            // to close now.
            drop(busy);
            assert!(
                tokio::time::timeout(Duration::from_millis(30), &mut waiting)
                    .await
                    .is_err()
            );
            assert!(a.conn.asked.load(Ordering::Relaxed));
            assert_eq!(closed.load(Ordering::Relaxed), 1);
            drop(a);
            assert!(waiting.await.is_some());
        });
    }
}
