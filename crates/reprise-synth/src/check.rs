//! `synth check`: how faithful a generated workload is to its source — rate, burstiness at
//! every time scale (the index of dispersion of counts at 1, 10, 60 and 600 s, and the share
//! of requests in the busiest 1% of seconds), length percentiles and KS distances,
//! input/output correlation, prefix sharing, conversations (turns per session, think time,
//! context growth) — each against a stated tolerance.
//!
//! A workload compressed K times (`--mode compress`) is compared with the source at K times
//! the window (its 1-s IDC is the source's at K s), as replaying at `--speed K` would be.

use std::collections::HashSet;

use reprise_trace::TraceRecord;
use reprise_trace::stats::{index_of_dispersion, interarrival_cv, quantile_sorted};
use serde::Serialize;

use crate::bursts::busiest_share;
use crate::dist::ks_two_sample;

/// One compared figure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckRow {
    /// What.
    pub metric: String,
    /// In the source (times the expected scale for rates).
    pub expected: Option<f64>,
    /// In the generated workload.
    pub generated: Option<f64>,
    /// The tolerance, in words.
    pub tolerance: String,
    /// Within tolerance (`None`: reported only).
    pub pass: Option<bool>,
}

/// The fidelity report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckReport {
    /// Every figure.
    pub rows: Vec<CheckRow>,
    /// Every checked figure passed.
    pub pass: bool,
}

struct Figures {
    rate: f64,
    span: f64,
    cv: Option<f64>,
    idc: Vec<Option<f64>>,
    busiest: Option<f64>,
    input: Vec<f64>,
    output: Vec<f64>,
    corr: Option<f64>,
    prefix_share: Option<f64>,
    sessions: Option<SessionFigures>,
}

/// Conversations in figures.
struct SessionFigures {
    share: f64,
    turns_mean: f64,
    think_p50: Option<f64>,
    think_p90: Option<f64>,
    growth_p50: Option<f64>,
}

fn session_figures(rows: &[TraceRecord]) -> Option<SessionFigures> {
    let stats = reprise_trace::sessions::SessionStats::of(rows)?;
    // Context growth: a later turn's prompt beyond the previous prompt and answer.
    let turns = reprise_trace::sessions::session_turns(rows);
    let mut by: std::collections::HashMap<&str, Vec<&TraceRecord>> =
        std::collections::HashMap::new();
    for r in &turns {
        by.entry(r.session_id.as_deref().unwrap_or(""))
            .or_default()
            .push(r);
    }
    let mut growth = Vec::new();
    for turns in by.values_mut() {
        turns.sort_by_key(|r| (r.turn, r.arrival));
        for w in turns.windows(2) {
            if let (Some(i0), Some(o0), Some(i1)) =
                (w[0].input_tokens, w[0].output_tokens, w[1].input_tokens)
            {
                growth.push((f64::from(i1) - f64::from(i0) - f64::from(o0)).max(0.0));
            }
        }
    }
    growth.sort_by(f64::total_cmp);
    Some(SessionFigures {
        share: stats.turns as f64 / rows.len().max(1) as f64,
        turns_mean: stats.turns as f64 / stats.sessions.max(1) as f64,
        think_p50: stats.think_p50_s,
        think_p90: stats.think_p90_s,
        growth_p50: quantile_sorted(&growth, 0.5),
    })
}

const WINDOWS: [f64; 4] = [1.0, 10.0, 60.0, 600.0];
/// Fewest windows of a length in the source for its index of dispersion to be judged: the
/// estimate's own relative error is about sqrt(2 / (windows − 1)), a third at 20 windows.
const CHECK_MIN_WINDOWS: f64 = 20.0;

/// The figures of `rows`, with the time scales stretched by `stretch` (K for the source of a
/// K-times compressed workload).
fn figures(rows: &[TraceRecord], stretch: f64) -> Figures {
    let t0 = rows.iter().map(|r| r.arrival.0).min().unwrap_or(0);
    let mut secs: Vec<f64> = rows
        .iter()
        .map(|r| (r.arrival.0 - t0) as f64 / 1e9)
        .collect();
    secs.sort_by(f64::total_cmp);
    let span = secs.last().copied().unwrap_or(0.0);
    let pairs: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.failure.is_none())
        .filter_map(|r| Some((f64::from(r.input_tokens?), f64::from(r.output_tokens?))))
        .filter(|(i, _)| *i > 0.0)
        .collect();
    let corr = pearson_log(&pairs);
    let mut input: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let mut output: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    input.sort_by(f64::total_cmp);
    output.sort_by(f64::total_cmp);
    let mut seen = HashSet::new();
    let (mut with, mut sharing) = (0u64, 0u64);
    for r in rows {
        if let Some(h) = r.prefix_hashes.as_ref().filter(|h| !h.is_empty()) {
            with += 1;
            sharing += u64::from(seen.contains(&h[0]));
            seen.insert(h[0]);
        }
    }
    Figures {
        rate: if span > 0.0 {
            (secs.len() - 1) as f64 / span
        } else {
            0.0
        },
        span,
        cv: interarrival_cv(&secs),
        idc: WINDOWS
            .iter()
            .map(|&w| index_of_dispersion(&secs, w * stretch))
            .collect(),
        busiest: busiest_share(&secs, stretch),
        input,
        output,
        corr,
        prefix_share: (with > 0).then(|| sharing as f64 / with as f64),
        sessions: session_figures(rows),
    }
}

/// Pearson correlation of log(1 + x) and log(1 + y).
fn pearson_log(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 3 {
        return None;
    }
    let n = pairs.len() as f64;
    let (xs, ys): (Vec<f64>, Vec<f64>) = pairs.iter().map(|(x, y)| (x.ln_1p(), y.ln_1p())).unzip();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xs.iter().zip(&ys) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx).powi(2);
        syy += (y - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

fn relative(expected: Option<f64>, generated: Option<f64>, tol: f64) -> Option<bool> {
    match (expected, generated) {
        (Some(e), Some(g)) if e != 0.0 => Some(((g - e) / e).abs() <= tol),
        (Some(_), Some(g)) => Some(g == 0.0),
        _ => None,
    }
}

/// Compares a generated workload with its source; `scale` is the load factor the generated
/// one was asked for (rates are compared against `scale` times the source's).
pub fn check(source: &[TraceRecord], generated: &[TraceRecord], scale: f64) -> CheckReport {
    check_mode(source, generated, scale, false)
}

/// [`check`], for a workload made by compressing time `scale` times when `compressed`: its
/// burstiness is compared with the source's at `scale` times the window.
pub fn check_mode(
    source: &[TraceRecord],
    generated: &[TraceRecord],
    scale: f64,
    compressed: bool,
) -> CheckReport {
    let stretch = if compressed { scale } else { 1.0 };
    let (s, g) = (figures(source, stretch), figures(generated, 1.0));
    let mut rows = Vec::new();
    let mut push =
        |metric: String, e: Option<f64>, gv: Option<f64>, tolerance: &str, pass: Option<bool>| {
            rows.push(CheckRow {
                metric,
                expected: e,
                generated: gv,
                tolerance: tolerance.to_owned(),
                pass,
            });
        };
    let rate = Some(s.rate * scale);
    push(
        "mean rate (req/s)".into(),
        rate,
        Some(g.rate),
        "±2%",
        relative(rate, Some(g.rate), 0.02),
    );
    // The gap CV and the share of requests in the busiest 1% of seconds are kept at the same
    // load and by compression (time scaled), not by K independent streams, whose merged gaps
    // tend to a CV of 1 and whose bursts spread over more seconds.
    let shape_kept = compressed || (scale - 1.0).abs() < 1e-9;
    // Within ±20% where the figure is judged, else reported only.
    let judged = |judge: bool, e: Option<f64>, g: Option<f64>| {
        if judge {
            ("±20%", relative(e, g, 0.20))
        } else {
            ("reported", None)
        }
    };
    let (tolerance, pass) = judged(shape_kept, s.cv, g.cv);
    push("inter-arrival CV".into(), s.cv, g.cv, tolerance, pass);
    for (i, w) in WINDOWS.iter().enumerate() {
        // A window is checked where the source has enough of them for the figure to mean
        // something (at least 20).
        let checked = s.span / (w * stretch) >= CHECK_MIN_WINDOWS;
        let (tolerance, pass) = judged(checked, s.idc[i], g.idc[i]);
        push(
            format!("index of dispersion @{w:.0} s"),
            s.idc[i],
            g.idc[i],
            tolerance,
            pass,
        );
    }
    let (tolerance, pass) = judged(shape_kept, s.busiest, g.busiest);
    push(
        "share of requests in the busiest 1% of seconds".into(),
        s.busiest,
        g.busiest,
        tolerance,
        pass,
    );
    for (name, a, b) in [
        ("input", &s.input, &g.input),
        ("output", &s.output, &g.output),
    ] {
        for q in [0.5, 0.9, 0.99] {
            let (e, gv) = (quantile_sorted(a, q), quantile_sorted(b, q));
            push(
                format!("{name} tokens p{:.0}", q * 100.0),
                e,
                gv,
                "±5%",
                relative(e, gv, 0.05),
            );
        }
        let ks = (!a.is_empty() && !b.is_empty()).then(|| ks_two_sample(a, b));
        push(
            format!("{name} tokens KS distance"),
            Some(0.0),
            ks,
            "< 0.03",
            ks.map(|k| k < 0.03),
        );
    }
    push(
        "input/output correlation (log)".into(),
        s.corr,
        g.corr,
        "±0.05",
        match (s.corr, g.corr) {
            (Some(a), Some(b)) => Some((a - b).abs() <= 0.05),
            _ => None,
        },
    );
    if s.prefix_share.is_some() || g.prefix_share.is_some() {
        push(
            "prefix-sharing ratio".into(),
            s.prefix_share,
            g.prefix_share,
            "±0.05",
            match (s.prefix_share, g.prefix_share) {
                (Some(a), Some(b)) => Some((a - b).abs() <= 0.05),
                _ => Some(false),
            },
        );
    }
    if let Some(ss) = &s.sessions {
        let gs = g.sessions.as_ref();
        push(
            "share of requests in sessions".into(),
            Some(ss.share),
            Some(gs.map_or(0.0, |x| x.share)),
            "±0.05",
            Some((ss.share - gs.map_or(0.0, |x| x.share)).abs() <= 0.05),
        );
        let gv = gs.map(|x| x.turns_mean);
        push(
            "turns per session (mean)".into(),
            Some(ss.turns_mean),
            gv,
            "±10%",
            relative(Some(ss.turns_mean), gv, 0.10).or(Some(false)),
        );
        // Compressed time shortens think times K-fold, as replaying at `--speed K` would.
        let k = if compressed { scale } else { 1.0 };
        for (name, e, gv) in [
            (
                "think time p50 (s)",
                ss.think_p50,
                gs.and_then(|x| x.think_p50),
            ),
            (
                "think time p90 (s)",
                ss.think_p90,
                gs.and_then(|x| x.think_p90),
            ),
        ] {
            let e = e.map(|v| v / k);
            push(name.into(), e, gv, "±10%", relative(e, gv, 0.10));
        }
        let (e, gv) = (ss.growth_p50, gs.and_then(|x| x.growth_p50));
        push(
            "new tokens per later turn p50".into(),
            e,
            gv,
            "±10%",
            relative(e, gv, 0.10),
        );
    }
    let pass = rows.iter().all(|r| r.pass != Some(false));
    CheckReport { rows, pass }
}

/// The report as a table.
pub fn render(report: &CheckReport) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), reprise_trace::human::sig3);
    let mut out = format!(
        "{:<34} {:>12} {:>12} {:>10}  result\n",
        "metric", "expected", "generated", "tolerance"
    );
    for r in &report.rows {
        out.push_str(&format!(
            "{:<34} {:>12} {:>12} {:>10}  {}\n",
            r.metric,
            f(r.expected),
            f(r.generated),
            r.tolerance,
            match r.pass {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "-",
            }
        ));
    }
    out.push_str(if report.pass {
        "fidelity: PASS\n"
    } else {
        "fidelity: FAIL\n"
    });
    out
}
