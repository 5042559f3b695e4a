//! Past the client's capacity: asked for more than it can send, the replayer holds what it
//! can, bounds its connections and memory, never blames the target for its own shortage,
//! says "client could not keep up" with the rate it held, and exits 1.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{run_json, s};

/// A no-op streaming server (16 events at once) on a thread of its own.
fn stub_server() -> String {
    reprise_stub::sse::spawn(reprise_stub::sse::Style::Completion)
}

/// `replay` arguments: `requests` 16-token requests to `target` at `rate` req/s, into
/// `out`, without a live view or host sampling.
fn rate_args(target: &str, rate: u32, requests: u64, out: &std::path::Path) -> Vec<String> {
    let flags = [
        "replay",
        "--target",
        target,
        "--model",
        "m",
        "--api",
        "completions",
        "--rate",
        &rate.to_string(),
        "--requests",
        &requests.to_string(),
        "--input-tokens",
        "16",
        "--output-tokens",
        "16",
        "--no-tui",
        "--no-host-metrics",
        "--out",
        s(out),
    ];
    flags.iter().map(|f| (*f).to_owned()).collect()
}

/// [`rate_args`] at 1,000 req/s with `extra` flags, the open-files limit (soft and hard)
/// lowered to `files`.
fn replay_with_files(
    files: u32,
    target: &str,
    requests: u64,
    extra: &[&str],
    out: &std::path::Path,
) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_reprise"))
        .args(rate_args(target, 1000, requests, out))
        .args(extra)
        .output()
        .expect("sh runs")
}

/// Resident memory of process `pid`, KiB (0 once it has gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn fifty_thousand_a_second_is_held_as_far_as_it_can_be_and_said_so() {
    let target = stub_server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let requests = 20_000u64;
    let child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(rate_args(&target, 50_000, requests, &out))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("reprise runs");
    let pid = child.id();
    // Peak resident memory, sampled while it runs.
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        let started = Instant::now();
        loop {
            let rss = rss_kib(pid);
            if rss == 0 && started.elapsed() > Duration::from_millis(500) {
                return peak;
            }
            peak = peak.max(rss);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let output = child.wait_with_output().expect("reprise ends");
    let peak_kib = sampler.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("FAILED (default gate): client could not keep up: it held"),
        "{stderr}"
    );
    assert!(stdout.contains("client: held"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let run = run_json(&out);
    let summary = &run["summary"];
    let client = &summary["client"];
    assert_eq!(client["fell_behind"], true, "{client}");
    assert_eq!(client["sent"], requests);
    let (asked, held) = (
        client["asked_rate"].as_f64().unwrap(),
        client["held_rate"].as_f64().unwrap(),
    );
    assert!(asked > 45_000.0, "{client}");
    assert!(held < asked / 2.0, "{client}");
    assert!(client["behind_s"].as_f64().unwrap() > 1.0, "{client}");
    // Every request was sent (late) and answered: none is blamed on the target, and none
    // failed for the client's shortage either, since connections were bounded.
    let overall = &summary["overall"];
    assert_eq!(overall["requests"], requests);
    assert_eq!(overall["ok"], requests, "{overall}");
    assert_eq!(client["client_errors"], 0);
    assert!(
        client["max_connections"].as_u64().unwrap() >= 16,
        "{client}"
    );
    assert!(summary["overall"]["errors"].get("connect").is_none());
    // The queue measures the client's lag: at the end, seconds.
    assert!(overall["queue_ms"]["p99"].as_f64().unwrap() > 1000.0);
    // Memory stays bounded: requests wait in the plan, not in tasks.
    assert!(
        peak_kib > 0 && peak_kib < 300 * 1024,
        "peak RSS {peak_kib} KiB"
    );
}

#[test]
fn running_out_of_file_descriptors_is_the_clients_error_not_the_targets() {
    let target = stub_server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // 200 streams held open 5 s each, with 128 files allowed and the connection bound
    // lifted above that: connects fail with EMFILE.
    let output = replay_with_files(
        128,
        &format!("{target}/hold"),
        200,
        &["--max-connections", "1000"],
        &out,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.join("run.json").is_file(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status.code()
    );
    let run = run_json(&out);
    let errors = &run["summary"]["overall"]["errors"];
    let client_errors = errors["client"].as_u64().unwrap_or(0);
    assert!(client_errors > 0, "{errors}\n{stdout}\n{stderr}");
    assert!(errors.get("connect").is_none(), "{errors}");
    assert_eq!(run["summary"]["client"]["client_errors"], client_errors);
    assert!(
        stdout.contains(&format!(
            "client errors: {client_errors} requests failed for the load generator's own shortage"
        )),
        "{stdout}"
    );
    // The rows say why, naming the shortage.
    assert!(
        stdout.contains("requests ") && run["summary"]["recorded"] == 200,
        "{stdout}"
    );

    // The same run with the default bound (from the lowered limit) waits instead of failing.
    let out = dir.path().join("bounded");
    let output = replay_with_files(320, &format!("{target}/hold"), 100, &[], &out);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let run = run_json(&out);
    let client = &run["summary"]["client"];
    // 320 files less 256 reserved: 64 connections. The other 36 requests went out as
    // held streams ended; those that found none ended yet waited (streams ending together
    // let some through without a wait).
    assert_eq!(client["max_connections"], 64, "{stdout}");
    let waited = client["waited_for_connection"].as_u64().unwrap();
    assert!((1..=36).contains(&waited), "{client}");
    // They were late by the hold (5 s), and counted so.
    assert!(client["behind_s"].as_f64().unwrap() > 4.0, "{client}");
    assert_eq!(run["summary"]["overall"]["ok"], 100, "{stdout}");
    assert_eq!(client["client_errors"], 0);
}
