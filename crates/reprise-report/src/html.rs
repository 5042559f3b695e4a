//! `report.html`: the report as one self-contained page (no script, no external file) with
//! charts drawn as inline SVG: latency CDFs with the tail stretched (−log10(1 − p), so
//! P99, P99.9 and P99.99 are as far apart as P90 and P99), throughput and TTFT over time,
//! and throughput and P99 TTFT against the step's load for ramps; GPU utilisation is
//! overlaid on its own right-hand axis (dashed) where `gpu.parquet` exists.

use std::fmt::Write as _;

use crate::Report;
use crate::metrics::Stats;

const W: f64 = 640.0;
const H: f64 = 260.0;
const PAD: f64 = 48.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One series of (x, y) points.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// Axis ticks (value, label).
type Ticks = Vec<(f64, String)>;

/// A line chart's description.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: Vec<Series<'a>>,
    /// Fixed y ticks (value, label) and top of the y range, instead of 0..max in fifths.
    y_ticks: Option<(Ticks, f64)>,
    /// A series on its own right-hand axis (label, series, top of its range).
    right: Option<(&'a str, Series<'a>, f64)>,
    /// Fixed x ticks (value, label) and the x range, instead of the data's ends and middle.
    x_ticks: Option<(Ticks, (f64, f64))>,
}

impl<'a> Chart<'a> {
    fn new(title: &'a str, x_label: &'a str, y_label: &'a str, series: Vec<Series<'a>>) -> Self {
        Chart {
            title,
            x_label,
            y_label,
            series,
            y_ticks: None,
            right: None,
            x_ticks: None,
        }
    }
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = &(f64, f64)> {
    points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// Draws a chart; `None` when no series has two points.
fn chart(c: &Chart) -> Option<String> {
    let all: Vec<(f64, f64)> = c
        .series
        .iter()
        .flat_map(|s| finite(&s.points).copied())
        .collect();
    if c.series.iter().all(|s| finite(&s.points).count() < 2) {
        return None;
    }
    // The x range covers the right-hand series too (its y has its own axis).
    let right_points = c
        .right
        .iter()
        .flat_map(|(_, s, _)| finite(&s.points).copied());
    let (x0, x1) = match &c.x_ticks {
        Some((_, range)) => *range,
        None => all
            .iter()
            .copied()
            .chain(right_points)
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0))),
    };
    let y1 = match &c.y_ticks {
        Some((_, top)) => *top,
        None => all.iter().fold(0.0f64, |a, p| a.max(p.1)).max(1e-9) * 1.1,
    };
    let xs = |x: f64| PAD + (x - x0) / (x1 - x0).max(1e-9) * (W - 2.0 * PAD);
    let ys_top = |top: f64| move |y: f64| H - PAD - y.clamp(0.0, top) / top * (H - 2.0 * PAD);
    let ys = ys_top(y1);
    let t = esc(c.title);
    let mut svg = format!(
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><title>{t}</title>"#
    );
    let _ = write!(
        svg,
        r##"<rect x="{PAD}" y="{PAD}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>"##,
        W - 2.0 * PAD,
        H - 2.0 * PAD
    );
    let ticks: Vec<(f64, String)> = match &c.y_ticks {
        Some((t, _)) => t.clone(),
        None => (0..=4)
            .map(|k| y1 * k as f64 / 4.0)
            .map(|v| (v, fmt(v)))
            .collect(),
    };
    for (v, label) in &ticks {
        let _ = write!(
            svg,
            r##"<line x1="{PAD}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text>"##,
            W - PAD,
            PAD - 4.0,
            ys(*v) + 3.0,
            esc(label),
            y = ys(*v),
        );
    }
    let x_ticks: Vec<(f64, String, &str)> = match &c.x_ticks {
        Some((t, _)) => t.iter().map(|(v, l)| (*v, l.clone(), "middle")).collect(),
        None => [(x0, "start"), ((x0 + x1) / 2.0, "middle"), (x1, "end")]
            .iter()
            .map(|&(v, a)| (v, fmt(v), a))
            .collect(),
    };
    for (x, label, anchor) in &x_ticks {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="10" text-anchor="{anchor}" fill="#555">{}</text>"##,
            xs(*x),
            H - PAD + 14.0,
            esc(label)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="12" y="{}" font-size="11" transform="rotate(-90 12 {})" text-anchor="middle">{}</text><text x="{}" y="18" font-size="13" text-anchor="middle" font-weight="bold">{t}</text>"##,
        W / 2.0,
        H - 8.0,
        esc(c.x_label),
        H / 2.0,
        H / 2.0,
        esc(c.y_label),
        W / 2.0,
    );
    let line = |svg: &mut String, s: &Series, ys: &dyn Fn(f64) -> f64, i: usize, dash: &str| {
        let pts: Vec<String> = finite(&s.points)
            .map(|(x, y)| format!("{:.1},{:.1}", xs(*x), ys(*y)))
            .collect();
        if pts.is_empty() {
            return;
        }
        let _ = write!(
            svg,
            r#"<polyline class="series" fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" fill="{}">{}</text>"#,
            W - PAD - 120.0,
            PAD + 14.0 + 14.0 * i as f64,
            s.color,
            esc(s.name)
        );
    };
    for (i, s) in c.series.iter().enumerate() {
        line(&mut svg, s, &ys, i, "");
    }
    if let Some((label, s, top)) = &c.right
        && finite(&s.points).count() >= 2
    {
        let yr = ys_top(*top);
        line(
            &mut svg,
            s,
            &yr,
            c.series.len(),
            r#" stroke-dasharray="5 3""#,
        );
        for k in 0..=4 {
            let v = top * k as f64 / 4.0;
            let _ = write!(
                svg,
                r##"<text x="{}" y="{:.1}" font-size="10" text-anchor="start" fill="{}">{}</text>"##,
                W - PAD + 4.0,
                yr(v) + 3.0,
                s.color,
                fmt(v)
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{x}" y="{}" font-size="11" transform="rotate(90 {x} {})" text-anchor="middle" fill="{}">{}</text>"##,
            H / 2.0,
            H / 2.0,
            s.color,
            esc(label),
            x = W - 10.0,
        );
    }
    svg.push_str("</svg>");
    Some(svg)
}

/// The tail scale of a percentile: −log10(1 − p), so 90, 99, 99.9 and 99.99 are evenly
/// spaced (the maximum, p = 100, is drawn at 99.999).
fn tail(pct: f64) -> f64 {
    -(1.0 - (pct / 100.0).min(0.99999)).log10()
}

/// A CDF chart: x latency (ms, log scale), y percentile on the tail scale.
fn cdf_chart<'a>(title: &'a str, series: Vec<Series<'a>>) -> Option<String> {
    let series: Vec<Series> = series
        .into_iter()
        .map(|s| Series {
            points: s
                .points
                .iter()
                .filter(|(_, ms)| *ms > 0.0)
                .map(|&(p, ms)| (ms.log10(), tail(p)))
                .collect(),
            ..s
        })
        .collect();
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| finite(&s.points).map(|p| p.0))
        .collect();
    let lo = xs.iter().copied().fold(f64::MAX, f64::min).floor();
    let hi = xs
        .iter()
        .copied()
        .fold(f64::MIN, f64::max)
        .ceil()
        .max(lo + 1.0);
    let x_ticks = (lo as i32..=hi as i32)
        .map(|e| {
            let v = 10f64.powi(e);
            (
                e as f64,
                if v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                },
            )
        })
        .collect();
    let ticks = [
        (0.0, "0"),
        (50.0, "50"),
        (90.0, "90"),
        (99.0, "99"),
        (99.9, "99.9"),
        (99.99, "99.99"),
    ]
    .iter()
    .map(|&(p, l)| (tail(p), l.to_owned()))
    .collect();
    chart(&Chart {
        y_ticks: Some((ticks, tail(100.0))),
        x_ticks: Some((x_ticks, (lo, hi))),
        ..Chart::new(title, "ms (log scale)", "percentile (tail scale)", series)
    })
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The charts of a report, in page order.
pub fn charts(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let cdf = |name: &str| r.cdf.get(name).cloned().unwrap_or_default();
    out.extend(cdf_chart(
        "Latency CDF (TTFT, TPOT, ITL)",
        vec![
            Series {
                name: "TTFT",
                color: "#1f77b4",
                points: cdf("ttft"),
            },
            Series {
                name: "TPOT",
                color: "#2ca02c",
                points: cdf("tpot"),
            },
            Series {
                name: "ITL",
                color: "#9467bd",
                points: cdf("itl"),
            },
        ],
    ));
    out.extend(cdf_chart(
        "End-to-end latency CDF",
        vec![Series {
            name: "E2E",
            color: "#d62728",
            points: cdf("e2e"),
        }],
    ));
    let t = |f: &dyn Fn(&Stats) -> Option<f64>| -> Vec<(f64, f64)> {
        r.windows
            .iter()
            .filter_map(|w| f(&w.stats).map(|v| (w.start_s, v)))
            .collect()
    };
    let gpu: Vec<(f64, f64)> = r
        .windows
        .iter()
        .filter_map(|w| Some((w.start_s, w.gpu_util_pct?)))
        .collect();
    let gpu_overlay = || {
        (gpu.len() >= 2).then(|| {
            (
                "GPU util %",
                Series {
                    name: "GPU util (right)",
                    color: "#ff7f0e",
                    points: gpu.clone(),
                },
                100.0,
            )
        })
    };
    out.extend(chart(&Chart {
        right: gpu_overlay(),
        ..Chart::new(
            "Throughput over time",
            "s",
            "req/s",
            vec![
                Series {
                    name: "completed",
                    color: "#1f77b4",
                    points: t(&|s| Some(s.request_throughput)),
                },
                Series {
                    name: "target",
                    color: "#999999",
                    points: r
                        .windows
                        .iter()
                        .map(|w| (w.start_s, w.target_rate))
                        .collect(),
                },
            ],
        )
    }));
    out.extend(chart(&Chart {
        right: gpu_overlay(),
        ..Chart::new(
            "TTFT over time",
            "s",
            "ms",
            vec![
                Series {
                    name: "P50",
                    color: "#2ca02c",
                    points: t(&|s| s.p("ttft", "p50")),
                },
                Series {
                    name: "P99",
                    color: "#d62728",
                    points: t(&|s| s.p("ttft", "p99")),
                },
            ],
        )
    }));
    if let Some(c) = &r.correlation {
        let series = |name: &str| -> Vec<(f64, f64)> {
            c.bins
                .iter()
                .filter_map(|b| Some((b.start_s, *b.values.get(name)?)))
                .collect()
        };
        let waiting = series("waiting");
        let top = waiting.iter().fold(1.0f64, |a, p| a.max(p.1)) * 1.1;
        if waiting.len() >= 2 {
            out.extend(chart(&Chart {
                right: Some((
                    "waiting requests",
                    Series {
                        name: "waiting (right)",
                        color: "#8c564b",
                        points: waiting,
                    },
                    top,
                )),
                ..Chart::new(
                    "Server queue and TTFT over time",
                    "s",
                    "ms",
                    vec![Series {
                        name: "P99 TTFT",
                        color: "#d62728",
                        points: series("ttft_p99_ms"),
                    }],
                )
            }));
        }
    }
    if let Some(unit) = &r.step_unit {
        let batch: Vec<(f64, f64)> = r
            .steps
            .iter()
            .zip(&r.side)
            .filter_map(|(s, x)| Some((s.step_value?, x.server_running?)))
            .collect();
        let queue: Vec<(f64, f64)> = r
            .steps
            .iter()
            .zip(&r.side)
            .filter_map(|(s, x)| Some((s.step_value?, x.server_waiting?)))
            .collect();
        if batch.len() >= 2 {
            let title = format!("Batch size and queue against {unit}");
            out.extend(chart(&Chart::new(
                &title,
                unit,
                "requests",
                vec![
                    Series {
                        name: "running (batch)",
                        color: "#17becf",
                        points: batch,
                    },
                    Series {
                        name: "waiting",
                        color: "#8c564b",
                        points: queue,
                    },
                ],
            )));
        }
        let per = |f: &dyn Fn(&Stats) -> Option<f64>| -> Vec<(f64, f64)> {
            r.steps
                .iter()
                .filter_map(|s| Some((s.step_value?, f(s)?)))
                .collect()
        };
        let gpu_steps: Vec<(f64, f64)> = r
            .steps
            .iter()
            .zip(&r.side)
            .filter_map(|(s, g)| Some((s.step_value?, g.gpu_util_pct?)))
            .collect();
        let title = format!("Throughput against {unit}");
        out.extend(chart(&Chart {
            right: (gpu_steps.len() >= 2).then_some({
                (
                    "GPU util %",
                    Series {
                        name: "GPU util (right)",
                        color: "#ff7f0e",
                        points: gpu_steps,
                    },
                    100.0,
                )
            }),
            ..Chart::new(
                &title,
                unit,
                "req/s",
                vec![Series {
                    name: "req/s",
                    color: "#1f77b4",
                    points: per(&|s| Some(s.request_throughput)),
                }],
            )
        }));
        let title = format!("P99 TTFT against {unit}");
        out.extend(chart(&Chart::new(
            &title,
            unit,
            "ms",
            vec![Series {
                name: "P99 TTFT",
                color: "#d62728",
                points: per(&|s| s.p("ttft", "p99")),
            }],
        )));
    }
    out
}

/// `report.html`: the Markdown report's tables as preformatted text beside the charts.
pub fn page(r: &Report, markdown: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>reprise report {}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}.charts{{display:flex;flex-wrap:wrap;gap:1em}}pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}}</style></head><body><h1>Load test report — {}</h1><div class=\"charts\">",
        esc(&r.run_id),
        esc(&r.run_id)
    );
    for c in charts(r) {
        h.push_str(&c);
    }
    let _ = writeln!(h, "</div><pre>{}</pre></body></html>", esc(markdown));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_needs_two_points_and_escapes_text() {
        assert!(
            chart(&Chart::new(
                "t",
                "x",
                "y",
                vec![Series {
                    name: "a",
                    color: "#000",
                    points: vec![(0.0, 1.0)]
                }]
            ))
            .is_none()
        );
        let svg = chart(&Chart::new(
            "a <b>",
            "x",
            "y",
            vec![Series {
                name: "s&t",
                color: "#000",
                points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN)],
            }],
        ))
        .unwrap();
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("s&amp;t"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(!svg.contains("NaN"));
    }
}
