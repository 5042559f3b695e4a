//! Writing a [`Report`]: `report.html` (see [`crate::html`]), `report.md` in the shape of the load-test report template (target, parameters,
//! key metrics per step, conclusion), `summary.json` (the report itself, stable keys) and
//! a terminal summary.

use std::fmt::Write as _;
use std::path::Path;

use crate::metrics::{Dist, REPORTED, Stats};
use crate::{Report, ReportError};

fn ms(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => {
            if v >= 100.0 {
                format!("{v:.0}")
            } else if v >= 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.3}")
            }
        }
        _ => "–".into(),
    }
}

fn pct(x: f64) -> String {
    if x == 0.0 {
        "0%".into()
    } else if x < 0.001 {
        format!("{:.3}%", x * 100.0)
    } else {
        format!("{:.1}%", x * 100.0)
    }
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn dist_row(name: &str, d: &Dist) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        d.count,
        ms(Some(d.mean)),
        ms(Some(d.min)),
        ms(Some(d.p50)),
        ms(Some(d.p90)),
        ms(Some(d.p95)),
        ms(Some(d.p99)),
        ms(Some(d.p999)),
        ms(Some(d.max))
    )
}

fn errors_line(s: &Stats) -> String {
    if s.errors.is_empty() {
        return "none".into();
    }
    s.errors
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `report.md`.
pub fn markdown(r: &Report) -> String {
    let mut m = String::new();
    let o = &r.overall;
    let _ = writeln!(m, "## Load test report\n");
    let _ = writeln!(m, "### Target model");
    let _ = writeln!(
        m,
        "- Model ID: {}",
        r.model.as_deref().unwrap_or("(not recorded)")
    );
    let _ = writeln!(
        m,
        "- Deployment: {}",
        if r.targets.is_empty() {
            "(not recorded)".to_owned()
        } else {
            r.targets.join(", ")
        }
    );
    let _ = writeln!(
        m,
        "- Run: `{}`{}",
        r.run_id,
        match r.complete {
            Some(false) => " — **incomplete** (stopped before its end)",
            _ => "",
        }
    );
    if let Some(c) = &r.command {
        let _ = writeln!(m, "- Command: `{}`", c.join(" "));
    }
    let _ = writeln!(m, "\n### Parameters");
    match (&r.step_unit, r.steps.first(), r.steps.last()) {
        (Some(u), Some(a), Some(b)) => {
            let _ = writeln!(
                m,
                "- {}: {} -> {} ({} steps)",
                if u == "concurrency" {
                    "Concurrent users"
                } else {
                    "Request rate (req/s)"
                },
                num(a.step_value.unwrap_or(0.0)),
                num(b.step_value.unwrap_or(0.0)),
                r.steps.len()
            );
        }
        _ => {
            let _ = writeln!(m, "- Load: one phase (trace replay or constant load)");
        }
    }
    let _ = writeln!(
        m,
        "- Duration: {:.1} s, {} requests measured{}",
        o.duration_s,
        o.requests,
        if r.warmup_excluded > 0 {
            format!(" ({} warm-up requests excluded)", r.warmup_excluded)
        } else {
            String::new()
        }
    );
    if o.ok > 0 && o.duration_s > 0.0 {
        let out_per_req = o.output_tokens_per_s * o.duration_s / o.ok as f64;
        let all_per_req = o.total_tokens_per_s * o.duration_s / o.ok as f64;
        let _ = writeln!(
            m,
            "- Request data: {:.0} prompt and {:.0} output tokens per request on average",
            all_per_req - out_per_req,
            out_per_req
        );
    }
    if r.slo.is_set() {
        let _ = writeln!(
            m,
            "- SLOs for goodput: {}",
            [
                ("TTFT", r.slo.ttft_ms),
                ("TPOT", r.slo.tpot_ms),
                ("E2E", r.slo.e2e_ms)
            ]
            .iter()
            .filter_map(|(n, v)| v.map(|v| format!("{n} ≤ {v} ms")))
            .collect::<Vec<_>>()
            .join(", ")
        );
    }

    let _ = writeln!(m, "\n### Key metrics\n");
    let unit = r.step_unit.as_deref().unwrap_or("phase");
    let has_gpu = r.side.iter().any(|s| s.gpu_util_pct.is_some());
    let _ = writeln!(
        m,
        "| {unit} | QPS | P99 latency (ms) | GPU util | error rate | P50 TTFT (ms) | P99 TTFT (ms) | P99 TPOT (ms) | output tok/s |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|");
    let rows: Vec<(String, &Stats, Option<f64>)> = if r.steps.is_empty() {
        vec![("all".into(), o, None)]
    } else {
        r.steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.step_value
                        .filter(|_| r.step_unit.is_some())
                        .map_or_else(|| s.label.clone(), num),
                    s,
                    r.side.get(i).and_then(|x| x.gpu_util_pct),
                )
            })
            .collect()
    };
    for (label, s, gpu) in rows {
        let _ = writeln!(
            m,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(s.request_throughput),
            ms(s.p("e2e", "p99")),
            if has_gpu {
                gpu.map_or("–".into(), |g| format!("{g:.0}%"))
            } else {
                "n/a".into()
            },
            pct(s.error_rate),
            ms(s.p("ttft", "p50")),
            ms(s.p("ttft", "p99")),
            ms(s.p("tpot", "p99")),
            num(s.output_tokens_per_s)
        );
    }

    let _ = writeln!(m, "\n### Latency, all measured requests (ms)\n");
    let _ = writeln!(
        m,
        "| metric | n | mean | min | P50 | P90 | P95 | P99 | P99.9 | max |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|---|");
    for name in REPORTED {
        if let Some(d) = o.dist(name) {
            let _ = writeln!(m, "{}", dist_row(name, d));
        }
    }
    let _ = writeln!(
        m,
        "\nThroughput: {} req/s, {} output tok/s, {} total tok/s{}. Errors: {} ({}).",
        num(o.request_throughput),
        num(o.output_tokens_per_s),
        num(o.total_tokens_per_s),
        o.goodput.map_or(String::new(), |g| format!(
            ", goodput {} req/s ({} of successful requests meet every SLO)",
            num(g),
            pct(o.slo_attainment.unwrap_or(0.0))
        )),
        pct(o.error_rate),
        errors_line(o)
    );
    if let Some(c) = &r.cache {
        let _ = writeln!(m, "\n{}", cache_line(c));
    }
    if r.client_behind {
        let _ = writeln!(
            m,
            "\n**The client could not keep up**: its queue p99 {} ms exceeds the {} ms limit; the `*_sched` figures include that wait.",
            ms(o.p("queue", "p99")),
            r.queue_limit_ms
        );
    }

    if !r.windows.is_empty() {
        let _ = writeln!(m, "\n### Over time ({} s windows)\n", r.window_s);
        let _ = writeln!(
            m,
            "| from (s) | target req/s | sent req/s | done req/s | P50 TTFT | P99 TTFT | P99 E2E | errors |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
        for w in &r.windows {
            let s = &w.stats;
            let _ = writeln!(
                m,
                "| {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                w.start_s,
                num(w.target_rate),
                num(w.sent_rate),
                num(s.request_throughput),
                ms(s.p("ttft", "p50")),
                ms(s.p("ttft", "p99")),
                ms(s.p("e2e", "p99")),
                s.requests - s.ok
            );
        }
    }

    if !r.events.is_empty() {
        let _ = writeln!(m, "\n### Events\n");
        for e in &r.events {
            let _ = writeln!(
                m,
                "- at {:.1} s: {}{}\n",
                e.offset_s,
                e.event.action,
                if e.event.ok { "" } else { " (failed)" }
            );
            let _ = writeln!(
                m,
                "  | window | requests | QPS | P50 TTFT | P99 TTFT | P99 E2E | error rate |"
            );
            let _ = writeln!(m, "  |---|---|---|---|---|---|---|");
            for s in [&e.before, &e.during, &e.after] {
                let _ = writeln!(
                    m,
                    "  | {} | {} | {} | {} | {} | {} | {} |",
                    s.label,
                    s.requests,
                    num(s.request_throughput),
                    ms(s.p("ttft", "p50")),
                    ms(s.p("ttft", "p99")),
                    ms(s.p("e2e", "p99")),
                    pct(s.error_rate)
                );
            }
        }
    }

    resources(&mut m, r);

    let _ = writeln!(m, "\n### Conclusion");
    match &r.knee {
        Some(k) => {
            let _ = writeln!(m, "- {}", k.conclusion);
            for a in &k.advice {
                let _ = writeln!(m, "- Advice: {a}.");
            }
        }
        None if r.step_unit.is_some() => {
            let _ = writeln!(
                m,
                "- No knee within the steps run: throughput kept growing without P99 jumping or errors rising. Ramp further to find the limit."
            );
        }
        None => {
            let _ = writeln!(
                m,
                "- {} req/s with P99 TTFT {} ms and error rate {}{}.",
                num(o.request_throughput),
                ms(o.p("ttft", "p99")),
                pct(o.error_rate),
                if r.client_behind {
                    "; the client fell behind (see above)"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(
        m,
        "\n<sub>Metrics as defined in reprise's metric contract: TTFT = first content event − sent; TPOT = (E2E − TTFT)/(n_out − 1) for n_out > 1; ITL = gaps between content events; `*_sched` from the scheduled time (coordinated-omission free); latencies over successful requests; percentiles by linear interpolation.</sub>"
    );
    m
}

/// `summary.json`.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Writes `report.md`, `report.html` and `summary.json` into `dir`.
pub fn write(r: &Report, dir: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| ReportError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    let md = markdown(r);
    let html = crate::html::page(r, &md);
    for (name, text) in [
        ("report.md", md),
        ("report.html", html),
        ("summary.json", json(r)),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| ReportError::Io { path, source: e })?;
    }
    Ok(())
}

/// One line on the prefix cache: the server's hit rate, the trace's, and the warning.
pub fn cache_line(c: &crate::cache::CacheFidelity) -> String {
    let rate =
        |r: Option<f64>| r.map_or("not reported".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let mut line = format!(
        "Prefix cache: server hit rate {}; the trace implies {} (unbounded cache)",
        rate(c.observed),
        rate(c.implied_unbounded)
    );
    if let (Some(lru), Some(blocks)) = (c.implied_lru, c.cache_blocks) {
        line.push_str(&format!(", {} (LRU of {blocks} blocks)", rate(Some(lru))));
    }
    line.push('.');
    if let Some(w) = &c.warning {
        line.push_str(&format!(" WARNING: {w}."));
    }
    line
}

/// The terminal summary (`color`: ANSI colors).
pub fn terminal(r: &Report, color: bool) -> String {
    let (b, red, green, yellow, z) = if color {
        ("\x1b[1m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[0m")
    } else {
        ("", "", "", "", "")
    };
    let o = &r.overall;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{b}run {}{z}: {} requests in {:.1} s, {} req/s, {} output tok/s, errors {}{}{z}",
        r.run_id,
        o.requests,
        o.duration_s,
        num(o.request_throughput),
        num(o.output_tokens_per_s),
        if o.error_rate > 0.0 { red } else { green },
        pct(o.error_rate)
    );
    let _ = writeln!(
        t,
        "{:<11} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "ms", "p50", "p90", "p99", "p99.9", "max"
    );
    for name in ["ttft", "ttft_sched", "tpot", "itl", "e2e", "queue"] {
        if let Some(d) = o.dist(name) {
            let _ = writeln!(
                t,
                "{:<11} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                ms(Some(d.p50)),
                ms(Some(d.p90)),
                ms(Some(d.p99)),
                ms(Some(d.p999)),
                ms(Some(d.max))
            );
        }
    }
    if let Some(c) = &r.cache {
        let color = if c.warning.is_some() { yellow } else { "" };
        let _ = writeln!(t, "{color}{}{z}", cache_line(c));
    }
    if r.client_behind {
        let _ = writeln!(
            t,
            "{yellow}client could not keep up: queue p99 {} ms > {} ms{z}",
            ms(o.p("queue", "p99")),
            r.queue_limit_ms
        );
    }
    if let Some(k) = &r.knee {
        let _ = writeln!(t, "{b}{yellow}{}{z}", k.conclusion);
    }
    t
}

/// GPU and server figures per step (the dynamic-batching picture), the strongest time
/// correlations, and scrape failures.
fn resources(m: &mut String, r: &Report) {
    let Some(c) = &r.correlation else {
        return;
    };
    let _ = writeln!(m, "\n### Resources and correlation\n");
    let f = |v: Option<f64>, suffix: &str| v.map_or("–".into(), |x| format!("{x:.1}{suffix}"));
    if !r.steps.is_empty() && r.side.len() == r.steps.len() {
        let unit = r.step_unit.as_deref().unwrap_or("phase");
        let _ = writeln!(
            m,
            "| {unit} | QPS | running (batch size) | waiting | KV cache | GPU util | GPU mem | client host CPU |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
        for (s, x) in r.steps.iter().zip(&r.side) {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.step_value
                    .filter(|_| r.step_unit.is_some())
                    .map_or_else(|| s.label.clone(), num),
                num(s.request_throughput),
                f(x.server_running, ""),
                f(x.server_waiting, ""),
                f(x.kv_cache_pct, "%"),
                f(x.gpu_util_pct, "%"),
                f(x.gpu_mem_pct, "%"),
                f(x.host_cpu_pct, "%"),
            );
        }
        let _ = writeln!(m);
    }
    let strong: Vec<_> = c
        .pairs
        .iter()
        .filter(|p| p.pearson.abs() >= 0.5)
        .take(8)
        .collect();
    if strong.is_empty() {
        let _ = writeln!(
            m,
            "No resource series moves with the request figures (|r| < 0.5 over {} bins of {} s).",
            c.bins.len(),
            c.bin_s
        );
    } else {
        let _ = writeln!(m, "Strongest relations over time ({} s bins):", c.bin_s);
        let _ = writeln!(
            m,
            "\n| resource | request figure | Pearson r | Spearman | bins | best lag (s, r) |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|");
        for p in strong {
            let _ = writeln!(
                m,
                "| {} | {} | {:.2} | {:.2} | {} | {:+} s, {:.2} |",
                p.x, p.y, p.pearson, p.spearman, p.n, p.best_lag_s, p.best_lag_r
            );
        }
    }
    for h in &c.sources {
        if h.failed > 0 {
            let errors: Vec<String> = h.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(
                m,
                "\n- Scrapes of {} failed {} of {} times ({}): {} gap(s) in its data, the longest {:.1} s.",
                h.source,
                h.failed,
                h.scrapes,
                errors.join(", "),
                h.gaps,
                h.longest_gap_s
            );
        }
    }
}
