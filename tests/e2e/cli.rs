//! The command line itself: help, and the analyzer launcher.

use crate::support::*;

#[test]
fn help_lists_the_commands() {
    let help = ok(&reprise(&["--help"]));
    for cmd in ["import", "sim", "trace", "analyze", "compare", "export"] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "{cmd} missing from:\n{help}"
        );
    }
    let import_help = ok(&reprise(&["import", "--help"]));
    assert!(
        import_help.contains("azure") && import_help.contains("--skip-bad"),
        "{import_help}"
    );
}

#[test]
fn analyze_without_the_analyzer_says_how_to_build_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = reprise_with(&["analyze", "runs/x"], |c| {
        c.env("PATH", empty.path())
            .env("REPRISE_ANALYZE", empty.path().join("reprise-analyze"));
    });
    let err = fails(&out);
    assert!(
        err.contains("cargo install --locked --path crates/reprise-analyze"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn analyze_runs_the_analyzer_named_by_reprise_analyze_with_all_arguments() {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("args.txt");
    let script = bin.path().join("reprise-analyze");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" > {}\nexit 3\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = reprise_with(
        &["compare", "base", "new", "--fail-on", "p99_ttft=+10%"],
        |c| {
            c.env("REPRISE_ANALYZE", &script);
        },
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "the analyzer's exit status is passed on"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().trim(),
        "compare base new --fail-on p99_ttft=+10%"
    );
}

/// The real analyzer (built beside `reprise` by a workspace build) on a real replay.
#[test]
fn analyze_a_replay_of_the_sample_trace() {
    let analyzer =
        std::path::Path::new(env!("CARGO_BIN_EXE_reprise")).with_file_name("reprise-analyze");
    assert!(
        analyzer.exists(),
        "{} is missing: run the tests of the whole workspace (scripts/test)",
        analyzer.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    ok(&reprise(&[
        "replay",
        "traces/azure-conv-2023.parquet",
        "--target",
        "sim:instant",
        "--limit",
        "200",
        "--speed",
        "50",
        "--warmup",
        "10",
        "--out",
        s(&run),
    ]));
    let out = ok(&reprise(&["analyze", s(&run), "--slo-ttft", "1000"]));
    assert!(out.contains("190 requests"), "{out}");
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        md.contains("## Load test report")
            && md.contains("190 requests measured (10 warm-up requests excluded)"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["overall"]["ok"], 190);
    assert_eq!(json["overall"]["latency"]["ttft"]["count"], 190);
    assert!(json["overall"]["goodput"].as_f64().unwrap() > 0.0);

    // Comparing a run with itself: nothing significant, exit 0 even with a tight gate.
    let same = reprise(&["compare", s(&run), s(&run), "--fail-on", "ttft.p99=1%"]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    // A broken run directory is a one-line error and exit status 2.
    let bad = reprise(&["analyze", s(dir.path())]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no requests.parquet"));
}
