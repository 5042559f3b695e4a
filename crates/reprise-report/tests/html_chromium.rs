//! `report.html` opened in headless Chromium (Debian's `chromium`, installed by
//! `scripts/test`): the page's charts must render — every `<svg class="chart">` laid out
//! with a non-zero size, every series line with a non-zero length — and a screenshot must
//! show each series' colour.
//!
//! Without a browser the test says SKIPPED, unless `REPRISE_REQUIRE_CHROMIUM=1` (set by
//! `scripts/test` once it has installed one), where a missing browser fails it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reprise_report::{Options, analyze, html, render};
use reprise_trace::{
    DatasetWriter, GpuSample, Output, ResultRecord, Timestamp, TraceRecord, WriterOptions,
};

const S: i64 = 1_000_000_000;
const T0: i64 = 1_800_000_000 * S;

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REPRISE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs Chromium headless with `args` and returns its stdout; killed after 60 s.
fn run_chromium(bin: &Path, profile: &Path, args: &[String]) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        s
    });
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// A four-step rate ramp (TTFT rising past the third step) with GPU samples.
fn write_run(dir: &Path) {
    let mut w = DatasetWriter::<ResultRecord>::create(
        Output::File(dir.join("requests.parquet")),
        WriterOptions::default(),
    )
    .unwrap();
    let mut i = 0u64;
    for (step, rate) in [10.0, 20.0, 40.0, 80.0].into_iter().enumerate() {
        for k in 0..200u64 {
            let sent = T0 + step as i64 * 20 * S + (k as f64 / rate * 1e9) as i64;
            let ttft_ms = 20 + (k % 17) + if step == 3 { k * 3 } else { 0 };
            let gaps: Vec<u32> = (0..20)
                .map(|j| 9_000 + (j * 97 + k as u32 * 31) % 4_000)
                .collect();
            let e2e_us = ttft_ms * 1000 + gaps.iter().map(|&g| g as u64).sum::<u64>();
            let mut request = TraceRecord::new(format!("r{i}"), Timestamp(0));
            request.input_tokens = Some(100);
            request.output_tokens = Some(21);
            w.write(&ResultRecord {
                request,
                run_id: "chromium".into(),
                target: "http://x".into(),
                phase: format!("rate={rate}"),
                step_value: Some(rate),
                shard: 0,
                scheduled: Timestamp(sent),
                sent: Some(Timestamp(sent)),
                first_chunk: Some(Timestamp(sent + ttft_ms as i64 * 1_000_000)),
                first_token: Some(Timestamp(sent + ttft_ms as i64 * 1_000_000)),
                done: Some(Timestamp(sent + e2e_us as i64 * 1000)),
                queue_us: Some(10),
                ttft_us: Some(ttft_ms * 1000),
                e2e_us: Some(e2e_us),
                ttft_sched_us: Some(ttft_ms * 1000),
                e2e_sched_us: Some(e2e_us),
                tpot_us: Some((e2e_us - ttft_ms * 1000) / 20),
                itl_us: Some(gaps),
                n_in_usage: Some(100),
                n_out_usage: Some(21),
                n_cached_usage: None,
                n_out_counted: Some(21),
                status: Some(200),
                error_kind: None,
                error: None,
            })
            .unwrap();
            i += 1;
        }
    }
    w.close().unwrap();
    let mut g = DatasetWriter::<GpuSample>::create(
        Output::File(dir.join("gpu.parquet")),
        WriterOptions::default(),
    )
    .unwrap();
    for k in 0..160 {
        g.write(&GpuSample {
            time: Timestamp(T0 + k * S / 2),
            host: "h".into(),
            gpu: 0,
            uuid: None,
            name: None,
            util_pct: Some((30.0 + k as f64 * 0.5).min(99.0)),
            mem_util_pct: None,
            mem_used_bytes: None,
            mem_total_bytes: None,
            power_w: None,
            sm_clock_mhz: None,
            temp_c: None,
        })
        .unwrap();
    }
    g.close().unwrap();
}

const PROBE: &str = r#"<script>
const charts = [];
for (const svg of document.querySelectorAll('svg.chart')) {
  const box = svg.getBoundingClientRect();
  const lines = [...svg.querySelectorAll('polyline.series')].map(p => {
    const b = p.getBBox();
    return { stroke: p.getAttribute('stroke'), w: b.width, h: b.height, len: p.getTotalLength() };
  });
  charts.push({ title: svg.querySelector('title').textContent, w: box.width, h: box.height, lines });
}
const tables = [...document.querySelectorAll('table')].map(t => {
  const box = t.getBoundingClientRect();
  const row = t.querySelector('tbody tr');
  const tops = row ? [...row.children].map(c => Math.round(c.getBoundingClientRect().top)) : [];
  return { display: getComputedStyle(t).display, w: box.width, h: box.height, top: box.top,
           rows: t.querySelectorAll('tr').length, cols: tops.length,
           one_line: tops.every(v => v === tops[0]), text: t.textContent.slice(0, 60) };
});
const headline = document.querySelector('.headline');
const order = {
  headline_top: headline ? headline.getBoundingClientRect().top : -1,
  headline_text: headline ? headline.textContent : '',
  first_chart_top: Math.min(...[...document.querySelectorAll('svg.chart')].map(s => s.getBoundingClientRect().top)),
  pipes_in_text: [...document.querySelectorAll('.text')].some(e => e.innerText.includes('|---')),
};
const pre = document.createElement('pre');
pre.id = 'probe';
pre.textContent = 'PROBE' + JSON.stringify({ charts, tables, order }) + 'EBORP';
document.body.appendChild(pre);
</script>"#;

#[test]
fn the_report_page_renders_its_charts_in_headless_chromium() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var("REPRISE_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "REPRISE_REQUIRE_CHROMIUM=1 but no chromium found"
        );
        eprintln!("SKIPPED: no chromium (scripts/test installs Debian's chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_run(dir.path());
    let report = analyze(dir.path(), &Options::default()).unwrap();
    let out = dir.path().join("report");
    render::write(&report, &out).unwrap();
    let expected = html::charts(&report).len();
    // Two CDFs, throughput and TTFT over time, throughput and P99 TTFT against the rate.
    assert_eq!(expected, 6);
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        !page.contains("<script"),
        "the report itself carries no script"
    );

    // 1. The DOM as laid out: every chart sized, every series drawn.
    let probe = out.join("probe.html");
    std::fs::write(&probe, page.replace("</body>", &format!("{PROBE}</body>"))).unwrap();
    let profile = dir.path().join("profile");
    let dom = run_chromium(
        &bin,
        &profile,
        &["--dump-dom".into(), format!("file://{}", probe.display())],
    );
    let json = dom
        .split_once("id=\"probe\">PROBE")
        .and_then(|(_, rest)| rest.split_once("EBORP"))
        .map(|(j, _)| {
            j.replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
        })
        .unwrap_or_else(|| panic!("no probe output in the DOM: {}", &dom[..dom.len().min(500)]));
    let probed: serde_json::Value = serde_json::from_str(&json).unwrap();
    // The headline figures come first, then tables laid out as tables (cells of a row side
    // by side), no Markdown table syntax left.
    let order = &probed["order"];
    let first_table_top = probed["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["top"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert!(
        order["headline_top"].as_f64().unwrap() >= 0.0
            && order["headline_top"].as_f64().unwrap() < first_table_top
            && order["headline_top"].as_f64().unwrap() < order["first_chart_top"].as_f64().unwrap(),
        "{order}"
    );
    let headline = order["headline_text"].as_str().unwrap();
    for figure in [
        "requests",
        "TTFT P99",
        "E2E P99",
        "throughput",
        "knee",
        "bottleneck",
    ] {
        assert!(headline.contains(figure), "{headline}");
    }
    assert_eq!(order["pipes_in_text"], false, "{order}");
    let tables = probed["tables"].as_array().unwrap();
    // Key metrics per step, latency, over time (at least).
    assert!(tables.len() >= 3, "{json}");
    for t in tables {
        assert_eq!(t["display"], "table", "{t}");
        assert!(
            t["w"].as_f64().unwrap() > 100.0 && t["h"].as_f64().unwrap() > 20.0,
            "{t}"
        );
        assert!(
            t["cols"].as_u64().unwrap() >= 2 && t["one_line"] == true,
            "{t}"
        );
    }
    let steps = tables
        .iter()
        .find(|t| t["text"].as_str().unwrap().starts_with("rateQPS"))
        .unwrap_or_else(|| panic!("no step table: {json}"));
    assert_eq!(steps["rows"], 5, "a header and the four steps: {steps}");
    let charts = probed["charts"].as_array().unwrap();
    assert_eq!(charts.len(), expected, "{json}");
    let mut lines_total = 0;
    for c in charts {
        assert!(
            c["w"].as_f64().unwrap() >= 600.0 && c["h"].as_f64().unwrap() >= 200.0,
            "{c}"
        );
        let lines = c["lines"].as_array().unwrap();
        assert!(!lines.is_empty(), "chart without a series: {c}");
        for l in lines {
            assert!(l["len"].as_f64().unwrap() > 50.0, "a blank series: {c}");
            assert!(
                l["w"].as_f64().unwrap() > 10.0,
                "a series with no extent: {c}"
            );
        }
        lines_total += lines.len();
    }
    // TTFT/TPOT/ITL, E2E, completed+target+GPU, P50+P99+GPU, req/s+GPU, P99.
    assert_eq!(lines_total, 3 + 1 + 3 + 3 + 2 + 1, "{json}");
    let gpu_overlays = charts
        .iter()
        .flat_map(|c| c["lines"].as_array().unwrap())
        .filter(|l| l["stroke"] == "#ff7f0e")
        .count();
    assert_eq!(gpu_overlays, 3);

    // 2. The pixels: a screenshot shows every series colour, each over many pixels.
    let shot = dir.path().join("shot.png");
    run_chromium(
        &bin,
        &profile,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,4000".into(),
            format!("file://{}", out.join("report.html").display()),
        ],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let near = |p: &[u8; 3], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 24);
    for (name, rgb) in [
        ("TTFT blue", [0x1f, 0x77, 0xb4]),
        ("TPOT green", [0x2c, 0xa0, 0x2c]),
        ("ITL purple", [0x94, 0x67, 0xbd]),
        ("E2E/P99 red", [0xd6, 0x27, 0x28]),
        ("GPU orange", [0xff, 0x7f, 0x0e]),
    ] {
        let n = pixels.iter().filter(|p| near(p, rgb)).count();
        assert!(n > 150, "{name}: only {n} pixels in the screenshot");
    }
    let ink = pixels.iter().filter(|p| p.iter().any(|&v| v < 200)).count();
    assert!(
        ink as f64 / pixels.len() as f64 > 0.01,
        "the screenshot is nearly blank"
    );
}
