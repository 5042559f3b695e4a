//! `trace inspect` and `trace validate`: a dataset's shape in figures, and its problems.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::reader::DatasetReader;
use crate::stats::{index_of_dispersion, interarrival_cv, mean_std, quantile_sorted};
use crate::time::format_rfc3339;
use crate::writer::META_BLOCK_TOKENS;
use crate::{Timestamp, TraceRecord};

/// Window sizes (seconds) at which the index of dispersion is reported.
pub const IDC_WINDOWS: [f64; 3] = [1.0, 10.0, 60.0];

/// Distribution figures of one integer column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distribution {
    /// Non-null values.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Median (linear interpolation).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Distribution {
    /// Figures of `values` (sorted in place); `None` when empty.
    pub fn of(values: &mut [f64]) -> Option<Self> {
        values.sort_by(f64::total_cmp);
        let (mean, _) = mean_std(values)?;
        Some(Distribution {
            count: values.len() as u64,
            mean,
            min: values[0],
            p50: quantile_sorted(values, 0.5)?,
            p90: quantile_sorted(values, 0.9)?,
            p99: quantile_sorted(values, 0.99)?,
            max: values[values.len() - 1],
        })
    }
}

/// Index of dispersion at one window size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dispersion {
    /// Window, seconds.
    pub window_s: f64,
    /// Variance / mean of per-window counts (`None` with fewer than two windows).
    pub idc: Option<f64>,
}

/// A trace/1 dataset in figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSummary {
    /// `reprise.format` (or `trace/1 (no metadata)`).
    pub format: String,
    /// Part files.
    pub files: usize,
    /// Rows.
    pub rows: u64,
    /// First arrival (RFC 3339).
    pub first_arrival: Option<String>,
    /// Last arrival (RFC 3339).
    pub last_arrival: Option<String>,
    /// Last − first arrival, seconds.
    pub span_s: f64,
    /// Rows / span, requests per second.
    pub mean_rate: Option<f64>,
    /// Coefficient of variation of inter-arrival gaps.
    pub interarrival_cv: Option<f64>,
    /// Index of dispersion of counts at 1, 10 and 60 s.
    pub dispersion: Vec<Dispersion>,
    /// Prompt tokens.
    pub input_tokens: Option<Distribution>,
    /// Output tokens.
    pub output_tokens: Option<Distribution>,
    /// Rows per model, most first.
    pub models: Vec<(String, u64)>,
    /// Rows per endpoint, most first.
    pub endpoints: Vec<(String, u64)>,
    /// Streamed requests.
    pub streamed: u64,
    /// Distinct sessions.
    pub sessions: u64,
    /// The sessions' turns and think times, when the trace has sessions.
    pub conversations: Option<crate::sessions::SessionStats>,
    /// Rows with prefix hashes.
    pub with_prefix_hashes: u64,
    /// Rows marked as failures by their source.
    pub failures: u64,
    /// Rows per observed HTTP status.
    pub statuses: Vec<(u16, u64)>,
    /// Key-value metadata.
    pub metadata: BTreeMap<String, String>,
}

fn ranked(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Reads a trace/1 dataset batch by batch and summarizes it.
pub fn summarize(path: impl AsRef<Path>) -> Result<TraceSummary> {
    let reader = DatasetReader::<TraceRecord>::open(path)?;
    let mut arrivals: Vec<i64> = Vec::with_capacity(reader.num_rows() as usize);
    let mut input = Vec::new();
    let mut output = Vec::new();
    let mut models = HashMap::new();
    let mut endpoints = HashMap::new();
    let mut sessions = HashSet::new();
    let mut turns: Vec<TraceRecord> = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let (mut streamed, mut hashed, mut failures) = (0, 0, 0);
    for batch in reader.batches() {
        for r in batch? {
            arrivals.push(r.arrival.0);
            if let Some(t) = r.input_tokens {
                input.push(f64::from(t));
            }
            if let Some(t) = r.output_tokens {
                output.push(f64::from(t));
            }
            *models.entry(r.model).or_insert(0) += 1;
            *endpoints.entry(r.endpoint).or_insert(0) += 1;
            if let Some(s) = &r.session_id {
                sessions.insert(s.clone());
                // Only what the turn figures need (`SessionStats::of`).
                let mut t = TraceRecord::new(String::new(), r.arrival);
                t.session_id = r.session_id.clone();
                t.turn = r.turn;
                t.think_us = r.think_us;
                t.e2e_us = r.e2e_us;
                turns.push(t);
            }
            if let Some(s) = r.status {
                *statuses.entry(s).or_insert(0) += 1;
            }
            streamed += u64::from(r.stream);
            hashed += u64::from(r.prefix_hashes.is_some());
            failures += u64::from(r.failure.is_some());
        }
    }
    arrivals.sort_unstable();
    let secs: Vec<f64> = arrivals
        .iter()
        .map(|&t| (t - arrivals[0]) as f64 / 1e9)
        .collect();
    let span_s = secs.last().copied().unwrap_or(0.0);
    let metadata = reader.metadata().clone();
    Ok(TraceSummary {
        format: metadata
            .get(crate::writer::META_FORMAT)
            .cloned()
            .unwrap_or_else(|| "trace/1 (no metadata)".into()),
        files: reader.files().count(),
        rows: arrivals.len() as u64,
        first_arrival: arrivals.first().map(|&t| format_rfc3339(Timestamp(t))),
        last_arrival: arrivals.last().map(|&t| format_rfc3339(Timestamp(t))),
        span_s,
        mean_rate: (span_s > 0.0).then(|| arrivals.len() as f64 / span_s),
        interarrival_cv: interarrival_cv(&secs),
        dispersion: IDC_WINDOWS
            .iter()
            .map(|&w| Dispersion {
                window_s: w,
                idc: index_of_dispersion(&secs, w),
            })
            .collect(),
        input_tokens: Distribution::of(&mut input),
        output_tokens: Distribution::of(&mut output),
        models: ranked(models),
        endpoints: ranked(endpoints),
        streamed,
        sessions: sessions.len() as u64,
        conversations: crate::sessions::SessionStats::of(&turns),
        with_prefix_hashes: hashed,
        failures,
        statuses: statuses.into_iter().collect(),
        metadata,
    })
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The trace cannot be replayed faithfully as it is.
    Error,
    /// Worth knowing; replay copes.
    Warning,
}

/// One kind of problem found by [`validate`], with how often and where it first occurs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// Rows affected.
    pub rows: u64,
    /// First affected row (counted from 1 across the dataset) and its request id.
    pub first: (u64, String),
}

/// What [`validate`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    /// Rows read (all of them: every column was type-checked and decoded).
    pub rows: u64,
    /// Findings, errors first.
    pub findings: Vec<Finding>,
}

impl Validation {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Reads every row of a trace/1 dataset and checks what the types cannot: unique request
/// ids, ordered arrivals, known sizes, prefix hashes consistent with the prompt length,
/// TTFT within E2E.
pub fn validate(path: impl AsRef<Path>) -> Result<Validation> {
    let reader = DatasetReader::<TraceRecord>::open(path)?;
    let block_tokens: Option<u64> = reader
        .metadata()
        .get(META_BLOCK_TOKENS)
        .and_then(|v| v.parse().ok())
        .filter(|&b| b > 0);
    let mut findings: Vec<Finding> = Vec::new();
    let mut note = |severity, message: &str, row: u64, id: &str| match findings
        .iter_mut()
        .find(|f| f.message == message)
    {
        Some(f) => f.rows += 1,
        None => findings.push(Finding {
            severity,
            message: message.to_owned(),
            rows: 1,
            first: (row, id.to_owned()),
        }),
    };
    let mut ids = HashSet::new();
    let mut last_arrival = i64::MIN;
    let mut row = 0u64;
    for batch in reader.batches() {
        for r in batch? {
            row += 1;
            let id = r.request_id.as_str();
            if id.is_empty() {
                note(Severity::Error, "empty request_id", row, id);
            } else if !ids.insert(r.request_id.clone()) {
                note(Severity::Error, "duplicate request_id", row, id);
            }
            if r.arrival.0 < last_arrival {
                note(
                    Severity::Warning,
                    "arrival earlier than the previous row's (replay sorts rows)",
                    row,
                    id,
                );
            }
            last_arrival = last_arrival.max(r.arrival.0);
            if r.input_tokens.is_none() {
                note(
                    Severity::Warning,
                    "input_tokens is null (replay needs a prompt size)",
                    row,
                    id,
                );
            }
            if r.output_tokens.is_none() && r.max_tokens.is_none() {
                note(
                    Severity::Warning,
                    "output_tokens and max_tokens are both null",
                    row,
                    id,
                );
            }
            if let (Some(h), Some(n), Some(b)) = (&r.prefix_hashes, r.input_tokens, block_tokens)
                && h.len() as u64 > u64::from(n).div_ceil(b)
            {
                {
                    note(
                        Severity::Error,
                        "more prefix_hashes blocks than input_tokens fill",
                        row,
                        id,
                    );
                }
            }
            if r.prefix_hashes.is_some() && block_tokens.is_none() {
                note(
                    Severity::Warning,
                    "prefix_hashes without `reprise.block_tokens` metadata",
                    row,
                    id,
                );
            }
            if let (Some(t), Some(e)) = (r.ttft_us, r.e2e_us)
                && t > e
            {
                {
                    note(Severity::Error, "ttft_us greater than e2e_us", row, id);
                }
            }
            if r.status.is_some_and(|s| s != 0 && !(100..600).contains(&s)) {
                note(Severity::Error, "status is not an HTTP status", row, id);
            }
        }
    }
    findings.sort_by_key(|f| f.severity != Severity::Error);
    Ok(Validation {
        rows: row,
        findings,
    })
}

impl TraceSummary {
    /// The summary as an aligned text block for terminals.
    pub fn render(&self) -> String {
        use crate::human::{figure, fixed1, sig3, thousands};
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<15} {v}\n"));
        line(
            "format",
            format!(
                "{} ({} file{}, {} rows)",
                self.format,
                self.files,
                if self.files == 1 { "" } else { "s" },
                thousands(self.rows)
            ),
        );
        if let Some(src) = self.metadata.get(crate::writer::META_SOURCE) {
            let file = self
                .metadata
                .get("reprise.source_file")
                .map(|f| format!(" ({f})"))
                .unwrap_or_default();
            line("source", format!("{src}{file}"));
        }
        if let (Some(a), Some(b)) = (&self.first_arrival, &self.last_arrival) {
            line("span", format!("{a} .. {b} ({} s)", fixed1(self.span_s)));
        }
        if let Some(rate) = self.mean_rate {
            line("mean rate", format!("{rate:.2} req/s"));
        }
        if let Some(cv) = self.interarrival_cv {
            line("inter-arrival", format!("CV {} (1 = Poisson)", sig3(cv)));
        }
        let idc: Vec<String> = self
            .dispersion
            .iter()
            .filter_map(|d| d.idc.map(|v| format!("{} @{} s", sig3(v), d.window_s)))
            .collect();
        if !idc.is_empty() {
            line(
                "dispersion",
                format!("IDC {} (1 = Poisson)", idc.join(", ")),
            );
        }
        let dist = |d: &Option<Distribution>| match d {
            Some(d) => format!(
                "p50 {}  p90 {}  p99 {}  max {}  mean {}  ({} rows)",
                figure(d.p50),
                figure(d.p90),
                figure(d.p99),
                figure(d.max),
                figure(d.mean),
                thousands(d.count)
            ),
            None => "none".to_owned(),
        };
        line("input tokens", dist(&self.input_tokens));
        line("output tokens", dist(&self.output_tokens));
        let counts = |v: &[(String, u64)]| {
            let mut parts: Vec<String> = v
                .iter()
                .take(5)
                .map(|(k, n)| {
                    format!(
                        "{} {}",
                        if k.is_empty() { "(unspecified)" } else { k },
                        thousands(*n)
                    )
                })
                .collect();
            if v.len() > 5 {
                parts.push(format!("and {} more", v.len() - 5));
            }
            parts.join(", ")
        };
        line("models", counts(&self.models));
        line("endpoints", counts(&self.endpoints));
        let pct = |n: u64| {
            if self.rows == 0 {
                0.0
            } else {
                n as f64 * 100.0 / self.rows as f64
            }
        };
        line(
            "streamed",
            format!("{} ({:.0}%)", thousands(self.streamed), pct(self.streamed)),
        );
        match &self.conversations {
            Some(c) => line(
                "sessions",
                format!(
                    "{} ({} turns; per session p50 {}, max {}; think time {})",
                    thousands(self.sessions),
                    thousands(c.turns),
                    c.turns_p50,
                    c.turns_max,
                    match (c.think_p50_s, c.think_p90_s) {
                        (Some(a), Some(b)) => format!("p50 {} s, p90 {} s", sig3(a), sig3(b)),
                        _ => "unknown (no ends of turns)".to_owned(),
                    }
                ),
            ),
            None => line("sessions", thousands(self.sessions)),
        }
        let block = self
            .metadata
            .get(META_BLOCK_TOKENS)
            .map(|b| format!(", {b}-token blocks"))
            .unwrap_or_default();
        line(
            "prefix hashes",
            format!("{} rows{block}", thousands(self.with_prefix_hashes)),
        );
        if !self.statuses.is_empty() {
            let s: Vec<String> = self
                .statuses
                .iter()
                .map(|(k, n)| format!("{k}: {}", thousands(*n)))
                .collect();
            line("status", s.join(", "));
        }
        line("failures", thousands(self.failures));
        out
    }
}
