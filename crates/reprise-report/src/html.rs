//! `report.html`: the report as one self-contained page (no script, no external file) with
//! charts drawn as inline SVG: latency percentiles, throughput and P99 TTFT over time, and
//! throughput and P99 TTFT against the step's load for ramps.

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

/// A line chart; `None` when no series has two points.
fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Option<String> {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if series.iter().all(|s| s.points.len() < 2) || all.is_empty() {
        return None;
    }
    let (x0, x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let y1 = all.iter().fold(0.0f64, |a, p| a.max(p.1)).max(1e-9) * 1.1;
    let xs = |x: f64| PAD + (x - x0) / (x1 - x0).max(1e-9) * (W - 2.0 * PAD);
    let ys = |y: f64| H - PAD - y / y1 * (H - 2.0 * PAD);
    let mut svg = format!(
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = esc(title)
    );
    let _ = write!(
        svg,
        r##"<rect x="{PAD}" y="{PAD}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>"##,
        W - 2.0 * PAD,
        H - 2.0 * PAD
    );
    for k in 0..=4 {
        let v = y1 * k as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text>"##,
            PAD - 4.0,
            ys(v) + 3.0,
            fmt(v)
        );
    }
    for (k, x) in [x0, (x0 + x1) / 2.0, x1].iter().enumerate() {
        let anchor = ["start", "middle", "end"][k];
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="10" text-anchor="{anchor}" fill="#555">{}</text>"##,
            xs(*x),
            H - PAD + 14.0,
            fmt(*x)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="12" y="{}" font-size="11" transform="rotate(-90 12 {})" text-anchor="middle">{}</text><text x="{}" y="18" font-size="13" text-anchor="middle" font-weight="bold">{}</text>"##,
        W / 2.0,
        H - 8.0,
        esc(x_label),
        H / 2.0,
        H / 2.0,
        esc(y_label),
        W / 2.0,
        esc(title)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", xs(*x), ys(*y)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let _ = write!(
            svg,
            r#"<polyline class="series" fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
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
    }
    svg.push_str("</svg>");
    Some(svg)
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

/// The percentile curve of a metric (x: percentile, y: ms).
fn percentile_points(s: &Stats, name: &str) -> Vec<(f64, f64)> {
    match s.dist(name) {
        Some(d) => vec![
            (0.0, d.min),
            (50.0, d.p50),
            (90.0, d.p90),
            (95.0, d.p95),
            (99.0, d.p99),
            (99.9, d.p999),
            (100.0, d.max),
        ],
        None => Vec::new(),
    }
}

/// The charts of a report, in page order.
pub fn charts(r: &Report) -> Vec<String> {
    let o = &r.overall;
    let mut out = Vec::new();
    let lat: Vec<Series> = [
        ("TTFT", "ttft", "#1f77b4"),
        ("TPOT", "tpot", "#2ca02c"),
        ("ITL", "itl", "#9467bd"),
    ]
    .into_iter()
    .map(|(n, m, c)| Series {
        name: n,
        color: c,
        points: percentile_points(o, m),
    })
    .collect();
    out.extend(chart("Latency by percentile", "percentile", "ms", &lat));
    out.extend(chart(
        "End-to-end latency by percentile",
        "percentile",
        "ms",
        &[Series {
            name: "E2E",
            color: "#d62728",
            points: percentile_points(o, "e2e"),
        }],
    ));
    let t = |f: &dyn Fn(&Stats) -> Option<f64>| -> Vec<(f64, f64)> {
        r.windows
            .iter()
            .filter_map(|w| f(&w.stats).map(|v| (w.start_s, v)))
            .collect()
    };
    out.extend(chart(
        "Throughput over time",
        "s",
        "req/s",
        &[
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
    ));
    out.extend(chart(
        "TTFT over time",
        "s",
        "ms",
        &[
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
    ));
    if let Some(unit) = &r.step_unit {
        let per = |f: &dyn Fn(&Stats) -> Option<f64>| -> Vec<(f64, f64)> {
            r.steps
                .iter()
                .filter_map(|s| Some((s.step_value?, f(s)?)))
                .collect()
        };
        out.extend(chart(
            &format!("Throughput against {unit}"),
            unit,
            "req/s",
            &[Series {
                name: "req/s",
                color: "#1f77b4",
                points: per(&|s| Some(s.request_throughput)),
            }],
        ));
        out.extend(chart(
            &format!("P99 TTFT against {unit}"),
            unit,
            "ms",
            &[Series {
                name: "P99 TTFT",
                color: "#d62728",
                points: per(&|s| s.p("ttft", "p99")),
            }],
        ));
        if r.side.iter().any(|s| s.gpu_util_pct.is_some()) {
            let pts: Vec<(f64, f64)> = r
                .steps
                .iter()
                .zip(&r.side)
                .filter_map(|(s, g)| Some((s.step_value?, g.gpu_util_pct?)))
                .collect();
            out.extend(chart(
                &format!("GPU utilisation against {unit}"),
                unit,
                "%",
                &[Series {
                    name: "GPU util",
                    color: "#ff7f0e",
                    points: pts,
                }],
            ));
        }
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
            chart(
                "t",
                "x",
                "y",
                &[Series {
                    name: "a",
                    color: "#000",
                    points: vec![(0.0, 1.0)]
                }]
            )
            .is_none()
        );
        let svg = chart(
            "a <b>",
            "x",
            "y",
            &[Series {
                name: "s&t",
                color: "#000",
                points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN)],
            }],
        )
        .unwrap();
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("s&amp;t"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(!svg.contains("NaN"));
    }
}
