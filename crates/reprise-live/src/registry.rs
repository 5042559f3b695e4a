//! Lock-free metrics and the registry that renders them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A series' labels, in the order they are written. Values are escaped when rendered.
pub type Labels = Vec<(&'static str, String)>;

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// The value (0 until set).
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Values counted for a [`Histogram`] and added to it when dropped (see
/// [`Histogram::batch`]); until then readers of the histogram do not see them.
#[derive(Debug)]
pub struct HistogramBatch<'a> {
    histogram: &'a Histogram,
    counts: Vec<u64>,
    sum_ns: u64,
}

impl HistogramBatch<'_> {
    /// Counts one value, in seconds, as [`Histogram::observe`] would.
    pub fn observe(&mut self, secs: f64) {
        let (i, ns) = self.histogram.place(secs);
        self.counts[i] += 1;
        self.sum_ns += ns;
    }

    /// Counts one value given in microseconds.
    pub fn observe_us(&mut self, us: u64) {
        self.observe(us as f64 * 1e-6);
    }
}

impl Drop for HistogramBatch<'_> {
    fn drop(&mut self) {
        for (total, &n) in self.histogram.counts.iter().zip(&self.counts) {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
        if self.sum_ns > 0 {
            self.histogram
                .sum_ns
                .fetch_add(self.sum_ns, Ordering::Relaxed);
        }
    }
}

/// A classic histogram over fixed bounds (seconds): a count a bucket, the sum and the count.
#[derive(Debug)]
pub struct Histogram {
    bounds: Arc<[f64]>,
    /// Per bucket, not cumulative; the last is above every bound (`+Inf`).
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending, seconds).
    pub fn new(bounds: Arc<[f64]>) -> Histogram {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one value, in seconds (a bucket holds the values up to its bound, inclusive).
    pub fn observe(&self, secs: f64) {
        let (i, ns) = self.place(secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Where a value in seconds goes: its bucket and what it adds to the sum (ns). A value
    /// that is negative or not finite counts as 0.
    fn place(&self, secs: f64) -> (usize, u64) {
        let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
        let i = self.bounds.partition_point(|b| *b < secs);
        (i, (secs * 1e9) as u64)
    }

    /// Counts one value given in microseconds.
    pub fn observe_us(&self, us: u64) {
        self.observe(us as f64 * 1e-6);
    }

    /// Counts gathered on the calling thread and added here at once when the batch is
    /// dropped: one atomic add a bucket touched instead of two a value, for a thread that
    /// counts many values at a time (the capture proxy's workers, a row's every gap).
    pub fn batch(&self) -> HistogramBatch<'_> {
        HistogramBatch {
            histogram: self,
            counts: vec![0; self.counts.len()],
            sum_ns: 0,
        }
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the values, seconds.
    pub fn sum(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Cumulative counts at each bound, then the total (`+Inf`).
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect()
    }
}

/// The `q`-quantile of a histogram given its bounds and cumulative counts (the last being
/// the total), as Prometheus' `histogram_quantile` computes it: linear within the bucket that
/// holds the rank (from 0 for the first), the highest finite bound when the rank falls in
/// `+Inf`; `None` when empty.
pub fn quantile(bounds: &[f64], cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let i = cumulative.partition_point(|c| (*c as f64) < rank);
    if i >= bounds.len() {
        return bounds.last().copied();
    }
    let (lo, below) = if i == 0 {
        (0.0, 0)
    } else {
        (bounds[i - 1], cumulative[i - 1])
    };
    let inside = cumulative[i] - below;
    if inside == 0 {
        return Some(bounds[i]);
    }
    Some(lo + (bounds[i] - lo) * (rank - below as f64) / inside as f64)
}

/// Cumulative counts `now − then`, bucket by bucket (what happened between two readings).
pub fn delta(now: &[u64], then: &[u64]) -> Vec<u64> {
    now.iter()
        .zip(then.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a.saturating_sub(*b))
        .collect()
}

/// What a family holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counts; samples end in `_total`.
    Counter,
    /// Values.
    Gauge,
    /// Classic histograms.
    Histogram,
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    series: Vec<(Labels, Metric)>,
}

/// The exposition format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The response's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Families of series, in the order they were first asked for.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn get(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: Labels,
        make: impl FnOnce() -> Metric,
    ) -> Metric {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = match families.iter().position(|f| f.name == name) {
            Some(i) => &mut families[i],
            None => {
                families.push(Family {
                    name,
                    help,
                    kind,
                    series: Vec::new(),
                });
                families.last_mut().expect("just pushed")
            }
        };
        assert_eq!(family.kind, kind, "{name} registered as two kinds");
        if let Some((_, m)) = family.series.iter().find(|(l, _)| *l == labels) {
            return m.clone();
        }
        let m = make();
        family.series.push((labels, m.clone()));
        m
    }

    /// The counter `name` (without `_total`) with these labels, made on first use.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: Labels) -> Arc<Counter> {
        match self.get(name, help, Kind::Counter, labels, || {
            Metric::Counter(Arc::default())
        }) {
            Metric::Counter(c) => c,
            _ => unreachable!("kind checked"),
        }
    }

    /// The gauge `name` with these labels, made on first use.
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: Labels) -> Arc<Gauge> {
        match self.get(name, help, Kind::Gauge, labels, || {
            Metric::Gauge(Arc::default())
        }) {
            Metric::Gauge(g) => g,
            _ => unreachable!("kind checked"),
        }
    }

    /// The histogram `name` with these labels over `bounds`, made on first use.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        bounds: &Arc<[f64]>,
    ) -> Arc<Histogram> {
        match self.get(name, help, Kind::Histogram, labels, || {
            Metric::Histogram(Arc::new(Histogram::new(bounds.clone())))
        }) {
            Metric::Histogram(h) => h,
            _ => unreachable!("kind checked"),
        }
    }

    /// A histogram family summed over its series: its bounds and cumulative counts (the
    /// last is the total), as `sum by (le)` would give; `None` before any series exists.
    pub fn histogram_sum(&self, name: &str) -> Option<(Arc<[f64]>, Vec<u64>)> {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let f = families.iter().find(|f| f.name == name)?;
        let mut out: Option<(Arc<[f64]>, Vec<u64>)> = None;
        for (_, m) in &f.series {
            if let Metric::Histogram(h) = m {
                let c = h.cumulative();
                match &mut out {
                    None => out = Some((h.bounds.clone(), c)),
                    Some((_, sum)) => sum.iter_mut().zip(c).for_each(|(a, b)| *a += b),
                }
            }
        }
        out
    }

    /// A counter family summed by the value of one label.
    pub fn counter_by(&self, name: &str, label: &str) -> Vec<(String, u64)> {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, u64)> = Vec::new();
        for f in families.iter().filter(|f| f.name == name) {
            for (labels, m) in &f.series {
                if let Metric::Counter(c) = m {
                    let key = labels
                        .iter()
                        .find(|(k, _)| *k == label)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    match out.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, n)) => *n += c.get(),
                        None => out.push((key, c.get())),
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Every family, in the text format asked for.
    pub fn render(&self, format: Format) -> String {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(64 << 10);
        for f in families.iter() {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            // Prometheus text names a counter's family with its `_total`; OpenMetrics without.
            let family = match (f.kind, format) {
                (Kind::Counter, Format::Prometheus) => format!("{}_total", f.name),
                _ => f.name.to_owned(),
            };
            let _ = writeln!(out, "# HELP {family} {}", escape_help(f.help));
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for (labels, m) in &f.series {
                match m {
                    Metric::Counter(c) => sample(
                        &mut out,
                        f.name,
                        "_total",
                        labels,
                        None,
                        &c.get().to_string(),
                    ),
                    Metric::Gauge(g) => sample(&mut out, f.name, "", labels, None, &float(g.get())),
                    Metric::Histogram(h) => {
                        let cumulative = h.cumulative();
                        for (b, n) in h.bounds.iter().zip(&cumulative) {
                            sample(
                                &mut out,
                                f.name,
                                "_bucket",
                                labels,
                                Some(&float(*b)),
                                &n.to_string(),
                            );
                        }
                        let total = *cumulative.last().expect("+Inf bucket");
                        sample(
                            &mut out,
                            f.name,
                            "_bucket",
                            labels,
                            Some("+Inf"),
                            &total.to_string(),
                        );
                        sample(&mut out, f.name, "_sum", labels, None, &float(h.sum()));
                        sample(&mut out, f.name, "_count", labels, None, &total.to_string());
                    }
                }
            }
        }
        if format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &Labels,
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(le.map(|l| ("le", l)))
        {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as both formats read it (`+Inf`, `-Inf`, `NaN`; integers with `.0`).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch adds what the same values observed one by one would, and only when dropped.
    #[test]
    fn a_batch_counts_as_single_observations_do() {
        let bounds: Arc<[f64]> = Arc::from(vec![0.001, 0.01, 0.1, 1.0]);
        let (one, many) = (Histogram::new(bounds.clone()), Histogram::new(bounds));
        let values = [
            0.0,
            0.0005,
            0.001,
            0.002,
            0.05,
            0.1,
            0.7,
            3.0,
            -1.0,
            f64::NAN,
            0.0123,
        ];
        for v in values {
            one.observe(v);
        }
        let mut batch = many.batch();
        for v in values {
            batch.observe(v);
        }
        batch.observe_us(2_500);
        one.observe_us(2_500);
        assert_eq!(many.count(), 0, "nothing shows before the batch is dropped");
        drop(batch);
        assert_eq!(many.cumulative(), one.cumulative());
        assert_eq!(many.cumulative(), [5, 7, 10, 11, 12]);
        assert_eq!(many.sum(), one.sum());
    }

    fn labels(phase: &str) -> Labels {
        vec![("run_id", "r1".into()), ("phase", phase.into())]
    }

    #[test]
    fn histograms_count_each_value_in_the_bucket_of_its_upper_bound() {
        let h = Histogram::new(Arc::from(vec![0.001, 0.01, 0.1]));
        for v in [0.0005, 0.001, 0.002, 0.01, 0.5, f64::NAN] {
            h.observe(v);
        }
        assert_eq!(h.cumulative(), vec![3, 5, 5, 6]);
        assert_eq!(h.count(), 6);
        assert!((h.sum() - 0.5135).abs() < 1e-9, "{}", h.sum());
        h.observe_us(50_000);
        assert_eq!(h.cumulative(), vec![3, 5, 6, 7]);
    }

    #[test]
    fn prometheus_text_has_cumulative_buckets_and_escaped_labels() {
        let r = Registry::new();
        let bounds: Arc<[f64]> = Arc::from(vec![0.001, 1.0]);
        let h = r.histogram(
            "reprise_ttft_seconds",
            "Time to first token.",
            labels("m"),
            &bounds,
        );
        h.observe(0.0005);
        h.observe(0.5);
        h.observe(700.0);
        r.counter("reprise_requests", "Requests.", labels("a\"b\\c\nd"))
            .add(3);
        r.gauge("reprise_in_flight", "In flight.", vec![]).set(2.0);
        // The same series again is the same metric.
        r.counter("reprise_requests", "Requests.", labels("a\"b\\c\nd"))
            .inc();
        let text = r.render(Format::Prometheus);
        let want = "# HELP reprise_ttft_seconds Time to first token.
# TYPE reprise_ttft_seconds histogram
reprise_ttft_seconds_bucket{run_id=\"r1\",phase=\"m\",le=\"0.001\"} 1
reprise_ttft_seconds_bucket{run_id=\"r1\",phase=\"m\",le=\"1.0\"} 2
reprise_ttft_seconds_bucket{run_id=\"r1\",phase=\"m\",le=\"+Inf\"} 3
reprise_ttft_seconds_sum{run_id=\"r1\",phase=\"m\"} 700.5005
reprise_ttft_seconds_count{run_id=\"r1\",phase=\"m\"} 3
# HELP reprise_requests_total Requests.
# TYPE reprise_requests_total counter
reprise_requests_total{run_id=\"r1\",phase=\"a\\\"b\\\\c\\nd\"} 4
# HELP reprise_in_flight In flight.
# TYPE reprise_in_flight gauge
reprise_in_flight 2.0
";
        assert_eq!(text, want);
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let r = Registry::new();
        r.counter("reprise_requests", "Requests.", vec![]).inc();
        let text = r.render(Format::OpenMetrics);
        assert_eq!(
            text,
            "# HELP reprise_requests Requests.\n# TYPE reprise_requests counter\nreprise_requests_total 1\n# EOF\n"
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_histogram_quantile() {
        let bounds = [1.0, 2.0, 4.0];
        // 10 values ≤ 1, 10 in (1, 2], none in (2, 4], 5 above 4.
        let cumulative = [10, 20, 20, 25];
        assert_eq!(quantile(&bounds, &cumulative, 0.2), Some(0.5));
        assert_eq!(quantile(&bounds, &cumulative, 0.6), Some(1.5));
        assert_eq!(quantile(&bounds, &cumulative, 0.99), Some(4.0));
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        assert_eq!(delta(&[10, 20, 20, 25], &[4, 4, 4, 4]), vec![6, 16, 16, 21]);
        let r = Registry::new();
        let b: Arc<[f64]> = Arc::from(vec![1.0, 2.0]);
        r.histogram("h", "h", labels("a"), &b).observe(0.5);
        r.histogram("h", "h", labels("b"), &b).observe(1.5);
        assert_eq!(r.histogram_sum("h").unwrap().1, vec![1, 2, 2]);
        r.counter("c", "c", vec![("k", "x".into())]).add(2);
        r.counter("c", "c", vec![("k", "y".into())]).add(3);
        r.counter("c", "c", vec![("k", "x".into()), ("z", "1".into())])
            .add(1);
        assert_eq!(
            r.counter_by("c", "k"),
            vec![("x".into(), 3), ("y".into(), 3)]
        );
    }

    #[test]
    fn floats_are_written_as_scrapers_read_them() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(600.0), "600.0");
        assert_eq!(float(0.000_001), "1e-6");
    }
}
