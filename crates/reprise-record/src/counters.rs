//! What a recorder counts ([`Counters`], served on the admin port's `/metrics`) and what
//! it reports when it stops ([`RecordSummary`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use reprise_live::{Format, Histogram, Registry, buckets};
use reprise_trace::TraceRecord;

/// Counters, also served on the admin port's `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Latency histograms of the exchanges recorded (the same buckets as a replay's).
    pub latency: Latency,
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
    /// Ended exchanges handed to the observation workers and not yet taken up by one.
    pub waiting: AtomicU64,
    /// Idle client connections closed to make room for a new one past `max_connections`.
    pub idle_closed: AtomicU64,
}

/// TTFT, inter-token gaps and E2E of the exchanges seen, as live histograms.
#[derive(Debug)]
pub struct Latency {
    registry: Registry,
    ttft: Arc<Histogram>,
    itl: Arc<Histogram>,
    e2e: Arc<Histogram>,
}

impl Default for Latency {
    fn default() -> Self {
        let registry = Registry::new();
        let bounds: Arc<[f64]> = Arc::from(buckets::latency());
        let h = |name, help| registry.histogram(name, help, Vec::new(), &bounds);
        Latency {
            ttft: h(
                "reprise_record_ttft_seconds",
                "Time to first token of the exchanges recorded, from the request's arrival.",
            ),
            itl: h(
                "reprise_record_itl_seconds",
                "Gaps between content events of the exchanges recorded.",
            ),
            e2e: h(
                "reprise_record_e2e_seconds",
                "Arrival to the response's end, of the exchanges recorded.",
            ),
            registry,
        }
    }
}

impl Latency {
    /// Counts the latencies of rows (failed exchanges have none), added to the shared
    /// histograms once for all of them: a row's every gap counted with two atomic adds on
    /// counters the other workers also add to was 11% of the recording threads' time (perf,
    /// the proxy bench).
    pub fn observe_all(&self, rows: &[TraceRecord]) {
        let (mut ttft, mut e2e, mut itl) = (self.ttft.batch(), self.e2e.batch(), self.itl.batch());
        for row in rows {
            if let Some(t) = row.ttft_us {
                ttft.observe_us(t);
            }
            if let Some(e) = row.e2e_us {
                e2e.observe_us(e);
            }
            for gap in row.itl_us.iter().flatten() {
                itl.observe_us(u64::from(*gap));
            }
        }
    }
}

impl Counters {
    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = self.latency.registry.render(Format::Prometheus);
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
        out.push_str(&format!(
            "# HELP reprise_record_waiting Ended exchanges waiting for an observation worker.
# TYPE reprise_record_waiting gauge
reprise_record_waiting {}
",
            self.waiting.load(Ordering::Relaxed)
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
                && text.contains("# TYPE reprise_record_waiting gauge\nreprise_record_waiting 0\n")
        );
        // Every line parses as the exposition format: comments or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("reprise_record_"), "{line}");
            value.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn recorded_latencies_fill_the_histograms() {
        let c = Counters::default();
        let mut row = TraceRecord::new("r", reprise_trace::Timestamp(0));
        row.ttft_us = Some(50_000);
        row.e2e_us = Some(2_000_000);
        row.itl_us = Some(vec![10_000, 12_000, 900_000]);
        c.latency.observe_all(std::slice::from_ref(&row));
        // A failed exchange: no latency.
        c.latency
            .observe_all(&[TraceRecord::new("f", reprise_trace::Timestamp(0))]);
        let text = c.render();
        assert!(
            text.contains("reprise_record_ttft_seconds_count 1\n"),
            "{text}"
        );
        assert!(text.contains("reprise_record_itl_seconds_count 3\n"));
        assert!(text.contains("reprise_record_e2e_seconds_sum 2.0\n"));
        assert!(text.contains("reprise_record_itl_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("reprise_record_itl_seconds_bucket{le=\"0.01202\"} 2\n"));
    }
}
