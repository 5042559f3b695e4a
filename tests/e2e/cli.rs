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
        c.env("PATH", empty.path());
    });
    let err = fails(&out);
    assert!(
        err.contains("cargo install --locked --path crates/reprise-analyze"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn analyze_runs_the_analyzer_found_on_path_with_all_arguments() {
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
            c.env("PATH", bin.path());
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
