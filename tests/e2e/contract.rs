//! The promises `reprise replay` makes to scripts and CI jobs: exit status 0 (done), 1 (ran,
//! failed a gate) and 2 (could not run), with a one-line message naming the cause; targets
//! written as users write them; run lengths and rates that mean what they say; runs never
//! overwritten by accident; help and docs that agree.

use crate::support::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_target_that_refuses_connections_cannot_run() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let err = fails(&reprise(&[
        "replay",
        "--target",
        &format!("http://{addr}"),
        "--model",
        "m",
        "--rate",
        "5",
        "--run-for",
        "1",
        "--out",
        s(&out),
    ]));
    assert!(
        err.starts_with(&format!(
            "error: --target http://{addr}: cannot connect to {addr}:"
        )) && err.contains("refused"),
        "{err}"
    );
    assert!(
        !out.exists(),
        "nothing is written for a run that could not start"
    );
}

#[test]
fn a_target_that_answers_404_stops_at_once_with_the_fix() {
    let sim = SimProcess::start(&["--profile", "instant"]);
    let dir = tempfile::tempdir().unwrap();
    // Without --model, the model list itself is a 404 under a wrong prefix.
    let err = fails(&reprise(&[
        "replay",
        "--target",
        &format!("{}/wrong", sim.url),
        "--rate",
        "20",
        "--run-for",
        "5",
        "--out",
        s(&dir.path().join("a")),
    ]));
    assert_eq!(
        err,
        format!(
            "error: {0}/wrong/v1/models answered 404 Not Found: check the base URL in --target (requests go to {0}/wrong/v1/...), or pass --model",
            sim.url
        )
    );
    // With --model, the first request's 404 ends the run long before its 5 s.
    let started = std::time::Instant::now();
    let run = dir.path().join("b");
    let err = fails(&reprise(&[
        "replay",
        "--target",
        &format!("{}/wrong", sim.url),
        "--model",
        "m",
        "--rate",
        "20",
        "--run-for",
        "5",
        "--out",
        s(&run),
    ]));
    assert!(
        err.starts_with(&format!(
            "error: target {0}/wrong answered 404 Not Found on /v1/chat/completions before any request succeeded: check the base URL (requests go to {0}/wrong/v1/chat/completions) or --api (run stopped;",
            sim.url
        )),
        "{err}"
    );
    assert!(
        started.elapsed().as_secs_f64() < 4.0,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run_json(&run)["complete"], false);
}

#[test]
fn endpoint_urls_are_split_and_the_target_is_named() {
    let sim = SimProcess::start(&["--profile", "instant", "--model", "tiny"]);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = reprise(&[
        "replay",
        "--target",
        &format!("{}/v1/completions", sim.url),
        "--rate",
        "40",
        "--requests",
        "12",
        "--process",
        "fixed",
        "--out",
        s(&run),
    ]);
    let stdout = ok(&out);
    assert!(
        stderr(&out).contains(&format!(
            "target {0}/v1/completions: base URL {0}, API /v1/completions (from the URL)",
            sim.url
        )),
        "{}",
        show(&out)
    );
    assert!(
        stdout.starts_with(&format!("target {}\n", sim.url)),
        "{stdout}"
    );
    assert!(stdout.contains("requests 12 ok, 0 failed"), "{stdout}");
    let info = run_json(&run);
    assert_eq!(info["config"]["api"], "completions");
    assert_eq!(info["config"]["targets"][0], sim.url.as_str());
    assert_eq!(info["summary"]["targets"][0], sim.url.as_str());
    // An --api that contradicts the URL is refused with the fix.
    let err = fails(&reprise(&[
        "replay",
        "--target",
        &format!("{}/v1/completions", sim.url),
        "--api",
        "chat",
        "--rate",
        "1",
        "--run-for",
        "1",
    ]));
    assert_eq!(
        err,
        "error: --api chat disagrees with the endpoint in --target (/v1/completions): drop one of them"
    );
}

#[test]
fn without_a_target_the_built_in_simulator_is_said_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = reprise(&[
        "replay",
        "--rate",
        "20",
        "--requests",
        "5",
        "--out",
        s(&run),
    ]);
    let stdout = ok(&out);
    assert!(
        stderr(&out).contains(
            "no --target given: using the built-in simulator (sim:llama-8b-h100); pass --target URL for a real server"
        ),
        "{}",
        show(&out)
    );
    assert!(stdout.starts_with("target sim:llama-8b-h100\n"), "{stdout}");
    assert_eq!(
        run_json(&run)["config"]["target_names"][0],
        "sim:llama-8b-h100"
    );
}

#[test]
fn every_request_failing_is_exit_1_but_errors_on_a_stress_ramp_are_not() {
    let broken = SimProcess::start(&["--profile", "instant", "--error-rate", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let out = reprise(&[
        "replay",
        "--target",
        &broken.url,
        "--rate",
        "20",
        "--requests",
        "6",
        "--out",
        s(&dir.path().join("a")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(
        stderr(&out).trim_end(),
        "FAILED (default gate): every measured request failed (6 of 6: http_5xx 6)"
    );
    // A ramp whose later steps meet errors found the limit: that is success by default,
    // and a failed gate when asked for.
    let flaky = SimProcess::start(&["--profile", "instant", "--error-rate", "0.5", "--seed", "3"]);
    let ramp = [
        "replay",
        "--target",
        &flaky.url,
        "--ramp",
        "concurrency:1,2",
        "--requests",
        "20",
        "--stop-error-rate",
        "0.05",
    ];
    let out = reprise(&[&ramp[..], &["--out", s(&dir.path().join("b"))]].concat());
    let stdout = ok(&out);
    assert!(stdout.contains("stopped after concurrency=1"), "{stdout}");
    let out = reprise(
        &[
            &ramp[..],
            &["--out", s(&dir.path().join("c")), "--max-error-rate", "0.1"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("FAILED (--max-error-rate): error rate ")
            && err.trim_end().ends_with("above the limit of 10.00%"),
        "{err}"
    );
}

#[test]
fn the_queue_gate_fails_a_run_the_client_could_not_keep() {
    let dir = tempfile::tempdir().unwrap();
    // No client holds a 1 ns queue p99: the gate must fail, and say with which figures.
    let out = reprise(&[
        "replay",
        "--target",
        "sim:instant",
        "--rate",
        "50",
        "--requests",
        "10",
        "--max-queue-p99-ms",
        "0.000001",
        "--out",
        s(&dir.path().join("q")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("FAILED (--max-queue-p99-ms): client could not keep up: queue p99 ")
            && err
                .trim_end()
                .ends_with("ms above the limit of 0.000001 ms"),
        "{err}"
    );
}

#[test]
fn run_lengths_and_rates_mean_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    // N requests at a rate, exactly; throughput over the intended duration beside the
    // measured span.
    let run = dir.path().join("n");
    let stdout = ok(&reprise(&[
        "replay",
        "--target",
        "sim:instant",
        "--rate",
        "40",
        "--requests",
        "20",
        "--out",
        s(&run),
    ]));
    assert!(stdout.contains("requests 20 ok, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("s measured (first send to last response), 0.5 s intended\n")
            && stdout.contains("req/s measured, 40.00 req/s intended;"),
        "{stdout}"
    );
    assert_eq!(run_json(&run)["summary"]["intended_s"], 0.5);
    assert_eq!(run_json(&run)["summary"]["recorded"], 20);

    let cases: [(&[&str], &str); 9] = [
        (
            &["--rate", "2", "--run-for", "0"],
            "error: --run-for must be a positive number of seconds, got 0",
        ),
        (
            &["--rate", "0", "--run-for", "1"],
            "error: --rate must be a positive number of requests per second, got 0",
        ),
        (
            &["--rate=-3", "--run-for", "1"],
            "error: --rate must be a positive number of requests per second, got -3",
        ),
        (
            &["--rate", "2", "--requests", "0"],
            "error: --requests must be at least 1",
        ),
        (
            &["--rate", "100"],
            "error: --rate needs a length: --run-for SECONDS or --requests N",
        ),
        (
            &["--rate", "100", "--duration", "10"],
            "error: --duration is for trace replay (the window of TRACE, in trace time); for --rate, --concurrency or --ramp load use --run-for SECONDS or --requests N",
        ),
        (
            &["traces/azure-conv-2023.parquet", "--run-for", "10"],
            "error: --run-for is the wall-clock length of synthetic (--rate) or closed-loop (--concurrency) load; to replay part of a trace use --duration SECONDS (trace time) or --limit N",
        ),
        (
            &["traces/azure-conv-2023.parquet", "--requests", "10"],
            "error: --requests is for --rate and closed-loop load; to replay the first N requests of a trace use --limit N",
        ),
        (
            &["--concurrency", "2"],
            "error: closed loop needs a length: --run-for SECONDS or --requests N",
        ),
    ];
    for (args, want) in cases {
        let err = fails(&reprise(
            &[&["replay", "--target", "sim:instant"], args].concat(),
        ));
        assert_eq!(err, want, "{args:?}");
    }
}

#[test]
fn an_existing_run_is_not_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = [
        "replay",
        "--target",
        "sim:instant",
        "--rate",
        "50",
        "--requests",
        "3",
        "--out",
        s(&run),
    ];
    ok(&reprise(&args));
    let before = std::fs::read(run.join("requests.parquet")).unwrap();
    let err = fails(&reprise(&args));
    assert_eq!(
        err,
        format!(
            "error: --out {}: a run is already there; pass --force to overwrite it, or choose another directory",
            run.display()
        )
    );
    assert_eq!(std::fs::read(run.join("requests.parquet")).unwrap(), before);
    std::fs::write(run.join("report.md"), "stale").unwrap();
    ok(&reprise(&[&args[..], &["--force"]].concat()));
    assert!(
        !run.join("report.md").exists(),
        "--force replaces the whole run"
    );
    // A directory that holds something else is never a place to write a run.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let err = fails(&reprise(&[
        "replay",
        "--target",
        "sim:instant",
        "--rate",
        "50",
        "--requests",
        "3",
        "--out",
        s(&other),
        "--force",
    ]));
    assert!(err.contains("is not empty and holds no run"), "{err}");
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn help_and_docs_agree_and_millisecond_flags_say_so() {
    let help = ok(&reprise(&["replay", "--help"]));
    let docs = std::fs::read_to_string(repo().join("docs/replay.md")).unwrap();
    let figure = format!(
        "{},{:03} req/s",
        reprise_replay::SENDER_HOLDS_REQ_PER_S / 1000,
        reprise_replay::SENDER_HOLDS_REQ_PER_S % 1000
    );
    let flat = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat(&help).contains(&format!("One holds about {figure}")),
        "{help}"
    );
    assert!(
        flat(&docs).contains(&format!("One sender holds {figure}")),
        "docs/replay.md"
    );
    // Every flag that takes milliseconds ends in -ms; the old name still works, hidden.
    assert!(help.contains("--think-time-ms <MS>"), "{help}");
    assert!(!help.contains("--think-time <"), "{help}");
    for line in help.lines().filter(|l| l.contains("<MS>")) {
        let flag = line.split_whitespace().next().unwrap_or_default();
        assert!(flag.ends_with("-ms"), "{line}");
    }
    let top = ok(&reprise(&["--help"]));
    assert!(!top.contains("as the pipeline grows"), "{top}");
    assert!(top.contains("Exit status"), "{top}");
    let dir = tempfile::tempdir().unwrap();
    ok(&reprise(&[
        "replay",
        "--target",
        "sim:instant",
        "--concurrency",
        "1",
        "--requests",
        "2",
        "--think-time",
        "5",
        "--out",
        s(&dir.path().join("r")),
    ]));
}
