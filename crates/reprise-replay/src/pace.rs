//! Waiting for a request's deadline with microsecond accuracy, on a runtime that keeps
//! polling its connections while it waits.
//!
//! Tokio's timer is millisecond-grained, so a wait on it alone is up to a millisecond late.
//! On Linux the pacer sleeps on a `timerfd` (nanosecond resolution, registered with the
//! runtime's reactor like a socket) until [`FINE`] before the deadline, then yields to the
//! runtime until the instant: the thread sleeps through the gaps between requests instead
//! of spinning, and wakes on time. Elsewhere (or if no timerfd can be made) it sleeps on
//! the runtime's timer until [`COARSE`] before the deadline and yields from there.

use std::time::{Duration, Instant};

/// How long before a deadline the timerfd wakes the pacer: the wake-up's own latency on a
/// busy machine, measured in the pacing benchmark.
pub const FINE: Duration = Duration::from_micros(60);
/// How long before a deadline a wait on the runtime's millisecond timer ends.
pub const COARSE: Duration = Duration::from_micros(1500);

/// Waits for deadlines on the current runtime. Make one per runtime (it registers a
/// timer with that runtime's reactor).
#[derive(Debug)]
pub struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl Pacer {
    /// A pacer for the current runtime (which must have I/O enabled on Linux).
    pub fn new() -> Pacer {
        Pacer {
            #[cfg(target_os = "linux")]
            timer: linux::timer(),
        }
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
            if deadline > now + FINE && linux::sleep(timer, deadline - FINE - now).await.is_err() {
                // A timer that fails once is not trusted again.
                self.timer = None;
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
        #[allow(deprecated)]
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
                Ok(_) => return Ok(()),
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
