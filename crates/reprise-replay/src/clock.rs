//! The run's clock: one wall-clock anchor read once, and monotonic offsets from it. Every
//! time in a run's files is `anchor + (Instant − t0)`, so durations never see a wall-clock
//! step and rows of the requests and of the samplers line up.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reprise_trace::Timestamp;

/// The anchor: `t0` (monotonic) is the wall-clock time `wall0_ns`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The run's start, monotonic.
    pub t0: Instant,
    /// The run's start, ns since the Unix epoch (UTC).
    pub wall0_ns: i64,
}

impl Clock {
    /// A clock whose start is `lead` from now (time to set up before the first deadline).
    pub fn new(lead: Duration) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        Clock {
            t0: Instant::now() + lead,
            wall0_ns: wall + lead.as_nanos() as i64,
        }
    }

    /// The wall-clock time of a monotonic instant.
    pub fn wall(&self, t: Instant) -> Timestamp {
        let ns = if t >= self.t0 {
            self.wall0_ns + (t - self.t0).as_nanos() as i64
        } else {
            self.wall0_ns - (self.t0 - t).as_nanos() as i64
        };
        Timestamp(ns)
    }

    /// Nanoseconds from the start to `t` (0 before it).
    pub fn since_start_ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_times_are_the_anchor_plus_monotonic_offsets() {
        let c = Clock {
            t0: Instant::now(),
            wall0_ns: 1_000_000_000,
        };
        assert_eq!(c.wall(c.t0 + Duration::from_micros(5)).0, 1_000_005_000);
        assert_eq!(c.wall(c.t0 - Duration::from_micros(5)).0, 999_995_000);
        assert_eq!(c.since_start_ns(c.t0 - Duration::from_secs(1)), 0);
        assert_eq!(c.since_start_ns(c.t0 + Duration::from_millis(2)), 2_000_000);
    }
}
