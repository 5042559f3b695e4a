//! `reprise replay` end to end against the in-process simulator.

use std::process::{Command, Stdio};
use std::time::Duration;

use reprise_trace::{DatasetReader, ResultRecord};

use crate::support::*;

fn rows(dir: &std::path::Path) -> Vec<ResultRecord> {
    DatasetReader::<ResultRecord>::open(dir.join("requests.parquet"))
        .unwrap()
        .read_all()
        .unwrap()
}

#[test]
fn replaying_the_sample_trace_reproduces_its_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let stdout = ok(&reprise(&[
        "replay",
        "traces/azure-conv-2023.parquet",
        "--target",
        "sim",
        "--sim-speedup",
        "50",
        "--speed",
        "50",
        "--duration",
        "60",
        "--out",
        s(&out),
    ]));
    // The trace's first 60 s hold 191 requests.
    assert!(stdout.contains("requests 191 ok, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("token counts vs usage: prompt mismatches 0.00%, output mismatches 0.00%"),
        "{stdout}"
    );
    let rows = rows(&out);
    assert_eq!(rows.len(), 191);
    for r in &rows {
        assert_eq!(r.n_in_usage, r.request.input_tokens);
        assert_eq!(r.n_out_usage, r.request.output_tokens);
        assert_eq!(r.phase, "measure");
        assert!(r.ttft_sched_us >= r.ttft_us);
    }
    let run = run_json(&out);
    assert_eq!(run["complete"], true);
    assert_eq!(run["summary"]["overall"]["ok"], 191);
    assert!(run["clock"]["anchor_wall_ns"].as_i64().unwrap() > 1_700_000_000_000_000_000);
}

#[test]
fn synthetic_rate_closed_loop_and_ramps() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("rate");
    ok(&reprise(&[
        "replay",
        "--target",
        "sim:instant",
        "--rate",
        "40",
        "--process",
        "fixed",
        "--run-for",
        "1",
        "--input-tokens",
        "64",
        "--output-tokens",
        "8",
        "--out",
        s(&a),
    ]));
    let r = rows(&a);
    assert_eq!(r.len(), 40);
    assert!(
        r.iter()
            .all(|r| r.n_in_usage == Some(64) && r.n_out_usage == Some(8))
    );

    let b = dir.path().join("closed");
    ok(&reprise(&[
        "replay",
        "--target",
        "sim:instant",
        "--concurrency",
        "4",
        "--requests",
        "12",
        "--warmup",
        "4",
        "--out",
        s(&b),
    ]));
    let r = rows(&b);
    assert_eq!(r.len(), 12);
    assert_eq!(r.iter().filter(|r| r.phase == "warmup").count(), 4);
    assert_eq!(
        run_json(&b)["summary"]["overall"]["requests"],
        8,
        "warm-up excluded"
    );

    let c = dir.path().join("ramp");
    let stdout = ok(&reprise(&[
        "replay",
        "traces/azure-conv-2023.parquet",
        "--target",
        "sim:instant",
        "--ramp",
        "concurrency:1,3",
        "--requests",
        "6",
        "--out",
        s(&c),
    ]));
    assert!(
        stdout.contains("| concurrency=1 |") && stdout.contains("| concurrency=3 |"),
        "{stdout}"
    );
    let r = rows(&c);
    assert_eq!(r.iter().filter(|r| r.step_value == Some(3.0)).count(), 6);
}

#[test]
fn bad_targets_and_dead_servers() {
    let err = fails(&reprise(&[
        "replay",
        "--target",
        "ftp://x",
        "--rate",
        "1",
        "--run-for",
        "1",
    ]));
    assert_eq!(
        err,
        "error: --target `ftp://x`: expected http(s)://host:port, a full endpoint URL, or sim[:PROFILE]"
    );
    let err = fails(&reprise(&["replay", "--target", "sim"]));
    assert!(err.contains("nothing to send"), "{err}");
    // A dead server: the run cannot start (exit 2), nothing is written.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dead");
    let err = fails(&reprise(&[
        "replay",
        "--target",
        &dead,
        "--model",
        "m",
        "--rate",
        "5",
        "--process",
        "fixed",
        "--run-for",
        "1",
        "--out",
        s(&out),
    ]));
    assert!(
        err.contains("cannot connect") && err.contains("refused"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn sigint_stops_sending_and_marks_the_run_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args([
            "replay",
            "traces/azure-conv-2023.parquet",
            "--target",
            "sim:instant",
            "--speed",
            "10",
            "--duration",
            "600",
            "--out",
            s(&out),
        ])
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the run has started writing, then let it send for a while.
    let tmp = out.join("requests.parquet.tmp");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !tmp.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("run INCOMPLETE"), "{stdout}");
    let n = rows(&out).len();
    assert!(
        (20..400).contains(&n),
        "{n} rows after ~2 s of a ~50 req/s replay"
    );
    assert_eq!(run_json(&out)["complete"], false);
}

#[test]
fn prompts_can_be_sized_with_the_servers_tokenize() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let run = reprise(&[
        "replay",
        "traces/azure-conv-2023.parquet",
        "--target",
        "sim:instant",
        "--speed",
        "50",
        "--duration",
        "20",
        "--tokenizer",
        "server",
        "--out",
        s(&out),
    ]);
    let stdout = ok(&run);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("prompts with http://127.0.0.1:") && stderr.contains("exact"),
        "{stderr}"
    );
    assert!(stdout.contains("prompt mismatches 0.00%"), "{stdout}");
    assert_eq!(run_json(&out)["config"]["tokenizer"], "server");
}
