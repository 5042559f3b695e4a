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

/// Which part of the report a chart illustrates (it is drawn beside that part's tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The key metrics per step (ramps).
    Steps,
    /// The latency table.
    Latency,
    /// The windows over time.
    OverTime,
    /// Resources and correlation.
    Resources,
}

impl Place {
    /// The `###` section of report.md it belongs to (matched by the heading's start).
    fn heading(self) -> &'static str {
        match self {
            Place::Steps => "Key metrics",
            Place::Latency => "Latency",
            Place::OverTime => "Over time",
            Place::Resources => "Resources and correlation",
        }
    }
}

/// The charts of a report, in page order.
pub fn charts(r: &Report) -> Vec<String> {
    placed_charts(r).into_iter().map(|(_, c)| c).collect()
}

fn place(p: Place, chart: Option<String>) -> Option<(Place, String)> {
    chart.map(|c| (p, c))
}

/// The charts of a report with the part each illustrates, in page order.
pub fn placed_charts(r: &Report) -> Vec<(Place, String)> {
    let mut out: Vec<(Place, String)> = Vec::new();
    let cdf = |name: &str| r.cdf.get(name).cloned().unwrap_or_default();
    out.extend(place(
        Place::Latency,
        cdf_chart(
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
        ),
    ));
    out.extend(place(
        Place::Latency,
        cdf_chart(
            "End-to-end latency CDF",
            vec![Series {
                name: "E2E",
                color: "#d62728",
                points: cdf("e2e"),
            }],
        ),
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
    out.extend(place(
        Place::OverTime,
        chart(&Chart {
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
        }),
    ));
    out.extend(place(
        Place::OverTime,
        chart(&Chart {
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
        }),
    ));
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
            out.extend(place(
                Place::Resources,
                chart(&Chart {
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
                }),
            ));
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
            out.extend(place(
                Place::Steps,
                chart(&Chart::new(
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
                )),
            ));
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
        out.extend(place(
            Place::Steps,
            chart(&Chart {
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
            }),
        ));
        let title = format!("P99 TTFT against {unit}");
        out.extend(place(
            Place::Steps,
            chart(&Chart::new(
                &title,
                unit,
                "ms",
                vec![Series {
                    name: "P99 TTFT",
                    color: "#d62728",
                    points: per(&|s| s.p("ttft", "p99")),
                }],
            )),
        ));
    }
    out
}

/// Inline Markdown of the report (`**bold**`, `` `code` ``) as HTML, escaped.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['`', '*']) {
        out.push_str(&esc(&rest[..i]));
        let tail = &rest[i..];
        let (marker, tag) = if tail.starts_with("**") {
            ("**", "strong")
        } else if tail.starts_with('`') {
            ("`", "code")
        } else {
            out.push('*');
            rest = &tail[1..];
            continue;
        };
        match tail[marker.len()..].find(marker) {
            Some(end) => {
                let inner = &tail[marker.len()..marker.len() + end];
                let _ = write!(out, "<{tag}>{}</{tag}>", esc(inner));
                rest = &tail[2 * marker.len() + end..];
            }
            None => {
                out.push_str(&esc(marker));
                rest = &tail[marker.len()..];
            }
        }
    }
    out.push_str(&esc(rest));
    out
}

/// The cells of a Markdown table row.
fn cells(line: &str) -> Vec<&str> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// The Markdown that `render::markdown` writes (headings, paragraphs, lists, pipe tables)
/// as HTML: real tables, numbers right-aligned where the separator row says so.
pub fn markdown_to_html(md: &str) -> String {
    let lines: Vec<&str> = md.lines().collect();
    let mut h = String::new();
    let mut para: Vec<&str> = Vec::new();
    let mut in_list = false;
    let flush = |h: &mut String, para: &mut Vec<&str>, in_list: &mut bool| {
        if !para.is_empty() {
            let _ = writeln!(h, "<p>{}</p>", inline(&para.join(" ")));
            para.clear();
        }
        if *in_list {
            h.push_str("</ul>\n");
            *in_list = false;
        }
    };
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        let is_table = line.trim_start().starts_with('|')
            && lines
                .get(i + 1)
                .is_some_and(|l| l.trim_start().starts_with("|-") || l.contains("|---"));
        if is_table {
            flush(&mut h, &mut para, &mut in_list);
            let header = cells(line);
            let right: Vec<bool> = cells(lines[i + 1])
                .iter()
                .map(|c| c.ends_with(':'))
                .collect();
            h.push_str("<table><thead><tr>");
            for c in &header {
                let _ = write!(h, "<th>{}</th>", inline(c));
            }
            h.push_str("</tr></thead><tbody>\n");
            i += 2;
            while let Some(row) = lines.get(i).filter(|l| l.trim_start().starts_with('|')) {
                h.push_str("<tr>");
                for (k, c) in cells(row).iter().enumerate() {
                    let numeric = k > 0
                        && c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '–' || ch == '-');
                    let class = if numeric || right.get(k).copied().unwrap_or(false) {
                        " class=\"num\""
                    } else {
                        ""
                    };
                    let _ = write!(h, "<td{class}>{}</td>", inline(c));
                }
                h.push_str("</tr>\n");
                i += 1;
            }
            h.push_str("</tbody></table>\n");
            continue;
        }
        if let Some(level) =
            (1..=6).find(|&n| line.starts_with(&"#".repeat(n)) && line[n..].starts_with(' '))
        {
            flush(&mut h, &mut para, &mut in_list);
            let _ = writeln!(h, "<h{level}>{}</h{level}>", inline(line[level..].trim()));
        } else if let Some(item) = line.strip_prefix("- ") {
            if !para.is_empty() {
                let _ = writeln!(h, "<p>{}</p>", inline(&para.join(" ")));
                para.clear();
            }
            if !in_list {
                h.push_str("<ul>\n");
                in_list = true;
            }
            let _ = writeln!(h, "<li>{}</li>", inline(item));
        } else if line.trim().is_empty() {
            flush(&mut h, &mut para, &mut in_list);
        } else {
            if in_list {
                h.push_str("</ul>\n");
                in_list = false;
            }
            para.push(line.trim());
        }
        i += 1;
    }
    flush(&mut h, &mut para, &mut in_list);
    h
}

/// The headline figures: what a reader wants before anything else.
fn headline(r: &Report) -> String {
    let o = &r.overall;
    let ms = |name: &str, which: &str| {
        o.p(name, which)
            .map_or_else(|| "–".to_owned(), |v| format!("{} ms", fmt(v)))
    };
    let mut figures: Vec<(&str, String)> = vec![
        ("requests", format!("{} ok of {}", o.ok, o.requests)),
        (
            "errors",
            format!("{} ({:.2}%)", o.requests - o.ok, o.error_rate * 100.0),
        ),
        ("throughput", format!("{:.2} req/s", o.request_throughput)),
        (
            "output tokens",
            format!("{:.0} tok/s", o.output_tokens_per_s),
        ),
        ("TTFT P50", ms("ttft", "p50")),
        ("TTFT P99", ms("ttft", "p99")),
        ("E2E P50", ms("e2e", "p50")),
        ("E2E P99", ms("e2e", "p99")),
    ];
    match (&r.knee, &r.step_unit) {
        (Some(k), Some(unit)) => {
            let causes: Vec<&str> = k.causes.iter().map(|c| c.kind.as_str()).collect();
            figures.push(("knee", format!("{unit} {}", fmt(k.knee_value))));
            figures.push((
                "bottleneck",
                if causes.is_empty() {
                    "not identified".to_owned()
                } else {
                    causes.join(", ")
                },
            ));
        }
        (None, Some(_)) => {
            figures.push(("knee", "not reached".to_owned()));
            figures.push(("bottleneck", "none found".to_owned()));
        }
        _ => {}
    }
    let mut h = String::from("<div class=\"headline\">");
    for (name, value) in figures {
        let _ = write!(
            h,
            "<div class=\"figure\"><div class=\"value\">{}</div><div class=\"name\">{}</div></div>",
            esc(&value),
            esc(name)
        );
    }
    h.push_str("</div>\n");
    if r.complete == Some(false) {
        h.push_str(
            "<p class=\"warn\"><strong>Incomplete run</strong>: stopped before its end.</p>\n",
        );
    }
    if r.client_behind {
        h.push_str("<p class=\"warn\"><strong>The client could not keep up</strong>: the `*_sched` figures include its queue.</p>\n");
    }
    if let Some(k) = &r.knee {
        let _ = writeln!(h, "<p class=\"conclusion\">{}</p>", inline(&k.conclusion));
    }
    h
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px;color:#222}\
h1{margin-bottom:.3em}\
.headline{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}\
.figure{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:8em}\
.figure .value{font-size:1.4em;font-weight:600}.figure .name{color:#666;font-size:.85em}\
.warn{background:#fff3cd;padding:.5em 1em}.conclusion{max-width:70em}\
section{margin-top:1.5em;border-top:1px solid #eee}\
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}\
.text{flex:1 1 44em;min-width:0;overflow-x:auto}.charts{display:flex;flex-wrap:wrap;gap:1em}\
table{border-collapse:collapse;font-size:13px;margin:.5em 0}\
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;white-space:nowrap}\
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}\
code{background:#f6f6f6;padding:0 3px}";

/// `report.html`: the headline figures first, then each part of the report as HTML (real
/// tables) with the charts that illustrate it beside it; one self-contained page.
pub fn page(r: &Report, markdown: &str) -> String {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>reprise report {}</title><style>{STYLE}</style></head><body><h1>Load test report — {}</h1>",
        esc(&r.run_id),
        esc(&r.run_id)
    );
    h.push_str(&headline(r));
    let mut charts = placed_charts(r);
    // The report's `###` parts, each with the charts placed beside it; the `##` title is
    // the page's own.
    let mut parts: Vec<(String, String)> = Vec::new();
    for line in markdown.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            parts.push((title.to_owned(), String::new()));
        } else if line.starts_with("## ") && parts.is_empty() {
            continue;
        } else if let Some((_, body)) = parts.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    for (title, body) in &parts {
        let mine: Vec<String> = {
            let (here, rest): (Vec<_>, Vec<_>) = charts
                .into_iter()
                .partition(|(p, _)| title.starts_with(p.heading()));
            charts = rest;
            here.into_iter().map(|(_, c)| c).collect()
        };
        let _ = write!(
            h,
            "<section><h2>{}</h2><div class=\"row\"><div class=\"text\">{}</div>",
            inline(title),
            markdown_to_html(body)
        );
        if !mine.is_empty() {
            h.push_str("<div class=\"charts\">");
            for c in mine {
                h.push_str(&c);
            }
            h.push_str("</div>");
        }
        h.push_str("</div></section>\n");
    }
    if !charts.is_empty() {
        h.push_str("<section><h2>Charts</h2><div class=\"row\"><div class=\"charts\">");
        for (_, c) in charts {
            h.push_str(&c);
        }
        h.push_str("</div></div></section>\n");
    }
    h.push_str("</body></html>\n");
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

    #[test]
    fn markdown_tables_lists_and_inline_marks_become_html() {
        let md = "## Title\n\n### Part\n- a **b** `c<d>`\n- e\n\nsome text\nmore text\n\n| step | QPS |\n|---|---:|\n| rate=1 | 0.98 |\n| rate=2 | 1.9 |\n\n**Bold** end*";
        let h = markdown_to_html(md);
        assert!(
            h.contains("<h2>Title</h2>") && h.contains("<h3>Part</h3>"),
            "{h}"
        );
        assert!(
            h.contains(
                "<ul>\n<li>a <strong>b</strong> <code>c&lt;d&gt;</code></li>\n<li>e</li>\n</ul>"
            ),
            "{h}"
        );
        assert!(h.contains("<p>some text more text</p>"), "{h}");
        assert!(
            h.contains("<table><thead><tr><th>step</th><th>QPS</th></tr></thead><tbody>\n<tr><td>rate=1</td><td class=\"num\">0.98</td></tr>\n<tr><td>rate=2</td><td class=\"num\">1.9</td></tr>\n</tbody></table>"),
            "{h}"
        );
        assert!(h.contains("<p><strong>Bold</strong> end*</p>"), "{h}");
        assert!(!h.contains('|'), "no Markdown table syntax left: {h}");
    }
}
