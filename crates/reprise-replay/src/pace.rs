//! Waiting for a request's deadline with sub-millisecond accuracy and little CPU, on a
//! runtime that keeps polling its connections while it waits.
//!
//! Tokio's timer is millisecond-grained, so a wait on it alone is up to a millisecond late.
//! On Linux the pacer sleeps on a `timerfd` (nanosecond resolution, registered with the
//! runtime's reactor like a socket) until a margin before the deadline, then yields to the
//! runtime until the instant. Waiting awake costs a core for as long as it lasts, so the
//! margin only covers the part of the timer's lateness beyond [`TOLERANCE`]: a machine that
//! wakes a sleeping thread within ~100 µs (a busy one does) sleeps right up to each
//! deadline and spends no CPU waiting; an idle virtual machine, which can take a
//! millisecond to wake a thread, grows the margin so that requests still go out well within
//! a millisecond. The margin starts at [`INITIAL`] (until the pacer has seen how this
//! machine wakes, it assumes it wakes late: a replay's first requests, and a distributed
//! replay's common start, are on time on a busy or idle machine alike) and follows the
//! lateness seen (up by a quarter of the excess a wait, down by 1/16), between zero and
//! [`COARSE`], so that one late wake-up does not buy a long stretch of spinning. A wait
//! spent awake inside the margin counts as an on-time wake-up, so a margin wider than the
//! gaps between requests comes down until the timer is tried again. Deadlines closer than [`MIN_SLEEP`] are
//! waited for awake (cheaper than arming the timer). Elsewhere (or if no timerfd can be
//! made) it sleeps on the runtime's timer until [`COARSE`] before the deadline and yields
//! from there.

use std::time::{Duration, Instant};

/// Lateness of the timer's wake-ups that the pacer accepts rather than spins to avoid.
pub const TOLERANCE: Duration = Duration::from_micros(100);
/// Added to the wake-up lateness seen to make the margin.
const EXTRA: Duration = Duration::from_micros(20);
/// The margin before anything has been learnt.
pub const INITIAL: Duration = Duration::from_millis(1);
/// Deadlines closer than this are waited for awake.
pub const MIN_SLEEP: Duration = Duration::from_micros(20);
/// How long before a deadline a wait on the runtime's millisecond timer ends.
pub const COARSE: Duration = Duration::from_micros(1500);

/// Waits for deadlines on the current runtime. Make one per runtime (it registers a
/// timer with that runtime's reactor).
#[derive(Debug)]
pub struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    /// The current margin (see the module's documentation).
    margin: Duration,
}

impl Pacer {
    /// A pacer for the current runtime (which must have I/O enabled on Linux).
    pub fn new() -> Pacer {
        Pacer {
            #[cfg(target_os = "linux")]
            timer: linux::timer(),
            margin: INITIAL,
        }
    }

    /// The margin before a deadline at which the timer now wakes the pacer.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// Whether waits use a fine-grained timer (a timerfd).
    pub fn is_fine(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.timer.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Returns at `deadline` (or just after), having let the runtime run other tasks and
    /// poll I/O meanwhile.
    pub async fn until(&mut self, deadline: Instant) {
        #[cfg(target_os = "linux")]
        if let Some(timer) = &self.timer {
            let now = Instant::now();
            if deadline > now + self.margin.max(MIN_SLEEP) {
                let wake = deadline - self.margin;
                if linux::sleep(timer, wake - now).await.is_err() {
                    // A timer that fails once is not trusted again.
                    self.timer = None;
                } else {
                    self.learn(Instant::now().saturating_duration_since(wake));
                }
            } else if deadline > now + MIN_SLEEP {
                // Inside the margin, waited for awake: nothing is learnt of the timer, so the
                // margin drifts down as if the wake-up had been on time. Otherwise a margin
                // wider than the gaps between requests would never be tested again, and the
                // pacer would spin through every gap.
                self.learn(Duration::ZERO);
            }
        }
        if !self.is_fine() {
            let now = Instant::now();
            if deadline > now + COARSE {
                tokio::time::sleep_until(tokio::time::Instant::from_std(deadline - COARSE)).await;
            }
        }
        while Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
    }
}

impl Pacer {
    /// Follows the wake-ups' lateness beyond [`TOLERANCE`]: up by a quarter of the excess
    /// a wait, down by 1/16.
    fn learn(&mut self, late: Duration) {
        let want = (late + EXTRA).saturating_sub(TOLERANCE).min(COARSE);
        if want > self.margin {
            self.margin += (want - self.margin) / 4;
        } else {
            self.margin -= (self.margin - want) / 16;
        }
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new()
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use tokio::io::unix::AsyncFd;

    pub(super) fn timer() -> Option<AsyncFd<OwnedFd>> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .ok()?;
        // `new` is deprecated in favour of the unsafe `register`, whose contract (the fd
        // stays open and the same while registered) an `OwnedFd` keeps by construction;
        // the workspace forbids unsafe code.
        #[allow(
            deprecated,
            reason = "the unsafe replacement is forbidden; an OwnedFd keeps its contract"
        )]
        AsyncFd::new(fd).ok()
    }

    /// Sleeps `wait` on the timer (relative, CLOCK_MONOTONIC, as `Instant`).
    pub(super) async fn sleep(timer: &AsyncFd<OwnedFd>, wait: Duration) -> std::io::Result<()> {
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = Itimerspec {
            it_interval: zero,
            it_value: Timespec {
                tv_sec: wait.as_secs() as _,
                tv_nsec: wait.subsec_nanos().max(1) as _,
            },
        };
        timerfd_settime(timer.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        loop {
            let mut ready = timer.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(ready.get_inner(), &mut expirations) {
                Ok(_) => {
                    // Read: the timer cannot fire again before the next `settime`, so its
                    // readiness goes now, or the next sleep would begin with a read that
                    // fails (`EAGAIN`): a system call for nothing on every sleep.
                    ready.clear_ready();
                    return Ok(());
                }
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn waits_end_at_the_deadline_not_before() {
        let mut pacer = Pacer::new();
        #[cfg(target_os = "linux")]
        assert!(pacer.is_fine());
        let start = Instant::now();
        for i in 1..=50u32 {
            let deadline = start + Duration::from_micros(300) * i;
            pacer.until(deadline).await;
            assert!(Instant::now() >= deadline);
        }
        // Past deadlines return at once.
        let before = Instant::now();
        pacer.until(start).await;
        assert!(before.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn the_margin_covers_lateness_beyond_the_tolerance_up_fast_and_down_slowly() {
        // A new pacer assumes late wake-ups until it has seen some.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { Pacer::new().margin() }), INITIAL);
        let mut p = Pacer {
            #[cfg(target_os = "linux")]
            timer: None,
            margin: Duration::ZERO,
        };
        // Wake-ups within the tolerance cost no spinning.
        for _ in 0..100 {
            p.learn(Duration::from_micros(60));
        }
        assert_eq!(p.margin(), Duration::ZERO);
        // 1 ms late: the margin closes on 920 µs within a few waits.
        for _ in 0..12 {
            p.learn(Duration::from_millis(1));
        }
        let m = p.margin().as_micros();
        assert!((880..=920).contains(&m), "{m}");
        // One on-time wake-up barely lowers it; many bring it back to zero.
        p.learn(Duration::from_micros(5));
        assert!(p.margin() > Duration::from_micros(830));
        for _ in 0..1000 {
            p.learn(Duration::from_micros(5));
        }
        assert!(p.margin() < Duration::from_micros(5), "{:?}", p.margin());
        // Never beyond the coarse bound.
        for _ in 0..100 {
            p.learn(Duration::from_secs(1));
        }
        assert!(p.margin() <= COARSE && p.margin() > COARSE - Duration::from_micros(1));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn other_tasks_run_while_it_waits() {
        let mut pacer = Pacer::new();
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let t = ticks.clone();
        let other = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        pacer
            .until(Instant::now() + Duration::from_millis(40))
            .await;
        assert_eq!(ticks.load(std::sync::atomic::Ordering::Relaxed), 5);
        other.await.unwrap();
    }
}
