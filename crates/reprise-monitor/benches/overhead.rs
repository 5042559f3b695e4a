//! The monitor's own cost: CPU time of its threads (`monitor-*`, read from
//! `/proc/self/task/*/stat`) over wall time, at 100 ms and 500 ms intervals, sampling the
//! host alone and the host plus one scraped endpoint serving a vLLM-sized exposition (the
//! sim's `/metrics`: ~150 series). The endpoint runs in this process on threads of its own,
//! which are not counted.
//!
//! ```text
//! cargo bench -p reprise-monitor --bench overhead [-- --seconds 10]
//! ```

use std::time::{Duration, Instant};

use reprise_monitor::{Monitor, MonitorConfig};

/// CPU seconds of this process's threads whose name starts with `prefix`.
fn thread_cpu_s(prefix: &str) -> f64 {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = entry.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        if let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) {
            let f: Vec<&str> = rest.split_ascii_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            total += n(11) + n(12);
        }
    }
    total as f64 / ticks
}

/// A vLLM-like exposition of about 150 series.
fn exposition() -> String {
    let mut s = String::new();
    for m in [
        "num_requests_running",
        "num_requests_waiting",
        "gpu_cache_usage_perc",
    ] {
        s.push_str(&format!(
            "# TYPE vllm:{m} gauge\nvllm:{m}{{model_name=\"m\"}} 3\n"
        ));
    }
    for h in [
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "time_per_output_token_seconds",
    ] {
        for le in [
            "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75",
            "1.0", "2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "+Inf",
        ] {
            s.push_str(&format!(
                "vllm:{h}_bucket{{model_name=\"m\",le=\"{le}\"}} 1234\n"
            ));
        }
        s.push_str(&format!(
            "vllm:{h}_sum{{model_name=\"m\"}} 12.5\nvllm:{h}_count{{model_name=\"m\"}} 1234\n"
        ));
    }
    for i in 0..80 {
        s.push_str(&format!("process_misc_{i}{{a=\"b\"}} {i}.5\n"));
    }
    s
}

fn main() {
    let mut seconds = 10.0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--seconds" {
            seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(seconds);
        }
    }
    let url = format!("{}/metrics", reprise_stub::fixed::spawn(exposition()));
    println!("| interval | sampling | samples | monitor CPU s | wall s | CPU share of one core |");
    println!("|---|---|---|---|---|---|");
    for interval_ms in [100u64, 500] {
        for scrape in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = MonitorConfig::new(dir.path());
            cfg.interval = Duration::from_millis(interval_ms);
            cfg.gpu = true; // no NVML here: measures the one-line fallback too
            if scrape {
                cfg.scrape = vec![url.clone()];
            }
            let before = thread_cpu_s("monitor-");
            let started = Instant::now();
            let m = Monitor::start(cfg).unwrap();
            std::thread::sleep(Duration::from_secs_f64(seconds));
            // Read while the threads still exist (a finished thread leaves /proc/self/task).
            let cpu = thread_cpu_s("monitor-") - before;
            let wall = started.elapsed().as_secs_f64();
            let s = m.stop().unwrap();
            println!(
                "| {interval_ms} ms | host{} | {} host, {} scrapes, {} server rows | {cpu:.3} | {wall:.1} | {:.2}% |",
                if scrape {
                    " + 1 endpoint (~150 series)"
                } else {
                    ""
                },
                s.host_samples,
                s.sources.iter().map(|x| x.ok).sum::<u64>(),
                s.server_rows,
                cpu / wall * 100.0
            );
        }
    }
}
