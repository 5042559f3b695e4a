//! A flaky target: `reprise replay` against `reprise sim` drawing faults at random — errors,
//! connections reset before an answer, streams cut, stalled past the token timeout, or
//! carrying a malformed event. Every request must end in exactly one row with at most one
//! error class, none may wait past `--timeout`, and the summary's counts must equal the rows.
//!
//! `REPRISE_CHAOS_SECONDS` sets the length (8 s by default, the short mode CI runs;
//! `scripts/torture` runs 600).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use reprise_trace::{DatasetReader, ResultRecord};

use crate::support::*;

#[test]
fn a_flaky_target_gives_every_request_one_row_and_one_class() {
    let seconds: u64 = std::env::var("REPRISE_CHAOS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let rate = 40;
    let requests = seconds * rate;
    let sim = SimProcess::start(&[
        "--model",
        "m",
        "--speedup",
        "20",
        "--seed",
        "7",
        "--error-rate",
        "0.05",
        "--error-status",
        "503",
        "--reset-rate",
        "0.05",
        "--cut-rate",
        "0.05",
        "--stall-rate",
        "0.05",
        "--stall-ms",
        "60000",
        "--malformed-rate",
        "0.05",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (timeout, token_timeout) = (2.0, 0.5);
    let started = Instant::now();
    let out = reprise(&[
        "replay",
        "--target",
        &sim.url,
        "--model",
        "m",
        "--rate",
        &rate.to_string(),
        "--process",
        "fixed",
        "--requests",
        &requests.to_string(),
        "--input-tokens",
        "64",
        "--output-tokens",
        "16",
        "--timeout",
        &timeout.to_string(),
        "--token-timeout",
        &token_timeout.to_string(),
        "--out",
        s(&run),
    ]);
    let took = started.elapsed();
    // Failures are rows, not a reason to stop: the run completes (exit 0: not every
    // request failed).
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // None waited past --timeout: the run lasts its schedule plus at most one timeout.
    let schedule = Duration::from_secs(seconds);
    assert!(
        took < schedule + Duration::from_secs_f64(timeout) + Duration::from_secs(8),
        "the run took {took:?} for a {schedule:?} schedule"
    );
    let rows = DatasetReader::<ResultRecord>::open(run.join("requests.parquet"))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(rows.len() as u64, requests, "one row per request");
    let ids: HashSet<&str> = rows.iter().map(|r| r.request.request_id.as_str()).collect();
    assert_eq!(ids.len() as u64, requests, "no request twice");
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rows {
        let class = r.error_kind.clone().unwrap_or_else(|| "ok".into());
        assert!(
            [
                "ok",
                "connect",
                "timeout",
                "http_4xx",
                "http_5xx",
                "broken_stream",
                "bad_body"
            ]
            .contains(&class.as_str()),
            "unknown class {class}"
        );
        assert_eq!(r.error_kind.is_some(), r.error.is_some(), "{r:?}");
        if let (Some(sent), Some(done)) = (r.sent, r.done) {
            let waited = (done.0 - sent.0) as f64 / 1e9;
            assert!(
                waited <= timeout + 0.25,
                "{} waited {waited} s",
                r.request.request_id
            );
        }
        *classes.entry(class).or_default() += 1;
    }
    eprintln!("{requests} requests: {classes:?}");
    // The faults showed up as their classes: injected 503s, stalls past the token timeout,
    // broken streams (cuts, resets).
    for class in ["ok", "http_5xx", "timeout", "broken_stream"] {
        assert!(
            classes.get(class).is_some_and(|n| *n > 0),
            "no `{class}`: {classes:?}"
        );
    }
    // The summary counts what the rows say.
    let info = run_json(&run);
    let summary = &info["summary"];
    assert_eq!(summary["recorded"], requests);
    assert_eq!(summary["overall"]["requests"], requests);
    assert_eq!(summary["overall"]["ok"], classes["ok"]);
    for (class, n) in &classes {
        if class != "ok" {
            assert_eq!(summary["overall"]["errors"][class], *n, "{class}");
        }
    }
}

/// After a signal, requests still in flight get `--drain`, then end as `cancelled` rows:
/// the replay stops in time and every request it sent has its row, open loop and closed.
#[test]
fn after_a_stop_every_request_in_flight_ends_in_a_row_within_the_drain() {
    // Every stream stalls for a minute after its first token.
    let sim = SimProcess::start(&[
        "--model",
        "m",
        "--speedup",
        "20",
        "--stall-rate",
        "1",
        "--stall-ms",
        "1200000",
        "--stall-after",
        "1",
    ]);
    for (mode, load) in [
        ("open", ["--rate", "20", "--run-for", "60"]),
        ("closed", ["--concurrency", "8", "--run-for", "60"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_reprise"))
            .args(["replay", "--target", &sim.url, "--model", "m"])
            .args(load)
            .args(["--token-timeout", "300", "--timeout", "600", "--drain", "1"])
            .args(["--no-host-metrics", "--out", s(&run)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let stopped = Instant::now();
        assert!(
            std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let out = child.wait_with_output().unwrap();
        let took = stopped.elapsed();
        // One second of drain, then the run is written: not the minute the streams stall.
        assert!(
            took < Duration::from_secs(6),
            "{mode}: stopping took {took:?}"
        );
        // Every measured request failed (they were all cancelled): the default gate.
        assert_eq!(out.status.code(), Some(1), "{mode}: {}", show(&out));
        let rows = DatasetReader::<ResultRecord>::open(run.join("requests.parquet"))
            .unwrap()
            .read_all()
            .unwrap();
        let info = run_json(&run);
        assert_eq!(info["complete"], false, "{mode}");
        assert!(!rows.is_empty(), "{mode}: no request was sent");
        assert_eq!(info["summary"]["recorded"], rows.len() as u64, "{mode}");
        for r in &rows {
            assert_eq!(r.error_kind.as_deref(), Some("cancelled"), "{mode}: {r:?}");
        }
        eprintln!(
            "{mode} loop: {} requests cancelled, stopped in {took:?}",
            rows.len()
        );
    }
}
