//! What a recorder counts ([`Counters`], served on the admin port's `/metrics`) and what
//! it reports when it stops ([`RecordSummary`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters, also served on the admin port's `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests forwarded.
    pub forwarded: AtomicU64,
    /// Requests left out by sampling or filters.
    pub skipped: AtomicU64,
    /// Rows written.
    pub recorded: AtomicU64,
    /// Rows written without tokenizing because the workers were behind.
    pub backlog: AtomicU64,
    /// Rows lost because the writer was behind.
    pub dropped: AtomicU64,
    /// Rows lost because writing failed (disk full, unwritable directory).
    pub failed: AtomicU64,
    /// Exchanges that failed upstream (the row carries the class).
    pub upstream_errors: AtomicU64,
    /// Exchanges in flight.
    pub in_flight: AtomicU64,
    /// Idle client connections closed to make room for a new one past `max_connections`.
    pub idle_closed: AtomicU64,
}

impl Counters {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, v) in [
            ("forwarded", "Requests forwarded.", &self.forwarded),
            (
                "skipped",
                "Requests not recorded (sampling, filters).",
                &self.skipped,
            ),
            ("recorded", "Rows written.", &self.recorded),
            (
                "backlog",
                "Rows written without tokenizing (workers behind).",
                &self.backlog,
            ),
            ("dropped", "Rows lost: writer behind.", &self.dropped),
            ("failed", "Rows lost: write errors.", &self.failed),
            (
                "upstream_errors",
                "Exchanges that failed upstream.",
                &self.upstream_errors,
            ),
            (
                "idle_connections_closed",
                "Idle client connections closed to make room past the connection limit.",
                &self.idle_closed,
            ),
        ] {
            out.push_str(&format!(
                "# HELP reprise_record_{name}_total {help}\n# TYPE reprise_record_{name}_total counter\nreprise_record_{name}_total {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP reprise_record_in_flight Exchanges in flight.\n# TYPE reprise_record_in_flight gauge\nreprise_record_in_flight {}\n",
            self.in_flight.load(Ordering::Relaxed)
        ));
        out
    }
}

/// What a stopped recorder wrote.
#[derive(Debug, Clone, Default)]
pub struct RecordSummary {
    /// Exchanges forwarded (every request that arrived).
    pub forwarded: u64,
    /// Exchanges left out by filters or sampling.
    pub skipped: u64,
    /// Rows written.
    pub recorded: u64,
    /// Rows lost because the writer was behind.
    pub dropped: u64,
    /// Rows lost because writing failed.
    pub failed: u64,
    /// Exchanges still in flight when the drain time ran out: never recorded.
    pub abandoned: u64,
    /// Rows lost: `dropped + failed + abandoned`.
    pub lost: u64,
    /// Part files written.
    pub files: Vec<PathBuf>,
}

impl RecordSummary {
    /// Whether every exchange is accounted for: forwarded = recorded + skipped + lost.
    pub fn reconciles(&self) -> bool {
        self.forwarded == self.recorded + self.skipped + self.lost
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        format!(
            "{} requests forwarded: {} recorded in {} files, {} skipped (filters, sampling), {} lost ({} writer behind, {} write errors, {} still in flight at the end)",
            self.forwarded,
            self.recorded,
            self.files.len(),
            self.skipped,
            self.lost,
            self.dropped,
            self.failed,
            self.abandoned
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reconciles_when_every_exchange_is_accounted_for() {
        let mut s = RecordSummary {
            forwarded: 10,
            skipped: 2,
            recorded: 6,
            dropped: 1,
            abandoned: 1,
            lost: 2,
            ..RecordSummary::default()
        };
        assert!(s.reconciles());
        assert_eq!(
            s.describe(),
            "10 requests forwarded: 6 recorded in 0 files, 2 skipped (filters, sampling), 2 lost (1 writer behind, 0 write errors, 1 still in flight at the end)"
        );
        s.recorded = 7;
        assert!(!s.reconciles());
    }

    #[test]
    fn counters_render_as_prometheus_text() {
        let c = Counters::default();
        c.forwarded.fetch_add(3, Ordering::Relaxed);
        c.dropped.fetch_add(1, Ordering::Relaxed);
        c.in_flight.fetch_add(2, Ordering::Relaxed);
        let text = c.render();
        assert!(text.contains(
            "# TYPE reprise_record_forwarded_total counter\nreprise_record_forwarded_total 3\n"
        ));
        assert!(text.contains("reprise_record_dropped_total 1\n"));
        assert!(text.contains("reprise_record_recorded_total 0\n"));
        assert!(
            text.contains("# TYPE reprise_record_in_flight gauge\nreprise_record_in_flight 2\n")
        );
        // Every line parses as the exposition format: comments or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.split_once(' ').unwrap();
            assert!(name.starts_with("reprise_record_"), "{line}");
            value.parse::<u64>().unwrap();
        }
    }
}
