//! Live metrics against a real Prometheus: `reprise replay --metrics-listen` replays the
//! sample trace against `reprise sim` while Prometheus (Debian's package; CI installs it)
//! scrapes both every second. Afterwards, through Prometheus' HTTP API: the request counter
//! equals the rows of requests.parquet, `histogram_quantile(0.99, …)` of TTFT over the run
//! agrees with the analyzer's exact P99 within one bucket, and every query of every panel of
//! the shipped Grafana dashboard (`deploy/grafana/reprise.json`) returns numbers.
//!
//! Without a `prometheus` on PATH the test says SKIPPED, unless
//! `REPRISE_REQUIRE_PROMETHEUS=1` (CI sets it once the package is installed) makes it fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reprise_report::{Options, analyze};
use reprise_trace::{DatasetReader, ResultRecord};
use serde_json::Value;

use crate::record::{Kill, start_logged};
use crate::support::*;

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// A port free now (bound and released), for servers that cannot report the one they took.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Prometheus with `config` on a free port (again on another when the port was taken
/// meanwhile), and waits until it is ready: the process (killed when dropped) and its
/// address.
fn start_prometheus(binary: &Path, config: &Path, tsdb: &Path) -> (Kill, String) {
    for _ in 0..5 {
        let prom = format!("127.0.0.1:{}", free_port());
        let mut server = Command::new(binary)
            .arg(format!("--config.file={}", s(config)))
            .arg(format!("--storage.tsdb.path={}", s(tsdb)))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if get(&prom, "/-/ready").map(|r| r.0) == Some(200) {
                return (Kill(server), prom);
            }
            if server.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = server.kill();
        let _ = server.wait();
    }
    panic!("Prometheus did not start");
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `path` from `addr`: status and body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// An instant query at `time` (Unix seconds): each result's labels and value.
fn query(prom: &str, q: &str, time: f64) -> Vec<(Value, f64)> {
    let (status, body) = get(
        prom,
        &format!("/api/v1/query?query={}&time={time:.3}", encode(q)),
    )
    .unwrap_or_else(|| panic!("Prometheus did not answer {q}"));
    assert_eq!(status, 200, "{q}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{q}: {body}"))
        .iter()
        .map(|r| {
            let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
            (r["metric"].clone(), value)
        })
        .collect()
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Every query of every panel of a Grafana dashboard.
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
fn prometheus_scrapes_a_replay_and_every_dashboard_panel_has_data() {
    let Some(prometheus) = on_path("prometheus") else {
        assert!(
            std::env::var("REPRISE_REQUIRE_PROMETHEUS").as_deref() != Ok("1"),
            "REPRISE_REQUIRE_PROMETHEUS=1 but no prometheus on PATH"
        );
        eprintln!("SKIPPED: no prometheus on PATH (apt-get install prometheus)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_addr, _) = start_logged(&[
        "sim",
        "--listen",
        "127.0.0.1:0",
        "--speedup",
        "10",
        "--model",
        "m",
    ]);
    let _sim = Kill(sim);
    // The replay's metrics port is its own choice (port 0): Prometheus learns it from a
    // file-based service discovery file written once the replay says where it listens.
    let config = dir.path().join("prometheus.yml");
    let targets = dir.path().join("reprise-targets.json");
    std::fs::write(&targets, "[]").unwrap();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: reprise\n    file_sd_configs:\n      - files: [\"{}\"]\n        refresh_interval: 1s\n  - job_name: sim\n    static_configs:\n      - targets: [\"{sim_addr}\"]\n",
            s(&targets)
        ),
    )
    .unwrap();
    let (_server, prom) = start_prometheus(&prometheus, &config, &dir.path().join("tsdb"));
    // Ready is not scraping: on a busy machine the scrape manager's first sync comes seconds
    // later. Once the sim has been scraped, a new file-discovered target is picked up within
    // the discovery manager's update interval (5 s), well inside the replay's 12 s.
    let waiting = Instant::now();
    while query(&prom, "up{job=\"sim\"}", now_s()).is_empty() {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "Prometheus never scraped the sim: {:?}",
            get(&prom, "/api/v1/targets")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let run = dir.path().join("run");
    let mut replay = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .current_dir(repo())
        .args([
            "replay",
            "traces/azure-conv-2023.parquet",
            "--target",
            &format!("http://{sim_addr}"),
            "--model",
            "m",
            "--speed",
            "10",
            "--duration",
            "120",
            "--out",
            s(&run),
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-linger",
            "3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let mut lines = BufReader::new(replay.stderr.take().unwrap()).lines();
    let metrics = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the replay never said where its metrics are:\n{stderr}"))
            .unwrap();
        stderr.push_str(&line);
        stderr.push('\n');
        if let Some(rest) = line.strip_prefix("live metrics on http://") {
            break rest.trim_end_matches("/metrics").to_owned();
        }
    };
    std::fs::write(&targets, format!("[{{\"targets\": [\"{metrics}\"]}}]")).unwrap();
    for line in lines {
        stderr.push_str(&line.unwrap());
        stderr.push('\n');
    }
    let status = replay.wait().unwrap();
    let ended = now_s();
    assert!(status.success(), "{stderr}");
    let report = analyze(&run, &Options::default()).unwrap();
    let run_id = report.run_id.clone();
    assert!(report.rows > 50, "{} rows", report.rows);

    // The final scrape holds every request.
    let count = query(
        &prom,
        &format!("sum(reprise_replay_requests_total{{run_id=\"{run_id}\"}})"),
        ended,
    );
    assert_eq!(
        count.len(),
        1,
        "no scrape of the replay: {:?}",
        get(&prom, "/api/v1/targets")
    );
    assert_eq!(count[0].1 as u64, report.rows);

    // P99 TTFT from the histograms. `histogram_quantile` estimates the order statistic of
    // rank ⌈0.99 n⌉ inside the bucket that holds it, so it is within one bucket (9.65%) of
    // that value; the analyzer's exact P99 interpolates between the order statistics around
    // 0.99 (n − 1), so it may differ from it by the tail's gap between them as well.
    let p99 = query(
        &prom,
        &format!(
            "histogram_quantile(0.99, sum by (le) (reprise_replay_ttft_seconds_bucket{{run_id=\"{run_id}\"}}))"
        ),
        ended,
    )[0]
        .1
        * 1e3;
    let exact = report.overall.p("ttft", "p99").unwrap();
    let rows = DatasetReader::<ResultRecord>::open(run.join("requests.parquet"))
        .unwrap()
        .read_all()
        .unwrap();
    let mut ttft: Vec<f64> = rows
        .iter()
        .filter(|r| r.error_kind.is_none())
        .filter_map(|r| r.ttft_us)
        .map(|us| us as f64 / 1e3)
        .collect();
    ttft.sort_by(f64::total_cmp);
    let rank = ((0.99 * ttft.len() as f64).ceil() as usize).clamp(1, ttft.len());
    let order_stat = ttft[rank - 1];
    let bucket = 10f64.powf(1.0 / 25.0);
    eprintln!(
        "TTFT p99: {p99:.2} ms from Prometheus, {exact:.2} ms exact (analyzer), order statistic {rank} of {}: {order_stat:.2} ms",
        ttft.len()
    );
    assert!(
        p99 <= order_stat * bucket + 1e-6 && p99 >= order_stat / bucket - 1e-6,
        "p99 {p99} ms from Prometheus vs {order_stat} ms, the order statistic it estimates"
    );
    assert!(
        (p99 - exact).abs() <= exact * (bucket - 1.0) + (order_stat - exact).abs() + 1e-6,
        "p99 {p99} ms from Prometheus vs exact {exact} ms (order statistic {order_stat} ms)"
    );

    // Every panel's queries, half a second before the last request ended (rates need
    // samples in their window), give numbers.
    let last_done = rows
        .iter()
        .filter_map(|r| r.done)
        .map(|t| t.0)
        .max()
        .unwrap();
    let during = last_done as f64 * 1e-9 - 0.5;
    let queries = dashboard_queries(&repo().join("deploy/grafana/reprise.json"));
    assert!(queries.len() >= 20, "{} queries", queries.len());
    for (title, expr) in queries {
        let q = expr
            .replace("$run_id", &run_id)
            .replace("$worker", ".*")
            .replace("$phase", ".*")
            .replace("$__rate_interval", "5s");
        let result = query(&prom, &q, during);
        assert!(!result.is_empty(), "{title}: no data for {q}");
        for (labels, v) in &result {
            assert!(v.is_finite(), "{title}: {q} gave {v} for {labels}");
        }
    }
}

#[test]
fn a_metrics_port_in_use_is_one_line_before_the_run_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let err = fails(&reprise(&[
        "replay",
        "--target",
        "sim",
        "--rate",
        "5",
        "--requests",
        "5",
        "--out",
        s(&run),
        "--metrics-listen",
        &addr,
    ]));
    assert!(
        err.contains(&format!("--metrics-listen {addr}: cannot listen")),
        "{err}"
    );
    // Nothing ran: no run directory.
    assert!(!run.join("requests.parquet").exists());
}
