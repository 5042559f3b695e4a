//! The open loop: sender threads, each with a current-thread runtime of its own, release
//! their share of the plan at absolute deadlines `t0 + offset` ([`crate::pace::Pacer`]: a
//! precise OS sleep, then a short spin, while polling connections) and await what they
//! sent. Request i goes to sender i mod n, so no sender's clock is behind another's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::execute::Shared;
use crate::row::{Job, TurnMark};
use crate::send::{SendCtx, build_body, lean_targets, phase_for, send_job};
use crate::workload::{After, Chain, OpenPlan, Planned, SessionMode};
use crate::{ReplayError, pace};

/// Runs the plan on one sender thread per client in `clients` (built before the clock
/// started); `false` when stopped early or not drained.
pub(crate) async fn run(
    plan: OpenPlan,
    mut clients: Vec<Option<reqwest::Client>>,
    urls: &[reqwest::Url],
    run: &Shared,
) -> Result<bool, ReplayError> {
    run.ctx
        .progress
        .planned
        .store(plan.expected_len(), Ordering::Relaxed);
    // Sender threads pace and send: each has a runtime of its own that waits for its
    // requests' deadlines while polling its connections (`pace::Pacer`) and, at a deadline,
    // writes the request itself and spawns the rest of it (`start`), so no wake-up of
    // another thread and no queue of other tasks stands between a deadline and its send,
    // and responses are read as they arrive.
    let senders = clients.len();
    let shares = plan.deal(senders);
    let mut pacers = Vec::new();
    for (k, share) in shares.into_iter().enumerate() {
        // A pool of this runtime's own (see `send::http_client`).
        let ctx = Arc::new(SendCtx {
            client: clients.pop().expect("one client per sender"),
            lean: lean_targets(&run.config, urls),
            ..SendCtx::clone(&run.ctx)
        });
        let run = Shared { ctx, ..run.clone() };
        pacers.push(
            std::thread::Builder::new()
                .name(format!("reprise-pacer{k}"))
                .spawn(move || -> Result<bool, ReplayError> {
                    // I/O and time only: a process or signal driver would look for child
                    // processes to reap every time the runtime parks.
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build()
                        .map_err(|e| ReplayError::Config(format!("starting the pacer: {e}")))?;
                    // The loop is a task of this runtime rather than `block_on`'s own
                    // future: waking that one (each timer wake-up of the pacer) writes the
                    // runtime's eventfd, a system call each time, where a task is woken in
                    // place. strace at 5,000 req/s: 0.6 eventfd writes a request, gone.
                    rt.block_on(async move {
                        let heartbeat = tokio::spawn(heartbeat());
                        let done = tokio::spawn(open_loop(share, k, senders, run)).await;
                        heartbeat.abort();
                        done
                    })
                    .map_err(|_| ReplayError::Config("the pacer panicked".into()))
                })
                .map_err(|e| ReplayError::Config(format!("starting the pacer: {e}")))?,
        );
    }
    let joined = tokio::task::spawn_blocking(move || {
        pacers.into_iter().map(|p| p.join()).collect::<Vec<_>>()
    })
    .await
    .map_err(|_| ReplayError::Config("the pacer panicked".into()))?;
    let mut complete = true;
    for j in joined {
        complete &= j.map_err(|_| ReplayError::Config("the pacer panicked".into()))??;
    }
    Ok(complete)
}

/// Keeps a timer pending on the sender's runtime at all times. Tokio's timer wakes its
/// driver (an eventfd write, a system call) whenever a timer is registered that is due
/// before every other one, or when there is no other one — each request's response and
/// gap timeouts, once the previous request's have been dropped. With this one due within
/// [`HEARTBEAT`], later timeouts (seconds away) never are the earliest.
async fn heartbeat() {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// The heartbeat's period (far below any request or gap timeout a user would set).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(250);

/// How often a long wait looks at the stop flag.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// Returns once the run is stopped.
async fn stopped(stop: &std::sync::atomic::AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// How far past the next deadline request bodies are built ahead: requests that share an
/// instant (a burst in a real trace, quantised timestamps) are all ready when it comes,
/// and go out one after another with nothing to build between them.
const LOOKAHEAD: std::time::Duration = std::time::Duration::from_millis(2);
/// Most requests built ahead.
const MAX_AHEAD: usize = 256;
/// Spawns in a row, at most, before the loop lets the requests it spawned run.
const YIELD_EVERY: usize = 32;

/// Builds the plan's next requests into `ahead`: at least one, and every request due
/// within [`LOOKAHEAD`] of the first (up to [`MAX_AHEAD`]).
fn fill(ahead: &mut std::collections::VecDeque<Ready>, plan: &mut impl Iterator<Item = Ready>) {
    if ahead.is_empty() {
        match plan.next() {
            Some(r) => ahead.push_back(r),
            None => return,
        }
    }
    let horizon = ahead.front().map(|r| r.deadline + LOOKAHEAD);
    while ahead.len() < MAX_AHEAD && ahead.back().map(|r| r.deadline) <= horizon {
        match plan.next() {
            Some(r) => ahead.push_back(r),
            None => break,
        }
    }
}

/// Starts a request's task at its deadline: its first poll — the send time stamped, the
/// request written — happens here, in the pacer's own poll, and only what is left (reading
/// the response) is spawned. A spawned task's first poll waits behind every task already
/// queued on this runtime: with thousands of streams open, those reading their events; the
/// request would go out when the runtime reaches it, not at its deadline.
///
/// The first poll sees a no-op waker; the spawned task's own first poll (a new task is
/// always polled) registers its real one, and readiness that came in between is kept by
/// the reactor, so nothing is missed.
fn start<F>(tasks: &mut tokio::task::JoinSet<()>, request: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut request = Box::pin(request);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if request.as_mut().poll(&mut cx).is_pending() {
        tasks.spawn(request);
    }
}

/// A request ready to go: its deadline, its plan entry and its body.
struct Ready {
    deadline: Instant,
    planned: Planned,
    body: Vec<u8>,
    turn: Option<TurnMark>,
}

/// Session turns waiting for their deadline, earliest first (then in arrival order).
struct Due(Ready, u64);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.0.deadline, self.1) == (other.0.deadline, other.1)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: the heap's top is the earliest.
        (other.0.deadline, other.1).cmp(&(self.0.deadline, self.1))
    }
}

/// The open loop, on the pacer's own runtime: each request spawned at its deadline, then
/// the requests in flight awaited (after a stop they get the drain time, then are cancelled,
/// each still ending in a row). `false` when stopped early.
///
/// In a closed-session replay, a turn's end schedules the session's next turn
/// ([`crate::workload::After`]) on this same sender: the loop then waits for whichever
/// comes first, the next planned request or a turn that has become due, and wakes when a
/// turn ends in case its successor is due sooner.
async fn open_loop(
    plan: Box<dyn Iterator<Item = Planned> + Send>,
    first: usize,
    stride: usize,
    run: Shared,
) -> bool {
    let Shared {
        config,
        clock,
        stop,
        sent: sent_counter,
        ctx,
    } = run;
    let n_targets = config.targets.len();
    let closed_sessions = config.sessions == Some(SessionMode::Closed);
    let mut tasks = tokio::task::JoinSet::new();
    let mut complete = true;
    let mut pacer = pace::Pacer::new();
    let (turn_tx, mut turn_rx) = tokio::sync::mpsc::unbounded_channel::<Ready>();
    let mut due = std::collections::BinaryHeap::new();
    let mut turns_in_flight = 0usize;
    let mut arrivals = 0u64;
    // The sender's share of the connection bound (and of --max-in-flight): with every
    // connection busy, the next request waits for one to come free, late, rather than
    // opening connections the process cannot hold.
    let bound = config
        .max_connections
        .unwrap_or(usize::MAX)
        .min(config.max_in_flight.unwrap_or(usize::MAX));
    let cap = bound.div_ceil(stride).max(1);
    let mut unyielded = 0usize;
    let mut plan = plan.map(|p| {
        let turn = (closed_sessions && p.request.session_id.is_some()).then(|| TurnMark {
            recorded: clock.t0 + p.offset,
            first: true,
            last: p.then.is_none(),
            after_end: false,
        });
        Ready {
            deadline: clock.t0 + p.offset,
            body: build_body(&config, &p.request),
            planned: p,
            turn,
        }
    });
    let mut ahead = std::collections::VecDeque::new();
    let mut j = 0usize;
    loop {
        fill(&mut ahead, &mut plan);
        while let Ok(r) = turn_rx.try_recv() {
            turns_in_flight -= 1;
            arrivals += 1;
            due.push(Due(r, arrivals));
        }
        let listed = ahead.front().map(|r: &Ready| r.deadline);
        let turn = due.peek().map(|d: &Due| d.0.deadline);
        let (deadline, from_listed) = match (listed, turn) {
            (Some(a), Some(b)) => (a.min(b), a <= b),
            (Some(a), None) => (a, true),
            (None, Some(b)) => (b, false),
            (None, None) if turns_in_flight == 0 => break,
            (None, None) => {
                // Only turns in flight: their ends bring what comes next.
                if let Some(r) = turn_rx.recv().await {
                    turns_in_flight -= 1;
                    arrivals += 1;
                    due.push(Due(r, arrivals));
                }
                continue;
            }
        };
        // A deadline far off (a gap in the trace, a user's think time) is waited for
        // watching the stop flag too, so that a stop is not held up by it.
        let far = deadline.saturating_duration_since(Instant::now()) > STOP_POLL * 2;
        if turns_in_flight > 0 || far {
            tokio::select! {
                biased;
                r = turn_rx.recv(), if turns_in_flight > 0 => {
                    if let Some(r) = r {
                        turns_in_flight -= 1;
                        arrivals += 1;
                        due.push(Due(r, arrivals));
                    }
                    continue;
                }
                () = stopped(&stop), if far => {}
                () = pacer.until(deadline) => {}
            }
        } else {
            pacer.until(deadline).await;
        }
        if stop.load(Ordering::Relaxed) {
            complete = false;
            break;
        }
        if tasks.len() >= cap {
            ctx.progress
                .connection_waits
                .fetch_add(1, Ordering::Relaxed);
            while tasks.len() >= cap && tasks.join_next().await.is_some() {}
            if stop.load(Ordering::Relaxed) {
                complete = false;
                break;
            }
        }
        let ready = if from_listed {
            ahead.pop_front().expect("a listed request was due")
        } else {
            due.pop().expect("a turn was due").0
        };
        let i = first + j * stride;
        j += 1;
        let Ready {
            deadline,
            mut planned,
            body,
            turn,
        } = ready;
        let phase = phase_for(&sent_counter, &config, &planned.phase);
        let then = planned.then.take();
        let job = Job {
            planned_phase: phase,
            step_value: planned.step_value,
            request: planned.request,
            scheduled: deadline,
            body,
            target: i % n_targets,
            turn,
        };
        match then {
            None => {
                let ctx = ctx.clone();
                start(&mut tasks, async move {
                    send_job(job, ctx).await;
                });
            }
            Some(chain) => {
                // The session's next turn is made ready when this one ends.
                turns_in_flight += 1;
                let (ctx, config, tx, t0) =
                    (ctx.clone(), config.clone(), turn_tx.clone(), clock.t0);
                start(&mut tasks, async move {
                    let end = send_job(job, ctx).await;
                    let Chain { after, next } = *chain;
                    let recorded = t0 + next.offset;
                    let deadline = after.deadline(end, recorded);
                    let turn = Some(TurnMark {
                        recorded,
                        first: false,
                        last: next.then.is_none(),
                        after_end: matches!(after, After::End(_)),
                    });
                    let body = build_body(&config, &next.request);
                    let _ = tx.send(Ready {
                        deadline,
                        planned: next,
                        body,
                        turn,
                    });
                });
            }
        }
        // Reap finished tasks as we go (costs only what finished).
        while tasks.try_join_next().is_some() {}
        // Behind schedule the deadlines are all past and the pacer never waits: let the
        // requests spawned so far start before spawning more.
        unyielded += 1;
        if unyielded >= YIELD_EVERY {
            unyielded = 0;
            tokio::task::yield_now().await;
        }
    }
    // The requests in flight end on their own: answered, failed, or cancelled once the
    // drain time after a stop has run out (`send::send_job`), each in its row.
    while tasks.join_next().await.is_some() {}
    complete
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_request_starts_in_the_pacers_poll_and_only_the_rest_is_spawned() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            // Queued ahead of it: a task the runtime has not polled yet.
            let queued = Arc::new(AtomicBool::new(false));
            let q = queued.clone();
            tasks.spawn(async move { q.store(true, Ordering::SeqCst) });

            // Its first poll runs inside `start`, before any queued task: what it does
            // up to its first wait (stamping, writing) is done when `start` returns.
            let written = Arc::new(AtomicBool::new(false));
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            let got = Arc::new(std::sync::Mutex::new(None));
            let (w, g) = (written.clone(), got.clone());
            start(&mut tasks, async move {
                w.store(true, Ordering::SeqCst);
                let answer = rx.await.ok();
                *g.lock().unwrap() = answer;
            });
            assert!(written.load(Ordering::SeqCst));
            assert!(!queued.load(Ordering::SeqCst));
            assert_eq!(tasks.len(), 2, "the rest of the request is spawned");

            // A request done in its first poll leaves no task behind.
            start(&mut tasks, async {});
            assert_eq!(tasks.len(), 2);

            // The spawned rest is woken by its own waker (the first poll saw a no-op one).
            tx.send(7).unwrap();
            while tasks.join_next().await.is_some() {}
            assert_eq!(*got.lock().unwrap(), Some(7));
            assert!(queued.load(Ordering::SeqCst));
        });
    }

    #[test]
    fn readiness_between_the_first_poll_and_the_spawned_poll_is_not_lost() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            let got = Arc::new(std::sync::Mutex::new(Vec::new()));
            let g = got.clone();
            start(&mut tasks, async move {
                use tokio::io::AsyncReadExt;
                let mut server = server;
                let mut buf = [0u8; 5];
                server.read_exact(&mut buf).await.unwrap();
                g.lock().unwrap().extend_from_slice(&buf);
            });
            // The data arrives after the first poll registered interest with a no-op
            // waker and before the spawned task has been polled.
            std::io::Write::write_all(&mut client, b"hello").unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while tasks.join_next().await.is_some() {}
            })
            .await
            .expect("the spawned task is woken");
            assert_eq!(&*got.lock().unwrap(), b"hello");
        });
    }
}
